"""Accumulate the diagnostics over batches, keeping per-row scalars only (never the logits)."""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

from el_plugins.checks import check_log_end
from el_plugins.analysis import metrics

__all__ = ['ID_FIELDS', 'NonFiniteLogitsWarning', 'OOD_FIELDS', 'StreamingAnalysis']

ID_FIELDS = ("margin", "target_prob", "nll", "data_energy", "confidence", "correct",
             "min_energy", "free_energy", "max_prob")
OOD_FIELDS = metrics.OOD_SCORES


class NonFiniteLogitsWarning(RuntimeWarning):
    """Some rows had NaN or infinite logits (a diverged model?): they are left out of every metric."""


def _clean(x):
    """JSON-safe: nan/inf -> None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


class StreamingAnalysis:
    """Feed batches of logits with :meth:`update` (in-distribution, with targets) and
    :meth:`update_ood` (out-of-distribution, no targets); read :meth:`summary`.

    Keeps 9 float32 scalars per in-distribution row and 3 per OOD row (about 36 MB per million
    rows), so quantiles, ECE and AUROC are exact. Logits of any float dtype and shape (..., V)
    (e.g. fairseq's (B, T, V) with (B, T) targets), the same V in every batch; rows whose target
    equals ``ignore_index`` (padding) are left out. Rows with a NaN or infinite logit are left out
    of every metric and counted (``non_finite_rows``; :meth:`summary` warns, and refuses when no
    row is left).

    log_end: rows with p_y > log_end count as well-classified. n_bins: ECE confidence bins.
    tpr: the true-positive rate of the reported FPR (0.95 -> ``fpr95``).
    """

    def __init__(self, log_end: float = 0.75, n_bins: int = 15, tpr: float = 0.95):
        self.log_end = check_log_end(log_end)
        if not (isinstance(n_bins, int) and n_bins >= 1):
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        if not 0.0 < tpr <= 1.0:
            raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
        self.n_bins, self.tpr = n_bins, float(tpr)
        self._id: Dict[str, List[np.ndarray]] = {k: [] for k in ID_FIELDS}
        self._ood: Dict[str, List[np.ndarray]] = {k: [] for k in OOD_FIELDS}
        self.num_classes: Optional[int] = None  # V of the first batch; every later batch must have it
        self.non_finite_rows = 0
        self.ood_non_finite_rows = 0

    # ------------------------------------------------------------------ feeding
    def _check_classes(self, logits: torch.Tensor, what: str) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
            return  # metrics says what is wrong
        if self.num_classes is None:
            self.num_classes = int(logits.size(-1))
        elif logits.size(-1) != self.num_classes:
            raise ValueError(f"{what} logits have {logits.size(-1)} classes (shape {tuple(logits.shape)}) but the "
                             f"earlier batches had {self.num_classes}: one StreamingAnalysis is one model's outputs")

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, ignore_index: Optional[int] = None) -> None:
        self._check_classes(logits, "these")
        values = metrics.row_values(logits, targets, ignore_index)
        finite = metrics.finite_rows(logits, targets, ignore_index)
        self.non_finite_rows += int(finite.numel() - finite.sum())
        for key in ID_FIELDS:
            self._id[key].append(values[key][finite].float().cpu().numpy())

    @torch.no_grad()
    def update_ood(self, logits: torch.Tensor) -> None:
        self._check_classes(logits, "these OOD")
        finite = metrics.finite_rows(logits)
        self.ood_non_finite_rows += int(finite.numel() - finite.sum())
        for key, v in metrics.ood_scores(logits).items():
            self._ood[key].append(v[finite].float().cpu().numpy())

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _cat(store: Dict[str, List[np.ndarray]]) -> Dict[str, np.ndarray]:
        out = {}
        for key, chunks in store.items():
            if len(chunks) > 1:  # compact in place so repeated reads stay cheap
                chunks[:] = [np.concatenate(chunks)]
            out[key] = chunks[0] if chunks else np.zeros(0, dtype=np.float32)
        return out

    @property
    def rows(self) -> int:
        return int(sum(c.size for c in self._id["margin"]))

    @property
    def ood_rows(self) -> int:
        return int(sum(c.size for c in self._ood["min_energy"]))

    def arrays(self) -> Dict[str, Dict[str, np.ndarray]]:
        """{'id': {field: per-row array}, 'ood': {score: per-row array}} (views; do not modify).

        id fields: margin, target_prob, nll, data_energy, confidence, correct, min_energy,
        free_energy, max_prob (the OOD score log max_k p_k; confidence is max_k p_k itself).
        """
        return {"id": self._cat(self._id), "ood": self._cat(self._ood)}

    def non_finite_problem(self) -> Optional[str]:
        """What the rows with NaN or infinite logits mean for the summary, or None when there are none."""
        parts = []
        for bad, kept, what in ((self.non_finite_rows, self.rows, "in-distribution"),
                                (self.ood_non_finite_rows, self.ood_rows, "OOD")):
            if bad:
                parts.append(f"{bad} of {bad + kept} {what} rows have NaN or infinite logits"
                             + (" (all of them: the model diverged?)" if not kept else ""))
        return "; ".join(parts) or None

    def summary(self) -> dict:
        """The diagnostics as a JSON-able dict (undefined values are None). Rows with NaN or infinite logits
        are left out of every value and counted in ``non_finite_rows`` (a :class:`NonFiniteLogitsWarning`);
        when they are all there is, a ValueError."""
        problem = self.non_finite_problem()
        if problem and ((self.non_finite_rows and not self.rows) or (self.ood_non_finite_rows and not self.ood_rows)):
            raise ValueError(f"{problem}: there is nothing to analyze")
        if problem:
            warnings.warn(f"{problem}: they are left out of every metric", NonFiniteLogitsWarning, stacklevel=2)
        arr = self.arrays()
        a, o = arr["id"], arr["ood"]
        n = int(a["margin"].size)
        ece, table = metrics.expected_calibration_error(a["confidence"], a["correct"], self.n_bins)
        mean = (lambda v: float(np.mean(v, dtype=np.float64)) if v.size else float("nan"))
        out = {
            "rows": n,
            "non_finite_rows": self.non_finite_rows,
            "log_end": self.log_end,
            "accuracy": mean(a["correct"]),
            "well_classified_fraction": mean((a["target_prob"] > self.log_end).astype(np.float64)),
            "nll": mean(a["nll"]),
            "ece": ece,
            "n_bins": self.n_bins,
            "reliability": table,
            "margin": metrics.describe(a["margin"]),
            "positive_margin_fraction": mean((a["margin"] > 0).astype(np.float64)),
            "target_prob": metrics.describe(a["target_prob"]),
            "data_energy": metrics.describe(a["data_energy"]),
            "min_energy": metrics.describe(a["min_energy"]),
            "free_energy": metrics.describe(a["free_energy"]),
            "max_prob": metrics.describe(a["confidence"]),
            "ood": None,
        }
        m = int(o["min_energy"].size)
        if m:
            tpr_key = f"fpr{round(self.tpr * 100):d}"
            detection = {}
            for score, direction in metrics.ID_IS.items():
                if n:
                    detection[score] = {
                        "in_distribution_is": direction,
                        "auroc": metrics.auroc(a[score], o[score], direction),
                        tpr_key: metrics.fpr_at_tpr(a[score], o[score], self.tpr, direction),
                    }
                else:
                    detection[score] = {"in_distribution_is": direction, "auroc": None, tpr_key: None}
            out["ood"] = {"rows": m, "non_finite_rows": self.ood_non_finite_rows, "tpr": self.tpr, "detection": detection,
                          **{score: metrics.describe(o[score]) for score in OOD_FIELDS}}
        return _clean(out)
