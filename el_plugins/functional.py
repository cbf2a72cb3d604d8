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

The public functions, one per operation as in torch.nn.functional: :func:`encouraging_loss_with_stats`
(logits), :func:`linear_encouraging_loss_with_stats` (features and an output layer, as
``F.linear_cross_entropy``), :func:`soft_target_encouraging_loss`, :func:`binary_encouraging_loss`.
``implementation=`` chooses the reference here or the fused op of :mod:`el_plugins.ops`; the math both
share (the bonus, the row terms, the checks) is :mod:`el_plugins.core`, re-exported here.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from el_plugins import ops
from el_plugins.core import (  # noqa: F401  (the shared math, re-exported: el_plugins.functional is the public API)
    BONUS_CLAMP,
    REDUCTIONS,
    SMOOTHING_CONVENTIONS,
    EncouragingLossOutput,
    RowTerms,
    assemble_rows,
    autocast_dtype,
    autocast_input,
    bonus,
    bonus_from_log_prob,
    bonus_slope_times_p,
    check_bonus_weight,
    check_choice,
    check_count,
    check_dense_loss_args,
    check_floating,
    check_ignore_index,
    check_index_loss_args,
    check_label_smoothing,
    check_linear_loss_args,
    check_log_end,
    check_num_classes,
    check_soft_targets,
    check_targets,
    compute_dtype,
    real_number,
    reduce_outputs,
    reduce_rows,
    smoothing_weights,
)


IMPLEMENTATIONS = ("auto", "fused", "reference")
"""How the class-index losses compute: ``fused`` (el_plugins.ops: loss and gradient in one pass, the gradient
kept instead of (N, V) float32 intermediates; a Triton kernel on CUDA, chunked torch elsewhere),
``reference`` (plain autograd; supports repeated and double backward, torch.compile(fullgraph=True) and
torch.func), ``auto`` (fused, except for float64 input on a GPU, which has no kernel, unless a fused tuning
option is given; and the reference under torch.compile, where the compiler fuses it itself, and under
torch.func transforms, which the fused op's hand-written gradient does not support)."""

FUSED_UNDER_TRANSFORMS = (
    "implementation='fused' computes its gradient by hand in the forward pass, which torch.func transforms "
    "(vmap, grad, jacrev, ...) cannot see through: use implementation='auto' (the reference under torch.func) "
    "or implementation='reference'")

FUSED_UNDER_COMPILE = (
    "implementation='fused' has data-dependent steps, so torch.compile runs it eagerly at a graph break; "
    "torch.compile(fullgraph=True) needs implementation='auto' (the reference under torch.compile, which the "
    "compiler fuses itself) or implementation='reference'")


def _choose_implementation(implementation: str, input: torch.Tensor, tuning, what: str = "logits") -> str:
    """'fused' or 'reference' for ``implementation`` (see :data:`IMPLEMENTATIONS`) on ``input`` (``what`` it
    holds, for the error message); ``tuning``: the fused tuning options given (their names)."""
    check_choice(implementation, IMPLEMENTATIONS, "implementation")
    check_floating(input, "input", what)
    compiling = torch.compiler.is_compiling()
    transformed = not compiling and torch._C._are_functorch_transforms_active()
    if implementation == "auto":
        fused_has_no_kernel = input.dtype == torch.float64 and input.device.type != "cpu"
        implementation = "reference" if (fused_has_no_kernel or compiling or transformed) and not tuning else "fused"
    if implementation == "reference" and tuning:
        raise ValueError(f"{', '.join(tuning)} tune(s) the fused implementation; implementation='reference' "
                         f"takes none (use implementation='fused' or 'auto', or leave them out)")
    if implementation == "fused" and transformed:
        raise ValueError(FUSED_UNDER_TRANSFORMS)
    if implementation == "fused" and compiling:
        torch._dynamo.graph_break(msg=FUSED_UNDER_COMPILE)
    return implementation


def _tuning(**options):
    return {name: value for name, value in options.items() if value is not None}


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
    target: (N,) class indices (any integer dtype); rows equal to ``ignore_index`` contribute nothing, whatever
    their logits hold (NaN and inf included: their gradient is 0). With q_y, q_o from :func:`smoothing_weights` (q = w_y * onehot(y) + q_o):

        L = w_y (-log p_y + rho b(p_y)) + q_o sum_k (-log p_k + rho b(p_k))

    'mean' divides by the number of rows that are not ignored (0 rows give 0, not NaN).

    The fused implementation's tuning (a ValueError with ``implementation='reference'``, which has none):
    backend: ``auto`` (default: the Triton kernel for CUDA float32/16/bfloat16 tensors, chunked torch
    otherwise), ``torch``, ``triton`` (CPU tensors only under ``TRITON_INTERPRET=1``);
    chunk_size: rows per chunk of the torch path (default: N / 4 rows, at least 1M elements);
    block_size: columns per block of the Triton kernel, a power of 2 (default min(next_pow2(V), 2048)).
    """
    tuning = _tuning(backend=backend, chunk_size=chunk_size, block_size=block_size)
    implementation = _choose_implementation(implementation, input, tuning)
    chosen_backend = None  # the reference's
    if implementation == "fused":
        chosen_backend = ops.pick_backend("auto" if backend is None else backend, input)
    settings, target = check_index_loss_args(
        input, target, log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
        ignore_index=ignore_index, reduction=reduction, smoothing_convention=smoothing_convention,
        synchronize=chosen_backend != "triton")  # the GPU path never waits for the host
    w_target, q_other = smoothing_weights(settings.label_smoothing, input.size(1), smoothing_convention)
    if implementation == "reference":
        return _reference_encouraging_loss_with_stats(input, target, settings, w_target, q_other, reduction,
                                                      input_is_log_probs)
    config = ops.LossConfig(settings.log_end, settings.bonus_weight, w_target, q_other, bool(input_is_log_probs))
    return ops.fused_encouraging_loss(input, target, config, ignore_index=settings.ignore_index, reduction=reduction,
                                      backend=chosen_backend, chunk_size=chunk_size, block_size=block_size)


def _reference_encouraging_loss_with_stats(input, target, settings, w_target, q_other, reduction,
                                           input_is_log_probs):
    """The reference: plain autograd on float32 (or wider) log-probabilities (arguments checked by the caller)."""
    log_end, rho, ignore_index = settings.log_end, settings.bonus_weight, settings.ignore_index
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
    if ignore_index is not None:  # an ignored row adds nothing, whatever it holds (0 * NaN would be NaN)
        input = input.masked_fill(~keep.unsqueeze(1), 0.0)
    if input_is_log_probs:
        lprobs = input.to(compute_dtype(input.dtype))
    else:
        lprobs = F.log_softmax(input.to(compute_dtype(input.dtype)), dim=-1)
    # clamped: a bad target's (asynchronous) check then fires first under torch.compile, not an index error
    safe_target = target.masked_fill(~keep, 0).clamp(0, max(input.size(1) - 1, 0)).unsqueeze(-1)

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


# --------------------------------------------------------------------------- the output layer fused in
class LinearEncouragingLossOutput(NamedTuple):
    """:class:`EncouragingLossOutput`'s fields, plus ``correct``: 1 on the rows whose largest logit is the
    target's (what fairseq's --report-accuracy counts), reduced like the others ('sum': the number of such
    rows); ignored rows count zero. No gradient but the loss's."""

    loss: torch.Tensor
    nll_loss: torch.Tensor
    bonus: torch.Tensor
    target_prob: torch.Tensor
    past_log_end: torch.Tensor
    correct: torch.Tensor


def linear_encouraging_loss_with_stats(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: Optional[torch.Tensor] = None,
    log_end: float = 0.75,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    smoothing_convention: str = "paper",
    implementation: str = "auto",
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
) -> LinearEncouragingLossOutput:
    """EL of the logits ``F.linear(input, linear_weight, linear_bias)`` (a decoder's output layer), shaped like
    torch's ``F.linear_cross_entropy``: input (N, d) features, linear_weight (V, d), linear_bias (V,) or None,
    target (N,) class indices; the other arguments and the loss are :func:`encouraging_loss_with_stats`'s.

    implementation='reference' is ``encouraging_loss_with_stats(F.linear(input, linear_weight, linear_bias),
    target, ..., implementation='reference')``. The fused implementation (el_plugins.ops) never holds more
    than a chunk of rows' logits: per chunk it computes the logits, the loss and dL/dz, then dz @ W into the
    input's gradient and dz^T @ input into the weight's (float32 accumulators for float16/bfloat16, each product
    rounded no more than F.linear + autograd round it; the loss scale is applied in backward before the last
    rounding to each parameter's dtype). Ignored rows contribute nothing to the loss or to any gradient, whatever
    their features hold (NaN and inf included), in every implementation and on every device.
    Under ``torch.autocast`` the input, weight and bias are cast as autocast casts F.linear's (floating tensors
    other than float64, to the autocast dtype), so the logits and gradients are those of
    ``encouraging_loss(F.linear(...))`` under the same autocast.
    backend: as in :func:`encouraging_loss_with_stats`; chunk_size: rows per chunk (default: a chunk's logits
    about the size of ``input``, at least 128 rows and 1M logits); block_size: the Triton kernel's columns per block.
    With reduction='none' the backward pass computes the chunks again; otherwise the fused implementation
    supports one backward pass per forward (a second one raises a RuntimeError that says so).
    """
    tuning = _tuning(backend=backend, chunk_size=chunk_size, block_size=block_size)
    implementation = _choose_implementation(implementation, input, tuning, "features")
    settings_kwargs = dict(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
                           ignore_index=ignore_index, reduction=reduction, smoothing_convention=smoothing_convention)
    if implementation == "reference":
        settings, _ = check_linear_loss_args(input, linear_weight, linear_bias, target, **settings_kwargs)
        keep = (torch.ones_like(target, dtype=torch.bool) if settings.ignore_index is None
                else target.ne(settings.ignore_index))
        if settings.ignore_index is not None:  # an ignored row adds nothing to any gradient, whatever it holds
            input = input.masked_fill(~keep.unsqueeze(1), 0.0)
        logits = F.linear(input, linear_weight, linear_bias)
        out = encouraging_loss_with_stats(logits, target, **settings_kwargs, implementation="reference")
        with torch.no_grad():
            correct = ((logits.argmax(-1) == target) & keep).to(out.loss.dtype)
            correct = reduce_rows(correct, reduction, keep.sum())
        return LinearEncouragingLossOutput(*out, correct)
    device_type = input.device.type
    cast_dtype = autocast_dtype(device_type)
    if cast_dtype is not None:  # as F.linear under torch.autocast: its inputs cast (differentiably) first
        input, linear_weight, linear_bias = (autocast_input(t, cast_dtype) for t in (input, linear_weight, linear_bias))
    chosen_backend = ops.pick_backend("auto" if backend is None else backend, input)
    settings, target = check_linear_loss_args(input, linear_weight, linear_bias, target,
                                              synchronize=chosen_backend != "triton", **settings_kwargs)
    w_target, q_other = smoothing_weights(settings.label_smoothing, linear_weight.size(0), smoothing_convention)
    config = ops.LossConfig(settings.log_end, settings.bonus_weight, w_target, q_other, False)
    with torch.autocast(device_type, enabled=False) if cast_dtype is not None else contextlib.nullcontext():
        return LinearEncouragingLossOutput(*ops.fused_linear_encouraging_loss(
            input, linear_weight, linear_bias, target, config, ignore_index=settings.ignore_index,
            reduction=reduction, backend=chosen_backend, chunk_size=chunk_size, block_size=block_size))


def linear_encouraging_loss(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                            **kwargs) -> torch.Tensor:
    """EL of ``F.linear(input, linear_weight, linear_bias)``: the loss of :func:`linear_encouraging_loss_with_stats`
    (same arguments), as ``F.linear_cross_entropy`` is cross-entropy's."""
    return linear_encouraging_loss_with_stats(input, linear_weight, target, **kwargs).loss


# --------------------------------------------------------------------------- soft and multi-label targets
def soft_target_encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: float = 0.75,
    bonus_weight: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """EL for dense target distributions t (Mixup/CutMix): L = sum_k t_k (-log p_k + rho b(p_k)).

    t must be class probabilities (entries >= 0, rows summing to 1): anything else is a ValueError (on a GPU,
    an asynchronous device-side assertion, so that the step does not wait for the host)."""
    log_end, rho = check_dense_loss_args(input, target, log_end=log_end, bonus_weight=bonus_weight,
                                         reduction=reduction, what="soft targets")
    check_num_classes(input.size(-1) if input.dim() else 0)
    check_soft_targets(target, synchronize=input.device.type == "cpu")
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
    log_end, rho = check_dense_loss_args(input, target, log_end=log_end, bonus_weight=bonus_weight,
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
