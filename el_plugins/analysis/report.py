"""el-analyze's report.json, plots and side-by-side table (written all-or-nothing), and what its two
evaluation back ends share: their errors, the device check and the batch loop's progress bar."""
from __future__ import annotations

import itertools
import json
import logging
import sys
import warnings
from typing import Dict, Iterable, List, Optional, Tuple

from el_plugins.analysis.streaming import NonFiniteLogitsWarning, StreamingAnalysis
from el_plugins.commands import USAGE_EXIT, CommandError, UsageError
from el_plugins.files import output_set

__all__ = ['AnalysisError', 'AnalysisUsageError', 'batches', 'build_report', 'check_finite', 'checked_device',
           'CONVENTIONS', 'format_markdown', 'format_table', 'PLOT_FILES', 'render_plots', 'report_files',
           'table_rows', 'write_outputs']

CONVENTIONS = {
    "margin": "z_y - max_{k != y} z_k (logits z, target y); > 0 iff correctly classified",
    "data_energy": "conditional energy on the data, -z_y",
    "min_energy": "minimum conditional energy over classes, -max_k z_k (the paper's OOD score)",
    "free_energy": "-logsumexp_k z_k",
    "max_prob": "max_k softmax(z)_k (= confidence); as an OOD score ranked by log max_k p_k in float64, so that "
                "rows whose max_k p_k rounds to 1 in float32 do not tie",
    "well_classified_fraction": "fraction of rows with p_y > log_end",
    "ece": "expected calibration error over equal-width confidence bins (lo, hi]; fractions, not %",
    "ood": "in-distribution = positive class; for min_energy and free_energy lower means in-distribution, "
           "for max_prob higher; auroc and fpr95 are fractions (fpr95 = FPR at the highest threshold with TPR >= 95%)",
}
logger = logging.getLogger(__name__)
PLOT_FILES = ("margins.png", "energy.png", "target_prob.png", "reliability.png", "ood_energy.png", "roc.png")


class AnalysisError(CommandError):
    """Input that cannot be analyzed (a checkpoint that does not load or fit the model, a folder without
    readable images, ...): el-analyze reports it as ``el-analyze MODE: error: <message>``, exit 1."""


class AnalysisUsageError(AnalysisError, UsageError):
    """A bad option value found after parsing (no such --data folder or --split, not a timm --model, ...):
    ``el-analyze MODE: error: <message>``, exit 2, as argparse's own usage errors."""

    exit_code = USAGE_EXIT


def checked_device(name):
    """``el_plugins.devices.resolve_device(name)``, its ValueError as an AnalysisUsageError (for ``run(args)``
    called with a ``--device`` that did not come through the parser)."""
    from el_plugins.devices import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise AnalysisUsageError(str(exc)) from None


def batches(loader: Iterable, *, desc: Optional[str] = None, progress: bool = True,
            max_batches: Optional[int] = None) -> Iterable:
    """The first ``max_batches`` items of ``loader`` (all of them if None), behind a tqdm bar on stderr that
    is left out when stderr is not a terminal, and always with ``progress=False``."""
    from tqdm import tqdm

    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be None or an integer >= 1, got {max_batches!r}")
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        loader = itertools.islice(loader, max_batches)
    return tqdm(loader, desc=desc, total=total, file=sys.stderr, disable=None if progress else True, unit="batch",
                leave=False)


def check_finite(name: str, analysis: StreamingAnalysis) -> None:
    """Warn about the rows of run ``name`` with NaN or infinite logits (left out of every metric, counted in
    report.json and the table); refuse (:class:`AnalysisError`) when no row of a data set is left."""
    problem = analysis.non_finite_problem()
    if problem is None:
        return
    if (analysis.non_finite_rows and not analysis.rows) or (analysis.ood_non_finite_rows and not analysis.ood_rows):
        raise AnalysisError(f"{name}: {problem}: there is nothing to analyze")
    logger.warning("warning: %s: %s; they are left out of every metric (report.json: non_finite_rows)", name, problem)


# --------------------------------------------------------------------------- report.json
def _summary(analysis: StreamingAnalysis) -> dict:
    """``analysis.summary()`` without its warning about non-finite rows (el-analyze says it once per run)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonFiniteLogitsWarning)
        return analysis.summary()


def build_report(meta: dict, runs: Dict[str, Tuple[str, StreamingAnalysis]]) -> dict:
    return {
        "tool": "el-analyze",
        **meta,
        "conventions": CONVENTIONS,
        "runs": {name: {"checkpoint": ckpt, **_summary(analysis)} for name, (ckpt, analysis) in runs.items()},
    }


# --------------------------------------------------------------------------- table
def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x):
    return "-" if x is None else f"{x:.3f}"


def table_rows(report: dict) -> List[Tuple[str, List[str]]]:
    runs = list(report["runs"].values())
    unit = report.get("row_unit", "rows")
    log_end = runs[0]["log_end"] if runs else 0.75

    def stat(field, key):
        return [_num((r.get(field) or {}).get(key)) for r in runs]

    skipped = report.get("skipped_images") or {}
    rows = [(unit, [str(r["rows"]) for r in runs])]
    if any(r.get("non_finite_rows") for r in runs):
        rows.append((f"{unit} with NaN/inf logits, left out", [str(r.get("non_finite_rows", 0)) for r in runs]))
    if skipped.get("data"):
        rows.append((f"unreadable {unit} skipped", [str(skipped["data"])] * len(runs)))
    rows += [
        ("accuracy %", [_pct(r["accuracy"]) for r in runs]),
        (f"well-classified % (p_y > {log_end:g})", [_pct(r["well_classified_fraction"]) for r in runs]),
        ("NLL (nats)", [_num(r["nll"]) for r in runs]),
        (f"ECE % ({runs[0]['n_bins'] if runs else 15} bins)", [_pct(r["ece"]) for r in runs]),
        ("margin mean", stat("margin", "mean")),
        ("margin median", stat("margin", "median")),
        ("margin 5% / 95%", [f"{_num((r['margin'] or {}).get('q05'))} / {_num((r['margin'] or {}).get('q95'))}"
                             for r in runs]),
        ("p_y median", stat("target_prob", "median")),
        ("energy on data -z_y mean", stat("data_energy", "mean")),
        ("min energy -max z mean", stat("min_energy", "mean")),
        ("free energy mean", stat("free_energy", "mean")),
    ]
    if any(r.get("ood") for r in runs):
        tpr_pct = round(100 * next(r["ood"]["tpr"] for r in runs if r.get("ood")))
        rows.append((f"OOD {unit}", [str(r["ood"]["rows"]) if r.get("ood") else "-" for r in runs]))
        if any((r.get("ood") or {}).get("non_finite_rows") for r in runs):
            rows.append((f"OOD {unit} with NaN/inf logits, left out",
                         [str(r["ood"].get("non_finite_rows", 0)) if r.get("ood") else "-" for r in runs]))
        if skipped.get("ood_data"):
            rows.append((f"OOD unreadable {unit} skipped", [str(skipped["ood_data"])] * len(runs)))
        rows.append(("OOD min energy mean", [_num(r["ood"]["min_energy"]["mean"]) if r.get("ood") else "-" for r in runs]))
        for score, label in (("min_energy", "min energy"), ("free_energy", "free energy"), ("max_prob", "max prob")):
            rows.append((f"OOD AUROC % ({label})",
                         [_pct(r["ood"]["detection"][score]["auroc"]) if r.get("ood") else "-" for r in runs]))
            rows.append((f"OOD FPR{tpr_pct} % ({label})",
                         [_pct(r["ood"]["detection"][score].get(f"fpr{tpr_pct}")) if r.get("ood") else "-"
                          for r in runs]))
    return rows


def format_table(report: dict) -> str:
    """Plain-text table, one column per run."""
    names = list(report["runs"])
    rows = table_rows(report)
    first = max(len(label) for label, _ in rows)
    widths = [max(len(n), *(len(vals[i]) for _, vals in rows)) for i, n in enumerate(names)]
    lines = [" " * first + "".join(f"  {n:>{w}}" for n, w in zip(names, widths))]
    lines += [f"{label:<{first}}" + "".join(f"  {v:>{w}}" for v, w in zip(vals, widths)) for label, vals in rows]
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    names = list(report["runs"])
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(vals) + " |" for label, vals in table_rows(report)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots
def render_plots(runs: Dict[str, Tuple[str, StreamingAnalysis]], what: str, ood_label: str = "OOD") -> Dict[str, bytes]:
    """{file name: PNG bytes}; ``what`` names the data in the titles (e.g. 'digits/val')."""
    from el_plugins.analysis import plots

    arrays = {name: analysis.arrays() for name, (_, analysis) in runs.items()}
    summaries = {name: _summary(analysis) for name, (_, analysis) in runs.items()}
    ind = {name: a["id"] for name, a in arrays.items()}
    log_end = next(iter(runs.values()))[1].log_end
    files = {
        "margins.png": plots.histogram_png(
            {n: a["margin"] for n, a in ind.items()}, f"Margins on {what}",
            "margin  $z_y - \\max_{k \\neq y} z_k$", vline=0.0, vline_label="margin 0"),
        "energy.png": plots.histogram_png(
            {n: a["data_energy"] for n, a in ind.items()}, f"Energy on the data, {what}",
            "conditional energy on the data  $-z_y$"),
        "target_prob.png": plots.histogram_png(
            {n: a["target_prob"] for n, a in ind.items()}, f"Probability of the target, {what}",
            "$p_y$", bins=50, bounds=(0.0, 1.0), vline=log_end, vline_label=f"log_end {log_end:g}"),
        "reliability.png": plots.reliability_png(
            {n: s["reliability"] for n, s in summaries.items()}, {n: s["ece"] for n, s in summaries.items()},
            f"Reliability diagram, {what}"),
    }
    if any(a["ood"]["min_energy"].size for a in arrays.values()):
        files["ood_energy.png"] = plots.histogram_png(
            {n: a["min_energy"] for n, a in ind.items()}, f"Min. conditional energy: {what} vs {ood_label}",
            "$-\\max_k z_k$  (lower = more in-distribution)",
            ood={n: a["ood"]["min_energy"] for n, a in arrays.items()}, ood_label=ood_label)
        files["roc.png"] = plots.roc_png(
            ind, {n: a["ood"] for n, a in arrays.items()},
            {n: {k: (v or {}).get("auroc") for k, v in ((s.get("ood") or {}).get("detection") or {}).items()}
             for n, s in summaries.items()},
            f"OOD detection: in-distribution {what} (positive) vs {ood_label}", tpr=next(iter(runs.values()))[1].tpr)
    return files


# --------------------------------------------------------------------------- writing
def write_outputs(out_dir: str, files: Dict[str, bytes], remove_stale: Optional[List[str]] = None) -> None:
    """Write every file into ``out_dir`` as one set (:func:`el_plugins.files.output_set`): the new report, table
    and plots replace the previous ones together, and the names in ``remove_stale`` that this set lacks (a
    previous run's OOD plots) are removed with them; an interrupted write leaves the previous set."""
    with output_set(out_dir, owns=remove_stale or ()) as staged:
        for name, data in files.items():
            with open(staged.path(name), "wb") as f:
                f.write(data)


def report_files(report: dict, plots: Dict[str, bytes]) -> Dict[str, bytes]:
    report = dict(report, plots=sorted(plots))
    return {
        **plots,
        "table.md": format_markdown(report).encode(),
        "report.json": (json.dumps(report, indent=2, allow_nan=False) + "\n").encode(),
    }
