"""The paper's translation claims on a real corpus, offline: Spanish -> English Bible verses (el-data bible).

The IWSLT pipeline's own steps, for every variant and seed:

    el-prepare's Moses tokenisation + joint sentencepiece, fairseq-preprocess (once)
    fairseq-train with el-translation-train's recipe ``bible.es-en``
    el-average-checkpoints of the last epochs, fairseq-generate beam 5 (el-bleu): tokenised BLEU-4, sacreBLEU
    el-analyze's valid nll, target probability and token margins (el_plugins.analysis.fairseq_eval)

Variants: ``ce`` (the baseline, the authors' way: label_smoothed_encouraging_loss with --bonus-weight 0 and
eps / V), ``el`` (log_end 0.5, the paper's translation setting) and ``el_le1`` (log_end 1, which the paper
says costs Transformers 1-2 BLEU). They differ in the criterion's flags alone.

:func:`run` returns the ``results.json`` dict. Every finished run leaves ``WORK/runs/NAME/result.json``; a
rerun with the same settings takes the finished runs as they are and starts the others over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from el_plugins.commands import CommandError

logger = logging.getLogger(__name__)

VARIANTS = ("ce", "el", "el_le1")
VARIANT_NAMES = {"ce": "LS-CE", "el": "EL, log_end 0.5", "el_le1": "EL, log_end 1"}
LOG_END = {"el": 0.5, "el_le1": 1.0}
SRC, TGT = "es", "en"
RECIPE = "bible.es-en"
KEYS = ("bleu", "sacrebleu", "valid_nll", "target_prob", "margin_mean")
EXTRA_KEYS = ("margin_median", "valid_accuracy", "past_log_end", "train_seconds")

PAPER = {
    "bleu": {"iwslt14.de-en": {"ce": 35.09, "el": 35.50}, "iwslt17.fr-en": {"ce": 37.10, "el": 37.73}},
    "log_end_1": "log_end = 1 (the normal bonus) costs Transformers 1-2 BLEU; the conservative bonus log_end < 1 "
                 "is what helps translation",
    "margins": "EL enlarges the margins of the well-classified examples",
    "setup": "IWSLT'14 De-En and IWSLT'17 Fr-En, Transformer (translation/readme.sh), average of the last 10 epoch "
             "checkpoints, beam 5, tokenised BLEU-4; 5 seeds",
    "reference": "Zhao et al., Well-classified Examples are Underestimated in Classification with Deep Neural "
                 "Networks, AAAI 2022, arXiv 2110.06537",
}


@dataclass
class Settings:
    """Everything a run depends on (recorded in results.json; a rerun resumes only with the same values)."""
    seeds: Dict[str, Sequence[int]] = field(default_factory=lambda: {"ce": (1, 2, 3), "el": (1, 2, 3), "el_le1": (1, 2)})
    recipe: str = RECIPE
    vocab_size: int = 8000
    max_epoch: Optional[int] = None  # None: the recipe's
    average_last: int = 1  # tuned on valid: averaging the last 2 or 3 epochs lost BLEU (results/translation/tuning.json)
    train_overrides: Sequence[str] = ()  # fairseq-train options after the recipe's (--quick: a tiny model)
    generate_overrides: Sequence[str] = ()  # fairseq-generate options (--quick: short outputs)
    beam: int = 5
    train_pairs: Optional[int] = None  # None: all of train; else the first N (--quick)
    valid_pairs: Optional[int] = None
    test_pairs: Optional[int] = None
    device: str = "cpu"
    quick: bool = False
    extra: Dict = field(default_factory=dict)

    def key(self) -> str:
        """What a finished run's result depends on, as a short hash."""
        fixed = {k: v for k, v in asdict(self).items() if k not in ("seeds", "extra", "device")}
        return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def run_names(s: Settings) -> List[Tuple[str, int]]:
    """(variant, seed) in the order they run: seed by seed, so a partial run has every variant."""
    order = []
    for i in range(max(len(seeds) for seeds in s.seeds.values())):
        order += [(v, s.seeds[v][i]) for v in VARIANTS if v in s.seeds and i < len(s.seeds[v])]
    return order


def subset(splits, s: Settings):
    """The splits cut to the first N pairs where Settings asks for fewer."""
    limits = {"train": s.train_pairs, "valid": s.valid_pairs, "test": s.test_pairs}
    return {split: tuple(side[:limits[split]] if limits[split] else side for side in sides)
            for split, sides in splits.items()}


# --------------------------------------------------------------------------- steps
def prepare_data(corpus, work: str, s: Settings, log) -> str:
    """Tokenise, sentencepiece, binarize (once per settings): returns the data-bin."""
    from el_plugins.files import write_json
    from el_plugins.translation.prepare import prepare_parallel_corpus

    folder = os.path.join(work, "data")
    stamp_path = os.path.join(folder, "prepared.json")
    stamp = {"vocab_size": s.vocab_size, "corpus_sha256": _splits_digest(corpus)}
    data_bin = os.path.join(folder, "data-bin")
    if _read_json(stamp_path) == stamp and os.path.isfile(os.path.join(data_bin, f"test.{SRC}-{TGT}.{TGT}.bin")):
        log(f"reusing {data_bin} (prepared for these settings)")
        return data_bin
    shutil.rmtree(folder, ignore_errors=True)  # a partial or different preparation: start it over
    log(f"preparing {len(corpus['train'][0]):,} training pairs (Moses, joint sentencepiece {s.vocab_size}, "
        "fairseq-preprocess)")
    data_bin = prepare_parallel_corpus(corpus, folder, SRC, TGT, vocab_size=s.vocab_size, lowercase=False,
                                       joined_dictionary=True, workers=2)
    write_json(stamp_path, stamp)
    return data_bin


def _splits_digest(splits) -> str:
    h = hashlib.sha256()
    for split in sorted(splits):
        for side in splits[split]:
            h.update("\n".join(side).encode("utf-8") + b"\0")
    return h.hexdigest()


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def training_command(variant: str, seed: int, data_bin: str, run_dir: str, s: Settings, device) -> List[str]:
    """el-translation-train's fairseq-train command of one run (``--cpu`` unless ``device`` is a CUDA device)."""
    from el_plugins.translation import recipe

    epochs = ["--max-epoch", str(s.max_epoch)] if s.max_epoch else []
    return recipe.train_command(s.recipe, data_bin, os.path.join(run_dir, "checkpoints"),
                                loss="ce" if variant == "ce" else "el", seed=seed, cpu=device.type != "cuda",
                                log_end=LOG_END.get(variant), smoothing_convention="paper",
                                extra=[*s.train_overrides, *epochs])


def train_and_score(variant: str, seed: int, data_bin: str, raw_test_refs: List[str], work: str, s: Settings,
                    device, progress: bool) -> dict:
    """One (variant, seed): train, average, translate the test set, score, analyse valid. Returns its result
    (also written as WORK/runs/NAME/result.json, with its margins and hypotheses beside it)."""
    import numpy as np

    from el_plugins.analysis.fairseq_eval import evaluate, load
    from el_plugins.devices import subprocess_env
    from el_plugins.files import write_json, write_lines
    from el_plugins.translation import bleu
    from el_plugins.translation.average_checkpoints import average_checkpoints, save_atomic, select_checkpoints
    from el_plugins.translation.prepare import moses_detokenize
    from el_plugins.translation.training import train_with_progress

    name = f"{variant}-seed{seed}"
    run_dir = os.path.join(work, "runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)  # not finished (else the caller reuses it): start it over
    os.makedirs(run_dir)
    cpu, env = device.type != "cuda", subprocess_env(device)
    cmd = training_command(variant, seed, data_bin, run_dir, s, device)
    max_epoch = planned_epochs(cmd)
    started = time.time()
    curve = train_with_progress(cmd, os.path.join(run_dir, "train.log"), None, f"[{name}] train", env=env,
                                progress=progress, max_epoch=max_epoch)
    train_seconds = time.time() - started
    paths = select_checkpoints(os.path.join(run_dir, "checkpoints"), num_epoch=s.average_last)
    averaged = os.path.join(run_dir, f"average_last{len(paths)}.pt")
    save_atomic(average_checkpoints(paths), averaged)
    try:
        out = bleu.generate(data_bin, averaged, beam=s.beam, cpu=cpu, env=env, extra=s.generate_overrides)
    except RuntimeError as exc:  # fairseq-generate failed; the message has the tail of its output
        raise CommandError(str(exc)) from None
    hyps, refs, fairseq_bleu = bleu.parse_generate_output(out)
    scores = bleu.score(hyps, refs, TGT, raw_test_refs)
    detok = moses_detokenize(hyps, TGT)
    write_lines(os.path.join(run_dir, f"test.hyp.{TGT}"), detok)
    model, task = load(averaged, data_bin)
    analysis = evaluate(model, task, "valid", device, log_end=LOG_END.get(variant, 0.5), max_tokens=4000,
                        desc=f"[{name}] analyze", progress=progress)
    del model
    summary = analysis.summary()
    margins = analysis.arrays()["id"]["margin"]
    np.save(os.path.join(run_dir, "valid_margins.npy"), margins.astype(np.float32))
    result = {
        "seed": seed, "bleu": scores["tokenized_bleu"], "sacrebleu": scores["sacrebleu"],
        "sacrebleu_signature": scores["sacrebleu_signature"], "bleu_detail": scores["tokenized_bleu_detail"],
        "fairseq_generate_bleu4": fairseq_bleu, "valid_nll": summary["nll"],
        "target_prob": summary["target_prob"]["mean"], "margin_mean": summary["margin"]["mean"],
        "margin_median": summary["margin"]["median"], "valid_accuracy": summary["accuracy"],
        "past_log_end": float(np.mean(np.exp(-analysis.arrays()["id"]["nll"]) > LOG_END.get(variant, 0.5))),
        "train_seconds": round(train_seconds, 1), "epochs": max_epoch, "updates": curve[-1]["updates"] if curve else None,
        "curve": curve,
        "averaged_checkpoints": [os.path.basename(p) for p in paths], "criterion": cmd[cmd.index("--criterion"):
                                                                                     cmd.index("--update-freq")],
        "settings_key": s.key(),
    }
    write_json(os.path.join(run_dir, "result.json"), result)  # last: marks the run as finished
    return result


def planned_epochs(cmd: Sequence[str]) -> int:
    """The --max-epoch of a fairseq-train command (its last occurrence wins, as in fairseq's parser)."""
    values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--max-epoch"]
    if not values:
        raise ValueError("the recipe must train whole epochs (--max-epoch): the average takes the last epochs")
    return int(values[-1])


def finished_run(work: str, variant: str, seed: int, s: Settings) -> Optional[dict]:
    """The result of a finished run of these settings in WORK, or None."""
    result = _read_json(os.path.join(work, "runs", f"{variant}-seed{seed}", "result.json"))
    return result if result and result.get("settings_key") == s.key() else None


def summarize(seeds: List[dict]) -> Tuple[dict, dict]:
    """(mean, sample std) of each numeric key over the seeds (std None for a single seed)."""
    mean, std = {}, {}
    for key in KEYS + EXTRA_KEYS:
        values = [r[key] for r in seeds if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        mean[key] = sum(values) / len(values)
        std[key] = (math.sqrt(sum((v - mean[key]) ** 2 for v in values) / (len(values) - 1))
                    if len(values) > 1 else None)
    return mean, std


def run(s: Settings, corpus_folder: str, work: str, *, progress: bool = True,
        log: Callable[[str], None] = logger.info) -> Tuple[dict, dict]:
    """Every variant and seed of ``s`` (finished runs in ``work`` reused); returns (results.json dict,
    {variant: (valid margins of its first seed, test hypotheses of every seed)})."""
    import numpy as np

    from el_evidence.data import bible
    from el_plugins.devices import resolve_device

    started = time.time()
    device = resolve_device(s.device)
    manifest = bible.verify(corpus_folder)
    corpus = subset(bible.load(corpus_folder), s)
    data_bin = prepare_data(corpus, work, s, log)
    raw_test_refs = list(corpus["test"][1])
    per_variant: Dict[str, List[dict]] = {v: [] for v in VARIANTS if v in s.seeds}
    extras: Dict[str, dict] = {v: {"hypotheses": {}} for v in per_variant}
    names = run_names(s)
    reused = 0
    for i, (variant, seed) in enumerate(names, 1):
        result = finished_run(work, variant, seed, s)
        if result is not None:
            reused += 1
            log(f"[{i}/{len(names)}] {variant}-seed{seed}: finished before, reused (BLEU {result['bleu']:.2f})")
        else:
            log(f"[{i}/{len(names)}] {variant}-seed{seed}: training ({VARIANT_NAMES[variant]})")
            result = train_and_score(variant, seed, data_bin, raw_test_refs, work, s, device, progress)
            log(f"[{i}/{len(names)}] {variant}-seed{seed}: BLEU {result['bleu']:.2f}, sacreBLEU {result['sacrebleu']:.2f}, "
                f"valid nll {result['valid_nll']:.3f}, margin {result['margin_mean']:.2f}")
        run_dir = os.path.join(work, "runs", f"{variant}-seed{seed}")
        with open(os.path.join(run_dir, f"test.hyp.{TGT}"), encoding="utf-8") as f:
            extras[variant]["hypotheses"][seed] = [line.rstrip("\n") for line in f]
        if "margins" not in extras[variant]:
            extras[variant]["margins"] = np.load(os.path.join(run_dir, "valid_margins.npy"))
        result = dict(result, hypotheses=f"hypotheses/{variant}-seed{seed}.{TGT}")
        result.pop("settings_key", None)
        per_variant[variant].append(result)
    variants = {}
    for v, seeds in per_variant.items():
        mean, std = summarize(seeds)
        variants[v] = {"name": VARIANT_NAMES[v], "log_end": LOG_END.get(v), "seeds": seeds, "mean": mean, "std": std}
    data = {split: {"pairs": len(corpus[split][0]), "of": manifest["splits"][split]["pairs"]} for split in corpus}
    data["sources"] = {lang: {k: src[k] for k in ("text", "package", "module", "origin", "licence")}
                       for lang, src in manifest["sources"].items()}
    data["dropped_chapters"] = len(manifest["alignment"]["dropped_chapters"])
    data["direction"] = f"{SRC}->{TGT}"
    from el_plugins.translation import recipe

    settings = dict(asdict(s), seeds={v: list(x) for v, x in s.seeds.items()},
                    recipe_args=recipe.RECIPES[s.recipe].args, recipe_follows=recipe.RECIPES[s.recipe].follows,
                    python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                    wall_seconds=round(time.time() - started, 1), reused_runs=reused)
    from el_plugins.provenance import provenance

    results = {"data": data, "variants": variants, "paper": PAPER, "settings": settings, "produced_by": provenance()}
    return results, extras


__all__ = ["KEYS", "PAPER", "Settings", "VARIANTS", "VARIANT_NAMES", "run", "run_names", "summarize"]
