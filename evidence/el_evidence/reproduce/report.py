"""results.json -> table.md (measured mean +- std beside the paper) and the PNG plots.

:func:`render_tables` (el-reproduce mnist) and :func:`render_table11` (el-reproduce mnist-table11) are the
texts docs/reproductions.md holds between their markers; tests/test_reproduce.py checks that the page shows
exactly what the committed results.json files render to (the README's one-line summaries of them are
el_evidence.headlines').
"""
from __future__ import annotations

import math
import os
from typing import Callable, Dict, List, Optional


from el_plugins.files import atomic_write, write_text
from el_plugins.provenance import describe
from el_evidence.reproduce.paper import VARIANT_NAMES, VARIANTS

README_BEGIN = "<!-- el-reproduce mnist: begin (generated from results/mnist/results.json; do not edit) -->"
README_END = "<!-- el-reproduce mnist: end -->"
SETUP_LABEL = "el-plugins' own CPU setup"  # of a results.json written before --setup existed
TABLE11_BEGIN = "<!-- el-reproduce mnist-table11: begin (generated from results/mnist-table11/results.json; do not edit) -->"
TABLE11_END = "<!-- el-reproduce mnist-table11: end -->"

# (results key, paper key, row label, decimals); a row whose key the run did not measure is left out, and a
# *_paper_code row (the authors' OOD metrics) is shown only where it differs from the row above it
ROWS = [
    ("accuracy_best_epoch", "accuracy", "test accuracy, best test epoch, % (Table 1, as the authors report it)", 2),
    ("accuracy", "accuracy", "test accuracy, % (paper: Table 1, larger CNN)", 2),
    ("accuracy", "accuracy_short_training", "test accuracy, % (paper: Table 11, short training)", 2),
    ("auroc", "auroc", "AUROC, min. cond. energy, % (Tables 4, 13)", 2),
    ("auroc_paper_code", "auroc", "the same, the authors' metrics.py (ties in random order)", 2),
    ("fpr95", "fpr95", "FPR95, min. cond. energy, % (Tables 4, 13)", 2),
    ("fpr95_paper_code", "fpr95", "the same, the authors' metrics.py (ties in random order)", 2),
    ("auroc_free_energy", None, "AUROC, free energy, %", 2),
    ("auroc_free_energy_paper_code", None, "the same, the authors' metrics.py", 2),
    ("fpr95_free_energy", None, "FPR95, free energy, %", 2),
    ("fpr95_free_energy_paper_code", None, "the same, the authors' metrics.py", 2),
    ("auroc_max_prob", None, "AUROC, max. probability, %", 2),
    ("auroc_max_prob_paper_code", None, "the same, the authors' metrics.py (float32 max. probability)", 2),
    ("fpr95_max_prob", None, "FPR95, max. probability, %", 2),
    ("fpr95_max_prob_paper_code", None, "the same, the authors' metrics.py (float32 max. probability)", 2),
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
    """(difference a - b, seed spread sqrt(std_a^2 + std_b^2), verdict) from the measured means and stds; the
    spread is None, and the verdict unclear, when a variant has one seed (its std is None)."""
    va, vb = results["variants"][a], results["variants"][b]
    diff = va["mean"][key] - vb["mean"][key]
    if va["std"].get(key) is None or vb["std"].get(key) is None:
        return diff, None, "unclear: one seed, no spread"
    spread = math.sqrt(va["std"][key] ** 2 + vb["std"][key] ** 2)
    return diff, spread, verdict(diff, spread, direction).replace("the spread", "the seed spread")


def _rows(results: dict, variants: List[str]) -> List[tuple]:
    """The ROWS this run measured. With the best test epoch (the paper setup) Table 1 is compared with it and the
    plain accuracy row is the last epoch's, the model every other row measures."""
    measured = set.intersection(*(set(results["variants"][v]["mean"]) for v in variants))
    rows = []
    for key, paper_key, label, decimals in ROWS:
        if key not in measured:
            continue
        if key == "accuracy" and "accuracy_best_epoch" in measured:
            if paper_key == "accuracy":
                rows.append((key, None, "test accuracy, last epoch (the model measured below), %", decimals))
            continue
        rows.append((key, paper_key, label, decimals))
    return rows


def _measured_cells(results: dict, variants: List[str], key: str, decimals: int) -> List[str]:
    return [_cell(results["variants"][v]["mean"][key], results["variants"][v]["std"][key], decimals) for v in variants]


def render_tables(results: dict) -> str:
    """The measured-vs-paper table and the claims table (Markdown)."""
    variants = [v for v in VARIANTS if v in results["variants"]]
    paper = results["paper"]["variants"]
    paper_std = results["paper"].get("std", {})
    n_seeds = len(next(iter(results["variants"].values()))["seeds"])
    head = ["metric"] + [f"{VARIANT_NAMES[v]} {col}" for v in variants for col in ("paper", "measured")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    rows = _rows(results, variants)
    for key, paper_key, label, decimals in rows:
        measured = _measured_cells(results, variants, key, decimals)
        if key.endswith("_paper_code") and measured == _measured_cells(results, variants, key[:-len("_paper_code")],
                                                                       decimals):
            continue  # the authors' definition gives what scikit-learn's does: one row says it
        cells = [label]
        for v, m in zip(variants, measured):
            p = paper.get(v, {}).get(paper_key) if paper_key else None
            ps = paper_std.get(v, {}).get(paper_key) if paper_key == "accuracy" else None
            cells.append("–" if p is None else (_cell(p, ps, decimals) if ps is not None else _fmt(p, decimals)))
            cells.append(m)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Measured: mean ± sample std over {n_seeds} seeds. Paper: as printed (one model per cell except Table 1). "
                 f"Produced by {describe(results.get('produced_by'))}.")
    lines.append("")
    lines.append("| the paper's claim | paper | measured difference (± seed spread) | holds here? |")
    lines.append("|---|---|---|---|")
    measured_keys = {k for k, _, _, _ in rows}
    for claim, key, a, b, direction in CLAIMS:
        if key == "accuracy" and "accuracy_best_epoch" in measured_keys:
            key = "accuracy_best_epoch"
        if a not in results["variants"] or b not in results["variants"] or key not in measured_keys:
            continue
        decimals = next(d for k, _, _, d in ROWS if k == key)
        paper_key = "accuracy" if key == "accuracy_best_epoch" else key
        pa, pb = paper.get(a, {}).get(paper_key), paper.get(b, {}).get(paper_key)
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
        + (f"attacks on the first {s['attacks']['images']:,} MNIST test images." if s.get("attacks") else
           "no attacks (Table 11 used another network: el-reproduce mnist-table11)."),
        f"Setup: {s.get('setup_label', SETUP_LABEL)} (--setup {s.get('setup', 'el-plugins')}).",
        f"Model: {s['model']}. {s['optimizer']}. EL: log_end {s['log_end']} (the paper's for MNIST); "
        f"LS: {s['smoothing']}. Seeds: {', '.join(map(str, s['seeds']))}.",
        f"Wall time: {s['wall_seconds']:.0f} s ({minutes:.1f} min) on {s['device']} with {s['threads']} torch thread(s)"
        + (f"; {s['note']}" if s.get("note") else "") + ("; --quick (CI smoke run: small subsets, not a result)"
                                                         if s.get("quick") else "") + ".",
        "",
        "",
    ]
    return "\n".join(intro) + render_tables(results)


TABLE11_CLAIMS = [
    ("EL is more accurate than CE (clean)", "accuracy"),
    ("EL is more robust than CE, eps 0.1", "autoattack_0.1"),
    ("EL is more robust than CE, eps 0.2", "autoattack_0.2"),
]


def verdict(diff: float, spread: float, direction: str) -> str:
    """'yes' / 'no: the opposite' / 'unclear: within the spread' for a difference claimed 'higher' or 'lower'."""
    sign = 1 if direction == "higher" else -1
    if sign * diff > spread:
        return "yes"
    if -sign * diff > spread:
        return "no: the opposite"
    return "unclear: within the spread"


def render_table11(results: dict) -> str:
    """el-reproduce mnist-table11's measured-vs-paper table and its claims (Markdown)."""
    v = results["variants"]
    paper = results["paper"]["variants"]
    s = results["settings"]
    attack = s["attack"]
    n_models = {k: len(e["models"]) for k, e in v.items()}
    pairs = attack["images"] * attack["models_per_loss"]
    lines = ["| metric | CE paper | CE measured | EL paper | EL measured |", "|---|---:|---:|---:|---:|"]

    def row(label, paper_key, cell):
        cells = [label]
        for variant in ("ce", "el"):
            p = paper[variant].get(paper_key) if paper_key else None
            cells += [_fmt(p, 2), cell(v[variant])]
        lines.append("| " + " | ".join(cells) + " |")

    row(f"clean test accuracy, % ({results['data']['mnist_test']['images']:,} test images; mean ± std over "
        f"{n_models['ce']} models)", "accuracy", lambda e: _cell(e["mean"]["accuracy"], e["std"]["accuracy"], 2))
    row(f"clean accuracy on the {attack['images']:,} attacked images, %", None,
        lambda e: _fmt(e["robust"]["clean"], 2))
    for eps in s["epsilons"]:
        row(f"AutoAttack, eps {eps}, % (± binomial s.e.)", f"autoattack_{eps}",
            lambda e, eps=eps: _cell(e["robust"][f"autoattack_{eps}"], e["robust"][f"autoattack_{eps}_se"], 2))
    for eps in s["epsilons"]:
        row(f"still correct after APGD-CE / +APGD-T / +FAB / +Square, eps {eps}, %", None,
            lambda e, eps=eps: " / ".join(f"{e['robust'][f'stages_{eps}'][st]:.1f}" for st in attack["stages"]))
    row("attack time, s per image, eps " + " / ".join(map(str, s["epsilons"])), None,
        lambda e: " / ".join(f"{e['robust'][f'seconds_per_image_{eps}']:.2f}" for eps in s["epsilons"]))
    lines += ["", f"Measured: clean accuracy over {n_models['ce']} models per loss (seeds 0-{n_models['ce'] - 1}); the "
              f"attacks on {attack['models_per_loss']} model(s) per loss x the first {attack['images']:,} test images "
              f"({pairs:,} image-model pairs). Paper: {results['paper']['source']}.", "",
              "| the paper's claim | paper | measured difference (± spread) | holds here? |", "|---|---|---|---|"]
    for claim, key in TABLE11_CLAIMS:
        if key == "accuracy":
            diff = v["el"]["mean"][key] - v["ce"]["mean"][key]
            spread = math.hypot(v["el"]["std"][key], v["ce"]["std"][key])
        else:
            diff = v["el"]["robust"][key] - v["ce"]["robust"][key]
            spread = math.hypot(v["el"]["robust"][key + "_se"], v["ce"]["robust"][key + "_se"])
        lines.append(f"| {claim} | {paper['el'][key]:.2f} vs {paper['ce'][key]:.2f} | {diff:+.2f} (± {spread:.2f}) | "
                     f"{verdict(diff, spread, 'higher')} |")
    lines += ["", "Spread: the models' sample std for the clean accuracy, the binomial standard error of the "
              "attacked images for the robust accuracy (one standard deviation). "
              f"Produced by {describe(results.get('produced_by'))}."]
    return "\n".join(lines) + "\n"


def render_table11_md(results: dict) -> str:
    s = results["settings"]
    data = results["data"]
    stages = ", ".join(f"{name} ({_stage_text(k)})" for name, k in s["attack"]["stages"].items())
    intro = [
        "# el-reproduce mnist-table11: the paper's Table 11, the authors' way",
        "",
        f"Train: the first {data['mnist_train']['images']:,} MNIST training images; test: the first "
        f"{data['mnist_test']['images']:,} MNIST test images. Setup: {s['setup_label']}.",
        f"Model: {s['model']}. {s['optimizer']}. CE: {s['losses']['ce']}; EL: {s['losses']['el']}.",
        f"Attack: {s['attack']['library']}, L-inf, composed as {s['attack']['as']}: {stages}.",
        f"Wall time: {s['wall_seconds']:.0f} s ({s['wall_seconds'] / 60:.1f} min) on {s['device']} with {s['threads']} "
        f"torch thread(s)" + (f"; {s['note']}" if s.get("note") else "")
        + ("; --quick (CI smoke run: small subsets, not a result)" if s.get("quick") else "") + ".",
        "",
        "",
    ]
    return "\n".join(intro) + render_table11(results)


def _stage_text(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("class", "norm"))


def rerender(path: str, render_md: Callable[[dict], str], command: str) -> str:
    """Write table.md beside the results.json ``path`` from it with ``render_md`` and return the text (after a
    change of the table's layout); a file that is not ``command``'s results.json is a CommandError."""
    import json

    from el_plugins import commands

    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        if not isinstance(results, dict) or not isinstance(results.get("variants"), dict) or not results["variants"]:
            raise ValueError("it has no measured variants ('variants' is missing or empty)")
        text = render_md(results)
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as exc:
        raise commands.CommandError(f"--render {path}: not a results.json of {command} "
                                    f"({type(exc).__name__}: {exc})") from None
    write_text(os.path.join(os.path.dirname(os.path.abspath(path)), "table.md"), text)
    return text


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


def readme_block(readme_text: str, begin: str = README_BEGIN, end: str = README_END) -> Optional[str]:
    """The text between the markers ``begin`` and ``end`` of a page (docs/reproductions.md; None when they are
    missing)."""
    if begin not in readme_text or end not in readme_text:
        return None
    return readme_text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def with_readme_block(readme_text: str, block: str, begin: str = README_BEGIN, end: str = README_END) -> str:
    """``readme_text`` (a page: docs/reproductions.md, the README) with ``block`` between the markers ``begin`` and
    ``end`` (ValueError when they are missing)."""
    if readme_block(readme_text, begin, end) is None:
        raise ValueError(f"the README lacks the markers {begin!r} ... {end!r}")
    head, rest = readme_text.split(begin, 1)
    return head + begin + "\n" + block + rest[rest.index(end):]


__all__ = ["CLAIMS", "README_BEGIN", "README_END", "ROWS", "TABLE11_BEGIN", "TABLE11_END", "claim_verdict",
           "readme_block", "rerender", "render_table11", "render_table11_md", "render_table_md", "render_tables", "verdict",
           "with_readme_block", "write_outputs", "write_plots"]
