"""The encouraging loss (EL): the one implementation of its math, torch only.

Zhao et al., "Well-classified Examples are Underestimated in Classification with Deep Neural
Networks", AAAI 2022, https://arxiv.org/abs/2110.06537

Per row with logits z, p = softmax(z) and target weights q (smoothed one-hot or a soft target):

    L = sum_k q_k * ( -log p_k + rho * b(p_k) )

    b(p) = log(max(1 - p, 1e-5))                   p <= log_end   (the normal bonus when log_end = 1)
    b(p) = (p - log_end) / (log_end - 1) + log(1 - log_end)   p > log_end   (the conservative tail)

b is concave and decreasing, so -b rewards confident correct predictions that cross-entropy stops
rewarding. rho = 0 is plain (label-smoothed) cross-entropy. Everything is computed in float32 or
wider, whatever the dtype of the logits. Every integration of el-plugins (the fairseq criterion,
the timm loss, the analysis tools) calls these functions.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

BONUS_CLAMP = 1e-5
"""The normal bonus is log(max(1 - p, BONUS_CLAMP)), bounded below by log(1e-5) = -11.513."""

SMOOTHING_CONVENTIONS = ("paper", "fairseq")
"""How label smoothing spreads eps over the classes:
``paper``: q_k = (1 - eps)[k = y] + eps / V (the paper's code, fairseq 0.10, timm);
``fairseq``: q_y = 1 - eps, q_k = eps / (V - 1) for k != y (fairseq >= 0.12)."""

REDUCTIONS = ("none", "sum", "mean")


# --------------------------------------------------------------------------- validation
def real_number(value) -> Optional[float]:
    """``value`` as a float when it is a real number of any numeric type (int, float, numpy scalars, a
    one-element torch tensor), else None. Booleans are not numbers here."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's bool_ is not Real
        return None
    return float(value)


def check_log_end(log_end: float, name: str = "log_end") -> float:
    value = real_number(log_end)
    if value is None or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{name} must be in (0, 1], a number (1 = the normal bonus, < 1 = the conservative bonus, "
            f"the paper uses 0.75 or 0.5), got {log_end!r}"
        )
    return value


def check_label_smoothing(eps: float, name: str = "label_smoothing") -> float:
    value = real_number(eps)
    if value is None or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), a number, got {eps!r}")
    return value


def check_bonus_weight(rho: float, name: str = "bonus_weight") -> float:
    value = real_number(rho)
    if value is None or not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0 (0 = plain cross-entropy), got {rho!r}")
    return value


def check_choice(value: str, allowed, name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_targets(target: torch.Tensor, num_classes: int, ignore_index: Optional[int], *,
                  synchronize: bool = True) -> None:
    """Class-index targets must lie in [0, num_classes) (or equal ignore_index).

    synchronize=True: raises a ValueError naming the first bad target (reading it stalls a GPU until
    its queued work is done). synchronize=False: queues an asynchronous device-side assertion with the
    same message instead (a RuntimeError when it is reached), so that a training step on a GPU never
    waits for the host; the fused CUDA path uses it.
    """
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"class-index targets must be an integer tensor, got {target.dtype}")
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    allowed = f"targets must be in [0, {num_classes - 1}]" + (
        f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
    if not synchronize:
        torch._assert_async(bad.any().logical_not(), f"a target is outside the {num_classes} classes: {allowed}")
    elif bool(bad.any()):
        first = target[bad].flatten()[0].item()
        raise ValueError(f"target {first} is outside the {num_classes} classes: {allowed}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp16/bf16/fp32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


# --------------------------------------------------------------------------- the bonus
def bonus_from_log_prob(log_p: torch.Tensor, log_end: float = 1.0) -> torch.Tensor:
    """b(p) evaluated from log p (stable near p = 1: 1 - p is formed as -expm1(log p))."""
    one_minus_p = -torch.expm1(log_p)
    bonus = torch.log(torch.clamp(one_minus_p, min=BONUS_CLAMP))
    if log_end < 1.0:
        p = torch.exp(log_p)
        tail = (p - log_end) / (log_end - 1.0) + math.log(1.0 - log_end)
        bonus = torch.where(p > log_end, tail, bonus)
    return bonus


def bonus(p: torch.Tensor, log_end: float = 1.0) -> torch.Tensor:
    """The bonus b(p) for probabilities p in [0, 1] (see the module docstring)."""
    log_end = check_log_end(log_end)
    p = p.to(compute_dtype(p.dtype))
    return bonus_from_log_prob(torch.log(p), log_end)


def bonus_slope_times_p(log_p: torch.Tensor, log_end: float = 1.0) -> torch.Tensor:
    """p b'(p) = d b / d log p, from log p: -p / (1 - p) on the log branch (0 where the clamp
    max(1 - p, 1e-5) is active), -p / (1 - log_end) on the tail p > log_end. The fused gradient's
    g_k = rho q_k p_k b'(p_k) is built from it (the Triton kernel has its own copy of b and p b'(p))."""
    p = torch.exp(log_p)
    one_minus_p = -torch.expm1(log_p)
    slope = torch.where(one_minus_p >= BONUS_CLAMP, -p / one_minus_p.clamp(min=BONUS_CLAMP), 0.0)
    if log_end < 1.0:
        slope = torch.where(p > log_end, -p / (1.0 - log_end), slope)
    return slope


# --------------------------------------------------------------------------- class-index targets
class EncouragingLossOutput(NamedTuple):
    """Reduced like the loss (or per row with reduction='none'); ignored rows count zero.

    loss:        sum_k q_k (-log p_k + rho b(p_k))
    nll_loss:    -log p_y (no smoothing, no bonus)
    bonus:       rho * sum_k q_k b(p_k), the part of ``loss`` that EL adds
    target_prob: p_y (no gradient)
    past_log_end: 1 where p_y > log_end, else 0 (no gradient)
    """

    loss: torch.Tensor
    nll_loss: torch.Tensor
    bonus: torch.Tensor
    target_prob: torch.Tensor
    past_log_end: torch.Tensor


class RowTerms(NamedTuple):
    """What every implementation computes per row (the reference, the chunked torch path and the Triton
    kernel alike); :func:`assemble_rows` puts the loss together from them, in one place for all."""

    log_p_target: torch.Tensor  # log p_y
    sum_log_p: torch.Tensor  # sum_k log p_k (zeros when q_o = 0)
    bonus_target: torch.Tensor  # b(p_y)
    sum_bonus: torch.Tensor  # sum_k b(p_k) over every class, y included (zeros when q_o = 0 or rho = 0)


def assemble_rows(terms: RowTerms, w_target: float, q_other: float, rho: float):
    """Per-row (loss, nll, bonus) from :class:`RowTerms`, with q = w_y * onehot(y) + q_o:

        nll   = -log p_y
        bonus = rho (w_y b(p_y) + q_o sum_k b(p_k))
        loss  = w_y nll - q_o sum_k log p_k + bonus
    """
    nll = -terms.log_p_target
    bonus = rho * (w_target * terms.bonus_target + q_other * terms.sum_bonus)
    loss = w_target * nll - q_other * terms.sum_log_p + bonus
    return loss, nll, bonus


def reduce_outputs(loss, nll, bonus, log_p_target, keep, reduction: str, log_end: float) -> "EncouragingLossOutput":
    """The reduced :class:`EncouragingLossOutput` of per-row values; rows where ``keep`` is False count zero."""
    count = keep.sum()

    def reduce(rows):
        return reduce_rows(rows.masked_fill(~keep, 0.0), reduction, count)

    with torch.no_grad():
        p_target = torch.exp(log_p_target.detach())
        past = (p_target > log_end).to(p_target.dtype)
    return EncouragingLossOutput(reduce(loss), reduce(nll), reduce(bonus), reduce(p_target), reduce(past))


def smoothing_weights(eps: float, num_classes: int, convention: str):
    """(weight on the target's own term, weight q_o on every class) so that q = w_y*onehot + q_o."""
    if convention == "paper":
        q_other = eps / num_classes
        return 1.0 - eps, q_other
    q_other = eps / (num_classes - 1) if num_classes > 1 else 0.0
    return 1.0 - eps - q_other, q_other


def check_index_loss_args(input, target, *, log_end, label_smoothing, bonus_weight, ignore_index, reduction,
                          smoothing_convention, synchronize=True):
    """Validate the arguments of a class-index EL (shapes, ranges, targets); returns (log_end, eps, rho,
    target), the target as int64 (any integer dtype is accepted). synchronize: see :func:`check_targets`."""
    log_end = check_log_end(log_end)
    eps = check_label_smoothing(label_smoothing)
    rho = check_bonus_weight(bonus_weight)
    check_choice(reduction, REDUCTIONS, "reduction")
    check_choice(smoothing_convention, SMOOTHING_CONVENTIONS, "smoothing_convention")
    if input.dim() != 2 or target.shape != input.shape[:1]:
        raise ValueError(
            f"expected input (N, V) and target (N,), got input {tuple(input.shape)} and target {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input on {input.device}: put both on the same device")
    check_targets(target, input.size(1), ignore_index, synchronize=synchronize)
    return log_end, eps, rho, target.long()


def _check_dense_loss_args(input, target, *, log_end, bonus_weight, reduction, what):
    """Validate the arguments of a dense-target EL; returns (log_end, rho)."""
    log_end = check_log_end(log_end)
    rho = check_bonus_weight(bonus_weight)
    check_choice(reduction, REDUCTIONS, "reduction")
    if input.shape != target.shape:
        raise ValueError(f"{what} must have the shape of the logits {tuple(input.shape)}, got {tuple(target.shape)}")
    return log_end, rho


def reduce_rows(x: torch.Tensor, reduction: str, count: torch.Tensor) -> torch.Tensor:
    """Per-row values reduced: 'sum', 'mean' (divided by ``count``, at least 1: no rows give 0, not NaN), 'none'."""
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.sum() / count.clamp(min=1)
    return x


IMPLEMENTATIONS = ("auto", "fused", "reference")
"""How :func:`encouraging_loss_with_stats` computes: ``fused`` (el_plugins.ops: loss and gradient in one
pass, the gradient kept instead of (N, V) float32 intermediates; a Triton kernel on CUDA, chunked torch
elsewhere), ``reference`` (plain autograd; supports repeated and double backward), ``auto`` (fused, except
for float64 input on a GPU, which has no kernel, unless a fused tuning option is given)."""


def encouraging_loss_with_stats(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: float = 0.75,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    smoothing_convention: str = "paper",
    input_is_log_probs: bool = False,
    implementation: str = "auto",
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
) -> EncouragingLossOutput:
    """Label-smoothed EL for class-index targets, with the terms that show EL at work: the one public
    entry point, as ``F.cross_entropy`` is; ``implementation`` (see :data:`IMPLEMENTATIONS`) chooses how.

    input: (N, V) logits (or log-probabilities with ``input_is_log_probs``), any float dtype.
    target: (N,) class indices (any integer dtype); rows equal to ``ignore_index`` contribute nothing.
    With q_y, q_o from :func:`smoothing_weights` (q = w_y * onehot(y) + q_o):

        L = w_y (-log p_y + rho b(p_y)) + q_o sum_k (-log p_k + rho b(p_k))

    'mean' divides by the number of rows that are not ignored (0 rows give 0, not NaN).

    The fused implementation's tuning (a ValueError with ``implementation='reference'``, which has none):
    backend: ``auto`` (default: the Triton kernel for CUDA float32/16/bfloat16 tensors, chunked torch
    otherwise), ``torch``, ``triton`` (CPU tensors only under ``TRITON_INTERPRET=1``);
    chunk_size: rows per chunk of the torch path (default: N / 4 rows, at least 1M elements);
    block_size: columns per block of the Triton kernel, a power of 2 (default min(next_pow2(V), 2048)).
    """
    check_choice(implementation, IMPLEMENTATIONS, "implementation")
    tuning = {k: v for k, v in (("backend", backend), ("chunk_size", chunk_size), ("block_size", block_size))
              if v is not None}
    if implementation == "auto":
        fused_has_no_kernel = input.dtype == torch.float64 and input.device.type != "cpu"
        implementation = "reference" if fused_has_no_kernel and not tuning else "fused"
    if implementation == "reference" and tuning:
        raise ValueError(f"{', '.join(tuning)} tune(s) the fused implementation; implementation='reference' "
                         f"takes none (use implementation='fused' or 'auto', or leave them out)")
    chosen_backend = None  # the reference's
    if implementation == "fused":
        from el_plugins import ops

        chosen_backend = ops.pick_backend("auto" if backend is None else backend, input)
    log_end, eps, rho, target = check_index_loss_args(
        input, target, log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
        ignore_index=ignore_index, reduction=reduction, smoothing_convention=smoothing_convention,
        synchronize=chosen_backend != "triton")  # the GPU path never waits for the host
    w_target, q_other = smoothing_weights(eps, input.size(1), smoothing_convention)
    if implementation == "reference":
        return _reference_encouraging_loss_with_stats(input, target, log_end, w_target, q_other, rho, ignore_index,
                                                      reduction, input_is_log_probs)
    config = ops.LossConfig(log_end, rho, w_target, q_other, bool(input_is_log_probs))
    return ops.fused_encouraging_loss(input, target, config, ignore_index=ignore_index, reduction=reduction,
                                      backend=chosen_backend, chunk_size=chunk_size, block_size=block_size)


def _reference_encouraging_loss_with_stats(input, target, log_end, w_target, q_other, rho, ignore_index, reduction,
                                           input_is_log_probs):
    """The reference: plain autograd on float32 (or wider) log-probabilities (arguments checked by the caller)."""
    if input_is_log_probs:
        lprobs = input.to(compute_dtype(input.dtype))
    else:
        lprobs = F.log_softmax(input.to(compute_dtype(input.dtype)), dim=-1)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
    safe_target = target.masked_fill(~keep, 0).unsqueeze(-1)

    lp_target = lprobs.gather(-1, safe_target).squeeze(-1)
    nll = (-lp_target).masked_fill(~keep, 0.0)
    count = keep.sum()
    nll_r = reduce_rows(nll, reduction, count)
    loss = w_target * nll_r
    if q_other:
        smooth = (-lprobs.sum(-1)).masked_fill(~keep, 0.0)
        loss = loss + q_other * reduce_rows(smooth, reduction, count)
    el_bonus = torch.zeros_like(nll_r)
    if rho:
        b_target = bonus_from_log_prob(lp_target, log_end).masked_fill(~keep, 0.0)
        el_bonus = w_target * reduce_rows(b_target, reduction, count)
        if q_other:
            b_all = bonus_from_log_prob(lprobs, log_end).sum(-1).masked_fill(~keep, 0.0)
            el_bonus = el_bonus + q_other * reduce_rows(b_all, reduction, count)
        el_bonus = rho * el_bonus
        loss = loss + el_bonus

    with torch.no_grad():
        p_target = torch.exp(lp_target).masked_fill(~keep, 0.0)
        past = ((p_target > log_end) & keep).to(p_target.dtype)
    return EncouragingLossOutput(
        loss, nll_r, el_bonus, reduce_rows(p_target, reduction, count), reduce_rows(past, reduction, count)
    )


def encouraging_loss(input: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    """Label-smoothed EL for class-index targets: the loss of :func:`encouraging_loss_with_stats` (same arguments)."""
    return encouraging_loss_with_stats(input, target, **kwargs).loss


# --------------------------------------------------------------------------- soft and multi-label targets
def soft_target_encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: float = 0.75,
    bonus_weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """EL for dense target distributions t (Mixup/CutMix): L = sum_k t_k (-log p_k + rho b(p_k))."""
    log_end, rho = _check_dense_loss_args(input, target, log_end=log_end, bonus_weight=bonus_weight,
                                          reduction=reduction, what="soft targets")
    lprobs = F.log_softmax(input.to(compute_dtype(input.dtype)), dim=-1)
    per_class = -lprobs
    if rho:
        per_class = per_class + rho * bonus_from_log_prob(lprobs, log_end)
    loss = (target.to(lprobs.dtype) * per_class).sum(-1)
    return reduce_rows(loss, reduction, torch.tensor(loss.numel(), device=loss.device))


def binary_encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: float = 0.75,
    bonus_weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-label (sigmoid) EL, per class with s = sigmoid(z), t in [0, 1]:

        L_c = t (-log s + rho b(s)) + (1 - t) (-log(1 - s) + rho b(1 - s))

    'mean' averages over rows and classes (as BCE); 'sum' sums both; 'none' keeps (N, C).
    """
    log_end, rho = _check_dense_loss_args(input, target, log_end=log_end, bonus_weight=bonus_weight,
                                          reduction=reduction, what="multi-label targets")
    z = input.to(compute_dtype(input.dtype))
    t = target.to(z.dtype)
    log_s, log_not_s = F.logsigmoid(z), F.logsigmoid(-z)
    pos, neg = -log_s, -log_not_s
    if rho:
        pos = pos + rho * bonus_from_log_prob(log_s, log_end)
        neg = neg + rho * bonus_from_log_prob(log_not_s, log_end)
    loss = t * pos + (1.0 - t) * neg
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    return loss
