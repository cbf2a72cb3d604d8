"""The encouraging loss (EL): the public loss functions, torch only, as torch.nn.functional's are.

Zhao et al., "Well-classified Examples are Underestimated in Classification with Deep Neural
Networks", AAAI 2022, https://arxiv.org/abs/2110.06537

Per row with logits z, p = softmax(z), the smoothed target weights q and the bonus's q' (the bonus smoothing,
by default the label smoothing):

    L = sum_k q_k (-log p_k) + rho sum_k q'_k b(p_k)

with b one member of the bonus family (``bonus=``, docs/math.md): ``'log'`` (default), the paper's
log(max(1 - p, 1e-5)) turning into its tangent past ``log_end``; ``'power'``, -p^gamma; ``'cosine'``,
cos(pi p) - 1; and with ``bonus_start`` s the aggressive bonus (0 below s, b(p) - b(s) from s on). Each b is
decreasing, so -b rewards confident correct predictions that cross-entropy stops rewarding. rho = 0 is plain
(label-smoothed) cross-entropy. Everything is computed in float32 or wider, whatever the dtype of the logits.
Every integration of el-plugins (the fairseq criterion, the timm and Transformers losses, the analysis tools)
calls these functions.

One function per operation: :func:`encouraging_loss` / :func:`encouraging_loss_with_stats` (logits),
:func:`linear_encouraging_loss` / :func:`linear_encouraging_loss_with_stats` (features and an output layer, as
``F.linear_cross_entropy``), :func:`soft_target_encouraging_loss`, :func:`binary_encouraging_loss`, and
:func:`bonus`. ``implementation=`` chooses the reference here or the fused op of :mod:`el_plugins.ops`; the math
both share is :mod:`el_plugins.core`, the argument checks :mod:`el_plugins.checks` (not re-exported here).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from el_plugins import ops
from el_plugins.checks import (
    bonus_spec,
    check_binary_targets,
    check_choice,
    check_dense_loss_args,
    check_floating,
    check_index_loss_args,
    check_label_smoothing,
    check_linear_loss_args,
    check_num_classes,
    check_soft_targets,
    loss_settings,
    real_number,
)
from el_plugins.core import (  # noqa: F401  (the public constants and output type, as this module's)
    BONUS_CLAMP,
    BONUSES,
    REDUCTIONS,
    SCHEDULES,
    SMOOTHING_CONVENTIONS,
    EncouragingLossOutput,
    bonus_from_log_prob,
    compute_dtype,
    reduce_rows,
    target_weights,
)

__all__ = ["BONUSES", "BONUS_CLAMP", "IMPLEMENTATIONS", "REDUCTIONS", "SCHEDULES", "SMOOTHING_CONVENTIONS",
           "EncouragingLossOutput", "LinearEncouragingLossOutput", "binary_encouraging_loss", "bonus",
           "encouraging_loss", "encouraging_loss_with_stats", "linear_encouraging_loss",
           "linear_encouraging_loss_with_stats", "soft_target_encouraging_loss"]

IMPLEMENTATIONS = ("auto", "fused", "reference")
"""How the class-index losses compute: ``fused`` (el_plugins.ops: loss and gradient in one pass, the gradient
kept instead of (N, V) float32 intermediates; a Triton kernel on CUDA, the C++ kernel on a CPU where it can be
built, chunked torch elsewhere),
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
    log_end: Optional[float] = None,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    smoothing_convention: str = "paper",
    input_is_log_probs: bool = False,
    implementation: str = "auto",
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
) -> EncouragingLossOutput:
    """Label-smoothed EL for class-index targets, with the terms that show EL at work; ``implementation`` (see
    :data:`IMPLEMENTATIONS`) chooses how.

    input: (N, V) logits (or log-probabilities with ``input_is_log_probs``), any float dtype, V >= 2.
    target: (N,) class indices (any integer dtype); rows equal to ``ignore_index`` contribute nothing, whatever
    their logits hold (NaN and inf included: their gradient is 0).

    The bonus: ``bonus`` 'log' (default), 'power' or 'cosine'; ``bonus_gamma`` > 0, the exponent of 'power' (and
    only of it); ``bonus_start`` in [0, 1), the aggressive bonus of 'log' and 'power'; ``log_end`` in (0, 1], where
    the log bonus turns into its tangent (None: 0.75 for 'log'; the other members have no tail and take none, or
    1; with bonus_start > 0 it must be 1). ``bonus_weight`` rho >= 0 (0: cross-entropy).
    The smoothing: ``label_smoothing`` eps in [0, 1) of the nll terms, ``bonus_smoothing`` in [0, 1) of the bonus
    term (None: eps), both spread as ``smoothing_convention`` says ('paper': eps / V on every class; 'fairseq':
    eps / (V - 1) off the target). With q = w_y onehot(y) + q_o and q' likewise:

        L = w_y (-log p_y) + q_o sum_k (-log p_k) + rho (w'_y b(p_y) + q'_o sum_k b(p_k))

    'mean' divides by the number of rows that are not ignored (0 rows give 0, not NaN).

    The fused implementation's tuning (a ValueError with ``implementation='reference'``, which has none):
    backend: ``auto`` (default: the Triton kernel for CUDA float32/16/bfloat16 tensors, chunked torch
    otherwise), ``torch``, ``triton`` (CPU tensors only under ``TRITON_INTERPRET=1``);
    chunk_size: rows per chunk of the torch path (default: N / 4 rows, at least 1M elements);
    block_size: columns per block of the Triton kernel, a power of 2 (default min(next_pow2(V), 2048)).
    """
    tuning = _tuning(backend=backend, chunk_size=chunk_size, block_size=block_size)
    implementation = _choose_implementation(implementation, input, tuning)
    settings = loss_settings(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
                             bonus=bonus, bonus_gamma=bonus_gamma, bonus_start=bonus_start,
                             bonus_smoothing=bonus_smoothing, ignore_index=ignore_index, reduction=reduction,
                             smoothing_convention=smoothing_convention)
    if implementation == "reference":
        target = check_index_loss_args(input, target, settings)
        return _reference_encouraging_loss_with_stats(input, target, settings, input_is_log_probs)
    return EncouragingLossOutput(*ops.fused_loss(input, target, settings, input_is_log_probs=input_is_log_probs,
                                                 backend=backend or "auto", chunk_size=chunk_size,
                                                 block_size=block_size))


def _reference_encouraging_loss_with_stats(input, target, settings, input_is_log_probs):
    """The reference: plain autograd on float32 (or wider) log-probabilities (arguments checked by the caller)."""
    ignore_index, reduction = settings.ignore_index, settings.reduction
    weights = target_weights(settings, input.size(1))
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
    loss = weights.nll_target * nll_r
    if weights.nll_other:
        smooth = (-lprobs.sum(-1)).masked_fill(~keep, 0.0)
        loss = loss + weights.nll_other * reduce_rows(smooth, reduction, count)
    el_bonus = torch.zeros_like(nll_r)
    if weights.bonus_target or weights.bonus_other:
        b_target = bonus_from_log_prob(lp_target, settings.bonus).masked_fill(~keep, 0.0)
        el_bonus = weights.bonus_target * reduce_rows(b_target, reduction, count)
        if weights.bonus_other:
            b_all = bonus_from_log_prob(lprobs, settings.bonus).sum(-1).masked_fill(~keep, 0.0)
            el_bonus = el_bonus + weights.bonus_other * reduce_rows(b_all, reduction, count)
        loss = loss + el_bonus

    with torch.no_grad():
        p_target = torch.exp(lp_target).masked_fill(~keep, 0.0)
        # the Bonus field, not LossSettings.log_end (a property): torch 2.9's dynamo cannot compare a tensor
        # with a NamedTuple's property under torch.compile(fullgraph=True)
        past = ((p_target > settings.bonus.log_end) & keep).to(p_target.dtype)
    return EncouragingLossOutput(
        loss, nll_r, el_bonus, reduce_rows(p_target, reduction, count), reduce_rows(past, reduction, count)
    )


def encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: Optional[float] = None,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    smoothing_convention: str = "paper",
    input_is_log_probs: bool = False,
    implementation: str = "auto",
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
) -> torch.Tensor:
    """Label-smoothed EL for class-index targets, as ``F.cross_entropy`` is cross-entropy: the loss of
    :func:`encouraging_loss_with_stats` (the same arguments, described there)."""
    return encouraging_loss_with_stats(
        input, target, log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight, bonus=bonus,
        bonus_gamma=bonus_gamma, bonus_start=bonus_start, bonus_smoothing=bonus_smoothing, ignore_index=ignore_index,
        reduction=reduction, smoothing_convention=smoothing_convention, input_is_log_probs=input_is_log_probs,
        implementation=implementation, backend=backend, chunk_size=chunk_size, block_size=block_size).loss


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
    log_end: Optional[float] = None,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
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
    settings = loss_settings(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
                             bonus=bonus, bonus_gamma=bonus_gamma, bonus_start=bonus_start,
                             bonus_smoothing=bonus_smoothing, ignore_index=ignore_index, reduction=reduction,
                             smoothing_convention=smoothing_convention)
    if implementation == "fused":
        return LinearEncouragingLossOutput(*ops.fused_loss(
            input, target, settings, linear_weight=linear_weight, linear_bias=linear_bias,
            backend=backend or "auto", chunk_size=chunk_size, block_size=block_size))
    check_linear_loss_args(input, linear_weight, linear_bias, target, settings)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(settings.ignore_index)
    if settings.ignore_index is not None:  # an ignored row adds nothing to any gradient, whatever it holds
        input = input.masked_fill(~keep.unsqueeze(1), 0.0)
    logits = F.linear(input, linear_weight, linear_bias)
    out = _reference_encouraging_loss_with_stats(logits, target.long(), settings, False)
    with torch.no_grad():
        correct = ((logits.argmax(-1) == target) & keep).to(out.loss.dtype)
        correct = reduce_rows(correct, settings.reduction, keep.sum())
    return LinearEncouragingLossOutput(*out, correct)


def linear_encouraging_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: Optional[torch.Tensor] = None,
    log_end: Optional[float] = None,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
    smoothing_convention: str = "paper",
    implementation: str = "auto",
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
    block_size: Optional[int] = None,
) -> torch.Tensor:
    """EL of ``F.linear(input, linear_weight, linear_bias)``, as ``F.linear_cross_entropy`` is cross-entropy's: the
    loss of :func:`linear_encouraging_loss_with_stats` (the same arguments, described there)."""
    return linear_encouraging_loss_with_stats(
        input, linear_weight, target, linear_bias=linear_bias, log_end=log_end, label_smoothing=label_smoothing,
        bonus_weight=bonus_weight, bonus=bonus, bonus_gamma=bonus_gamma, bonus_start=bonus_start,
        bonus_smoothing=bonus_smoothing, ignore_index=ignore_index, reduction=reduction,
        smoothing_convention=smoothing_convention, implementation=implementation, backend=backend,
        chunk_size=chunk_size, block_size=block_size).loss


# --------------------------------------------------------------------------- soft and multi-label targets
def soft_target_encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_end: Optional[float] = None,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """EL for dense target distributions t (Mixup/CutMix), (N, V) like the logits:

        L = sum_k t_k (-log p_k) + rho sum_k t'_k b(p_k),   t' = (1 - lambda) t + lambda / V

    with lambda = ``bonus_smoothing`` (None: t' = t; the targets arrive smoothed). The bonus arguments are
    :func:`encouraging_loss_with_stats`'s. t must be class probabilities (entries >= 0, rows summing to 1):
    anything else is a ValueError (on a GPU, an asynchronous device-side assertion, so that the step does not wait
    for the host)."""
    rho = check_dense_loss_args(input, target, bonus_weight=bonus_weight, reduction=reduction, what="soft targets")
    spec = bonus_spec(bonus, bonus_gamma, bonus_start, log_end)
    smoothing = None if bonus_smoothing is None else check_label_smoothing(bonus_smoothing, "bonus_smoothing")
    check_num_classes(input.size(-1) if input.dim() else 0)
    check_soft_targets(target, synchronize=input.device.type == "cpu")
    lprobs = F.log_softmax(input.to(compute_dtype(input.dtype)), dim=-1)
    t = target.to(lprobs.dtype)
    loss = (t * -lprobs).sum(-1)
    if rho:
        t_bonus = t if smoothing is None else t * (1.0 - smoothing) + smoothing / input.size(-1)
        loss = loss + rho * (t_bonus * bonus_from_log_prob(lprobs, spec)).sum(-1)
    return reduce_rows(loss, reduction, torch.tensor(loss.numel(), device=loss.device))


def _binary_weight(value, name: str, input: torch.Tensor, what: str) -> Optional[torch.Tensor]:
    """``weight``/``pos_weight`` of :func:`binary_encouraging_loss` as a tensor of the computation's dtype: None,
    a number, or a real tensor broadcastable to the logits' shape, on their device; entries finite and >= 0 (read
    on the host when the tensor is on the CPU; a GPU tensor's values are not read, so that the step never waits)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        number = real_number(value)
        if number is None:
            raise ValueError(f"{name} must be None, a number or a tensor ({what}), got {value!r}")
        value = torch.tensor(number, dtype=torch.float64)
    elif value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{name} must be a real tensor ({what}), got {value.dtype}")
    try:
        broadcast = torch.broadcast_shapes(value.shape, input.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != input.shape:
        raise ValueError(f"{name} must broadcast to the logits' shape {tuple(input.shape)} ({what}), got shape "
                         f"{tuple(value.shape)}")
    if value.dim() and value.device != input.device:
        raise ValueError(f"{name} is on {value.device} but input on {input.device}: put both on the same device")
    if value.device.type == "cpu":
        bad = ~(value.isfinite() & (value >= 0))
        if bool(bad.any()):
            raise ValueError(f"{name} must be finite and >= 0 ({what}), got {value[bad].flatten()[0].item()!r}")
    return value.to(device=input.device, dtype=compute_dtype(input.dtype))


def binary_encouraging_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight=None,
    pos_weight=None,
    log_end: Optional[float] = None,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid EL (multi-label, or the BCE form of single-label training), per class with s = sigmoid(z),
    t in [0, 1]:

        L_c = w_c [ a_c ( t (-log s) + rho t' b(s) ) + (1 - t) (-log(1 - s)) + rho (1 - t') b(1 - s) ]
        t' = (1 - lambda) t + lambda / 2

    with lambda = ``bonus_smoothing`` (None: t' = t), toward 1/2 as timm's BinaryCrossEntropy smooths dense
    targets. The bonus arguments are :func:`encouraging_loss_with_stats`'s.

    weight: w, a rescaling weight of each element (None: 1): a number or a tensor broadcastable to the logits'
    shape, e.g. one per class (C,), as ``F.binary_cross_entropy_with_logits``' ``weight``.
    pos_weight: a, the weight of the positive side, its nll and its bonus alike (None: 1): a number or a tensor
    broadcastable to the logits' shape, e.g. (C,), as ``F.binary_cross_entropy_with_logits``' ``pos_weight``.
    Both must be finite and >= 0. With rho = 0 the loss is ``F.binary_cross_entropy_with_logits(input, target,
    weight, pos_weight=pos_weight, reduction=reduction)``.

    Computed by autograd on float32 (float64 for float64 logits) whatever the logits' dtype: sigmoid EL has no
    fused op. 'mean' averages over rows and classes (as BCE); 'sum' sums both; 'none' keeps the logits' shape.
    """
    rho = check_dense_loss_args(input, target, bonus_weight=bonus_weight, reduction=reduction,
                                what="multi-label targets")
    check_binary_targets(target, synchronize=input.device.type == "cpu")
    spec = bonus_spec(bonus, bonus_gamma, bonus_start, log_end)
    smoothing = None if bonus_smoothing is None else check_label_smoothing(bonus_smoothing, "bonus_smoothing")
    w = _binary_weight(weight, "weight", input, "a rescaling weight of each element, e.g. one per class")
    a = _binary_weight(pos_weight, "pos_weight", input, "the weight of the positive side, e.g. one per class")
    z = input.to(compute_dtype(input.dtype))
    t = target.to(z.dtype)
    log_s, log_not_s = F.logsigmoid(z), F.logsigmoid(-z)
    positive = t * -log_s
    negative = (1.0 - t) * -log_not_s
    if rho:
        t_bonus = t if smoothing is None else t * (1.0 - smoothing) + 0.5 * smoothing
        positive = positive + rho * t_bonus * bonus_from_log_prob(log_s, spec)
        negative = negative + rho * (1.0 - t_bonus) * bonus_from_log_prob(log_not_s, spec)
    loss = (positive if a is None else a * positive) + negative
    if w is not None:
        loss = w * loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    return loss


# --------------------------------------------------------------------------- the bonus itself
def bonus(
    p,
    log_end: Optional[float] = None,
    *,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
) -> torch.Tensor:
    """The bonus b(p) of a member of the family (the arguments of :func:`encouraging_loss_with_stats`) for
    probabilities p in [0, 1] (a tensor or a number), in float32 or wider. A value outside [0, 1], NaN included,
    is a ValueError naming it."""
    spec = bonus_spec(bonus, bonus_gamma, bonus_start, 1.0 if log_end is None else log_end)
    if not isinstance(p, torch.Tensor):
        if real_number(p) is None:
            raise ValueError(f"p must be a probability in [0, 1] (a number or a floating-point tensor), got {p!r}")
        p = torch.tensor(real_number(p), dtype=torch.float64)
    check_floating(p, "p", "probabilities")
    p = p.to(compute_dtype(p.dtype))
    outside = ~((p >= 0) & (p <= 1))  # NaN too
    if bool(outside.any()):
        raise ValueError(f"p must be probabilities in [0, 1], got {p[outside].flatten()[0].item()!r}")
    return bonus_from_log_prob(torch.log(p), spec)
