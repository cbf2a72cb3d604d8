"""fairseq-train throughput (words/s) of EL vs label-smoothed CE on the same small model and data.

    .venv/bin/python benchmarks/fairseq_throughput.py [--updates 150] [--repeats 3] [--device cpu|cuda]
                                                      [--out benchmarks/fairseq-throughput-cpu.json]

Prepares the demo's toy corpus once (sentencepiece + fairseq-preprocess), then runs the real
fairseq-train for each criterion (LS-CE, EL fused, EL reference) with the toy recipe, alternating
them ``--repeats`` times, and reads fairseq's own train ``wps`` (target words per second over the
epoch-level log lines, warm-up epoch excluded). Prints medians and the ratio to LS-CE; writes JSON. ``--markdown FILE.json`` prints the README's
table of a results file without running anything.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile

from el_plugins.files import write_json
from el_plugins.provenance import describe, provenance
from el_plugins.demo.toy_corpus import make_splits
from el_plugins.translation import recipe
from el_plugins.translation.prepare import prepare_parallel_corpus

VARIANTS = {
    "LS-CE": ("ce", []),
    "EL (fused)": ("el", ["--el-implementation", "fused"]),
    "EL (reference)": ("el", ["--el-implementation", "reference"]),
}
README_NAMES = {"LS-CE": "`label_smoothed_cross_entropy`", "EL (fused)": "EL, fused (default)",
                "EL (reference)": "EL, `--el-implementation reference`"}


def markdown_table(result: dict) -> str:
    """The README's table of a results file: median words/s, the range over repeats, the ratio to LS-CE."""
    lines = ["| criterion | words/s, median | min-max over repeats | ratio to LS-CE |", "|---|---:|---:|---:|"]
    for name, row in result["results"].items():
        lines.append(f"| {README_NAMES.get(name, name)} | {row['wps_median']:.0f} | "
                     f"{min(row['wps_all']):.0f}-{max(row['wps_all']):.0f} | {row['ratio_to_ls_ce']:.2f} |")
    lines += ["", f"Produced by {describe(result.get('produced_by'))}."]
    return "\n".join(lines) + "\n"


def words_per_second(log: str) -> float:
    """Median of fairseq's per-epoch train wps, the first epoch (warm-up) left out when there are more."""
    values = [float(v) for v in re.findall(r"\| train \|.*?\| wps ([\d.]+)", log)]
    if not values:
        raise RuntimeError("no '| train | ... wps' line in the fairseq-train log:\n" + log[-2000:])
    return statistics.median(values[1:] or values)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default=None, help="JSON output (default: benchmarks/fairseq-throughput-<device>.json)")
    ap.add_argument("--markdown", metavar="RESULTS_JSON", help="print the README table of a results file and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        with open(args.markdown, encoding="utf-8") as f:
            print(markdown_table(json.load(f)), end="")
        return
    if args.updates < 20 or args.repeats < 1:
        ap.error("--updates must be >= 20 and --repeats >= 1")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), f"fairseq-throughput-{args.device}.json")
    with tempfile.TemporaryDirectory() as work:
        data_bin = prepare_parallel_corpus(make_splits(), os.path.join(work, "data"), "src", "en", vocab_size=600,
                                           lowercase=False, joined_dictionary=False, workers=2)
        wps = {name: [] for name in VARIANTS}
        for r in range(args.repeats):
            for name, (loss, extra) in VARIANTS.items():
                cmd = recipe.train_command("toy", data_bin, os.path.join(work, f"ckpt{r}"), loss=loss,
                                           cpu=args.device == "cpu", max_update=args.updates,
                                           extra=[*extra, "--no-save", "--disable-validation"])
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    sys.exit(f"fairseq-train failed for {name}:\n{proc.stdout[-3000:]}")
                wps[name].append(words_per_second(proc.stdout))
                print(f"repeat {r + 1}/{args.repeats} {name:>15}: {wps[name][-1]:9.1f} words/s", flush=True)
    base = statistics.median(wps["LS-CE"])
    rows = {name: {"wps_median": statistics.median(v), "wps_all": v, "ratio_to_ls_ce": statistics.median(v) / base}
            for name, v in wps.items()}
    import torch

    result = {"benchmark": "fairseq-train words/s, toy recipe (2+2-layer transformer, d=128), toy corpus",
              "updates": args.updates, "repeats": args.repeats, "device": args.device,
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
              "results": rows, "produced_by": provenance()}
    write_json(out, result)
    print(f"\n{'criterion':>15} {'words/s (median)':>17} {'ratio to LS-CE':>15}")
    for name, row in rows.items():
        print(f"{name:>15} {row['wps_median']:17.1f} {row['ratio_to_ls_ce']:15.2f}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
