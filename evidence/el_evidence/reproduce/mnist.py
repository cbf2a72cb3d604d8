"""The paper's MNIST tables, rerun: CE, CE+LS, EL, EL+LS on real MNIST, Fashion-MNIST as OOD.

One network and one schedule for every variant and seed, chosen by the setup (:data:`RECIPES`): el-plugins'
own CPU setup (``el-plugins``: :class:`SmallCNN`, Adam, one-cycle, 5 epochs), the authors' Tables 1/4/13
setup (``paper``: :class:`MNISTNet`, SGD, 100 epochs, the best test epoch) and, for ``el-reproduce
mnist-table11``, the authors' Table 11 one (``table11``, :mod:`el_evidence.reproduce.table11`);
the losses are el-plugins' public ones (:class:`el_plugins.loss.EncouragingLoss`, the module timm's
``loss_type='el'`` builds) and torch's cross-entropy; the diagnostics are :mod:`el_plugins.analysis`'s;
the attacks are torchattacks'. :func:`run` returns the ``results.json`` dict.
"""
from __future__ import annotations

import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from el_plugins.analysis import StreamingAnalysis, metrics
from el_plugins.loss import EncouragingLoss
from el_plugins.provenance import provenance
from el_evidence.reproduce.networks import NETWORKS, describe, parameter_count
from el_evidence.reproduce.paper import VARIANT_NAMES, VARIANTS, paper_block
from el_evidence.reproduce.recipes import RECIPES, TrainingSettings, paper_step_lr

EPSILONS = (0.1, 0.2)
OOD_SUFFIXES = {"min_energy": "", "free_energy": "_free_energy", "max_prob": "_max_prob"}
OOD_KEYS = tuple(f"{m}{suffix}" for suffix in OOD_SUFFIXES.values() for m in ("auroc", "fpr95"))
PAPER_CODE_OOD_KEYS = tuple(f"{k}_paper_code" for k in OOD_KEYS)
ATTACK_KEYS = ("attack_0.1", "attack_0.2", "pgd_0.1", "pgd_0.2", "fgsm_0.1", "fgsm_0.2", "attack_clean")
KEYS = ("accuracy",) + OOD_KEYS + ("ece", "energy_data", "energy_ood_lowest")
EXTRA_KEYS = ("energy_ood_lowest_paper_code",) + PAPER_CODE_OOD_KEYS + ("margin_mean", "margin_median",
                                                                        "target_prob_mean", "train_loss_last_epoch")
ECE_BINS = 10  # as the authors' ece_score
WHY_NOT_AUTOATTACK = (
    "torchattacks 3.5.1's AutoAttack (version 'standard') took 47 s per 200 images at eps 0.1 on a SmallCNN here "
    "(2 CPU cores), and 3.5.1 builds its APGD, APGD-T and FAB parts with its defaults of 10 steps (the authors' "
    "3.1.0 used 100; el-reproduce mnist-table11 composes that one), so it was weaker than 100-step APGD alone "
    "(CE model, eps 0.1: AutoAttack 66.5%, APGD-CE 58.5%, APGD-DLR 61.0%, PGD-20 64.0%; EL model: 67.5%, 64.5%, "
    "64.0%, 71.5%); see results/mnist/attack_probe.json (python -m el_evidence.reproduce.attack_probe). The attack "
    "used instead is the first two attacks of AutoAttack as published, APGD-CE and APGD-DLR with 100 steps, an "
    "image counting as robust only if it withstands both (torchattacks.MultiAttack), at about 3 s per 200 images")


@dataclass
class Settings(TrainingSettings):
    """Everything an ``el-reproduce mnist`` run depends on (recorded in results.json): the training settings,
    the seeds and variants, the OOD images and the attacks' steps. ``attack_images`` 0: no attacks."""
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    ood_images: int = 10000
    apgd_steps: int = 100
    pgd_steps: int = 20


def make_loss(variant: str, log_end: float, smoothing: float) -> nn.Module:
    """CE / CE+LS: torch's cross-entropy (its smoothing is the paper's eps / C on every class); EL / EL+LS:
    el-plugins' EncouragingLoss (the module timm's ``loss_type='el'`` returns), same smoothing convention."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    eps = smoothing if variant.endswith("_ls") else 0.0
    if variant.startswith("el"):
        return EncouragingLoss(log_end=log_end, smoothing=eps)
    return nn.CrossEntropyLoss(label_smoothing=eps)


def images_tensor(images: np.ndarray, device) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).float().div_(255.0).unsqueeze(1)


def train(variant: str, seed: int, x: torch.Tensor, y: torch.Tensor, s: TrainingSettings, bar=None,
          test: Tuple[torch.Tensor, torch.Tensor] = None) -> Tuple[nn.Module, dict]:
    """One model of ``variant`` as the recipe of ``s.setup`` trains it, with ``s``'s epochs, batch size,
    learning rate, log_end and smoothing; the seed sets the initialisation and the order of the batches. With the recipe's
    best_test_epoch, ``test`` = (images, labels) is evaluated after every epoch (the returned info then holds
    accuracy_best_epoch, best_epoch and test_accuracy_per_epoch; with the 'paper_steps' schedule lr_per_epoch).
    The model returned is the last epoch's."""
    recipe = RECIPES[s.setup]
    torch.manual_seed(seed)
    device = x.device
    model = NETWORKS[recipe.network]().to(device)
    criterion = make_loss(variant, s.log_end, s.smoothing)
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=recipe.momentum)
    steps_per_epoch = math.ceil(len(x) / s.batch_size)
    scheduler = None
    if recipe.schedule == "one_cycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch,
                                                        pct_start=0.15)
    order = torch.Generator().manual_seed(seed)
    started, last, per_epoch, lrs = time.perf_counter(), float("nan"), [], []
    for epoch in range(1, s.epochs + 1):
        if recipe.schedule == "paper_steps":
            for group in optimizer.param_groups:
                group["lr"] = paper_step_lr(s.lr, epoch)
            lrs.append(optimizer.param_groups[0]["lr"])
        model.train()
        perm = (torch.randperm(len(x), generator=order) if recipe.shuffle else torch.arange(len(x))).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(x), s.batch_size):
            idx = perm[i:i + s.batch_size]
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach() * len(idx)
            if bar is not None:
                bar.update(1)
        last = float(total) / len(x)
        if not math.isfinite(last):
            raise RuntimeError(f"{VARIANT_NAMES[variant]} seed {seed}: the training loss is {last} in epoch {epoch}; "
                               f"training diverged (try a lower --lr than {s.lr})")
        if recipe.best_test_epoch:
            model.eval()
            per_epoch.append(test_accuracy(model, *test))
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{last:.4f}", **({"test": f"{per_epoch[-1]:.2f}%"} if per_epoch else {}))
    model.eval()
    info = {"train_seconds": time.perf_counter() - started, "train_loss_last_epoch": last}
    if per_epoch:
        best = int(np.argmax(per_epoch))  # the first of equal ones, as the authors' `test_acc > best_test_acc`
        info.update(accuracy_best_epoch=per_epoch[best], best_epoch=best + 1, test_accuracy_per_epoch=per_epoch)
    if lrs:
        info["lr_per_epoch"] = lrs
    return model, info


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """% of ``x`` that ``model`` (in eval mode) classifies as ``y``."""
    correct = sum(int(model(x[i:i + batch]).argmax(1).eq(y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * correct / len(x)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ood: torch.Tensor, log_end: float,
             batch: int = 1000) -> Tuple[StreamingAnalysis, Dict[str, Dict[str, np.ndarray]]]:
    """el_plugins.analysis over the MNIST test images (with labels) and the Fashion-MNIST ones (OOD), and the
    OOD scores as the authors' code computes them ({'id' / 'ood': {score: array}}, higher = in-distribution)."""
    analysis = StreamingAnalysis(log_end=log_end, n_bins=ECE_BINS)
    paper_scores = {"id": {k: [] for k in OOD_SUFFIXES}, "ood": {k: [] for k in OOD_SUFFIXES}}
    for side, images in (("id", x), ("ood", x_ood)):
        for i in range(0, len(images), batch):
            logits = model(images[i:i + batch])
            if side == "id":
                analysis.update(logits, y[i:i + batch])
            else:
                analysis.update_ood(logits)
            for key, value in metrics.paper_code_ood_scores(logits).items():
                paper_scores[side][key].append(value.cpu().numpy())
    return analysis, {side: {k: np.concatenate(v) for k, v in scores.items()} for side, scores in paper_scores.items()}


def attack_accuracy(model: nn.Module, make_attack: Callable, x: torch.Tensor, y: torch.Tensor, batch: int = 500,
                    bar=None) -> float:
    """% of (x, y) still classified correctly after the attack (clean mistakes count as broken)."""
    correct = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        adv = make_attack(xb, yb) if make_attack is not None else xb
        with torch.no_grad():
            correct += int(model(adv).argmax(1).eq(yb).sum())
        if bar is not None:
            bar.update(1)
    return 100.0 * correct / len(x)


def attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Settings, seed: int, bar=None) -> dict:
    """Accuracy on ``x`` clean and under L-inf attacks from torchattacks at each eps in EPSILONS:

    - ``attack_<eps>``: APGD with the cross-entropy loss, then APGD with the DLR loss on the images that
      withstood it (``s.apgd_steps`` steps each; the first two attacks of AutoAttack, torchattacks.MultiAttack);
    - ``pgd_<eps>``: PGD, ``s.pgd_steps`` steps of 2.5 eps / steps from a uniform random start;
    - ``fgsm_<eps>``: FGSM."""
    import torchattacks

    torch.manual_seed(10_000 + seed)  # the random starts
    out = {"attack_clean": attack_accuracy(model, None, x, y, bar=bar)}
    for eps in EPSILONS:
        apgd = torchattacks.MultiAttack([
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=s.apgd_steps, loss="ce", seed=seed),
            torchattacks.APGD(model, norm="Linf", eps=eps, steps=s.apgd_steps, loss="dlr", seed=seed),
        ])
        pgd = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / s.pgd_steps, steps=s.pgd_steps, random_start=True)
        out[f"attack_{eps}"] = attack_accuracy(model, apgd, x, y, bar=bar)
        out[f"pgd_{eps}"] = attack_accuracy(model, pgd, x, y, bar=bar)
        out[f"fgsm_{eps}"] = attack_accuracy(model, torchattacks.FGSM(model, eps=eps), x, y, bar=bar)
    return out


def measures(analysis: StreamingAnalysis, paper_scores: Dict[str, Dict[str, np.ndarray]], seed: int) -> dict:
    """The results.json keys of one model from its analysis (accuracies, AUROC, FPR95 in %); the ``*_paper_code``
    AUROC / FPR95 as the authors' metrics.py computes them from ``paper_scores``, ties in a random order drawn
    from ``seed``."""
    summary = analysis.summary()
    ind = analysis.arrays()["id"]
    detection = summary["ood"]["detection"]
    # min_{k != y} E(x, k) = -max_{k != y} z_k = margin - z_y = margin + E(x, y)
    lowest_out = ind["margin"].astype(np.float64) + ind["data_energy"].astype(np.float64)
    out = {
        "accuracy": 100.0 * summary["accuracy"],
        "ece": summary["ece"],
        "energy_data": summary["data_energy"]["mean"],
        "energy_ood_lowest": float(lowest_out.mean()),
        "energy_ood_lowest_paper_code": float(np.minimum(lowest_out, 0.0).mean()),
        "margin_mean": summary["margin"]["mean"],
        "margin_median": summary["margin"]["median"],
        "target_prob_mean": summary["target_prob"]["mean"],
    }
    for score, suffix in OOD_SUFFIXES.items():
        out["auroc" + suffix] = 100.0 * detection[score]["auroc"]
        out["fpr95" + suffix] = 100.0 * detection[score]["fpr95"]
        scores = (paper_scores["id"][score], paper_scores["ood"][score])
        out[f"auroc{suffix}_paper_code"] = 100.0 * metrics.auroc_paper_code(*scores, "higher", seed=seed)
        out[f"fpr95{suffix}_paper_code"] = 100.0 * metrics.fpr_at_tpr_paper_code(*scores, 0.95, "higher", seed=seed)
    return out


def aggregate(per_seed: List[dict]) -> Tuple[dict, dict]:
    """(mean, std) over seeds of every numeric key (lists such as a learning curve stay per seed); std is the
    sample standard deviation (ddof 1)."""
    keys = [k for k, v in per_seed[0].items() if k != "seed" and isinstance(v, (int, float))]
    mean = {k: float(np.mean([r[k] for r in per_seed])) for k in keys}
    std = {k: float(np.std([r[k] for r in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0 for k in keys}
    return mean, std


def check_finite(record: dict, where: str) -> None:
    """RuntimeError naming every value of ``record`` that is not a finite number (or a list or dict of them)."""
    def finite(v):
        if isinstance(v, (list, dict)):
            return all(finite(u) for u in (v.values() if isinstance(v, dict) else v))
        return isinstance(v, (int, float)) and math.isfinite(v)

    bad = [k for k, v in record.items() if not finite(v)]
    if bad:
        raise RuntimeError(f"{where}: {', '.join(f'{k}={record[k]!r}' for k in bad)} is not a finite number")


def labelled_tensors(data: Dict, dataset: str, split: str, n: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images (float in [0, 1]) and labels (int64) of ``data[(dataset, split)]`` on ``device``."""
    images, labels = data[(dataset, split)]
    return images_tensor(images[:n], device), torch.from_numpy(labels[:n].astype(np.int64)).to(device)


def environment(load_start) -> dict:
    """Where a run ran: load averages at its start and end, cores, torch, Python, machine."""
    return {"load_average_start_end": [list(load_start) if load_start else None,
                                       list(os.getloadavg()) if hasattr(os, "getloadavg") else None],
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def load_average():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def progress_bar(total: int, desc: str, unit: str, progress: bool) -> tqdm:
    """A tqdm bar on stderr that disappears when done (``progress`` False: none)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False)


def run(s: Settings, data: Dict, data_info: dict, progress: bool = True, log: Callable[[str], None] = print):
    """Train and evaluate every variant for every seed. ``data``: {(dataset, split): (images, labels)} as
    :func:`el_evidence.data.load` returns it. Returns (results dict, arrays of the first seed for the plots)."""
    device = torch.device(s.device)
    recipe = RECIPES[s.setup]
    started = time.time()
    load_start = load_average()
    x, y = labelled_tensors(data, "mnist", "train", s.train_images, device)
    xt, yt = labelled_tensors(data, "mnist", "test", s.test_images, device)
    xo, _ = labelled_tensors(data, "fashion_mnist", "test", s.ood_images, device)
    xa, ya = xt[:s.attack_images], yt[:s.attack_images]

    steps = s.epochs * math.ceil(len(x) / s.batch_size)
    attack_batches = (1 + 3 * len(EPSILONS)) * math.ceil(len(xa) / 500)
    per_seed: Dict[str, List[dict]] = {v: [] for v in s.variants}
    plot_arrays: Dict[str, dict] = {}
    runs = [(seed, v) for seed in s.seeds for v in s.variants]
    for n, (seed, variant) in enumerate(runs, 1):
        name = f"[{n}/{len(runs)}] {VARIANT_NAMES[variant]} seed {seed}"
        with progress_bar(steps, f"{name} train", "step", progress) as bar:
            model, train_info = train(variant, seed, x, y, s, bar, test=(xt, yt))
        t0 = time.perf_counter()
        analysis, paper_scores = evaluate(model, xt, yt, xo, s.log_end)
        record = {"seed": seed, **measures(analysis, paper_scores, seed)}
        if s.attack_images:
            with progress_bar(attack_batches, f"{name} attacks", "batch", progress) as bar:
                record.update(attacks(model, xa, ya, s, seed, bar))
        record.update(train_info, eval_seconds=time.perf_counter() - t0)
        check_finite(record, name)
        per_seed[variant].append(record)
        if variant not in plot_arrays:
            plot_arrays[variant] = analysis.arrays()
        log(f"{name}: accuracy {record['accuracy']:.2f}%"
            + (f" (best epoch {record['best_epoch']}: {record['accuracy_best_epoch']:.2f}%)" if "best_epoch" in record else "")
            + f", AUROC {record['auroc']:.2f}%, FPR95 {record['fpr95']:.2f}%, ECE {record['ece']:.4f}, "
            f"energy {record['energy_data']:.1f}"
            + (f", APGD 0.1/0.2 {record['attack_0.1']:.1f}/{record['attack_0.2']:.1f}%, PGD {record['pgd_0.1']:.1f}/"
               f"{record['pgd_0.2']:.1f}%" if s.attack_images else "")
            + f" ({train_info['train_seconds']:.0f}+{record['eval_seconds']:.0f} s)")

    variants = {}
    for variant, records in per_seed.items():
        mean, std = aggregate(records)
        variants[variant] = {"name": VARIANT_NAMES[variant], "seeds": records, "mean": mean, "std": std}
    wall = time.time() - started
    settings = asdict(s)
    extra = settings.pop("extra")
    network = NETWORKS[recipe.network]
    settings.update({
        "seeds": list(s.seeds), "variants": list(s.variants),
        "setup_label": recipe.label,
        "model": describe(recipe.network),
        "parameters": parameter_count(network()),
        "optimizer": recipe.describe(s.epochs, s.batch_size, s.lr),
        "losses": {"ce": "torch.nn.CrossEntropyLoss()", "ce_ls": f"torch.nn.CrossEntropyLoss(label_smoothing={s.smoothing})",
                   "el": str(make_loss("el", s.log_end, s.smoothing)), "el_ls": str(make_loss("el_ls", s.log_end, s.smoothing))},
        "log_end": s.log_end,
        "ood_score_keys": {"auroc/fpr95": "minimum conditional energy -max_k z_k",
                           "*_free_energy": "free energy -logsumexp_k z_k", "*_max_prob": "max_k softmax(z)_k, ranked as log max_k p_k in float64 (no float32 ties at 1)",
                           "*_paper_code": "as the authors' metrics.py computes them: the scores of their ood_test_mnist.py "
                                           "(max_k z_k, logsumexp_k z_k, max_k softmax(z)_k in float32), ranked with ties "
                                           "in random order (numpy.random.default_rng(seed of the model)), FPR95 at the "
                                           "first row of that ranking where the TPR reaches 0.95",
                           "others": "scikit-learn's roc_auc_score / roc_curve (a tie counts 1/2; FPR95 at the first "
                                     "threshold, a whole tied group at once, where the TPR reaches 0.95)"},
        "ece_bins": ECE_BINS,
        "energy_ood_lowest": "mean over the MNIST test set of min_{k != y} (-z_k); *_paper_code: of min(0, that), "
                             "as the authors' code computes it",
        "attacks": None if not s.attack_images else {
            "library": f"torchattacks {_version('torchattacks')}", "norm": "L-inf", "images": len(xa),
            "attack_<eps>": f"APGD-CE then APGD-DLR on the survivors, {s.apgd_steps} steps each "
                            "(torchattacks.MultiAttack; AutoAttack's first two attacks)",
            "pgd_<eps>": f"PGD, {s.pgd_steps} steps of 2.5 eps / {s.pgd_steps}, random start",
            "fgsm_<eps>": "FGSM", "epsilons": list(EPSILONS),
            "why_not_autoattack": extra.get("why_not_autoattack", "")},
        "std": "sample standard deviation over seeds (ddof 1)",
        "wall_seconds": round(wall, 1),
        **environment(load_start),
    })
    if recipe.best_test_epoch:
        settings["accuracy_best_epoch"] = ("the highest test accuracy over the epochs (the first epoch of equal ones), "
                                           "as the authors' train_mnist.py reports each run; every other measure is of "
                                           "the last epoch's model, which is what their saved checkpoints hold "
                                           "(best_model = model keeps a reference, not a copy)")
    settings.update(extra)
    results = {"data": data_info, "variants": variants, "paper": paper_block(), "settings": settings,
               "produced_by": provenance()}
    return results, plot_arrays


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
