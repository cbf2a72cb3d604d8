#!/usr/bin/env python3
"""docs/performance.md's GPU section from the GPU check's results file (benchmarks/gpu/check.py writes it).

    python3 benchmarks/gpu/report.py --markdown benchmarks/results-gpu.json   # the section, as the docs show it
    python3 benchmarks/gpu/report.py benchmarks/results-gpu.json              # a short summary for a terminal

Only the Python standard library: it runs wherever the results file is.
"""
from __future__ import annotations

import argparse
import json
import sys

LOGITS_BASELINE = "torch_ce"
FEATURES_BASELINE = "torch_ce_features"
NAMES = {"autograd_el": "autograd EL", "fused_el": "**fused EL**", "fairseq_ls_ce": "fairseq LS-CE",
         "torch_ce": "torch CE (ls 0.1)", "compiled_el": "torch.compile(reference EL)", "liger_ce": "Liger CE (ls 0.1)",
         "fairseq_ls_ce_features": "matmul + fairseq LS-CE", "fused_el_logits": "matmul + fused EL",
         "torch_lce_ls0": "torch linear_cross_entropy, chunked (ls 0)",
         "torch_lce_ls01": "torch linear_cross_entropy, chunked (ls 0.1)",
         "linear_el": "**linear_encouraging_loss**", "torch_ce_features": "matmul + torch CE (ls 0.1)",
         "cce": "Cut Cross-Entropy (ls 0)", "liger_flce": "Liger fused linear CE (ls 0.1)",
         "compiled_linear_el": "torch.compile(matmul + reference EL)"}
OURS = ("fused_el", "linear_el")


def _shape(r):
    return f"{r['n']}x{r['v']}" if r.get("d") is None else f"{r['n']}x{r['d']}x{r['v']}"


def benchmark_rows(document, features):
    """Every row of the loss benchmark's steps (logits or features), in step order."""
    rows = []
    for name, doc in (document.get("benchmarks") or {}).items():
        if name.startswith("features_") == features:
            rows += doc.get("results", [])
    return rows


def with_ratios(rows, baseline):
    """Each measured row with time and memory over the baseline's row of the same dtype and shape."""
    base = {(r["dtype"], _shape(r)): r for r in rows if r["variant"] == baseline and "time_s" in r}
    out = []
    for r in rows:
        r = dict(r)
        b = base.get((r["dtype"], _shape(r)))
        if b and "time_s" in r and b.get("time_s"):
            r["time_vs_base"] = r["time_s"] / b["time_s"]
        if b and r.get("peak_mib") is not None and b.get("peak_mib"):
            r["mem_vs_base"] = r["peak_mib"] / b["peak_mib"]
        out.append(r)
    return out


def _ratio(x, bold):
    return "-" if x is None else (f"**{x:.2f}**" if bold else f"{x:.2f}")


def table(rows, features):
    baseline = FEATURES_BASELINE if features else LOGITS_BASELINE
    rows = with_ratios(rows, baseline)
    head = "N x d x V" if features else "N x V"
    base_name = NAMES[baseline].replace("*", "")
    out = [f"| dtype | {head} | variant | time ms | peak MiB | host syncs / step | time / {base_name} | "
           f"memory / {base_name} |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "time_s" not in r:
            continue
        bold = r["variant"] in OURS
        syncs = "-" if r.get("host_syncs") is None else str(r["host_syncs"])
        peak = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        out.append(f"| {r['dtype']} | {_shape(r)} | {NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.2f} | {peak} | {syncs} | {_ratio(r.get('time_vs_base'), bold)} | "
                   f"{_ratio(r.get('mem_vs_base'), bold)} |")
    return "\n".join(out)


def not_measured(rows):
    reasons = {}
    for r in rows:
        if "skipped" in r or "error" in r:
            why = r["skipped"] if "skipped" in r else f"failed: {r['error']}"
            reasons.setdefault((r["variant"], why), []).append(f"{r['dtype']} {_shape(r)}")
    cases = {f"{r['dtype']} {_shape(r)}" for r in rows}
    parts = [f"{NAMES.get(v, v).replace('*', '')} ({why}" + ("" if set(where) == cases else f"; {', '.join(where)}")
             + ")" for (v, why), where in reasons.items()]
    return ("Not measured: " + "; ".join(parts) + ".") if parts else ""


def goals(document):
    """Issue 29's GPU goals, met or missed, from the rows: fused EL on half-precision logits at most torch CE's time
    and memory; linear_encouraging_loss at most matmul + torch CE's time; no host synchronisation in either."""
    lines = []
    logits = with_ratios(benchmark_rows(document, False), LOGITS_BASELINE)
    features = with_ratios(benchmark_rows(document, True), FEATURES_BASELINE)
    checks = (("fused EL on float16/bfloat16 logits: time at most torch CE's", logits, "fused_el", "time_vs_base"),
              ("fused EL on float16/bfloat16 logits: peak memory at most torch CE's", logits, "fused_el",
               "mem_vs_base"),
              ("`linear_encouraging_loss`: time at most matmul + torch CE's", features, "linear_el", "time_vs_base"),
              ("`linear_encouraging_loss`: peak memory at most matmul + torch CE's", features, "linear_el",
               "mem_vs_base"))
    for what, rows, variant, key in checks:
        measured = [r for r in rows if r["variant"] == variant and r.get(key) is not None
                    and r["dtype"] in ("float16", "bfloat16")]
        if not measured:
            lines.append(f"- {what}: not measured")
            continue
        missed = [r for r in measured if round(r[key], 2) > 1.0]
        lines.append(f"- {what}: " + (f"met on all {len(measured)} rows" if not missed else
                                      f"missed on {len(missed)} of {len(measured)} rows: " +
                                      ", ".join(f"{r['dtype']} {_shape(r)} {r[key]:.2f}x" for r in missed)))
    for variant, rows in (("fused_el", logits), ("linear_el", features)):
        counted = [r for r in rows if r["variant"] == variant and r.get("host_syncs") is not None]
        if counted:
            syncing = [r for r in counted if r["host_syncs"]]
            lines.append(f"- {NAMES[variant].replace('*', '')}: no host synchronisation per step: " +
                         (f"met on all {len(counted)} rows" if not syncing else "missed: " + ", ".join(
                             f"{r['dtype']} {_shape(r)} {r['host_syncs']}" for r in syncing)))
        else:
            lines.append(f"- {NAMES[variant].replace('*', '')}: no host synchronisation per step: not measured")
    return "\n".join(lines)


def _step_note(document, step):
    name = step["name"]
    if name == "machine" and document.get("machine"):
        m = document["machine"]
        return m.get("nvidia_smi") or m.get("gpu") or "no GPU"
    if name == "install" and step.get("wheels"):
        return f"{len(step['wheels'])} wheels" + (f" into {step['target']}" if step.get("target") else "") + \
            (f"; {step['reason']}" if step.get("reason") else "")
    if name == "packages" and (document.get("packages") or {}).get("imports"):
        imports = document["packages"]["imports"]
        failed = [m for m, where in imports.items() if str(where).startswith("ERROR")]
        def where(m):
            return f"{m} (an installed copy, not the checkout)" if m == "el_plugins" and "-packages" in str(
                imports[m]) else m
        return ("imported: " + ", ".join(where(m) for m in imports if m not in failed) +
                ("; failed: " + ", ".join(f"{m} ({imports[m][6:90]})" for m in failed) if failed else ""))
    if name.startswith("tests_"):
        t = (document.get("tests") or {}).get(name) or {}
        if document.get("dry_run") and t.get("collected") is not None:
            return f"{t['collected']} collected (a dry run collects only)"
        c = t.get("counts")
        if c:
            note = f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors, {c['skipped']} skipped"
            if t.get("failures"):
                note += "; failed: " + ", ".join(f["test"].split("::")[-1] for f in t["failures"][:4])
            return note
        if t.get("collected") is not None:
            return f"{t['collected']} collected (dry run)"
    if name == "timm_amp" and document.get("timm"):
        t = document["timm"]
        losses = t.get("train_losses") or []
        note = f"{len(losses)} steps" + (f", loss {losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "")
        result = t.get("result") or {}
        if result.get("validation"):
            note += f", validation top-1 {result['validation'].get('top1', 0):.1f}%"
        if t.get("criterion"):
            note += f", criterion {t['criterion']}"
        return note
    if name == "fairseq_fp16" and document.get("fairseq"):
        f = document["fairseq"]
        losses, scales = f.get("losses") or [], f.get("loss_scales") or []
        note = f"{f.get('updates', 0)} updates" + (f", loss {losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "")
        if scales:
            note += f", loss scale {scales[0]:g} -> {scales[-1]:g}"
        if f.get("criterion"):
            note += f", criterion {f['criterion']}"
        return note
    if name.startswith(("loss_", "features_")) and "measured" in step:
        return (f"{step['measured']} rows measured, {step.get('skipped_rows', 0)} skipped, "
                f"{step.get('error_rows', 0)} failed" + (" (cut short)" if step.get("partial") else ""))
    return step.get("reason", "")


def steps_table(document):
    out = ["| step | status | seconds | what it found |", "|---|---|---:|---|"]
    for step in document.get("steps", []):
        note = _step_note(document, step).replace("|", "\\|")
        out.append(f"| {step['name']} | {step['status']} | {step['seconds']:.0f} | {note} |")
    return "\n".join(out)


def machine_line(document):
    m = document.get("machine") or {}
    v = (document.get("packages") or {}).get("versions") or m.get("versions") or {}
    parts = [m.get("gpu") or "no GPU", f"torch {m.get('torch', '?')}", f"Triton {v.get('triton') or '?'}",
             f"Python {m.get('python', '?')}"]
    for package, label in (("liger-kernel", "Liger-Kernel"), ("cut-cross-entropy", "Cut Cross-Entropy"),
                           ("timm", "timm"), ("fairseq-fixed", "fairseq-fixed")):
        if v.get(package):
            parts.append(f"{label} {v[package]}")
    return ", ".join(parts)


def provenance_line(document):
    code = document.get("code") or {}
    commit = code.get("git_commit")
    text = f"el-plugins commit {commit[:12]}" if commit else "an el-plugins commit that was not recorded"
    if code.get("git_dirty"):
        text += " with uncommitted changes"
    return text


def markdown(document):
    """The GPU section of docs/performance.md: what ran, the two tables, the goals."""
    logits, features = benchmark_rows(document, False), benchmark_rows(document, True)
    parts = [f"{'Dry run on a CPU (tiny shapes), not a GPU measurement. ' if document.get('dry_run') else ''}"
             f"{machine_line(document)}; benchmarks/gpu/run.sh in one call of {document.get('wall_seconds', 0):.0f} s "
             f"(started {document.get('started_utc', '?')}), {provenance_line(document)}.",
             steps_table(document)]
    if logits:
        parts.append("On the logits (5% padding rows, eps 0.1; time: median of the rounds, CUDA events; memory: peak "
                     "beyond the inputs, max_memory_allocated; host synchronisations of one step):")
        parts.append(table(logits, False))
        note = not_measured(logits)
        if note:
            parts.append(note)
    if features:
        parts.append("From the decoder's features (the output layer's matrix product included, reduction sum):")
        parts.append(table(features, True))
        note = not_measured(features)
        if note:
            parts.append(note)
    parts.append("Goals (issue 29), from the rows above:\n\n" + goals(document))
    return "\n\n".join(parts)


def summary(document):
    """A short summary for the end of the call's output: the steps, then the goals."""
    lines = [machine_line(document), steps_table(document), goals(document)]
    return "\n\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="gpu-results.json (check.py's results file)")
    parser.add_argument("--markdown", action="store_true", help="print docs/performance.md's GPU section")
    args = parser.parse_args(argv)
    with open(args.results) as f:
        document = json.load(f)
    print(markdown(document) if args.markdown else summary(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
