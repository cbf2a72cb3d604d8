"""Slide-ready PNG plots, runs overlaid. matplotlib's Agg canvas only (no pyplot, no global backend)."""
from __future__ import annotations

import functools
import io
from typing import Dict, List, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from el_plugins.analysis import metrics

__all__ = ['COLORS', 'curves_png', 'histogram_png', 'reliability_png', 'roc_png', 'SCORE_LABELS', 'STYLE']

STYLE = {"font.size": 13, "axes.titlesize": 15, "axes.labelsize": 13, "legend.fontsize": 11}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
SCORE_LABELS = {
    "min_energy": "min. conditional energy  $-\\max_k z_k$",
    "free_energy": "free energy  $-\\log\\sum_k e^{z_k}$",
    "max_prob": "max. probability  $\\max_k p_k$",
}


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _styled(fn):
    """Run a plotting function under STYLE (rcParams are read when artists are created)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _figure(width=8.0, height=5.0, ncols=1):
    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _shared_edges(arrays: Sequence[np.ndarray], bins: int, lo_q=0.005, hi_q=0.995, bounds=None):
    if bounds is not None:
        return np.linspace(bounds[0], bounds[1], bins + 1)
    pooled = np.concatenate([a for a in arrays if a.size]) if any(a.size for a in arrays) else np.zeros(1)
    lo, hi = np.quantile(pooled, [lo_q, hi_q])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _hist(ax, values: np.ndarray, edges: np.ndarray, color: str, label: str, linestyle="-", fill=True):
    """Density histogram; values outside the edges are piled into the end bins (clipped)."""
    if not values.size:
        return
    v = np.clip(values, edges[0], edges[-1])
    if fill:
        ax.hist(v, bins=edges, density=True, color=color, alpha=0.18)
    ax.hist(v, bins=edges, density=True, histtype="step", color=color, linewidth=2, linestyle=linestyle, label=label)


@_styled
def histogram_png(runs: Dict[str, np.ndarray], title: str, xlabel: str, *, bins: int = 60,
                  vline: Optional[float] = None, vline_label: Optional[str] = None, bounds=None,
                  ood: Optional[Dict[str, np.ndarray]] = None, ood_label: str = "OOD") -> bytes:
    """One density histogram per run (shared bins), the mean of each as a dashed line.
    With ``ood``, each run's OOD values are drawn dashed in the same colour."""
    fig, (ax,) = _figure(8.0, 5.0 if ood is None else 6.0)
    edges = _shared_edges(list(runs.values()) + list((ood or {}).values()), bins, bounds=bounds)
    for i, (name, values) in enumerate(runs.items()):
        label = f"{name} (mean {np.mean(values):.2f})" if values.size else name
        if ood is not None:
            label = f"{name}, in-dist. (mean {np.mean(values):.2f})" if values.size else name
        _hist(ax, values, edges, _color(i), label)
        if values.size and ood is None:
            ax.axvline(float(np.mean(values)), color=_color(i), linestyle="--", linewidth=1.2)
        if ood is not None and ood.get(name) is not None and ood[name].size:
            _hist(ax, ood[name], edges, _color(i), f"{name}, {ood_label} (mean {np.mean(ood[name]):.2f})",
                  linestyle="--", fill=False)
    if vline is not None:
        ax.axvline(vline, color="black", linestyle=":", linewidth=1.5, label=vline_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    if ood is not None:  # four or more entries: below the axes, out of the data's way
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    else:
        ax.legend(loc="best", frameon=False)
    return _png(fig)


@_styled
def curves_png(curves: Dict[str, Sequence], title: str, xlabel: str, ylabel: str, *, log_y: bool = False) -> bytes:
    """One line per run: ``curves`` maps a run's name to its (x, y) points (e.g. epoch, valid nll)."""
    fig, (ax,) = _figure(8.0, 5.0)
    for i, (name, points) in enumerate(curves.items()):
        if len(points):
            x, y = zip(*points)
            ax.plot(x, y, marker="o", ms=3, color=_color(i), label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False, fontsize=9)
    return _png(fig)


@_styled
def reliability_png(tables: Dict[str, List[dict]], eces: Dict[str, Optional[float]], title: str) -> bytes:
    """Reliability diagram: accuracy vs mean confidence per non-empty bin, one line per run."""
    fig, (ax,) = _figure(6.5, 6.0)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1.2, label="perfect calibration")
    for i, (name, table) in enumerate(tables.items()):
        rows = [r for r in table if r["count"]]
        if not rows:
            continue
        conf = [r["confidence"] for r in rows]
        acc = [r["accuracy"] for r in rows]
        ece = eces.get(name)
        label = f"{name} (ECE {100 * ece:.2f}%)" if ece is not None else name
        ax.plot(conf, acc, marker="o", color=_color(i), linewidth=2, markersize=5, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xlabel("confidence (mean max. probability in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    return _png(fig)


@_styled
def roc_png(id_scores: Dict[str, Dict[str, np.ndarray]], ood_scores: Dict[str, Dict[str, np.ndarray]],
            aurocs: Dict[str, Dict[str, Optional[float]]], title: str, tpr: float = 0.95) -> bytes:
    """One panel per OOD score, one ROC curve per run (in-distribution = positive)."""
    scores = list(metrics.ID_IS)
    fig, axes = _figure(5.2 * len(scores), 5.4, ncols=len(scores))
    for ax, score in zip(axes, scores):
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="chance")
        ax.axhline(tpr, color="black", linestyle=":", linewidth=1, label=f"TPR {100 * tpr:.0f}%")
        for i, name in enumerate(id_scores):
            a, o = id_scores[name][score], ood_scores[name][score]
            if not (a.size and o.size):
                continue
            fpr, tp = metrics.roc_curve(a, o, metrics.ID_IS[score])
            value = aurocs.get(name, {}).get(score)
            label = f"{name} (AUROC {100 * value:.2f}%)" if value is not None else name
            ax.plot(fpr, tp, color=_color(i), linewidth=2, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(SCORE_LABELS[score], fontsize=12)
        ax.set_xlabel("false-positive rate (OOD accepted)")
        ax.set_ylabel("true-positive rate (in-dist. accepted)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", frameon=False)
    fig.suptitle(title)
    return _png(fig)
