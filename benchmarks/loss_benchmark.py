"""Forward + backward time and peak memory of the encouraging loss against cross-entropy.

    PYTHONPATH=. .venv/bin/python benchmarks/loss_benchmark.py --out benchmarks/results-cpu.json
    PYTHONPATH=. .venv/bin/python benchmarks/loss_benchmark.py --quick          # small shapes, a smoke run
    .venv/bin/python benchmarks/loss_benchmark.py --markdown benchmarks/results-cpu.json   # the README table

Variants, all on the same (N, V) logits with ~5% padding rows (ignore_index 1), eps = 0.1:

    autograd_el   el_plugins.functional.encouraging_loss (log_end 0.75), implementation='reference' (autograd)
    fused_el      el_plugins.functional.encouraging_loss (log_end 0.75), implementation='fused' (el_plugins.ops)
    fairseq_ls_ce fairseq's label_smoothed_nll_loss(log_softmax(logits.float())), as its criterion does
    torch_ce      torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)

EL and fairseq use reduction "sum" and the fairseq smoothing convention, as the fairseq criterion
does; torch_ce its default "mean".

Time: one forward + backward (loss.backward(); the logits are a leaf whose .grad is reset each
time). Per shape and dtype one subprocess warms every variant up, then runs rounds in which each
variant runs once (rotating the order), so that all variants see the same machine load; reported:
the median over the rounds. Peak memory: the extra memory of one forward + backward beyond the
inputs (logits, targets), the logits' .grad included, each variant in a fresh subprocess (after a
warm-up on 64 rows): on CUDA torch.cuda.max_memory_allocated() minus memory_allocated() before the
call; on CPU, where torch keeps no allocator statistics, the growth of the process's peak resident
set size (VmHWM in /proc/self/status, reset through /proc/self/clear_refs) over its size before.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # this checkout's el_plugins, not an installed snapshot

VARIANTS = ("autograd_el", "fused_el", "fairseq_ls_ce", "torch_ce")
BASELINE = "fairseq_ls_ce"
FULL_SHAPES = ((4096, 6632), (8192, 10000), (8192, 32000))
QUICK_SHAPES = ((512, 1000), (1024, 3000))
EPS, LOG_END, PAD = 0.1, 0.75, 1
RESULT = "RESULT "


# --------------------------------------------------------------------------- one measurement (worker)
def _proc_status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/self/status")


def _make_inputs(n, v, dtype, device, seed=0):
    """Logits ~ N(0, 2^2) with the target's logit raised by 8 in half of the rows (so that many rows
    are confidently right, as late in training); 5% of the rows are padding."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(n, v, generator=gen).mul_(2.0)
    target = torch.randint(0, v, (n,), generator=gen)
    confident = torch.rand(n, generator=gen) < 0.5
    logits[confident, target[confident]] += 8.0
    target[torch.rand(n, generator=gen) < 0.05] = PAD
    return logits.to(device=device, dtype=dtype), target.to(device)


def _loss_fn(variant, chunk_size=None):
    import torch.nn.functional as F

    if variant == "autograd_el":
        from el_plugins.functional import encouraging_loss

        return lambda z, t: encouraging_loss(z, t, log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD,
                                             reduction="sum", smoothing_convention="fairseq",
                                             implementation="reference")
    if variant == "fused_el":
        from el_plugins.functional import encouraging_loss

        return lambda z, t: encouraging_loss(z, t, log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD,
                                             reduction="sum", smoothing_convention="fairseq",
                                             implementation="fused", chunk_size=chunk_size)
    if variant == "fairseq_ls_ce":
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        return lambda z, t: label_smoothed_nll_loss(F.log_softmax(z.float(), dim=-1), t, EPS, ignore_index=PAD)[0]
    if variant == "torch_ce":
        return lambda z, t: F.cross_entropy(z, t, label_smoothing=EPS, ignore_index=PAD)
    raise ValueError(variant)


def _step(fn, z, t, cuda):
    import torch

    z.grad = None
    fn(z, t).backward()
    if cuda:
        torch.cuda.synchronize()


def measure_memory(variant, n, v, dtype_name, device, chunk_size=None):
    """Peak extra memory (MiB) of one forward + backward of one variant, in this (fresh) process."""
    import torch

    dtype, cuda = getattr(torch, dtype_name), device == "cuda"
    fn = _loss_fn(variant, chunk_size)
    # warm-up on a small slice (imports, kernel compilation, thread pools) before measuring
    small_z, small_t = _make_inputs(min(n, 64), v, dtype, device, seed=1)
    _step(fn, small_z.requires_grad_(), small_t, cuda)
    del small_z, small_t
    logits, target = _make_inputs(n, v, dtype, device)
    logits.requires_grad_()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(fn, logits, target, cuda)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    _step(fn, logits, target, cuda)
    return _proc_status_mib("VmHWM") - before


def measure_time(variants, n, v, dtype_name, device, repeats, chunk_size=None):
    """Seconds per forward + backward of each variant: a warm-up, then ``repeats`` rounds that run
    every variant once (in rotating order), so that all variants see the same machine load."""
    import torch

    dtype, cuda = getattr(torch, dtype_name), device == "cuda"
    fns = {variant: _loss_fn(variant, chunk_size) for variant in variants}
    logits, target = _make_inputs(n, v, dtype, device)
    logits.requires_grad_()
    for fn in fns.values():
        _step(fn, logits, target, cuda)
    times = {variant: [] for variant in variants}
    for round_ in range(repeats):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for variant in order:
            start = time.perf_counter()
            _step(fns[variant], logits, target, cuda)
            times[variant].append(time.perf_counter() - start)
    logits.grad = None
    return times


# --------------------------------------------------------------------------- driver
def machine_info(device):
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ},
        "cpu": platform.processor() or "",
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = models[0] if models else info["cpu"]
        info["logical_cpus"] = len(models)
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def run_worker(task, **spec):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(dict(spec, task=task))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{task} worker exited {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1][len(RESULT):])


def format_table(rows):
    header = f"{'device':6} {'dtype':8} {'shape':>12} {'variant':14} {'time ms':>9} {'peak MiB':>9} {'time/c':>7} {'mem/c':>7}"
    out = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r['n']}x{r['v']}"
        if "error" in r:
            out.append(f"{r['device']:6} {r['dtype']:8} {shape:>12} {r['variant']:14} {r['error']}")
            continue
        tr = f"{r['time_ratio']:.2f}" if r.get("time_ratio") is not None else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        out.append(f"{r['device']:6} {r['dtype']:8} {shape:>12} {r['variant']:14} {1000 * r['time_s']:9.1f} "
                   f"{r['peak_mib']:9.1f} {tr:>7} {mr:>7}")
    return "\n".join(out)


VARIANT_NAMES = {"autograd_el": "autograd EL", "fused_el": "**fused EL**", "fairseq_ls_ce": "fairseq LS-CE",
                 "torch_ce": "torch CE (ls 0.1)"}


def markdown_table(rows):
    """The README's table of a results file's rows (the README quotes it as printed here)."""
    out = ["| dtype | shape | variant | time ms | peak MiB | time / fairseq | memory / fairseq |",
           "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            continue
        bold = (lambda x: f"**{x}**") if r["variant"] == "fused_el" else (lambda x: x)
        ratio = (lambda x: "-" if x is None else bold(f"{x:.2f}"))
        out.append(f"| {r['dtype']} | {r['n']}x{r['v']} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {ratio(r.get('time_ratio'))} | "
                   f"{ratio(r.get('mem_ratio'))} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="small shapes and 2 repeats: a smoke run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per shape (default 5, 3 above 1e8 elements; 2 with --quick)")
    parser.add_argument("--shapes", help="comma-separated NxV, e.g. 4096x6632,8192x32000")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtypes", help="comma-separated logits dtypes (default: float32,float16 on CPU, "
                                         "float32,float16,bfloat16 on CUDA)")
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print the README's table of a results file and exit")
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of fused_el's torch path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(json.load(f)["results"]))
        return
    if args.worker:
        spec = json.loads(args.worker)
        task = spec.pop("task")
        result = measure_memory(**spec) if task == "memory" else measure_time(**spec)
        print(RESULT + json.dumps(result), flush=True)
        return

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(x) for x in s.split("x")) for s in args.shapes.split(","))
    dtypes = ("float32", "float16", "bfloat16") if device == "cuda" else ("float32", "float16")
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        bad = [d for d in dtypes if d not in ("float32", "float16", "bfloat16", "float64")]
        if bad or not dtypes:
            parser.error(f"--dtypes takes float32, float16, bfloat16 or float64, got {args.dtypes!r}")
    variants = [v for v in args.variants.split(",") if v]
    rows = []
    load_before = os.getloadavg()
    for dtype_name in dtypes:
        for shape in shapes:
            n, v = shape
            repeats = args.repeats or (2 if args.quick else (3 if n * v > 10**8 else 5))
            common = dict(n=n, v=v, dtype_name=dtype_name, device=device, chunk_size=args.chunk_size)
            results = {variant: {} for variant in variants}
            try:
                times = run_worker("time", variants=variants, repeats=repeats, **common)
                for variant in variants:
                    results[variant].update(time_s=statistics.median(times[variant]), times_s=times[variant])
            except RuntimeError as error:
                for variant in variants:
                    results[variant]["error"] = str(error)
            for variant in variants:
                try:
                    results[variant]["peak_mib"] = run_worker("memory", variant=variant, **common)
                except RuntimeError as error:
                    results[variant]["error"] = str(error)
            base = results.get(BASELINE)
            for variant, res in results.items():
                row = dict(device=device, dtype=dtype_name, n=n, v=v, variant=variant, **res)
                if "error" not in res and base and "error" not in base:
                    row["time_ratio"] = res["time_s"] / base["time_s"]
                    row["mem_ratio"] = res["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
    table = format_table(rows)
    memory_method = ("torch.cuda.max_memory_allocated() - memory_allocated() before the call" if device == "cuda"
                     else "growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS before the call")
    memory_method += ", one fresh subprocess per variant"
    print()
    print(table)
    print(f"\ntime/c, mem/c: ratio to {BASELINE} (c). Peak memory: {memory_method}.")
    if args.out:
        result = {
            "machine": dict(machine_info(device), load_average_before=load_before, load_average_after=os.getloadavg()),
            "settings": {"label_smoothing": EPS, "log_end": LOG_END, "padding_fraction": 0.05,
                         "reduction": "sum (EL, fairseq), mean (torch_ce)", "baseline": BASELINE,
                         "memory_method": memory_method, "quick": args.quick, "chunk_size": args.chunk_size},
            "results": rows,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
