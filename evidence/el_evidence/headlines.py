"""The README's one-line results: each committed results file -> the line the README shows for it.

One function per results file (:data:`HEADLINES` maps a key to its file, function, label and docs page); each
takes the file's parsed JSON and returns the two or three numbers a user wants and, for a reproduction, how
many of the paper's claims hold; :func:`line` makes that the README's list item, linked to the docs page with
the whole table. The README holds each line between the markers of :func:`markers`;
tests/test_readme.py checks that it shows exactly what the committed files give, and

    python -m el_evidence.headlines --write README.md

rewrites the blocks whose results files are present (all-or-nothing, el_plugins.files). Torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from el_plugins import commands
from el_plugins.files import write_text
from el_evidence.reproduce import report, translation_report

PROG = "python -m el_evidence.headlines"


def ratio_range(values: List[float], decimals: int = 2) -> str:
    """'0.47-0.85x' (or '0.50x' when the rounded ends agree): the range of ratios in tables and headlines."""
    lo, hi = f"{min(values):.{decimals}f}", f"{max(values):.{decimals}f}"
    return f"{lo}x" if lo == hi else f"{lo}-{hi}x"


def _claims(markdown: str) -> str:
    """'k of n of the paper's claims hold here (...)' from the verdict column of a rendered claims table."""
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("| the paper's claim |")) + 2
    verdicts = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        verdicts.append(line.rstrip(" |").rsplit("| ", 1)[1])
    held = sum(v == "yes" for v in verdicts)
    opposite = sum(v.startswith("no") for v in verdicts)
    unclear = len(verdicts) - held - opposite
    return f"{held} of {len(verdicts)} of the paper's claims hold here ({opposite} the opposite, {unclear} unclear)"


def _run_time(settings: dict) -> str:
    """"; the run took M min (where)" from a results file's settings, "" when it did not record its time."""
    seconds = settings.get("wall_seconds")
    if seconds is None:
        return ""
    where = settings.get("device", "an unrecorded device")
    if where == "cpu" and settings.get("cpu_count"):
        where = f"{settings['cpu_count']} CPU cores"
    return f"; the run took {seconds / 60:.0f} min ({where})"


def mnist(results: dict) -> str:
    """results/mnist/results.json (el-reproduce mnist): accuracy, OOD AUROC, robust accuracy; the claims."""
    el, ce = results["variants"]["el"]["mean"], results["variants"]["ce"]["mean"]
    n_seeds = len(results["variants"]["ce"]["seeds"])
    parts = [f"test accuracy {el['accuracy']:.2f} vs {ce['accuracy']:.2f} %",
             f"Fashion-MNIST OOD AUROC {el['auroc']:.2f} vs {ce['auroc']:.2f} %"]
    if "attack_0.1" in el and "attack_0.1" in ce:
        parts.append(f"APGD accuracy at eps 0.1 {el['attack_0.1']:.1f} vs {ce['attack_0.1']:.1f} %")
    return (f"EL vs CE ({n_seeds} seeds): {', '.join(parts)}; {_claims(report.render_tables(results))}"
            f"{_run_time(results.get('settings', {}))}")


def table11(results: dict) -> str:
    """results/mnist-table11/results.json (el-reproduce mnist-table11): clean and AutoAttack accuracy; the claims."""
    el, ce = results["variants"]["el"], results["variants"]["ce"]
    parts = [f"clean accuracy {el['mean']['accuracy']:.2f} vs {ce['mean']['accuracy']:.2f} %"]
    for eps in results["settings"]["epsilons"]:
        key = f"autoattack_{eps}"
        parts.append(f"AutoAttack eps {eps} {el['robust'][key]:.1f} vs {ce['robust'][key]:.1f} %")
    return (f"EL vs CE (the authors' network and attack): {', '.join(parts)}; "
            f"{_claims(report.render_table11(results))}{_run_time(results['settings'])}")


def translation(results: dict) -> str:
    """results/translation/results.json (el-reproduce translation): test BLEU per variant, target probability;
    the claims."""
    v = results["variants"]
    el, ce = v["el"]["mean"], v["ce"]["mean"]
    bleu = f"test BLEU {el['bleu']:.2f} vs {ce['bleu']:.2f}"
    if "el_le1" in v:
        bleu += f" (log_end 1: {v['el_le1']['mean']['bleu']:.2f})"
    return (f"EL (log_end 0.5) vs LS-CE, Spanish -> English Bible: {bleu}, valid target probability "
            f"{el['target_prob']:.3f} vs {ce['target_prob']:.3f}; {_claims(translation_report.render_tables(results))}"
            f"{_run_time(results.get('settings', {}))}")


def demo(results: dict) -> str:
    """results/demo/results.json (el-demo): toy translation BLEU and target probability, digits accuracy and
    margin."""
    parts = []
    if "translation" in results:
        el, ce = results["translation"]["runs"]["EL"], results["translation"]["runs"]["LS-CE"]
        parts.append(f"toy translation BLEU {el['tokenized_bleu']:.2f} vs {ce['tokenized_bleu']:.2f} (LS-CE), "
                     f"valid target probability {el['valid_target_prob_mean']:.3f} vs {ce['valid_target_prob_mean']:.3f}")
    if "vision" in results:
        el, ce = results["vision"]["runs"]["EL"], results["vision"]["runs"]["CE"]
        parts.append(f"digits accuracy {100 * el['test_accuracy']:.2f} vs {100 * ce['test_accuracy']:.2f} %, "
                     f"mean logit margin {el['margin_mean']:.2f} vs {ce['margin_mean']:.2f} (CE)")
    if not parts:
        raise ValueError("it has neither a 'translation' nor a 'vision' part")
    return f"EL vs the baseline, one seed: {'; '.join(parts)}"


def _benchmark_rows(results: dict, variant: str, keys: Tuple[str, ...]) -> List[dict]:
    rows = [r for r in results["results"] if r["variant"] == variant and all(k in r for k in keys)]
    if not rows:
        raise ValueError(f"it has no measured {variant!r} row")
    return rows


def _where(rows: List[dict]) -> str:
    devices = sorted({r["device"] for r in rows})
    dtypes = sorted({r["dtype"] for r in rows}, reverse=True)
    return f"{'/'.join(d.upper() for d in devices)}, {len(rows)} shapes, {' and '.join(dtypes)}"


def loss_benchmark(results: dict) -> str:
    """benchmarks/results-cpu.json (loss_benchmark.py): fused and autograd EL's time and memory over LS-CE's."""
    fused = _benchmark_rows(results, "fused_el", ("time_ratio", "mem_ratio"))
    autograd = _benchmark_rows(results, "autograd_el", ("time_ratio", "mem_ratio"))
    return (f"fused EL on the logits vs fairseq's LS-CE ({_where(fused)}): time "
            f"{ratio_range([r['time_ratio'] for r in fused])}, peak memory "
            f"{ratio_range([r['mem_ratio'] for r in fused])} (autograd EL: "
            f"{ratio_range([r['time_ratio'] for r in autograd])}, {ratio_range([r['mem_ratio'] for r in autograd])})")


def features_benchmark(results: dict) -> str:
    """benchmarks/results-features-cpu.json (loss_benchmark.py --from-features): linear_encouraging_loss's time
    and memory over the matrix product + fairseq's LS-CE."""
    rows = _benchmark_rows(results, "linear_el", ("time_ratio", "mem_ratio"))
    return (f"`linear_encouraging_loss` from the decoder's features vs the matrix product + fairseq's LS-CE "
            f"({_where(rows)}): time {ratio_range([r['time_ratio'] for r in rows])}, peak memory "
            f"{ratio_range([r['mem_ratio'] for r in rows])}")


def fairseq_throughput(results: dict) -> str:
    """benchmarks/fairseq-throughput-cpu.json (fairseq_throughput.py): words/s of EL over LS-CE's."""
    runs = results["results"]
    ls_ce = runs["LS-CE"]["wps_all"]
    return (f"words/s on a toy Transformer, {results['device'].upper()} (median of {results['repeats']} repeats): "
            f"EL fused {runs['EL (fused)']['ratio_to_ls_ce']:.2f}x and `--el-implementation reference` "
            f"{runs['EL (reference)']['ratio_to_ls_ce']:.2f}x LS-CE's {runs['LS-CE']['wps_median']:.0f} "
            f"(LS-CE's own repeats: {min(ls_ce):.0f}-{max(ls_ce):.0f})")


class Headline(NamedTuple):
    path: str  # the results file, relative to the repository root
    function: Callable[[dict], str]  # its parsed JSON -> the numbers
    label: str  # what was measured, in bold before the numbers
    page: str  # the docs page (and anchor) with the whole table


HEADLINES: Dict[str, Headline] = {
    "mnist": Headline("results/mnist/results.json", mnist, "MNIST, el-plugins' own setup",
                      "docs/reproductions.md#mnist"),
    "mnist-table11": Headline("results/mnist-table11/results.json", table11, "MNIST Table 11, the authors' way",
                              "docs/reproductions.md#mnist-table-11-the-authors-way-el-reproduce-mnist-table11"),
    "translation": Headline("results/translation/results.json", translation, "Translation",
                            "docs/reproductions.md#translation-on-the-bible"),
    "demo": Headline("results/demo/results.json", demo, "The demo", "docs/demo.md"),
    "loss-benchmark": Headline("benchmarks/results-cpu.json", loss_benchmark, "Loss benchmark",
                               "docs/performance.md#loss-benchmark"),
    "features-benchmark": Headline("benchmarks/results-features-cpu.json", features_benchmark,
                                   "Loss benchmark from the features",
                                   "docs/performance.md#loss-benchmark-from-the-decoders-features"),
    "fairseq-throughput": Headline("benchmarks/fairseq-throughput-cpu.json", fairseq_throughput,
                                   "fairseq-train throughput", "docs/performance.md#fairseq-train-throughput"),
}


def markers(key: str) -> Tuple[str, str]:
    """The README markers around ``key``'s line."""
    return (f"<!-- headline {key}: begin (generated from {HEADLINES[key].path}; do not edit) -->",
            f"<!-- headline {key}: end -->")


def line(key: str, results: dict) -> str:
    """The README's line for ``key``: a list item, the numbers of ``results`` and a link to the docs page."""
    h = HEADLINES[key]
    return f"- **{h.label}**: {h.function(results)} ([details]({h.page}))"


def render(key: str, root: str) -> Optional[str]:
    """``key``'s line from its results file under ``root``; None when the file is not there. A file that is not
    what its function reads is a ValueError naming it."""
    path = os.path.join(root, HEADLINES[key].path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        return line(key, results)
    except (OSError, ValueError, KeyError, TypeError, IndexError, StopIteration) as exc:
        raise ValueError(f"{HEADLINES[key].path}: not the results file the '{key}' line is rendered from "
                         f"({type(exc).__name__}: {exc})") from None


def block(text: str, key: str) -> Optional[str]:
    """The line between ``key``'s markers in ``text`` ('' when empty; None when the markers are missing)."""
    found = report.readme_block(text, *markers(key))
    return None if found is None else found.strip("\n")


def with_lines(text: str, lines: Dict[str, str]) -> str:
    """``text`` with each ``lines[key]`` between ``key``'s markers (ValueError naming the missing markers)."""
    missing = [key for key in lines if block(text, key) is None]
    if missing:
        raise ValueError("no markers for " + ", ".join(f"{markers(k)[0]} ... {markers(k)[1]}" for k in missing))
    for key, rendered in lines.items():
        text = report.with_readme_block(text, rendered + "\n", *markers(key))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", metavar="README", help="rewrite the blocks of this file from the results files "
                    "present (default: print the lines)")
    ap.add_argument("--root", help="the repository root the results paths are relative to (default: the folder of "
                    "--write, else the current folder)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.write is not None and not os.path.isfile(args.write):
        ap.error(f"--write {args.write}: no such file")
    root = args.root if args.root is not None else (os.path.dirname(os.path.abspath(args.write)) if args.write else ".")
    if not os.path.isdir(root):
        ap.error(f"--root {root}: no such folder")

    def run() -> None:
        lines, missing = {}, []
        for key in HEADLINES:
            rendered = render(key, root)
            if rendered is None:
                missing.append(HEADLINES[key].path)
            else:
                lines[key] = rendered
        if args.write is None:
            print("\n".join(lines.values()))
        else:
            with open(args.write, encoding="utf-8") as f:
                text = f.read()
            try:
                new = with_lines(text, lines)
            except ValueError as exc:
                raise commands.CommandError(f"{args.write}: {exc}") from None
            write_text(args.write, new)
            print(f"{args.write}: {len(lines)} line(s) written: {', '.join(lines)}")
        if missing:
            sys.stderr.write(f"{PROG}: not committed yet, their lines left as they are: {', '.join(missing)}\n")

    return commands.run(PROG, run, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
