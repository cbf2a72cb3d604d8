"""Extra peak memory and time of one training step (forward + backward) of a small Llama in Hugging Face
Transformers: EL through el_plugins.hf.apply_encouraging_loss, the output layer fused in, against Transformers' own
loss.

    .venv/bin/python benchmarks/transformers_benchmark.py --out benchmarks/results-transformers-cpu.json
    .venv/bin/python benchmarks/transformers_benchmark.py --quick          # small shapes, a smoke run
    .venv/bin/python benchmarks/transformers_benchmark.py --markdown benchmarks/results-transformers-cpu.json

The model: LlamaForCausalLM from a config (hidden 256, 2 layers, 4 heads, MLP 688, untied output layer), random
weights, in training mode, all in the dtype measured (float32, or bfloat16 weights without autocast). The batch:
2 x 1024 tokens, labels = the input ids with 5% of them -100. Variants, on the same model and batch:

    hf_ce      the unpatched model(input_ids, labels=labels).loss: Transformers' own loss (ForCausalLMLoss:
               cross-entropy of the logits upcast to float32)
    el_fused   apply_encouraging_loss(model, log_end=0.75, label_smoothing=0.1): EL with the output layer fused in
               (el_plugins.functional.linear_encouraging_loss; no logits)
    el_logits  the same with fuse_output_layer='off': EL of the model's logits (what compute_loss_func computes)

Time: one forward + backward of the whole model (the parameters' .grad reset before each). Per V and dtype one
subprocess warms every variant up, then runs rounds in which each variant runs once (rotating the order), so that
all variants see the same machine load; reported: the median over the rounds. Peak memory: the growth of the
process's peak resident set size (VmHWM in /proc/self/status, reset through /proc/self/clear_refs) over its size
before the step (model, batch and optimizer-free state resident; the parameters' .grad included in the growth),
each variant in a fresh subprocess after a warm-up step on 2 x 64 tokens; on CUDA the allocator's peak over the
memory allocated before the step. The helpers are loss_benchmark.py's (this file imports them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PROG = "transformers_benchmark.py"

VARIANTS = ("hf_ce", "el_fused", "el_logits")
BASELINE = "hf_ce"
FULL_VOCABS = (32000, 128000)
QUICK_VOCABS = (1000, 3000)
FULL_TOKENS = (2, 1024)  # batch, sequence length
QUICK_TOKENS = (2, 64)
WARMUP_TOKENS = (2, 64)
DTYPES = ("float32", "bfloat16")
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, tie_word_embeddings=False)
EPS, LOG_END, IGNORED = 0.1, 0.75, 0.05
RESULT = "RESULT "
RESULTS_FILE = "benchmarks/results-transformers-cpu.json"

# the goals of issue 28: (what, ratio key, at most)
GOALS = (("extra peak memory at most 0.2x Transformers' own loss", "mem_ratio", 0.2),
         ("time at most Transformers' own loss", "time_ratio", 1.0))


def _loss_benchmark():
    """benchmarks/loss_benchmark.py as a module: its measurement helpers (peak RSS, machine description, ratios)."""
    spec = importlib.util.spec_from_file_location("loss_benchmark", os.path.join(HERE, "loss_benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- one measurement (worker)
def _model(v, dtype_name, device):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=v, max_position_embeddings=FULL_TOKENS[1], **MODEL)
    return transformers.LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype_name)).train()


def _batch(v, tokens, device, seed=0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, v, tokens, generator=gen)
    labels = input_ids.masked_fill(torch.rand(tokens, generator=gen) < IGNORED, -100)
    return input_ids.to(device), labels.to(device)


def _set_variant(model, variant):
    """The model as ``variant`` computes its loss (patched, or not, in place)."""
    from el_plugins import hf

    if hf.patch.PATCH_ATTRIBUTE in vars(model):
        hf.remove_encouraging_loss(model)
    if variant != "hf_ce":
        hf.apply_encouraging_loss(model, log_end=LOG_END, label_smoothing=EPS,
                                  fuse_output_layer="auto" if variant == "el_fused" else "off")


def _step(model, input_ids, labels, cuda):
    import torch

    for p in model.parameters():
        p.grad = None
    out = model(input_ids=input_ids, labels=labels)
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize()
    return out


def measure_memory(variant, v, dtype_name, device, tokens):
    """Peak extra memory (MiB) of one forward + backward of ``variant``, in this (fresh) process."""
    import torch

    cuda = device == "cuda"
    model = _model(v, dtype_name, device)
    _set_variant(model, variant)
    out = _step(model, *_batch(v, WARMUP_TOKENS, device, seed=1), cuda)  # imports, thread pools, first calls
    del out
    for p in model.parameters():
        p.grad = None
    input_ids, labels = _batch(v, tuple(tokens), device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _step(model, input_ids, labels, cuda)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    proc_status_mib = _loss_benchmark()._proc_status_mib
    before = proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    out = _step(model, input_ids, labels, cuda)
    if variant == "el_fused" and out.logits is not None:
        raise RuntimeError("el_fused computed logits: the output layer was not fused in")
    return proc_status_mib("VmHWM") - before


def measure_time(variants, v, dtype_name, device, tokens, repeats):
    """Seconds per forward + backward of each variant: a warm-up, then ``repeats`` rounds running every variant
    once (in rotating order), on one model patched and unpatched in turn."""
    import time

    cuda = device == "cuda"
    model = _model(v, dtype_name, device)
    input_ids, labels = _batch(v, tuple(tokens), device)
    losses = {}
    for variant in variants:
        _set_variant(model, variant)
        losses[variant] = _step(model, input_ids, labels, cuda).loss.item()
    times = {variant: [] for variant in variants}
    for round_ in range(repeats):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for variant in order:
            _set_variant(model, variant)
            start = time.perf_counter()
            _step(model, input_ids, labels, cuda)
            times[variant].append(time.perf_counter() - start)
    return {"times": times, "losses": losses}


def run_worker(task, **spec):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(dict(spec, task=task))]
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{task} worker exited {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1][len(RESULT):])


# --------------------------------------------------------------------------- tables
VARIANT_NAMES = {"hf_ce": "Transformers' own loss (CE)", "el_fused": "**EL, output layer fused in**",
                 "el_logits": "EL on the logits (fuse_output_layer='off')"}


def tokens_name(r):
    return "x".join(str(t) for t in r["tokens"])


def format_table(rows):
    header = f"{'device':6} {'dtype':8} {'V':>7} {'tokens':>7} {'variant':10} {'time ms':>9} {'peak MiB':>9} " \
             f"{'time/ce':>7} {'mem/ce':>7}"
    out = [header, "-" * len(header)]
    for r in rows:
        lead = f"{r['device']:6} {r['dtype']:8} {r['v']:>7} {tokens_name(r):>7} {r['variant']:10}"
        if "error" in r:
            out.append(f"{lead} {r['error']}")
            continue
        tr = f"{r['time_ratio']:.2f}" if r.get("time_ratio") is not None else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        out.append(f"{lead} {1000 * r['time_s']:9.1f} {r['peak_mib']:9.1f} {tr:>7} {mr:>7}")
    return "\n".join(out)


def goals(rows):
    """One line per goal of the fused route: met or missed, on which rows, with the ratios."""
    from el_evidence.headlines import ratio_range

    lines = ["Goals of `apply_encouraging_loss` (output layer fused in), from the rows above:", ""]
    for what, key, limit in GOALS:
        measured = [r for r in rows if r["variant"] == "el_fused" and r.get(key) is not None]
        if not measured:
            lines.append(f"- {what}: not measured")
            continue
        missed = [r for r in measured if round(r[key], 2) > limit]
        lines.append(f"- {what}: " + (
            f"met on all {len(measured)} rows, {ratio_range([r[key] for r in measured])}" if not missed else
            f"missed on {len(missed)} of {len(measured)} rows: " +
            ", ".join(f"{r['dtype']} V={r['v']} {r[key]:.2f}x" for r in missed)))
    return "\n".join(lines)


def markdown_table(result):
    """docs/hf.md's table of a results file, its goals, and the line naming the code and versions behind it."""
    from el_plugins.provenance import describe

    rows = [r for r in result["results"] if "error" not in r]
    out = ["| dtype | V | tokens | variant | time ms | peak MiB | time / CE | memory / CE |",
           "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        bold = r["variant"] == "el_fused"

        def ratio(x):
            return "-" if x is None else (f"**{x:.2f}**" if bold else f"{x:.2f}")
        out.append(f"| {r['dtype']} | {r['v']} | {tokens_name(r)} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {ratio(r.get('time_ratio'))} | "
                   f"{ratio(r.get('mem_ratio'))} |")
    versions = result.get("versions", {})
    machine = result.get("machine", {})
    where = f"{machine.get('cpu', 'an unrecorded CPU')}, {machine.get('threads', '?')} threads"
    return ("\n".join(out) + "\n\n" + goals(rows) + f"\n\nProduced by {describe(result.get('produced_by'))}; torch "
            f"{versions.get('torch')}, transformers {versions.get('transformers')}; {where}.")


# --------------------------------------------------------------------------- driver
def main(argv=None):
    _loss_benchmark().run_on_this_checkout(__file__)
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here (all or nothing)")
    parser.add_argument("--quick", action="store_true",
                        help=f"V {' and '.join(map(str, QUICK_VOCABS))}, {'x'.join(map(str, QUICK_TOKENS))} tokens, "
                             f"2 rounds: a smoke run")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per V and dtype (default 5; 2 with --quick)")
    parser.add_argument("--vocabs", help=f"comma-separated V (default {','.join(map(str, FULL_VOCABS))})")
    parser.add_argument("--dtypes", help=f"comma-separated (default {','.join(DTYPES)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print docs/hf.md's table of a results file and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.markdown:
        with open(args.markdown, encoding="utf-8") as f:
            print(markdown_table(json.load(f)))
        return
    if args.worker:
        spec = json.loads(args.worker)
        task = spec.pop("task")
        result = measure_memory(**spec) if task == "memory" else measure_time(**spec)
        print(RESULT + json.dumps(result), flush=True)
        return

    import torch
    import transformers

    bench = _loss_benchmark()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    vocabs = QUICK_VOCABS if args.quick else FULL_VOCABS
    if args.vocabs:
        try:
            vocabs = tuple(int(x) for x in args.vocabs.split(",") if x.strip())
        except ValueError:
            vocabs = ()
        if not vocabs or min(vocabs) < 2:
            parser.error(f"--vocabs takes comma-separated integers >= 2, got {args.vocabs!r}")
    dtypes = DTYPES
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        if not dtypes or any(d not in ("float32", "bfloat16", "float16") for d in dtypes):
            parser.error(f"--dtypes takes float32, bfloat16, float16, got {args.dtypes!r}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    repeats = args.repeats or (2 if args.quick else 5)
    tokens = list(QUICK_TOKENS if args.quick else FULL_TOKENS)
    variants = list(VARIANTS)
    rows = []
    load_before = os.getloadavg()
    for dtype_name in dtypes:
        for v in vocabs:
            common = dict(v=v, dtype_name=dtype_name, device=device, tokens=tokens)
            results = {variant: {} for variant in variants}
            try:
                timed = run_worker("time", variants=variants, repeats=repeats, **common)
                for variant in variants:
                    times = timed["times"][variant]
                    results[variant].update(time_s=statistics.median(times), times_s=times,
                                            loss=timed["losses"][variant])
            except RuntimeError as error:
                for variant in variants:
                    results[variant]["error"] = str(error)
            for variant in variants:
                try:
                    results[variant]["peak_mib"] = run_worker("memory", variant=variant, **common)
                except RuntimeError as error:
                    results[variant]["error"] = str(error)
            for variant, res in results.items():
                row = dict(device=device, dtype=dtype_name, v=v, tokens=tokens, variant=variant, **res)
                row.update(bench.ratios(results, variant, BASELINE, "time_ratio", "time_s"))
                row.update(bench.ratios(results, variant, BASELINE, "mem_ratio", "peak_mib"))
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
    memory_method = ("torch.cuda.max_memory_allocated() - memory_allocated() before the step" if device == "cuda"
                     else "growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS before the step")
    memory_method += ", one fresh subprocess per variant"
    print()
    print(format_table(rows))
    print(f"\ntime/ce, mem/ce: ratio to {BASELINE} (Transformers' own loss). Peak memory: {memory_method}.")
    if args.out:
        from el_plugins.files import write_json
        from el_plugins.provenance import provenance

        result = {
            "machine": dict(bench.machine_info(device), load_average_before=load_before,
                            load_average_after=os.getloadavg()),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "settings": {"model": dict(MODEL, architecture="LlamaForCausalLM"), "tokens": tokens,
                         "label_smoothing": EPS, "log_end": LOG_END, "ignored_fraction": IGNORED, "baseline": BASELINE,
                         "repeats": repeats, "memory_method": memory_method, "quick": args.quick},
            "results": rows,
            "produced_by": provenance(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out, result)  # all or nothing (a temporary file, then os.replace)
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
