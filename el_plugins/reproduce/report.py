"""results.json -> table.md (measured mean +- std beside the paper) and the PNG plots.

:func:`render_tables` is the one text the README's "Does it work?" section holds between its markers;
tests/test_reproduce.py checks that the README shows exactly what the committed results.json renders to.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional


from el_plugins.files import atomic_write, write_text
from el_plugins.reproduce.paper import VARIANT_NAMES, VARIANTS

README_BEGIN = "<!-- el-reproduce mnist: begin (generated from results/mnist/results.json; do not edit) -->"
README_END = "<!-- el-reproduce mnist: end -->"

# (results key, paper key, row label, decimals)
ROWS = [
    ("accuracy", "accuracy", "test accuracy, % (paper: Table 1, larger CNN)", 2),
    ("accuracy", "accuracy_short_training", "test accuracy, % (paper: Table 11, short training)", 2),
    ("auroc", "auroc", "AUROC, min. cond. energy, % (Tables 4, 13)", 2),
    ("fpr95", "fpr95", "FPR95, min. cond. energy, % (Tables 4, 13)", 2),
    ("auroc_free_energy", None, "AUROC, free energy, %", 2),
    ("fpr95_free_energy", None, "FPR95, free energy, %", 2),
    ("auroc_max_prob", None, "AUROC, max. probability, %", 2),
    ("fpr95_max_prob", None, "FPR95, max. probability, %", 2),
    ("ece", "ece", "ECE, 10 bins (Table 13)", 4),
    ("energy_data", "energy_data", "mean energy on the data -z_y (Table 13)", 1),
    ("energy_ood_lowest", "energy_ood_lowest", "lowest energy out of the data, min_{k!=y} -z_k (Table 13)", 2),
    ("energy_ood_lowest_paper_code", "energy_ood_lowest", "the same, as the authors' code: min(0, .) (Table 13)", 2),
    ("attack_0.1", "attack_0.1", "accuracy under attack, eps 0.1, % (Table 11: AutoAttack; here: APGD-CE + APGD-DLR)", 2),
    ("attack_0.2", "attack_0.2", "accuracy under attack, eps 0.2, % (Table 11: AutoAttack; here: APGD-CE + APGD-DLR)", 2),
    ("pgd_0.1", None, "accuracy under PGD-20, eps 0.1, %", 2),
    ("pgd_0.2", None, "accuracy under PGD-20, eps 0.2, %", 2),
    ("fgsm_0.1", None, "accuracy under FGSM, eps 0.1, %", 2),
    ("fgsm_0.2", None, "accuracy under FGSM, eps 0.2, %", 2),
]

# (claim, key, a, b, 'higher'/'lower': a's value is claimed higher/lower than b's)
CLAIMS = [
    ("EL is more accurate than CE", "accuracy", "el", "ce", "higher"),
    ("EL detects Fashion-MNIST better than CE (AUROC)", "auroc", "el", "ce", "higher"),
    ("EL detects Fashion-MNIST better than CE (FPR95)", "fpr95", "el", "ce", "lower"),
    ("label smoothing helps CE detect (AUROC)", "auroc", "ce_ls", "ce", "higher"),
    ("label smoothing helps EL detect (AUROC)", "auroc", "el_ls", "el", "higher"),
    ("EL+LS detects better than CE+LS (AUROC)", "auroc", "el_ls", "ce_ls", "higher"),
    ("EL+LS detects better than CE+LS (FPR95)", "fpr95", "el_ls", "ce_ls", "lower"),
    ("EL is calibrated at least as well as CE (ECE)", "ece", "el", "ce", "lower"),
    ("EL+LS is better calibrated than CE+LS (ECE)", "ece", "el_ls", "ce_ls", "lower"),
    ("EL lowers the energy on the data", "energy_data", "el", "ce", "lower"),
    ("EL+LS lowers the energy on the data vs CE+LS", "energy_data", "el_ls", "ce_ls", "lower"),
    ("label smoothing raises the energy on the data (CE)", "energy_data", "ce_ls", "ce", "higher"),
    ("EL lowers the lowest energy out of the data", "energy_ood_lowest", "el", "ce", "lower"),
    ("EL is more robust than CE, eps 0.1", "attack_0.1", "el", "ce", "higher"),
    ("EL is more robust than CE, eps 0.2", "attack_0.2", "el", "ce", "higher"),
]


def _fmt(value: Optional[float], decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def _cell(mean, std, decimals):
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def claim_verdict(results: dict, key: str, a: str, b: str, direction: str):
    """(difference a - b, seed spread sqrt(std_a^2 + std_b^2), verdict) from the measured means and stds."""
    va, vb = results["variants"][a], results["variants"][b]
    diff = va["mean"][key] - vb["mean"][key]
    spread = math.sqrt(va["std"][key] ** 2 + vb["std"][key] ** 2)
    sign = 1 if direction == "higher" else -1
    if sign * diff > spread:
        verdict = "yes"
    elif -sign * diff > spread:
        verdict = "no: the opposite"
    else:
        verdict = "unclear: within the seed spread"
    return diff, spread, verdict


def render_tables(results: dict) -> str:
    """The measured-vs-paper table and the claims table (Markdown)."""
    variants = [v for v in VARIANTS if v in results["variants"]]
    paper = results["paper"]["variants"]
    paper_std = results["paper"].get("std", {})
    n_seeds = len(next(iter(results["variants"].values()))["seeds"])
    head = ["metric"] + [f"{VARIANT_NAMES[v]} {col}" for v in variants for col in ("paper", "measured")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, paper_key, label, decimals in ROWS:
        cells = [label]
        for v in variants:
            p = paper.get(v, {}).get(paper_key) if paper_key else None
            ps = paper_std.get(v, {}).get(paper_key) if paper_key == "accuracy" else None
            cells.append("–" if p is None else (_cell(p, ps, decimals) if ps is not None else _fmt(p, decimals)))
            m = results["variants"][v]
            cells.append(_cell(m["mean"][key], m["std"][key], decimals))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Measured: mean ± sample std over {n_seeds} seeds. Paper: as printed (one model per cell except Table 1).")
    lines.append("")
    lines.append("| the paper's claim | paper | measured difference (± seed spread) | holds here? |")
    lines.append("|---|---|---|---|")
    for claim, key, a, b, direction in CLAIMS:
        if a not in results["variants"] or b not in results["variants"]:
            continue
        decimals = next(d for k, _, _, d in ROWS if k == key)
        pa, pb = paper.get(a, {}).get(key), paper.get(b, {}).get(key)
        paper_text = f"{_fmt(pa, decimals)} vs {_fmt(pb, decimals)}" if pa is not None and pb is not None else "–"
        diff, spread, verdict = claim_verdict(results, key, a, b, direction)
        lines.append(f"| {claim} | {paper_text} | {diff:+.{decimals}f} (± {spread:.{decimals}f}) | {verdict} |")
    return "\n".join(lines) + "\n"


def render_table_md(results: dict) -> str:
    s = results["settings"]
    data = results["data"]
    minutes = s["wall_seconds"] / 60
    intro = [
        "# el-reproduce mnist: the paper's MNIST tables, measured",
        "",
        f"Train: MNIST train ({data['mnist_train']['images']:,} images); in-distribution test: MNIST test "
        f"({data['mnist_test']['images']:,}); OOD: Fashion-MNIST test ({data['fashion_mnist_test']['images']:,}); "
        f"attacks on the first {s['attacks']['images']:,} MNIST test images.",
        f"Model: {s['model']}. {s['optimizer']}. EL: log_end {s['log_end']} (the paper's for MNIST); "
        f"LS: {s['smoothing']}. Seeds: {', '.join(map(str, s['seeds']))}.",
        f"Wall time: {s['wall_seconds']:.0f} s ({minutes:.1f} min) on {s['device']} with {s['threads']} torch thread(s)"
        + (f"; {s['note']}" if s.get("note") else "") + ("; --quick (CI smoke run: small subsets, not a result)"
                                                         if s.get("quick") else "") + ".",
        "",
        "",
    ]
    return "\n".join(intro) + render_tables(results)


def write_png(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_plots(out: str, arrays: Dict[str, dict], results: dict) -> List[str]:
    """Energy histograms in vs out per variant, ROC curves, margins and reliability (first seed of each variant)."""
    from el_plugins.analysis import metrics, plots

    written = []
    names = {v: VARIANT_NAMES[v] for v in arrays}
    seed = {v: results["variants"][v]["seeds"][0]["seed"] for v in arrays}
    for v, a in arrays.items():
        path = os.path.join(out, f"energy_{v}.png")
        write_png(path, plots.histogram_png(
            {names[v]: a["id"]["min_energy"]}, f"{names[v]} (seed {seed[v]}): min. conditional energy, MNIST vs Fashion-MNIST",
            "min. conditional energy  $-\\max_k z_k$", ood={names[v]: a["ood"]["min_energy"]}, ood_label="Fashion-MNIST"))
        written.append(path)
    id_scores = {names[v]: {k: a["id"][k] for k in metrics.OOD_SCORES} for v, a in arrays.items()}
    ood_scores = {names[v]: {k: a["ood"][k] for k in metrics.OOD_SCORES} for v, a in arrays.items()}
    aurocs = {names[v]: {k: metrics.auroc(a["id"][k], a["ood"][k], metrics.ID_IS[k]) for k in metrics.OOD_SCORES}
              for v, a in arrays.items()}
    path = os.path.join(out, "roc.png")
    write_png(path, plots.roc_png(id_scores, ood_scores, aurocs, "MNIST (in) vs Fashion-MNIST (OOD), first seed"))
    written.append(path)
    path = os.path.join(out, "margins.png")
    write_png(path, plots.histogram_png({names[v]: a["id"]["margin"] for v, a in arrays.items()},
                                        "MNIST test: logit margins, first seed", "margin  $z_y - \\max_{k \\neq y} z_k$"))
    written.append(path)
    tables, eces = {}, {}
    for v, a in arrays.items():
        eces[names[v]], tables[names[v]] = metrics.expected_calibration_error(a["id"]["confidence"], a["id"]["correct"], 10)
    path = os.path.join(out, "reliability.png")
    write_png(path, plots.reliability_png(tables, eces, "MNIST test: reliability, first seed"))
    written.append(path)
    return written


def write_outputs(out: str, results: dict, arrays: Dict[str, dict]) -> List[str]:
    from el_plugins.files import write_json

    os.makedirs(out, exist_ok=True)
    written = write_plots(out, arrays, results)
    write_text(os.path.join(out, "table.md"), render_table_md(results))
    write_json(os.path.join(out, "results.json"), results)
    return [os.path.join(out, "results.json"), os.path.join(out, "table.md")] + written


def readme_block(readme_text: str) -> Optional[str]:
    """The text between the README markers (None when they are missing)."""
    if README_BEGIN not in readme_text or README_END not in readme_text:
        return None
    return readme_text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip("\n") + "\n"


__all__ = ["CLAIMS", "README_BEGIN", "README_END", "ROWS", "claim_verdict", "readme_block", "render_table_md",
           "render_tables", "write_outputs", "write_plots"]
