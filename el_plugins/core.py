"""The math of the encouraging loss (EL) that the public functions (el_plugins.functional) and the
fused kernels (el_plugins.ops) share: the bonus and its slope, the per-row terms and how the loss is
assembled and reduced from them, the smoothing weights, and the argument checks. Both layers import
this module and nothing imports them from here, so the layers run one way: core <- ops <- functional.

Zhao et al., "Well-classified Examples are Underestimated in Classification with Deep Neural
Networks", AAAI 2022, https://arxiv.org/abs/2110.06537 (the formulas: el_plugins.functional).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch

BONUS_CLAMP = 1e-5
"""The normal bonus is log(max(1 - p, BONUS_CLAMP)), bounded below by log(1e-5) = -11.513."""

SMOOTHING_CONVENTIONS = ("paper", "fairseq")
"""How label smoothing spreads eps over the classes:
``paper``: q_k = (1 - eps)[k = y] + eps / V (the paper's code, fairseq 0.10, timm);
``fairseq``: q_y = 1 - eps, q_k = eps / (V - 1) for k != y (fairseq >= 0.12)."""

REDUCTIONS = ("none", "sum", "mean")

SOFT_TARGET_SUM_TOLERANCE = 1e-3
"""How far a soft target row's sum may be from 1 (more for float16/bfloat16 targets: a few of their ulps)."""


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


def check_ignore_index(value, name: str = "ignore_index") -> Optional[int]:
    """None, or an integer class index (int, numpy integer, one-element integer tensor) as an int."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and not value.dtype.is_floating_point and not value.is_complex() \
                and value.dtype != torch.bool:
            return int(value.item())
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{name} must be an integer class index (the target value whose rows count zero, e.g. the "
                     f"padding index) or None, got {value!r}")


def check_count(value, name: str, what: str) -> Optional[int]:
    """None, or a positive int (not a bool, not a float)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer ({what}) or None for the default, got {value!r}")
    return int(value)


def check_num_classes(num_classes: int) -> None:
    """A softmax over ``num_classes`` classes needs at least 2: with one, p = 1 whatever the logit, so the loss is a
    constant and there is nothing to learn."""
    if num_classes < 2:
        raise ValueError(f"softmax EL needs at least 2 classes, got logits of {num_classes} class(es): with one class "
                         f"p = 1 whatever the logit, the loss is a constant and nothing is learned (for one binary "
                         f"output use binary_encouraging_loss / BinaryEncouragingLoss, sigmoid EL)")


def check_floating(tensor: torch.Tensor, name: str = "input", what: str = "logits") -> None:
    """A real floating-point tensor (as torch's cross-entropy requires of its logits)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of {what}, got {type(tensor).__name__}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"{name} must be a real floating-point tensor of {what} (float16, bfloat16, float32 or "
                         f"float64), got {tensor.dtype}")


def host_checks_possible() -> bool:
    """Whether a check may read a tensor's values on the host: not while torch.compile traces (a graph break)."""
    return not torch.compiler.is_compiling()


def _concrete(tensor: torch.Tensor) -> torch.Tensor:
    """The plain tensor under torch.func's wrappers (vmap's batched tensors, grad's tracking tensors), whose
    values a check can read; the tensor itself otherwise."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


def _fail_where(bad: torch.Tensor, message: str, synchronize: bool, describe) -> None:
    """Raise a ValueError where ``bad`` has a True entry, reading it on the host (``describe(bad)``: the message
    with the first bad value); with synchronize=False, and under torch.compile, queue a device-side assertion with
    ``message`` instead. Under torch.func transforms (vmap, grad) the check reads the plain tensor underneath."""
    if not host_checks_possible():
        torch._assert_async(bad.any().logical_not(), message)
        return
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor(bad)
    bad = _concrete(bad)
    if not synchronize:
        torch._assert_async(bad.any().logical_not(), message)
    elif bool(bad.any()):
        raise ValueError(message if wrapped else describe(bad))


def check_targets(target: torch.Tensor, num_classes: int, ignore_index: Optional[int], *,
                  synchronize: bool = True) -> None:
    """Class-index targets must lie in [0, num_classes) (or equal ignore_index).

    synchronize=True: raises a ValueError naming the first bad target (reading it stalls a GPU until
    its queued work is done). synchronize=False: queues an asynchronous device-side assertion with the
    same message instead (a RuntimeError when it is reached), so that a training step on a GPU never
    waits for the host; the fused CUDA path uses it, and so does every path under torch.compile, where
    reading a value would break the graph.
    """
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"class-index targets must be an integer tensor, got {target.dtype}")
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    allowed = f"targets must be in [0, {num_classes - 1}]" + (
        f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
    _fail_where(bad, f"a target is outside the {num_classes} classes: {allowed}", synchronize,
                lambda b: f"target {target[b].flatten()[0].item()} is outside the {num_classes} classes: {allowed}")


def check_soft_targets(target: torch.Tensor, *, synchronize: bool = True) -> None:
    """Soft targets (Mixup/CutMix) must be class probabilities: a floating tensor, every entry >= 0 (NaN is
    not), every row summing to 1 within SOFT_TARGET_SUM_TOLERANCE (or a few ulps of a half dtype).
    synchronize: as in :func:`check_targets`."""
    if not target.dtype.is_floating_point:
        raise ValueError(f"soft targets must be a floating-point tensor of class probabilities, got {target.dtype}")
    tolerance = max(SOFT_TARGET_SUM_TOLERANCE, 8 * torch.finfo(target.dtype).eps)
    row_sums = target.sum(-1, dtype=torch.promote_types(target.dtype, torch.float32))
    not_probability = (target < 0) | target.isnan()
    bad_rows = not_probability.any(-1) | ((row_sums - 1).abs() > tolerance)
    allowed = f"every entry >= 0 and each row summing to 1 (within {tolerance:.3g})"

    def describe(bad):
        row = tuple(bad.nonzero()[0].tolist())
        values = target[row]
        found = ("a NaN" if values.isnan().any() else f"the entry {values.min().item():.4g}" if (values < 0).any()
                 else f"the sum {row_sums[row].item():.6g}")
        where = f"row {row[0]}" if len(row) == 1 else f"row {row}" if row else "the row"
        return f"soft targets must be class probabilities, {allowed}; {where} has {found}"
    _fail_where(bad_rows, f"soft targets must be class probabilities: {allowed}", synchronize, describe)


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype torch.autocast casts a matrix product's inputs to on ``device_type`` ('cpu', 'cuda', ...), or None
    where autocast is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: no device_type arguments
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None


def autocast_input(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``tensor`` as torch.autocast hands it to F.linear: a floating tensor other than float64 cast to ``dtype``
    (differentiably: its gradient comes back in its own dtype); anything else (None, float64) as it is."""
    if tensor is None or not tensor.dtype.is_floating_point or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


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


def bonus(p, log_end: float = 1.0) -> torch.Tensor:
    """The bonus b(p) for probabilities p in [0, 1] (a tensor or a number), in float32 or wider (see the
    docstring of el_plugins.functional). A value outside [0, 1], NaN included, is a ValueError naming it."""
    log_end = check_log_end(log_end)
    if not isinstance(p, torch.Tensor):
        if real_number(p) is None:
            raise ValueError(f"p must be a probability in [0, 1] (a number or a floating-point tensor), got {p!r}")
        p = torch.tensor(real_number(p), dtype=torch.float64)
    check_floating(p, "p", "probabilities")
    p = p.to(compute_dtype(p.dtype))
    outside = ~((p >= 0) & (p <= 1))  # NaN too
    if bool(outside.any()):
        raise ValueError(f"p must be probabilities in [0, 1], got {p[outside].flatten()[0].item()!r}")
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


# --------------------------------------------------------------------------- rows, their assembly and reduction
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


def reduce_rows(x: torch.Tensor, reduction: str, count: torch.Tensor) -> torch.Tensor:
    """Per-row values reduced: 'sum', 'mean' (divided by ``count``, at least 1: no rows give 0, not NaN), 'none'."""
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":
        return x.sum() / count.clamp(min=1)
    return x


def reduce_outputs(loss, nll, bonus, log_p_target, keep, reduction: str, log_end: float) -> EncouragingLossOutput:
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


# --------------------------------------------------------------------------- the checks of a call
class LossSettings(NamedTuple):
    """The checked scalar arguments of a class-index EL call."""

    log_end: float
    label_smoothing: float
    bonus_weight: float
    ignore_index: Optional[int]


def check_loss_settings(*, log_end, label_smoothing, bonus_weight, ignore_index, reduction,
                        smoothing_convention) -> LossSettings:
    """Check the scalar arguments every class-index EL takes (the logits' and the linear form alike)."""
    settings = LossSettings(check_log_end(log_end), check_label_smoothing(label_smoothing),
                            check_bonus_weight(bonus_weight), check_ignore_index(ignore_index))
    check_choice(reduction, REDUCTIONS, "reduction")
    check_choice(smoothing_convention, SMOOTHING_CONVENTIONS, "smoothing_convention")
    return settings


def check_index_target(target, num_rows: int, num_classes: int, device, settings: LossSettings,
                       smoothing_convention: str, shapes: str, *, synchronize=True) -> torch.Tensor:
    """Check class-index targets against the logits' (num_rows, num_classes); returns them as int64.
    ``shapes`` describes what was given, for the shape error; synchronize: see :func:`check_targets`."""
    if not isinstance(target, torch.Tensor) or target.shape != (num_rows,):
        raise ValueError(f"expected {shapes}")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but input on {device}: put both on the same device")
    check_num_classes(num_classes)
    check_targets(target, num_classes, settings.ignore_index, synchronize=synchronize)
    return target.long()


def check_index_loss_args(input, target, *, log_end, label_smoothing, bonus_weight, ignore_index, reduction,
                          smoothing_convention, synchronize=True):
    """Validate the arguments of a class-index EL on (N, V) logits (dtype, shapes, ranges, targets); returns
    (:class:`LossSettings`, target as int64: any integer dtype is accepted). synchronize: see :func:`check_targets`."""
    settings = check_loss_settings(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight,
                                   ignore_index=ignore_index, reduction=reduction,
                                   smoothing_convention=smoothing_convention)
    check_floating(input)
    shapes = f"input (N, V) and target (N,), got input {tuple(input.shape)} and target " \
             f"{tuple(getattr(target, 'shape', ()))}"
    if input.dim() != 2:
        raise ValueError(f"expected {shapes}")
    target = check_index_target(target, input.size(0), input.size(1), input.device, settings, smoothing_convention,
                                shapes, synchronize=synchronize)
    return settings, target


def check_linear_loss_args(input, linear_weight, linear_bias, target, *, synchronize=True, **settings_kwargs):
    """Validate the arguments of EL on ``F.linear(input, linear_weight, linear_bias)``: input (N, d),
    linear_weight (V, d), linear_bias (V,) or None, target (N,), one floating dtype and one device for the three
    float tensors (as F.linear requires); returns (:class:`LossSettings`, target as int64)."""
    convention = settings_kwargs["smoothing_convention"]
    settings = check_loss_settings(**settings_kwargs)
    for name, tensor in (("input", input), ("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None:
            check_floating(tensor, name, "features" if name == "input" else "the output layer's parameters")
    shape = ", ".join(f"{name} {tuple(t.shape)}" for name, t in (("input", input), ("linear_weight", linear_weight),
                                                                 ("linear_bias", linear_bias)) if t is not None)
    shapes = f"input (N, d), linear_weight (V, d), linear_bias (V,) or None and target (N,), got {shape} and " \
             f"target {tuple(getattr(target, 'shape', ()))}"
    if (input.dim() != 2 or linear_weight.dim() != 2 or input.size(1) != linear_weight.size(1)
            or linear_bias is not None and linear_bias.shape != linear_weight.shape[:1]):
        raise ValueError(f"expected {shapes}")
    for name, tensor in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise ValueError(f"{name} is {tensor.dtype} but input {input.dtype}: F.linear takes one dtype")
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} is on {tensor.device} but input on {input.device}: put all on the same device")
    target = check_index_target(target, input.size(0), linear_weight.size(0), input.device, settings, convention,
                                shapes, synchronize=synchronize)
    return settings, target


def check_dense_loss_args(input, target, *, log_end, bonus_weight, reduction, what):
    """Validate the arguments of a dense-target EL (soft or multi-label targets of the logits' shape);
    returns (log_end, rho)."""
    log_end = check_log_end(log_end)
    rho = check_bonus_weight(bonus_weight)
    check_choice(reduction, REDUCTIONS, "reduction")
    check_floating(input)
    if input.shape != target.shape:
        raise ValueError(f"{what} must have the shape of the logits {tuple(input.shape)}, got {tuple(target.shape)}")
    return log_end, rho
