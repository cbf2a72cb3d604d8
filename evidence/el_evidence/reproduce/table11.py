"""``el-reproduce mnist-table11``: the paper's Table 11 (accuracy under AutoAttack, CE vs EL) the authors' way.

As the authors' ``adversarial_robustness/demos/attack.py`` ran it (``--mode train`` then ``--mode adv_test
--test_atk aa``):

- the network: :class:`~el_evidence.reproduce.networks.Table11CNN` (123,222 parameters), inputs in [0, 1];
- training: Adam at a constant lr 1e-3, batch 128, 5 epochs over the training images in their stored order
  (their DataLoader does not shuffle); CE is torch's cross-entropy, EL el-plugins' EncouragingLoss with
  log_end 1 and no smoothing (their ``EncourageLoss(log_end=1)``);
- the attack: ``AutoAttack(model, norm='Linf', eps=eps)`` of their bundled torchattacks 3.1.0, whose
  'standard' version is APGD-CE, APGD-T, FAB and Square, each on the images the ones before did not break
  (:data:`AUTOATTACK_3_1_0`). torchattacks 3.5.1's own 'standard' differs (its APGD, APGD-T and FAB default to
  10 steps and its FAB is the targeted FAB-T), so :func:`autoattack_3_1_0` composes 3.1.0's from 3.5.1's
  classes with every setting given explicitly.

The authors trained 10 models per loss and attacked one on all 10,000 test images; this trains ``--models``
per loss (clean accuracy on the 10,000 test images) and attacks the first ``--attack-models`` of them on the
first ``--attack-images`` test images, reporting the binomial standard error of the robust accuracy. The
defaults (3 models, all attacked, 40 images) fit about 20 minutes on 2 CPU cores (the committed run: 1195 s).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence

from el_plugins import commands
from el_evidence.reproduce.options import (add_run_options, check_folders_and_attacks, data_info, load_data,
                                           parse_run_options, usable_cores)
from el_plugins.provenance import provenance
from el_evidence.reproduce.recipes import RECIPES, TrainingSettings

PROG = "el-reproduce mnist-table11"
logger = logging.getLogger(__name__)
VARIANTS = ("ce", "el")
EPSILONS = (0.1, 0.2)
STAGES = ("apgd_ce", "apgd_t", "fab", "square")
# AutoAttack(norm='Linf', version='standard') of torchattacks 3.1.0 (adversarial_robustness/torchattacks in the
# authors' repository): each stage's class in torchattacks and every setting it ends up with there (3.1.0's
# defaults where AutoAttack passes none). 3.1.0's FAB ignores its `targeted` argument: it is always untargeted.
AUTOATTACK_3_1_0 = {
    "apgd_ce": ("APGD", {"norm": "Linf", "steps": 100, "n_restarts": 1, "loss": "ce", "eot_iter": 1, "rho": 0.75}),
    "apgd_t": ("APGDT", {"norm": "Linf", "steps": 100, "n_restarts": 1, "eot_iter": 1, "rho": 0.75, "n_classes": 10}),
    "fab": ("FAB", {"norm": "Linf", "steps": 100, "n_restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9,
                    "multi_targeted": False, "n_classes": 10}),
    "square": ("Square", {"norm": "Linf", "n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                          "resc_schedule": True}),
}
OUTPUTS = ("results.json", "table.md")  # one output set (el_plugins.files.output_set)
ATTACK_BATCH = 20  # images per AutoAttack call: the progress bar moves once per batch
QUICK = {"models": 2, "attack_models": 1, "epochs": 1, "train_images": 12000, "test_images": 2000, "attack_images": 4}
# 3 models per loss, every one attacked on 40 images: ~20 min on 2 CPU cores (one on 200 would take ~36)
DEFAULTS = {"models": 3, "attack_models": 3, "epochs": RECIPES["table11"].epochs, "train_images": 60000,
            "test_images": 10000, "attack_images": 40}  # = Settings()'s
PAPER = {"ce": {"accuracy": 98.69, "autoattack_0.1": 74.89, "autoattack_0.2": 5.04},
         "el": {"accuracy": 99.04, "autoattack_0.1": 79.31, "autoattack_0.2": 7.59}}
PAPER_SOURCE = ("Table 11: one model per loss (of the 10 the authors trained: mnist_ce98.69 and mnist_el99.04 in "
                "their readme.sh), attacked on all 10,000 MNIST test images")


def autoattack_3_1_0(model, eps: float, seed: int = 0):
    """torchattacks.MultiAttack of APGD-CE, APGD-T, FAB and Square with :data:`AUTOATTACK_3_1_0`'s settings at
    L-inf ``eps``: the authors' ``AutoAttack(model, norm='Linf', eps=eps)`` (their seed was the clock's; here
    ``seed``, the same for every stage, as AutoAttack passes one)."""
    import torchattacks

    stages = [getattr(torchattacks, cls)(model, eps=eps, seed=seed, **kwargs) for cls, kwargs in AUTOATTACK_3_1_0.values()]
    return torchattacks.MultiAttack(stages)


def robust_after_stages(model, x, y, eps: float, seed: int, bar=None, batch: int = None) -> List[int]:
    """Attack (x, y) in batches of ``batch`` (default ATTACK_BATCH) images with :func:`autoattack_3_1_0`; returns
    how many images are still
    classified correctly after each stage (clean mistakes count as broken by the first), from MultiAttack's own
    per-stage records."""
    import torch

    attack = autoattack_3_1_0(model, eps, seed)
    if not hasattr(attack, "_multi_atk_records") or not hasattr(attack, "_accumulate_multi_atk_records"):
        import torchattacks
        raise RuntimeError(f"torchattacks {torchattacks.__version__}: MultiAttack keeps no per-attack records; "
                           "el-reproduce mnist-table11 needs torchattacks 3.5.1 (scripts/setup.sh installs it)")
    attack._accumulate_multi_atk_records = True
    attack._multi_atk_records = [0] * (len(STAGES) + 1)
    correct, batch = 0, batch or ATTACK_BATCH
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        adv = attack(xb, yb)
        with torch.no_grad():
            correct += int(model(adv).argmax(1).eq(yb).sum())
        if bar is not None:
            bar.update(len(xb))
    # a batch whose images were all broken early stops there: its later stages count 0 survivors
    survivors = [int(n) for n in attack._multi_atk_records[1:]]
    if survivors[-1] != correct:
        raise RuntimeError(f"MultiAttack's records say {survivors[-1]} images withstood all four attacks, "
                           f"the model classifies {correct} of the adversarial images correctly")
    return survivors


@dataclass
class Settings(TrainingSettings):
    """Everything a Table 11 run depends on (recorded in results.json): the table11 recipe's training (EL at
    log_end 1, no smoothing), the models per loss, the attacked models and images, the attack's seed."""
    setup: str = "table11"
    epochs: int = RECIPES["table11"].epochs
    batch_size: int = RECIPES["table11"].batch_size
    lr: float = RECIPES["table11"].lr
    smoothing: float = 0.0
    attack_images: int = 40
    models: int = 3
    attack_models: int = 3
    attack_seed: int = 0
    epsilons: Sequence[float] = EPSILONS


def binomial_se(percent: float, n: int) -> float:
    """Standard error, in %, of a proportion measured as ``percent`` % of ``n`` trials."""
    p = percent / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def run(s: Settings, data: Dict, data_info: dict, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``s.models`` models per loss, measure their clean test accuracy, attack the first
    ``s.attack_models`` of each loss; returns the results.json dict."""
    import numpy as np
    import torch

    from el_evidence.reproduce import mnist
    from el_evidence.reproduce.networks import describe

    device = torch.device(s.device)
    started, load_start = time.time(), mnist.load_average()
    x, y = mnist.labelled_tensors(data, "mnist", "train", s.train_images, device)
    xt, yt = mnist.labelled_tensors(data, "mnist", "test", s.test_images, device)
    xa, ya = xt[:s.attack_images], yt[:s.attack_images]
    steps = s.epochs * math.ceil(len(x) / s.batch_size)
    variants = {v: {"name": mnist.VARIANT_NAMES[v], "models": [], "attacked": []} for v in VARIANTS}
    runs = [(seed, v) for seed in range(s.models) for v in VARIANTS]
    for n, (seed, variant) in enumerate(runs, 1):
        name = f"[{n}/{len(runs)}] {mnist.VARIANT_NAMES[variant]} model {seed}"
        with mnist.progress_bar(steps, f"{name} train", "step", progress) as bar:
            model, info = mnist.train(variant, seed, x, y, s, bar)
        record = {"seed": seed, "accuracy": mnist.test_accuracy(model, xt, yt), **info}
        variants[variant]["models"].append(record)
        message = f"{name}: clean accuracy {record['accuracy']:.2f}% ({info['train_seconds']:.0f} s)"
        if seed < s.attack_models:
            attacked = {"seed": seed, "images": len(xa), "clean": mnist.test_accuracy(model, xa, ya)}
            for eps in s.epsilons:
                t0 = time.perf_counter()
                with mnist.progress_bar(len(xa), f"{name} AutoAttack eps {eps}", "image", progress) as bar:
                    survivors = robust_after_stages(model, xa, ya, eps, s.attack_seed, bar)
                attacked[f"seconds_{eps}"] = round(time.perf_counter() - t0, 1)
                attacked[f"stages_{eps}"] = {stage: 100.0 * k / len(xa) for stage, k in zip(STAGES, survivors)}
                attacked[f"autoattack_{eps}"] = 100.0 * survivors[-1] / len(xa)
                message += (f"; AutoAttack eps {eps}: {attacked[f'autoattack_{eps}']:.1f}% of {len(xa)} "
                            f"({attacked[f'seconds_{eps}']:.0f} s)")
            mnist.check_finite(attacked, name)
            variants[variant]["attacked"].append(attacked)
        mnist.check_finite(record, name)
        log(message)

    for entry in variants.values():
        accuracies = [m["accuracy"] for m in entry["models"]]
        entry["mean"] = {"accuracy": float(np.mean(accuracies))}
        entry["std"] = {"accuracy": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0}
        pairs = sum(a["images"] for a in entry["attacked"])
        robust = {"clean": float(np.mean([a["clean"] for a in entry["attacked"]]))}
        for eps in s.epsilons:
            value = float(np.mean([a[f"autoattack_{eps}"] for a in entry["attacked"]]))
            robust[f"autoattack_{eps}"] = value
            robust[f"autoattack_{eps}_se"] = binomial_se(value, pairs)
            robust[f"stages_{eps}"] = {st: float(np.mean([a[f"stages_{eps}"][st] for a in entry["attacked"]]))
                                       for st in STAGES}
            robust[f"seconds_per_image_{eps}"] = sum(a[f"seconds_{eps}"] for a in entry["attacked"]) / pairs
        entry["robust"] = robust

    settings = asdict(s)
    extra = settings.pop("extra")
    recipe = mnist.RECIPES[s.setup]
    network = mnist.NETWORKS[recipe.network]
    settings.update({
        "epsilons": list(s.epsilons), "setup_label": recipe.label,
        "model": describe(recipe.network),
        "parameters": mnist.parameter_count(network()),
        "optimizer": recipe.describe(s.epochs, s.batch_size, s.lr),
        "losses": {"ce": "torch.nn.CrossEntropyLoss()", "el": str(mnist.make_loss("el", s.log_end, 0.0))},
        "attack": {"library": f"torchattacks {mnist._version('torchattacks')}",
                   "as": "AutoAttack(norm='Linf', version='standard') of torchattacks 3.1.0 (the authors' copy): "
                         "torchattacks.MultiAttack of these stages in this order, each on the images the ones "
                         "before did not break",
                   "stages": {stage: {"class": f"torchattacks.{cls}", **kwargs, "seed": s.attack_seed}
                              for stage, (cls, kwargs) in AUTOATTACK_3_1_0.items()},
                   "batch": ATTACK_BATCH, "images": len(xa), "models_per_loss": s.attack_models,
                   "robust": "% of the attacked images still classified correctly (clean mistakes count as "
                             "broken); *_se: binomial standard error over the attacked image-model pairs; "
                             "stages_<eps>: % still correct after each stage"},
        "std": "sample standard deviation over models (ddof 1)",
        "wall_seconds": round(time.time() - started, 1),
        **mnist.environment(load_start),
    })
    settings.update(extra)
    return {"data": data_info, "variants": variants,
            "paper": {"variants": PAPER, "source": PAPER_SOURCE,
                      "reference": "Zhao et al., Well-classified Examples are Underestimated in Classification with "
                                   "Deep Neural Networks, AAAI 2022, arXiv 2110.06537"},
            "settings": settings, "produced_by": provenance()}


# --------------------------------------------------------------------------- the command
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/reproduce-mnist-table11",
                    help="output folder (default: runs/reproduce-mnist-table11)")
    ap.add_argument("--data", default="data", help="the data folder; filled by `el-data mnist` when empty (default: data)")
    ap.add_argument("--models", type=int, default=None,
                    help=f"models per loss, seeds 0 .. N-1, for the clean accuracy (default: {DEFAULTS['models']})")
    ap.add_argument("--attack-models", type=int, default=None,
                    help=f"attack the first K models of each loss (default: {DEFAULTS['attack_models']})")
    ap.add_argument("--attack-images", type=int, default=None,
                    help=f"attack the first N MNIST test images (default: {DEFAULTS['attack_images']})")
    ap.add_argument("--attack-seed", type=int, default=0, help="the seed of every attack stage (default: 0)")
    ap.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: {DEFAULTS['epochs']}, the authors')")
    ap.add_argument("--train-images", type=int, default=None, help="train on the first N training images (default: all 60000)")
    ap.add_argument("--test-images", type=int, default=None,
                    help="clean accuracy on the first N test images (default: all 10000)")
    add_run_options(ap, "CI smoke run; defaults " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                    + " (explicit options win)")
    args = parse_run_options(ap, argv)
    if args.render is not None:
        return args
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name, low, high in (("models", 1, None), ("attack_models", 1, args.models), ("epochs", 1, None),
                            ("attack_seed", 0, None),
                            ("train_images", 1, 60000), ("test_images", 1, 10000), ("attack_images", 1, args.test_images)):
        value = getattr(args, name)
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            why = {"attack_models": " (at most --models)", "attack_images": " (at most --test-images)"}.get(name, "")
            ap.error(f"--{name.replace('_', '-')} must be {allowed}{why}, got {value}")
    if args.threads is None:
        args.threads = min(usable_cores(), 8)
    elif args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    check_folders_and_attacks(ap, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    commands.setup_logging(PROG, also=("el_evidence",))
    if args.render is not None:
        return commands.run(PROG, lambda: render(args.render), errors=(OSError,))
    from el_evidence.data import DataError

    return commands.run(PROG, lambda: _reproduce(args, argv), errors=(DataError, OSError))


def render(path: str) -> int:
    """table.md beside results.json ``path``, from it."""
    from el_evidence.reproduce import report

    print(report.rerender(path, report.render_table11_md, PROG))
    return 0


def _reproduce(args, argv) -> int:
    import torch

    from el_plugins.files import output_set, write_json, write_text
    from el_evidence.reproduce import report

    started = time.time()
    if args.device.type == "cpu":
        torch.set_num_threads(args.threads)
    data = load_data(args.data, logger.info)
    info = data_info(args.data, argparse.Namespace(train_images=args.train_images, test_images=args.test_images))
    info.pop("fashion_mnist_test")
    s = Settings(models=args.models, attack_models=args.attack_models, epochs=args.epochs,
                 train_images=args.train_images, test_images=args.test_images, attack_images=args.attack_images,
                 attack_seed=args.attack_seed, device=str(args.device),
                 threads=args.threads if args.device.type == "cpu" else 0, quick=args.quick,
                 extra={"note": args.note,
                        "command": "el-reproduce mnist-table11 " + " ".join(sys.argv[2:] if argv is None else argv)})
    logger.info(f"mnist-table11: CE and EL x {s.models} model(s), {s.epochs} epoch(s) on {s.train_images:,} images; "
                f"AutoAttack (torchattacks 3.1.0's standard) on {s.attack_models} model(s) per loss x "
                f"{s.attack_images} test images at eps {', '.join(map(str, s.epsilons))}; {s.device}")
    results = run(s, data, info, progress=args.progress, log=logger.info)
    results["settings"]["wall_seconds_with_data"] = round(time.time() - started, 1)
    table = report.render_table11_md(results)
    with output_set(args.out, owns=OUTPUTS) as staged:  # one set: an interrupted write leaves the previous one
        write_text(staged.path("table.md"), table)
        write_json(staged.path("results.json"), results)
    print(table)
    logger.info(f"wrote {os.path.join(args.out, 'results.json')}, {os.path.join(args.out, 'table.md')}")
    return 0
