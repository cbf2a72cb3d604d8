"""The paper's MNIST tables, rerun: CE, CE+LS, EL, EL+LS on real MNIST, Fashion-MNIST as OOD.

One small CNN and one schedule for every variant and seed (see :class:`SmallCNN` and :func:`train`);
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
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from el_plugins.analysis import StreamingAnalysis
from el_plugins.loss import EncouragingLoss
from el_plugins.reproduce.paper import VARIANT_NAMES, VARIANTS, paper_block

MEAN, STD = 0.1307, 0.3081  # MNIST pixel statistics (the usual normalisation), applied inside the model
EPSILONS = (0.1, 0.2)
KEYS = ("accuracy", "auroc", "fpr95", "auroc_free_energy", "fpr95_free_energy", "auroc_max_prob", "fpr95_max_prob",
        "ece", "energy_data", "energy_ood_lowest", "attack_0.1", "attack_0.2")
EXTRA_KEYS = ("energy_ood_lowest_paper_code", "pgd_0.1", "pgd_0.2", "fgsm_0.1", "fgsm_0.2", "attack_clean", "margin_mean",
              "margin_median", "target_prob_mean", "train_loss_last_epoch")
ECE_BINS = 10  # as the authors' ece_score
WHY_NOT_AUTOATTACK = (
    "torchattacks' AutoAttack (version 'standard') took 47 s per 200 images at eps 0.1 on a SmallCNN here (2 CPU "
    "cores), and torchattacks builds its APGD parts with 10 steps, so it was weaker than 100-step APGD alone "
    "(CE model, eps 0.1: AutoAttack 66.5%, APGD-CE 58.5%, APGD-DLR 61.0%, PGD-20 64.0%; EL model: 67.5%, 64.5%, "
    "64.0%, 71.5%); see results/mnist/attack_probe.json (python -m el_plugins.reproduce.attack_probe). The attack "
    "used instead is the first two attacks of AutoAttack as published, APGD-CE and APGD-DLR with 100 steps, an "
    "image counting as robust only if it withstands both (torchattacks.MultiAttack), at about 3 s per 200 images")


class SmallCNN(nn.Module):
    """conv3x3(16)-ReLU-maxpool, conv3x3(32)-ReLU-maxpool, linear(1568, 64)-ReLU, linear(64, 10); 106k parameters

    Takes images in [0, 1] (N, 1, 28, 28) and normalises them itself, so that attacks work in pixel space.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - MEAN) / STD))


@dataclass
class Settings:
    """Everything a run depends on (recorded in results.json)."""
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    log_end: float = 1.0
    smoothing: float = 0.1
    train_images: int = 60000
    test_images: int = 10000
    ood_images: int = 10000
    attack_images: int = 500
    apgd_steps: int = 100
    pgd_steps: int = 20
    device: str = "cpu"
    threads: int = 1
    quick: bool = False
    extra: Dict = field(default_factory=dict)


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


def train(variant: str, seed: int, x: torch.Tensor, y: torch.Tensor, s: Settings, bar=None) -> Tuple[nn.Module, dict]:
    """Adam with a one-cycle learning rate (peak ``s.lr``, 15% warm-up, cosine down), ``s.epochs`` epochs of
    shuffled batches; the seed sets the initialisation and the order."""
    torch.manual_seed(seed)
    device = x.device
    model = SmallCNN().to(device)
    criterion = make_loss(variant, s.log_end, s.smoothing)
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    steps_per_epoch = math.ceil(len(x) / s.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.lr, total_steps=s.epochs * steps_per_epoch,
                                                    pct_start=0.15)
    order = torch.Generator().manual_seed(seed)
    model.train()
    started, last = time.perf_counter(), float("nan")
    for epoch in range(s.epochs):
        perm = torch.randperm(len(x), generator=order).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(x), s.batch_size):
            idx = perm[i:i + s.batch_size]
            loss = criterion(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(idx)
            if bar is not None:
                bar.update(1)
        last = float(total) / len(x)
        if not math.isfinite(last):
            raise RuntimeError(f"{VARIANT_NAMES[variant]} seed {seed}: the training loss is {last} in epoch {epoch + 1}; "
                               f"training diverged (try a lower --lr than {s.lr})")
        if bar is not None:
            bar.set_postfix(epoch=epoch + 1, loss=f"{last:.4f}")
    model.eval()
    return model, {"train_seconds": time.perf_counter() - started, "train_loss_last_epoch": last}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ood: torch.Tensor, log_end: float,
             batch: int = 1000) -> StreamingAnalysis:
    """el_plugins.analysis over the MNIST test images (with labels) and the Fashion-MNIST ones (OOD)."""
    analysis = StreamingAnalysis(log_end=log_end, n_bins=ECE_BINS)
    for i in range(0, len(x), batch):
        analysis.update(model(x[i:i + batch]), y[i:i + batch])
    for i in range(0, len(x_ood), batch):
        analysis.update_ood(model(x_ood[i:i + batch]))
    return analysis


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


def measures(analysis: StreamingAnalysis) -> dict:
    """The results.json keys of one model from its analysis (accuracies, AUROC, FPR95 in %)."""
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
    for score, suffix in (("min_energy", ""), ("free_energy", "_free_energy"), ("max_prob", "_max_prob")):
        out["auroc" + suffix] = 100.0 * detection[score]["auroc"]
        out["fpr95" + suffix] = 100.0 * detection[score]["fpr95"]
    return out


def aggregate(per_seed: List[dict]) -> Tuple[dict, dict]:
    """(mean, std) over seeds of every numeric key; std is the sample standard deviation (ddof 1)."""
    keys = [k for k in per_seed[0] if k != "seed"]
    mean = {k: float(np.mean([r[k] for r in per_seed])) for k in keys}
    std = {k: float(np.std([r[k] for r in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0 for k in keys}
    return mean, std


def check_finite(record: dict, where: str) -> None:
    bad = [k for k, v in record.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise RuntimeError(f"{where}: {', '.join(f'{k}={record[k]!r}' for k in bad)} is not a finite number")


def run(s: Settings, data: Dict, data_info: dict, progress: bool = True, log: Callable[[str], None] = print):
    """Train and evaluate every variant for every seed. ``data``: {(dataset, split): (images, labels)} as
    :func:`el_plugins.data.load` returns it. Returns (results dict, arrays of the first seed for the plots)."""
    device = torch.device(s.device)
    started = time.time()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    train_x, train_y = data[("mnist", "train")]
    test_x, test_y = data[("mnist", "test")]
    ood_x, _ = data[("fashion_mnist", "test")]
    x = images_tensor(train_x[:s.train_images], device)
    y = torch.from_numpy(train_y[:s.train_images].astype(np.int64)).to(device)
    xt = images_tensor(test_x[:s.test_images], device)
    yt = torch.from_numpy(test_y[:s.test_images].astype(np.int64)).to(device)
    xo = images_tensor(ood_x[:s.ood_images], device)
    xa, ya = xt[:s.attack_images], yt[:s.attack_images]

    steps = s.epochs * math.ceil(len(x) / s.batch_size)
    attack_batches = (1 + 3 * len(EPSILONS)) * math.ceil(len(xa) / 500)
    per_seed: Dict[str, List[dict]] = {v: [] for v in s.variants}
    plot_arrays: Dict[str, dict] = {}
    runs = [(seed, v) for seed in s.seeds for v in s.variants]
    for n, (seed, variant) in enumerate(runs, 1):
        name = f"[{n}/{len(runs)}] {VARIANT_NAMES[variant]} seed {seed}"
        with tqdm(total=steps, desc=f"{name} train", unit="step", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True, leave=False) as bar:
            model, train_info = train(variant, seed, x, y, s, bar)
        t0 = time.perf_counter()
        analysis = evaluate(model, xt, yt, xo, s.log_end)
        record = {"seed": seed, **measures(analysis)}
        with tqdm(total=attack_batches, desc=f"{name} attacks", unit="batch", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True, leave=False) as bar:
            record.update(attacks(model, xa, ya, s, seed, bar))
        record.update(train_info, eval_seconds=time.perf_counter() - t0)
        check_finite(record, name)
        per_seed[variant].append(record)
        if variant not in plot_arrays:
            plot_arrays[variant] = analysis.arrays()
        log(f"{name}: accuracy {record['accuracy']:.2f}%, AUROC {record['auroc']:.2f}%, FPR95 {record['fpr95']:.2f}%, "
            f"ECE {record['ece']:.4f}, energy {record['energy_data']:.1f}, APGD 0.1/0.2 {record['attack_0.1']:.1f}/"
            f"{record['attack_0.2']:.1f}%, PGD {record['pgd_0.1']:.1f}/{record['pgd_0.2']:.1f}% "
            f"({train_info['train_seconds']:.0f}+{record['eval_seconds']:.0f} s)")

    variants = {}
    for variant, records in per_seed.items():
        mean, std = aggregate(records)
        variants[variant] = {"name": VARIANT_NAMES[variant], "seeds": records, "mean": mean, "std": std}
    wall = time.time() - started
    settings = asdict(s)
    extra = settings.pop("extra")
    settings.update({
        "seeds": list(s.seeds), "variants": list(s.variants),
        "model": "SmallCNN: " + SmallCNN.__doc__.splitlines()[0],
        "parameters": sum(p.numel() for p in SmallCNN().parameters()),
        "optimizer": f"Adam, one-cycle learning rate (peak {s.lr}, 15% warm-up, cosine), batch {s.batch_size}, "
                     f"{s.epochs} epoch{'s' if s.epochs > 1 else ''}, shuffled; no augmentation, no weight decay",
        "losses": {"ce": "torch.nn.CrossEntropyLoss()", "ce_ls": f"torch.nn.CrossEntropyLoss(label_smoothing={s.smoothing})",
                   "el": str(make_loss("el", s.log_end, s.smoothing)), "el_ls": str(make_loss("el_ls", s.log_end, s.smoothing))},
        "log_end": s.log_end,
        "ood_score_keys": {"auroc/fpr95": "minimum conditional energy -max_k z_k",
                           "*_free_energy": "free energy -logsumexp_k z_k", "*_max_prob": "max_k softmax(z)_k, ranked as log max_k p_k in float64 (no float32 ties at 1)"},
        "ece_bins": ECE_BINS,
        "energy_ood_lowest": "mean over the MNIST test set of min_{k != y} (-z_k); *_paper_code: of min(0, that), "
                             "as the authors' code computes it",
        "attacks": {"library": f"torchattacks {_version('torchattacks')}", "norm": "L-inf", "images": len(xa),
                    "attack_<eps>": f"APGD-CE then APGD-DLR on the survivors, {s.apgd_steps} steps each "
                                    "(torchattacks.MultiAttack; AutoAttack's first two attacks)",
                    "pgd_<eps>": f"PGD, {s.pgd_steps} steps of 2.5 eps / {s.pgd_steps}, random start",
                    "fgsm_<eps>": "FGSM", "epsilons": list(EPSILONS),
                    "why_not_autoattack": extra.get("why_not_autoattack", "")},
        "std": "sample standard deviation over seeds (ddof 1)",
        "wall_seconds": round(wall, 1),
        "load_average_start_end": [list(load_start) if load_start else None,
                                   list(os.getloadavg()) if hasattr(os, "getloadavg") else None],
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
    })
    settings.update(extra)
    results = {"data": data_info, "variants": variants, "paper": paper_block(), "settings": settings}
    return results, plot_arrays


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
