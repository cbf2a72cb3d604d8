"""el-reproduce translation's results.json -> table.md (measured mean +- std per variant, the paper's claims with
a verdict), the plots and the hypotheses files. :func:`render_tables` is the text docs/reproductions.md holds
between its markers; tests/test_reproduce_translation.py checks it against the committed
results/translation/results.json."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from el_plugins.provenance import describe
from el_evidence.reproduce.report import claim_verdict
from el_evidence.reproduce.translation import TGT, VARIANTS

README_BEGIN = "<!-- el-reproduce translation: begin (generated from results/translation/results.json; do not edit) -->"
README_END = "<!-- el-reproduce translation: end -->"

# (key, row label, decimals)
ROWS = [
    ("bleu", "test tokenised BLEU-4 (the paper's metric)", 2),
    ("sacrebleu", "test sacreBLEU", 2),
    ("valid_nll", "valid nll, nats/token", 3),
    ("target_prob", "valid mean target probability", 3),
    ("margin_mean", "valid mean token margin z_y - max_{k!=y} z_k", 2),
    ("margin_median", "valid median token margin", 2),
    ("valid_accuracy", "valid token accuracy", 3),
    ("train_seconds", "training time per run, s", 0),
]

# (claim, key, a, b, 'higher'/'lower': a's value is claimed higher/lower than b's, the paper's numbers)
CLAIMS = [
    ("EL (log_end 0.5) translates better than LS-CE, tokenised BLEU", "bleu", "el", "ce", "higher",
     "+0.41 (De-En), +0.63 (Fr-En)"),
    ("the same, sacreBLEU", "sacrebleu", "el", "ce", "higher", "–"),
    ("EL with log_end 1 translates worse than LS-CE", "bleu", "el_le1", "ce", "lower", "-1 to -2 BLEU"),
    ("EL with log_end 1 translates worse than with log_end 0.5", "bleu", "el_le1", "el", "lower", "-1 to -2 BLEU"),
    ("EL (log_end 0.5) enlarges the margins", "margin_mean", "el", "ce", "higher", "larger margins"),
    ("EL (log_end 0.5) raises the target probability", "target_prob", "el", "ce", "higher", "–"),
]


def _cell(mean: float, std: Optional[float], decimals: int) -> str:
    return f"{mean:.{decimals}f}" + ("" if std is None else f" ± {std:.{decimals}f}")


def render_tables(results: dict) -> str:
    """The measured table and the claims table (Markdown)."""
    variants = [v for v in VARIANTS if v in results["variants"]]
    head = ["metric"] + [f"{results['variants'][v]['name']} ({len(results['variants'][v]['seeds'])} seeds)"
                         for v in variants]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(variants) + "|"]
    for key, label, decimals in ROWS:
        cells = [label]
        for v in variants:
            m = results["variants"][v]
            cells.append(_cell(m["mean"][key], m["std"].get(key), decimals) if key in m["mean"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std over seeds; BLEU of the average of the last "
              f"{results['settings']['average_last']} epoch checkpoints, beam {results['settings']['beam']}. "
              f"Produced by {describe(results.get('produced_by'))}.", "",
              "| the paper's claim | paper | measured difference (± seed spread) | holds here? |", "|---|---|---|---|"]
    for claim, key, a, b, direction, paper in CLAIMS:
        if a not in results["variants"] or b not in results["variants"]:
            continue
        decimals = next(d for k, _, d in ROWS if k == key)
        diff, spread, verdict = claim_verdict(results, key, a, b, direction)
        measured = f"{diff:+.{decimals}f}" + ("" if spread is None else f" (± {spread:.{decimals}f})")
        lines.append(f"| {claim} | {paper} | {measured} | {verdict} |")
    return "\n".join(lines) + "\n"


def render_table_md(results: dict) -> str:
    s, d = results["settings"], results["data"]
    sources = "; ".join(f"{src['text']} ({src['package']})" for src in d["sources"].values())
    intro = [
        "# el-reproduce translation: the paper's translation claims on a real corpus, measured",
        "",
        f"Spanish -> English Bible verses ({sources}; public domain): train {d['train']['pairs']:,}, valid "
        f"{d['valid']['pairs']:,}, test {d['test']['pairs']:,} pairs (of {d['train']['of']:,} / {d['valid']['of']:,} / "
        f"{d['test']['of']:,}).",
        f"Recipe `{s['recipe']}` (el-translation-train): `{' '.join(s['recipe_args'])}"
        + "".join(f" {a}" for a in s.get("train_overrides", ())) + (f" --max-epoch {s['max_epoch']}" if s.get("max_epoch")
                                                                   else "") + f"`; joint sentencepiece "
        f"{s['vocab_size']}. Baseline: label_smoothed_encouraging_loss --bonus-weight 0, eps / V (the authors').",
        f"Wall time: {s['wall_seconds']:.0f} s ({s['wall_seconds'] / 60:.1f} min) on {s['device']}"
        + (f", {s['reused_runs']} finished run(s) reused" if s.get("reused_runs") else "")
        + ("; --quick (CI smoke run: small subsets, not a result)" if s.get("quick") else "") + ".",
        "", "",
    ]
    return "\n".join(intro) + render_tables(results)


def output_files(results: dict, extras: Dict[str, dict]) -> Dict[str, bytes]:
    """{relative path: content} of the output set: results.json, table.md, plots, hypotheses."""
    import json

    from el_plugins.analysis import plots

    files = {}
    for v, extra in extras.items():
        for seed, lines in extra["hypotheses"].items():
            files[f"hypotheses/{v}-seed{seed}.{TGT}"] = "".join(line + "\n" for line in lines).encode("utf-8")
    names = {v: results["variants"][v]["name"] for v in extras}
    files["margins.png"] = plots.histogram_png(
        {names[v]: extra["margins"] for v, extra in extras.items()},
        "Valid token margins (first seed of each variant)", "margin  $z_y - \\max_{k \\neq y} z_k$")
    curves = {}
    for v in extras:
        for r in results["variants"][v]["seeds"]:
            curves[f"{names[v]}, seed {r['seed']}"] = [(c["epoch"], c["valid_nll_bits"]) for c in r["curve"]]
    files["learning_curves.png"] = plots.curves_png(curves, "Valid nll per epoch", "epoch", "valid nll (bits/token)")
    files["table.md"] = render_table_md(results).encode("utf-8")
    files["results.json"] = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    return files


OUTPUTS = ("results.json", "table.md", "margins.png", "learning_curves.png", "hypotheses")  # one output set


def write_outputs(out: str, results: dict, extras: Dict[str, dict]) -> List[str]:
    """Write the output set (:data:`OUTPUTS`) into ``out`` as one: staged and swapped in whole
    (el_plugins.files.output_set), so an interrupted write leaves the previous set; returns the final paths."""
    from el_plugins.files import output_set

    files = output_files(results, extras)
    with output_set(out, owns=OUTPUTS) as staged:
        for rel, content in files.items():
            path = staged.path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(content)
    return [os.path.join(out, rel) for rel in files]


def readme_block(readme_text: str) -> Optional[str]:
    """The text between the markers on docs/reproductions.md (None when they are missing)."""
    if README_BEGIN not in readme_text or README_END not in readme_text:
        return None
    return readme_text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip("\n") + "\n"
