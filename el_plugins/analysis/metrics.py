"""The diagnostics of the EL paper, from logits and targets (torch + numpy only).

Conventions (one row = one image, or one target token):

- margin            z_y - max_{k != y} z_k       > 0 iff the row is classified correctly (ties: 0)
- target_prob       p_y = softmax(z)_y
- data_energy       E(x, y) = -z_y               the conditional energy on the data (paper Fig. 5)
- min_energy        min_k E(x, k) = -max_k z_k   the paper's OOD score (Table 4)
- free_energy       -logsumexp_k z_k             the usual energy OOD baseline
- confidence        max_k p_k                    (for calibration)
- max_prob          log max_k p_k                the usual max-softmax OOD baseline, as an OOD score: it ranks
                                                 rows as max_k p_k does, but in float64 log space, where rows
                                                 whose max_k p_k rounds to 1 in float32 do not tie

OOD detection treats the in-distribution rows as the POSITIVE class. For the two energies a LOWER
score means "more in-distribution", for max_prob a HIGHER one (see :data:`ID_IS`); every function
taking ``id_is`` turns the scores around so that the AUROC and the FPR at 95% TPR are always
reported for "in-distribution = positive", whatever the score's sign.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from el_plugins.checks import check_targets
from el_plugins.core import compute_dtype

__all__ = ['accuracy', 'auroc', 'auroc_paper_code', 'data_energy', 'describe', 'ece_from_table',
           'expected_calibration_error', 'finite_rows', 'fpr_at_tpr', 'fpr_at_tpr_paper_code', 'free_energy',
           'ID_IS', 'log_max_prob', 'margins', 'max_prob', 'min_energy', 'OOD_SCORES', 'ood_scores',
           'paper_code_ood_scores', 'QUANTILES', 'reliability_table', 'roc_curve', 'row_values', 'target_probs',
           'well_classified_fraction']

ID_IS = {"min_energy": "lower", "free_energy": "lower", "max_prob": "higher"}
"""For each OOD score, whether in-distribution rows score 'lower' or 'higher'."""

OOD_SCORES = tuple(ID_IS)


# --------------------------------------------------------------------------- per-row values (torch)
def _flatten(logits: torch.Tensor, targets: Optional[torch.Tensor] = None, ignore_index: Optional[int] = None):
    """(..., V) logits and (...) targets -> (N, V), (N,) in float32 or wider, ignored rows dropped."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError("logits must be a tensor of shape (..., V)")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    num_classes = logits.size(-1)
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got logits of shape {tuple(logits.shape)}")
    z = logits.detach().reshape(-1, num_classes).to(compute_dtype(logits.dtype))
    if targets is None:
        return z, None
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets must have the shape of the logits without their last dimension: "
            f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)}"
        )
    t = targets.detach().reshape(-1).to(z.device)
    check_targets(t, num_classes, ignore_index)
    if ignore_index is not None:
        keep = t.ne(ignore_index)
        z, t = z[keep], t[keep]
    return z, t.long()


def _target_and_rival(z: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """z_y and max_{k != y} z_k per row."""
    z_y = z.gather(1, t.unsqueeze(1)).squeeze(1)
    rival = z.scatter(1, t.unsqueeze(1), float("-inf")).amax(1)
    return z_y, rival


def margins(logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-row margin z_y - max_{k != y} z_k (float32 or wider); rows equal to ignore_index are dropped."""
    z, t = _flatten(logits, targets, ignore_index)
    z_y, rival = _target_and_rival(z, t)
    return z_y - rival


def target_probs(logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-row p_y = softmax(z)_y."""
    z, t = _flatten(logits, targets, ignore_index)
    return torch.exp(z.gather(1, t.unsqueeze(1)).squeeze(1) - torch.logsumexp(z, 1))


def data_energy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-row conditional energy on the data, E(x, y) = -z_y."""
    z, t = _flatten(logits, targets, ignore_index)
    return -z.gather(1, t.unsqueeze(1)).squeeze(1)


def min_energy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row minimum conditional energy -max_k z_k (lower = more in-distribution)."""
    z, _ = _flatten(logits)
    return -z.amax(1)


def free_energy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row free energy -logsumexp_k z_k (lower = more in-distribution)."""
    z, _ = _flatten(logits)
    return -torch.logsumexp(z, 1)


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Per-row maximum softmax probability (higher = more in-distribution)."""
    z, _ = _flatten(logits)
    return torch.exp(z.amax(1) - torch.logsumexp(z, 1))


def _log_max_prob(z: torch.Tensor) -> torch.Tensor:
    """log max_k p_k = -log(1 + sum_{k != argmax} exp(z_k - max_k z_k)), in float64: exact where
    ``exp(top - lse)`` rounds to 1 (EL's confident rows: one such row in float32 is a tie)."""
    z = z.double()
    top, arg = z.max(1, keepdim=True)
    rest = torch.exp(z - top).scatter(1, arg, 0.0).sum(1)
    return -torch.log1p(rest)


def log_max_prob(logits: torch.Tensor) -> torch.Tensor:
    """Per-row log max_k p_k (float64; higher = more in-distribution): the OOD score ``max_prob``."""
    z, _ = _flatten(logits)
    return _log_max_prob(z)


def ood_scores(logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The three OOD scores of every row (see :data:`ID_IS` for their directions)."""
    z, _ = _flatten(logits)
    return {"min_energy": -z.amax(1), "free_energy": -torch.logsumexp(z, 1), "max_prob": _log_max_prob(z)}


def row_values(logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Every per-row value in one pass: margin, target_prob, nll (-log p_y), data_energy,
    confidence (max_k p_k), correct (argmax == y, as 0/1), min_energy, free_energy, max_prob
    (log max_k p_k, the OOD score)."""
    z, t = _flatten(logits, targets, ignore_index)
    z_y, rival = _target_and_rival(z, t)
    top = torch.maximum(z_y, rival)
    lse = torch.logsumexp(z, 1)
    log_p_y = z_y - lse
    confidence = torch.exp(top - lse)
    return {
        "margin": z_y - rival,
        "target_prob": torch.exp(log_p_y),
        "nll": -log_p_y,
        "data_energy": -z_y,
        "confidence": confidence,
        "correct": z.argmax(1).eq(t).to(z.dtype),
        "min_energy": -top,
        "free_energy": -lse,
        "max_prob": _log_max_prob(z),
    }


def finite_rows(logits: torch.Tensor, targets: Optional[torch.Tensor] = None,
                ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per row (rows equal to ignore_index dropped): whether all its logits are finite (no NaN, no +-inf)."""
    z, _ = _flatten(logits, targets, ignore_index)
    return torch.isfinite(z).all(1)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> float:
    """Fraction of rows with argmax_k z_k == y (nan for no rows)."""
    z, t = _flatten(logits, targets, ignore_index)
    return float(z.argmax(1).eq(t).double().mean()) if t.numel() else float("nan")


def well_classified_fraction(logits: torch.Tensor, targets: torch.Tensor, log_end: float = 0.75,
                             ignore_index: Optional[int] = None) -> float:
    """Fraction of rows with p_y > log_end (the rows past EL's conservative threshold)."""
    p = target_probs(logits, targets, ignore_index)
    return float((p > log_end).double().mean()) if p.numel() else float("nan")


# --------------------------------------------------------------------------- calibration (numpy)
def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def reliability_table(confidence, correct, n_bins: int = 15) -> List[dict]:
    """Equal-width confidence bins (lo, hi] over [0, 1] (the first bin also holds 0).

    One dict per bin: lower, upper, count, accuracy and confidence (means over the bin; None when
    the bin is empty).
    """
    if not (isinstance(n_bins, int) and n_bins >= 1):
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    conf, corr = _np(confidence), _np(correct)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} vs {corr.size}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr, minlength=n_bins)
    table = []
    for b in range(n_bins):
        n = int(count[b])
        table.append({
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
            "accuracy": float(sum_corr[b] / n) if n else None,
            "confidence": float(sum_conf[b] / n) if n else None,
        })
    return table


def ece_from_table(table: List[dict]) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (nan for no rows)."""
    total = sum(row["count"] for row in table)
    if not total:
        return float("nan")
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]) / total)


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> Tuple[float, List[dict]]:
    """(ECE, reliability table) over ``n_bins`` equal-width confidence bins."""
    table = reliability_table(confidence, correct, n_bins)
    return ece_from_table(table), table


# --------------------------------------------------------------------------- OOD detection (numpy)
def _oriented(id_scores, ood_scores_, id_is: str) -> Tuple[np.ndarray, np.ndarray]:
    """Scores turned so that higher = more in-distribution."""
    if id_is not in ("higher", "lower"):
        raise ValueError(f"id_is must be 'higher' or 'lower', got {id_is!r}")
    a, b = _np(id_scores), _np(ood_scores_)
    if not a.size or not b.size:
        raise ValueError(f"need in-distribution and OOD scores, got {a.size} and {b.size}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("scores contain NaN")
    return (a, b) if id_is == "higher" else (-a, -b)


def _labelled(id_scores, ood_scores_, id_is: str) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """(labels: 1 = in-distribution, oriented scores, n_id, n_ood) for scikit-learn's ROC functions."""
    a, b = _oriented(id_scores, ood_scores_, id_is)
    labels = np.concatenate([np.ones(a.size, dtype=np.int8), np.zeros(b.size, dtype=np.int8)])
    return labels, np.concatenate([a, b]).astype(np.float64), a.size, b.size


def auroc(id_scores, ood_scores_, id_is: str = "higher") -> float:
    """Area under the ROC curve, in-distribution = positive: P(s_id > s_ood) + P(s_id = s_ood) / 2
    (scikit-learn's ``roc_auc_score``).

    ``id_is``: 'higher' if in-distribution rows score higher (max_prob), 'lower' if they score lower
    (energies).
    """
    from sklearn.metrics import roc_auc_score

    labels, scores, _, _ = _labelled(id_scores, ood_scores_, id_is)
    return float(roc_auc_score(labels, scores))


def fpr_at_tpr(id_scores, ood_scores_, tpr: float = 0.95, id_is: str = "higher") -> float:
    """False-positive rate (fraction of OOD rows accepted as in-distribution) at the highest
    threshold whose true-positive rate (fraction of in-distribution rows accepted) is >= ``tpr``:
    the first point of scikit-learn's ``roc_curve`` that reaches ``tpr``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    fprs, tprs = roc_curve(id_scores, ood_scores_, id_is)
    n_id = _np(id_scores).size
    needed = max(1, int(math.ceil(tpr * n_id - 1e-9)))  # in-distribution rows to accept, counted exactly
    return float(fprs[np.argmax(np.rint(tprs * n_id) >= needed)])


def roc_curve(id_scores, ood_scores_, id_is: str = "higher") -> Tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); in-distribution = positive
    (scikit-learn's ``roc_curve`` without dropping collinear points)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    labels, scores, _, _ = _labelled(id_scores, ood_scores_, id_is)
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


# --------------------------------------------------------------------------- OOD detection, the authors' way
# The authors' metrics.py (after FSSD's code) ranks all rows by score, most in-distribution first, after a
# random permutation, so tied rows come in random order; it then walks that ranking one row at a time.
# Without ties the two definitions agree exactly; with ties the AUROC is one draw of a random variable whose
# mean is scikit-learn's (a tie counted 1/2), and the FPR stops inside a tied group at the row where the TPR
# reaches 0.95, where scikit-learn's threshold accepts the whole group.
def paper_code_ood_scores(logits: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The three OOD scores as the authors' ood_test_mnist.py computes them (higher = more in-distribution,
    in the logits' dtype): min_energy -> max_k z_k, free_energy -> logsumexp_k z_k, max_prob -> max_k softmax(z)_k
    (in float32 a confident row's max_k p_k rounds to 1: such rows tie). Computed in float32 or wider."""
    z, _ = _flatten(logits)
    return {"min_energy": z.amax(1), "free_energy": torch.logsumexp(z, 1), "max_prob": torch.softmax(z, 1).amax(1)}


def _ranking_random_ties(id_scores, ood_scores_, id_is: str, seed: int) -> np.ndarray:
    """is-in-distribution of every row along the authors' ranking (most in-distribution first, ties in the
    order of a random permutation drawn by ``numpy.random.default_rng(seed)``)."""
    a, b = _oriented(id_scores, ood_scores_, id_is)
    scores = np.concatenate([a, b])
    is_id = np.concatenate([np.ones(a.size, dtype=bool), np.zeros(b.size, dtype=bool)])
    perm = np.random.default_rng(seed).permutation(scores.size)
    order = np.argsort(-scores[perm], kind="stable")
    return is_id[perm][order]


def auroc_paper_code(id_scores, ood_scores_, id_is: str = "higher", seed: int = 0) -> float:
    """AUROC as the authors' metrics.py computes it: the trapezoids under the ROC curve walked one row at a
    time along a ranking whose ties are in random order, = sum over OOD rows of TP(rows ranked before it) / (P N).
    Equal to :func:`auroc` without ties; with ties one random draw around it."""
    is_id = _ranking_random_ties(id_scores, ood_scores_, id_is, seed)
    n_id, n_ood = int(is_id.sum()), int(is_id.size - is_id.sum())
    true_positives = np.cumsum(is_id)
    return float(true_positives[~is_id].sum(dtype=np.float64) / (n_id * n_ood))


def fpr_at_tpr_paper_code(id_scores, ood_scores_, tpr: float = 0.95, id_is: str = "higher", seed: int = 0) -> float:
    """FPR at ``tpr`` as the authors' metrics.py computes it: walking the ranking (ties in random order) one row
    at a time, FP / N at the first row where TP / P >= ``tpr``. Equal to :func:`fpr_at_tpr` without ties at
    that point; with ties there it counts only the tied OOD rows ranked before that row, not the whole group."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    is_id = _ranking_random_ties(id_scores, ood_scores_, id_is, seed)
    n_id, n_ood = int(is_id.sum()), int(is_id.size - is_id.sum())
    first = int(np.argmax(np.cumsum(is_id) / n_id >= tpr))
    return float(np.cumsum(~is_id)[first] / n_ood)


# --------------------------------------------------------------------------- summaries
QUANTILES = (("q05", 0.05), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q95", 0.95))


def describe(x) -> Optional[dict]:
    """mean, std, min, q05, q25, median, q75, q95, max of a 1-d array (None when empty)."""
    v = _np(x)
    if not v.size:
        return None
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min())}
    qs = np.quantile(v, [q for _, q in QUANTILES])
    out.update({name: float(q) for (name, _), q in zip(QUANTILES, qs)})
    out["max"] = float(v.max())
    return out
