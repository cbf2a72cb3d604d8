"""Forward + backward time and peak memory of the encouraging loss against cross-entropy: on the logits, and
from the decoder's features (the output layer's matrix product included).

    .venv/bin/python benchmarks/loss_benchmark.py --out benchmarks/results-cpu.json
    .venv/bin/python benchmarks/loss_benchmark.py --quick          # small shapes, a smoke run
    .venv/bin/python benchmarks/loss_benchmark.py --markdown benchmarks/results-cpu.json   # the README table
    .venv/bin/python benchmarks/loss_benchmark.py --from-features --out benchmarks/results-features-cpu.json
    .venv/bin/python benchmarks/loss_benchmark.py --from-features --quick   # small shapes, a smoke run

On the logits: variants on the same (N, V) logits with ~5% padding rows (ignore_index 1), eps = 0.1:

    autograd_el   el_plugins.functional.encouraging_loss (log_end 0.75), implementation='reference' (autograd)
    fused_el      el_plugins.functional.encouraging_loss (log_end 0.75), implementation='fused' (el_plugins.ops)
    fairseq_ls_ce fairseq's label_smoothed_nll_loss(log_softmax(logits.float())), as its criterion does
    torch_ce      torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)

EL and fairseq use reduction "sum" and the fairseq smoothing convention, as the fairseq criterion
does; torch_ce its default "mean".

From the features (--from-features): input (N, d) features and an output layer weight (V, d), both leaves
whose gradients are part of the step, the same targets and padding, reduction "sum" for every variant:

    fairseq_ls_ce_features  F.linear, then fairseq's label_smoothed_nll_loss(log_softmax(logits.float())), eps 0.1
    fused_el_logits         F.linear, then today's fused EL on the logits (encouraging_loss, implementation='fused')
    torch_lce_ls0           torch's F.linear_cross_entropy, chunked (options=LinearCrossEntropyOptions()), eps 0:
                            its best case (it refuses label smoothing ...)
    torch_lce_ls01          ... and with eps 0.1, what translation uses (it warns and falls back to whole logits)
    linear_el               el_plugins.functional.linear_encouraging_loss (log_end 0.75, eps 0.1), the output
                            layer fused in

Time: one forward + backward (loss.backward(); the leaves' .grad are reset each time). Per shape and
dtype one subprocess warms every variant up, then runs rounds in which each variant runs once
(rotating the order), so that all variants see the same machine load; reported: the median over the
rounds. Peak memory: the extra memory of one forward + backward beyond the inputs (logits, targets;
or features, weight and targets), the leaves' .grad included, each variant in a fresh subprocess (after a
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


def run_on_this_checkout():
    """Measure this checkout's el_plugins, not an installed snapshot of it. An installed el-plugins' activation
    hook (its .pth file) imports the installed copy as Python starts, before any sys.path change here could
    act; so the benchmark starts again with PYTHONPATH naming the checkout (its worker processes inherit it)."""
    loaded = sys.modules.get("el_plugins")
    if loaded is None:
        sys.path.insert(0, REPO)
        return
    if os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__))) == REPO:
        return
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if REPO in paths:
        raise SystemExit(f"loss_benchmark.py: error: PYTHONPATH names {REPO}, yet el_plugins came from "
                         f"{loaded.__file__}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *paths]))
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

VARIANTS = ("autograd_el", "fused_el", "fairseq_ls_ce", "torch_ce")
BASELINE = "fairseq_ls_ce"
FULL_SHAPES = ((4096, 6632), (8192, 10000), (8192, 32000))
QUICK_SHAPES = ((512, 1000), (1024, 3000))
FEATURE_VARIANTS = ("fairseq_ls_ce_features", "fused_el_logits", "torch_lce_ls0", "torch_lce_ls01", "linear_el")
FEATURE_BASELINE = "fairseq_ls_ce_features"
FEATURE_SHAPES = ((8192, 512, 10000), (8192, 512, 32000), (2048, 512, 128000))  # N, d, V (fits 24 GB)
QUICK_FEATURE_SHAPES = ((512, 64, 1000), (1024, 64, 3000))
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


def _make_features(n, d, v, dtype, device, seed=0):
    """Features x (n, d) and an output layer weight (v, d) whose logits are like _make_inputs' (N(0, 2^2) off
    the target, the target's logit raised by 8 in half of the rows), and the same kind of targets."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(v, d, generator=gen).div_(d ** 0.5)
    x = torch.randn(n, d, generator=gen).mul_(2.0)
    target = torch.randint(0, v, (n,), generator=gen)
    confident = (torch.rand(n, generator=gen) < 0.5).nonzero().squeeze(1)
    w_target = weight.index_select(0, target[confident])
    x[confident] += (8.0 / w_target.pow(2).sum(-1)).unsqueeze(1) * w_target
    target[torch.rand(n, generator=gen) < 0.05] = PAD
    return (x.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype)), target.to(device)


def _make_case(n, v, d, dtype, device, seed=0):
    """(leaves, target): the logits (d None), or the features and the weight."""
    if d is None:
        logits, target = _make_inputs(n, v, dtype, device, seed)
        return (logits,), target
    return _make_features(n, d, v, dtype, device, seed)


def _features_loss_fn(variant, chunk_size=None):
    import torch.nn.functional as F

    el_kwargs = dict(log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD, reduction="sum",
                     smoothing_convention="fairseq")
    if variant == "fairseq_ls_ce_features":
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        return lambda x, w, t: label_smoothed_nll_loss(F.log_softmax(F.linear(x, w).float(), dim=-1), t, EPS,
                                                       ignore_index=PAD)[0]
    if variant == "fused_el_logits":
        from el_plugins.functional import encouraging_loss

        return lambda x, w, t: encouraging_loss(F.linear(x, w), t, implementation="fused", **el_kwargs)
    if variant in ("torch_lce_ls0", "torch_lce_ls01"):
        from torch.nn import LinearCrossEntropyOptions

        eps = 0.0 if variant == "torch_lce_ls0" else EPS
        return lambda x, w, t: F.linear_cross_entropy(x, w, t, ignore_index=PAD, reduction="sum", label_smoothing=eps,
                                                      options=LinearCrossEntropyOptions())
    if variant == "linear_el":
        from el_plugins.functional import linear_encouraging_loss

        return lambda x, w, t: linear_encouraging_loss(x, w, t, implementation="fused", chunk_size=chunk_size,
                                                       **el_kwargs)
    raise ValueError(variant)


def _loss_fn(variant, chunk_size=None):
    import torch.nn.functional as F

    if variant in FEATURE_VARIANTS:
        return _features_loss_fn(variant, chunk_size)

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


def _step(fn, leaves, t, cuda):
    import torch

    for leaf in leaves:
        leaf.grad = None
    fn(*leaves, t).backward()
    if cuda:
        torch.cuda.synchronize()


def _leaves(n, v, d, dtype, device, seed=0):
    leaves, target = _make_case(n, v, d, dtype, device, seed)
    return tuple(leaf.requires_grad_() for leaf in leaves), target


def measure_memory(variant, n, v, dtype_name, device, chunk_size=None, d=None):
    """Peak extra memory (MiB) of one forward + backward of one variant, in this (fresh) process."""
    import torch

    dtype, cuda = getattr(torch, dtype_name), device == "cuda"
    fn = _loss_fn(variant, chunk_size)
    # warm-up on a small slice (imports, kernel compilation, thread pools) before measuring
    small, small_t = _leaves(min(n, 64), v, d, dtype, device, seed=1)
    _step(fn, small, small_t, cuda)
    del small, small_t
    leaves, target = _leaves(n, v, d, dtype, device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(fn, leaves, target, cuda)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    _step(fn, leaves, target, cuda)
    return _proc_status_mib("VmHWM") - before


def measure_time(variants, n, v, dtype_name, device, repeats, chunk_size=None, d=None):
    """Seconds per forward + backward of each variant: a warm-up, then ``repeats`` rounds that run
    every variant once (in rotating order), so that all variants see the same machine load."""
    dtype, cuda = getattr(__import__("torch"), dtype_name), device == "cuda"
    fns = {variant: _loss_fn(variant, chunk_size) for variant in variants}
    leaves, target = _leaves(n, v, d, dtype, device)
    for fn in fns.values():
        _step(fn, leaves, target, cuda)
    times = {variant: [] for variant in variants}
    for round_ in range(repeats):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for variant in order:
            start = time.perf_counter()
            _step(fns[variant], leaves, target, cuda)
            times[variant].append(time.perf_counter() - start)
    for leaf in leaves:
        leaf.grad = None
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


def shape_name(r):
    return f"{r['n']}x{r['v']}" if r.get("d") is None else f"{r['n']}x{r['d']}x{r['v']}"


def format_table(rows):
    header = (f"{'device':6} {'dtype':8} {'shape':>16} {'variant':22} {'time ms':>9} {'peak MiB':>9} {'time/c':>7} "
              f"{'mem/c':>7}")
    out = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            out.append(f"{r['device']:6} {r['dtype']:8} {shape_name(r):>16} {r['variant']:22} {r['error']}")
            continue
        tr = f"{r['time_ratio']:.2f}" if r.get("time_ratio") is not None else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        out.append(f"{r['device']:6} {r['dtype']:8} {shape_name(r):>16} {r['variant']:22} {1000 * r['time_s']:9.1f} "
                   f"{r['peak_mib']:9.1f} {tr:>7} {mr:>7}")
    return "\n".join(out)


VARIANT_NAMES = {"autograd_el": "autograd EL", "fused_el": "**fused EL**", "fairseq_ls_ce": "fairseq LS-CE",
                 "torch_ce": "torch CE (ls 0.1)",
                 "fairseq_ls_ce_features": "matmul + fairseq LS-CE", "fused_el_logits": "matmul + fused EL",
                 "torch_lce_ls0": "torch linear_cross_entropy, chunked (ls 0)",
                 "torch_lce_ls01": "torch linear_cross_entropy, chunked (ls 0.1)",
                 "linear_el": "**linear_encouraging_loss**"}


def _ratio(x, bold):
    return "-" if x is None else (f"**{x:.2f}**" if bold else f"{x:.2f}")


def markdown_table(result):
    """The docs' table of a results file (quoted as printed here), with the line naming the code that produced
    it: the logits table, or with rows from --from-features the features table (ratios to LS-CE, to matmul + fused
    EL, and to torch's chunked linear_cross_entropy without smoothing)."""
    from el_plugins.provenance import describe

    rows = [r for r in result["results"] if "error" not in r]
    features = bool(rows) and rows[0].get("d") is not None
    table = _features_markdown_table(rows) if features else _logits_markdown_table(rows)
    if features:
        table += "\n\n" + features_goals(rows)
    return table + f"\n\nProduced by {describe(result.get('produced_by'))}."


# the goals of linear_encouraging_loss (issue 19): (what, ratio key, at most, only at V >= this)
FEATURE_GOALS = (("extra peak memory at most 0.1x LS-CE's", "mem_ratio", 0.1, 32000),
                 ("extra peak memory at most 1.5x torch's chunked linear_cross_entropy without smoothing",
                  "mem_ratio_torch_chunked", 1.5, 32000),
                 ("time at most 1.1x the matmul + fused EL on the logits", "time_ratio_fused_logits", 1.1, 0),
                 ("time at most LS-CE's", "time_ratio", 1.0, 0))


def features_goals(rows):
    """One line per goal of linear_encouraging_loss: met or missed, on which rows (dtype, shape) and ratios."""
    from el_plugins.reproduce.headlines import ratio_range

    lines = ["Goals of `linear_encouraging_loss`, from the rows above:", ""]
    for what, key, limit, min_v in FEATURE_GOALS:
        measured = [r for r in rows if r["variant"] == "linear_el" and r["v"] >= min_v and r.get(key) is not None]
        if not measured:
            lines.append(f"- {what}: not measured")
            continue
        missed = [r for r in measured if round(r[key], 2) > limit]
        where = f" (V >= {min_v})" if min_v else ""
        lines.append(f"- {what}{where}: " + (
            f"met on all {len(measured)} rows, {ratio_range([r[key] for r in measured])}"
            if not missed else f"missed on {len(missed)} of {len(measured)} rows: " +
            ", ".join(f"{r['dtype']} {shape_name(r)} {r[key]:.2f}x" for r in missed)))
    return "\n".join(lines)


def _logits_markdown_table(rows):
    out = ["| dtype | shape | variant | time ms | peak MiB | time / fairseq | memory / fairseq |",
           "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        bold = r["variant"] == "fused_el"
        out.append(f"| {r['dtype']} | {r['n']}x{r['v']} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {_ratio(r.get('time_ratio'), bold)} | "
                   f"{_ratio(r.get('mem_ratio'), bold)} |")
    return "\n".join(out)


def _features_markdown_table(rows):
    out = ["| dtype | N x d x V | variant | time ms | peak MiB | time / LS-CE | time / matmul + fused EL | "
           "memory / LS-CE | memory / torch chunked (ls 0) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bold = r["variant"] == "linear_el"
        out.append(f"| {r['dtype']} | {shape_name(r)} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {_ratio(r.get('time_ratio'), bold)} | "
                   f"{_ratio(r.get('time_ratio_fused_logits'), bold)} | {_ratio(r.get('mem_ratio'), bold)} | "
                   f"{_ratio(r.get('mem_ratio_torch_chunked'), bold)} |")
    return "\n".join(out)


def parse_shapes(text, features):
    """--shapes: comma-separated NxV (logits) or NxdxV (--from-features)."""
    want = 3 if features else 2
    try:
        shapes = tuple(tuple(int(x) for x in item.split("x")) for item in text.split(",") if item.strip())
    except ValueError:
        shapes = ()
    if not shapes or any(len(shape) != want or min(shape) < 1 for shape in shapes):
        raise ValueError(f"--shapes takes comma-separated {'NxdxV' if features else 'NxV'} of positive integers, "
                         f"got {text!r}")
    return shapes


def ratios(results, variant, baseline, key, value):
    """{key: results[variant][value] / results[baseline][value]} when both were measured, else {}."""
    base, res = results.get(baseline), results[variant]
    if not base or "error" in base or "error" in res or not base.get(value):
        return {}
    return {key: res[value] / base[value]}


def main(argv=None):
    run_on_this_checkout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="small shapes and 2 repeats: a smoke run")
    parser.add_argument("--from-features", action="store_true",
                        help="the features table: input (N, d) and the output layer's weight (V, d), the matrix "
                             "product included (default shapes: N x 512 x V for 8192x10000, 8192x32000, 2048x128000)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per shape (default 5, 3 above 1e8 elements; 2 with --quick)")
    parser.add_argument("--shapes", help="comma-separated NxV, e.g. 4096x6632,8192x32000 (NxdxV with --from-features)")
    parser.add_argument("--variants", help=f"comma-separated (default {','.join(VARIANTS)}; with --from-features "
                                           f"{','.join(FEATURE_VARIANTS)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtypes", help="comma-separated logits dtypes (default: float32,float16 on CPU, "
                                         "float32,float16,bfloat16 on CUDA; float32,bfloat16 on CPU with "
                                         "--from-features)")
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print the README's table of a results file and exit")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk of fused_el's torch path (of linear_el with --from-features)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(json.load(f)))
        return
    if args.worker:
        spec = json.loads(args.worker)
        task = spec.pop("task")
        result = measure_memory(**spec) if task == "memory" else measure_time(**spec)
        print(RESULT + json.dumps(result), flush=True)
        return

    import torch

    features = args.from_features
    all_variants, baseline = (FEATURE_VARIANTS, FEATURE_BASELINE) if features else (VARIANTS, BASELINE)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if features:
        shapes = QUICK_FEATURE_SHAPES if args.quick else FEATURE_SHAPES
    else:
        shapes = tuple((n, None, v) for n, v in (QUICK_SHAPES if args.quick else FULL_SHAPES))
    if args.shapes:
        try:
            shapes = parse_shapes(args.shapes, features)
        except ValueError as error:
            parser.error(str(error))
        if not features:
            shapes = tuple((n, None, v) for n, v in shapes)
    if features:
        dtypes = ("float32", "bfloat16") if device == "cpu" else ("float32", "float16", "bfloat16")
    else:
        dtypes = ("float32", "float16", "bfloat16") if device == "cuda" else ("float32", "float16")
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        bad = [d for d in dtypes if d not in ("float32", "float16", "bfloat16", "float64")]
        if bad or not dtypes:
            parser.error(f"--dtypes takes float32, float16, bfloat16 or float64, got {args.dtypes!r}")
    variants = [v for v in (args.variants or ",".join(all_variants)).split(",") if v]
    unknown = [v for v in variants if v not in all_variants]
    if unknown:
        parser.error(f"--variants takes {', '.join(all_variants)}{' (with --from-features)' if features else ''}, "
                     f"got {', '.join(unknown)}")
    rows = []
    load_before = os.getloadavg()
    for dtype_name in dtypes:
        for n, d, v in shapes:
            elements = n * v
            repeats = args.repeats or (2 if args.quick else (3 if elements > 10**8 else 5))
            common = dict(n=n, v=v, dtype_name=dtype_name, device=device, chunk_size=args.chunk_size)
            if features:
                common["d"] = d
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
            for variant, res in results.items():
                row = dict(device=device, dtype=dtype_name, n=n, v=v, variant=variant, **res)
                if features:
                    row["d"] = d
                row.update(ratios(results, variant, baseline, "time_ratio", "time_s"))
                row.update(ratios(results, variant, baseline, "mem_ratio", "peak_mib"))
                if features:
                    row.update(ratios(results, variant, "fused_el_logits", "time_ratio_fused_logits", "time_s"))
                    row.update(ratios(results, variant, "torch_lce_ls0", "mem_ratio_torch_chunked", "peak_mib"))
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
    table = format_table(rows)
    memory_method = ("torch.cuda.max_memory_allocated() - memory_allocated() before the call" if device == "cuda"
                     else "growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS before the call")
    memory_method += ", one fresh subprocess per variant"
    print()
    print(table)
    print(f"\ntime/c, mem/c: ratio to {baseline} (c). Peak memory: {memory_method}.")
    if args.out:
        reduction = "sum (every variant)" if features else "sum (EL, fairseq), mean (torch_ce)"
        result = {
            "machine": dict(machine_info(device), load_average_before=load_before, load_average_after=os.getloadavg()),
            "settings": {"label_smoothing": EPS, "log_end": LOG_END, "padding_fraction": 0.05,
                         "reduction": reduction, "baseline": baseline, "from_features": features,
                         "memory_method": memory_method, "quick": args.quick, "chunk_size": args.chunk_size},
            "results": rows,
        }
        from el_plugins.files import write_json
        from el_plugins.provenance import provenance

        result["produced_by"] = provenance()
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)  # all or nothing
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
