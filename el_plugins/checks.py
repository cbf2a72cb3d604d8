"""The argument checks of el-plugins' losses: each raises a ValueError that names the argument (or the flag an
adapter passes as ``name``), says what is allowed and what it got, before any work runs. They build the
settings :mod:`el_plugins.core` computes with (:func:`loss_settings`, :func:`bonus_spec`, :func:`schedule_spec`).
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional

import torch

from el_plugins.core import (BONUSES, DEFAULT_LOG_END, REDUCTIONS, SCHEDULE_UNITS, SCHEDULES, SMOOTHING_CONVENTIONS,
                             Bonus, BonusSchedule, LossSettings)

__all__ = ['ARGUMENT_NAMES', 'bonus_spec', 'check_binary_targets', 'check_target_threshold', 'check_bonus_smoothing',
           'check_bonus_start', 'check_bonus_weight', 'check_choice', 'check_count', 'check_dense_loss_args',
           'check_floating', 'check_ignore_index', 'check_index_loss_args', 'check_index_target', 'check_integer',
           'check_label_smoothing', 'check_linear_loss_args', 'check_log_end', 'check_nonzero', 'check_num_classes',
           'check_positive', 'check_soft_targets', 'check_targets', 'host_checks_possible', 'loss_settings',
           'real_number', 'schedule_spec', 'SOFT_TARGET_SUM_TOLERANCE']

SOFT_TARGET_SUM_TOLERANCE = 1e-3
"""How far a soft target row's sum may be from 1 (more for float16/bfloat16 targets: a few of their ulps)."""


# --------------------------------------------------------------------------- single values
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
            f"the paper uses 0.75 or 0.5), got {log_end!r}")
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


def check_positive(value, name: str) -> float:
    """A finite number > 0 (one flag's value, before the settings it belongs to are checked together)."""
    number = real_number(value)
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_nonzero(value, name: str) -> float:
    """A finite number other than 0."""
    number = real_number(value)
    if number is None or not math.isfinite(number) or number == 0:
        raise ValueError(f"{name} must be a finite number other than 0, got {value!r}")
    return number


def check_integer(value, name: str, low: int = 0) -> int:
    """An integer >= ``low`` (an integral float such as 5.0, as a config file may give, included)."""
    number = real_number(value)
    if number is None or not math.isfinite(number) or number != int(number) or number < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(number)


def check_bonus_start(value, name: str = "bonus_start") -> float:
    """The aggressive bonus's start: a number in [0, 1) (0: none)."""
    number = real_number(value)
    if number is None or not 0.0 <= number < 1.0:
        raise ValueError(f"{name} must be in [0, 1), a number (0: no start), got {value!r}")
    return number


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


def check_binary_targets(target: torch.Tensor, *, synchronize: bool = True) -> None:
    """Multi-label (sigmoid) targets must be values in [0, 1] (NaN is not). synchronize: as in
    :func:`check_targets` (False: a device-side assertion, no host wait)."""
    if not (target.dtype.is_floating_point or target.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16,
                                                                 torch.int32, torch.int64)):
        raise ValueError(f"multi-label targets must be a real tensor of values in [0, 1], got {target.dtype}")
    bad = ~((target >= 0) & (target <= 1))  # NaN too

    def describe(b):
        return f"multi-label targets must be values in [0, 1], got {target[b].flatten()[0].item()!r}"
    _fail_where(bad, "multi-label targets must be values in [0, 1]", synchronize, describe)


def check_target_threshold(value, name: str = "target_threshold") -> Optional[float]:
    """None, or a number in [0, 1]: dense targets above it become 1, the others 0 (timm's bce_target_thresh)."""
    if value is None:
        return None
    number = real_number(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (targets above it become 1, the others 0; the "
                         f"'ResNet strikes back' recipes use 0.2), got {value!r}")
    return number


# --------------------------------------------------------------------------- the bonus family and its schedule
ARGUMENT_NAMES = {"bonus": "bonus", "bonus_gamma": "bonus_gamma", "bonus_start": "bonus_start",
                  "log_end": "log_end", "bonus_smoothing": "bonus_smoothing", "schedule": "bonus_schedule",
                  "horizon": "bonus_schedule_horizon", "defer": "bonus_defer",
                  "exp_ratio": "bonus_schedule_exp_ratio", "unit": "bonus_schedule_unit"}
"""How the checks name each argument; an adapter passes its own flags (``names={'bonus_gamma': '--bonus-gamma'}``)."""


def _names(names: Optional[Mapping[str, str]]) -> dict:
    return {**ARGUMENT_NAMES, **(names or {})}


def bonus_spec(bonus: str = "log", bonus_gamma=None, bonus_start=0.0, log_end=None, *,
               names: Optional[Mapping[str, str]] = None) -> Bonus:
    """The checked :class:`el_plugins.core.Bonus`: ``bonus`` one of BONUSES; ``bonus_gamma`` (> 0) for 'power' and
    only for it; ``bonus_start`` in [0, 1), for 'log' and 'power'; ``log_end`` in (0, 1] shapes the log bonus
    (None: 0.75 for 'log', no tail otherwise; another member takes none, or 1). bonus_start > 0 with log_end < 1
    is refused: the authors' formula leaves a jump in the loss at log_end there."""
    n = _names(names)
    kind = check_choice(bonus, BONUSES, n["bonus"])
    gamma = 1.0
    if kind == "power":
        gamma = real_number(bonus_gamma)
        if gamma is None or not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"{n['bonus_gamma']} must be a finite number > 0 for {n['bonus']}='power' (the bonus "
                             f"-p**gamma; the authors' --bonus_gamma), got {bonus_gamma!r}")
    elif bonus_gamma is not None:
        raise ValueError(f"{n['bonus_gamma']} applies to {n['bonus']}='power' only (the bonus -p**gamma), and "
                         f"{n['bonus']}={kind!r} takes none: leave it out")
    start = real_number(bonus_start)
    if start is None or not 0.0 <= start < 1.0:
        raise ValueError(f"{n['bonus_start']} must be in [0, 1), a number (0: none; s > 0: the aggressive bonus, 0 "
                         f"for p < s and b(p) - b(s) from s on), got {bonus_start!r}")
    if start and kind == "cosine":
        raise ValueError(f"{n['bonus_start']} applies to {n['bonus']}='log' and 'power' (the authors' aggressive "
                         f"bonus), and {n['bonus']}='cosine' takes none: leave it out")
    if log_end is None:
        log_end = DEFAULT_LOG_END if kind == "log" else 1.0
    log_end = check_log_end(log_end, n["log_end"])
    if kind != "log" and log_end < 1.0:
        raise ValueError(f"{n['log_end']} shapes the log bonus only (where it turns into its tangent), and "
                         f"{n['bonus']}={kind!r} has no such tail: leave {n['log_end']} out (or 1), got {log_end:g}")
    if start and log_end < 1.0:
        raise ValueError(
            f"{n['bonus_start']} > 0 with {n['log_end']} < 1 is refused: the authors' formula shifts the log part by "
            f"-b(bonus_start) but not the tail, which leaves a jump of {-math.log(1.0 - start):.4g} in the loss at "
            f"log_end; use {n['log_end']} 1 with {n['bonus_start']} (the paper's aggressive bonus), or "
            f"{n['bonus_start']} 0 with {n['log_end']}")
    return Bonus(kind, gamma, start, log_end)


def check_bonus_smoothing(value, label_smoothing: float, name: str = "bonus_smoothing") -> float:
    """The smoothing of the bonus term: None means the label smoothing (el-plugins' default); else in [0, 1)."""
    return label_smoothing if value is None else check_label_smoothing(value, name)


def _count_or_none(value, name, what, low):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} ({what}), got {value!r}")
    return int(value)


def schedule_spec(schedule: str = "constant", horizon=None, defer=0, exp_ratio=None, unit: str = "epoch", *,
                  names: Optional[Mapping[str, str]] = None) -> BonusSchedule:
    """The checked :class:`el_plugins.core.BonusSchedule`: ``schedule`` one of SCHEDULES; ``horizon`` (the
    warm-up's length, a positive integer) required by every schedule but 'constant' and refused by it;
    ``defer`` >= 0 units with no bonus first; ``exp_ratio`` (not 0; default 5) for 'exp' only; ``unit`` 'epoch'
    or 'update'."""
    n = _names(names)
    kind = check_choice(schedule, SCHEDULES, n["schedule"])
    unit = check_choice(unit, SCHEDULE_UNITS, n["unit"])
    horizon = _count_or_none(horizon, n["horizon"], f"the {unit}s the warm-up takes", 1)
    if kind != "constant" and horizon is None:
        raise ValueError(f"{n['schedule']} {kind!r} needs its horizon: {n['horizon']}, the {unit}s over which the "
                         f"bonus weight warms up to its full value (the authors' --el_schedule_max_epoch)")
    if kind == "constant" and horizon is not None:
        raise ValueError(f"{n['horizon']} applies to a warm-up ({n['schedule']} linear, exp or cos); with "
                         f"{n['schedule']} 'constant' leave it out")
    defer = _count_or_none(defer if defer is not None else 0, n["defer"],
                           f"the first {unit}s trained with the bonus off", 0)
    if exp_ratio is not None and kind != "exp":
        raise ValueError(f"{n['exp_ratio']} applies to {n['schedule']} 'exp' only, got it with {kind!r}")
    ratio = 5.0 if exp_ratio is None else real_number(exp_ratio)
    if ratio is None or not math.isfinite(ratio) or ratio == 0:
        raise ValueError(f"{n['exp_ratio']} must be a finite number other than 0 (> 0: exp((t/T - 1) r), < 0: "
                         f"1 - exp(t/T r); the authors' --el_exp_schedule_ratio, default 5), got {exp_ratio!r}")
    return BonusSchedule(kind, horizon, defer, ratio, unit)


# --------------------------------------------------------------------------- the checks of a call
def loss_settings(*, log_end=None, label_smoothing=0.0, bonus_weight=1.0, bonus="log", bonus_gamma=None,
                  bonus_start=0.0, bonus_smoothing=None, ignore_index=None, reduction="mean",
                  smoothing_convention="paper", names: Optional[Mapping[str, str]] = None) -> LossSettings:
    """Check the settings every class-index EL takes (the logits' and the linear form alike)."""
    n = _names(names)
    spec = bonus_spec(bonus, bonus_gamma, bonus_start, log_end, names=names)
    eps = check_label_smoothing(label_smoothing, n.get("label_smoothing", "label_smoothing"))
    return LossSettings(spec, eps, check_bonus_weight(bonus_weight, n.get("bonus_weight", "bonus_weight")),
                        check_bonus_smoothing(bonus_smoothing, eps, n["bonus_smoothing"]),
                        check_ignore_index(ignore_index), check_choice(smoothing_convention, SMOOTHING_CONVENTIONS,
                                                                       "smoothing_convention"),
                        check_choice(reduction, REDUCTIONS, "reduction"))


def check_index_target(target, num_rows: int, num_classes: int, device, settings: LossSettings, shapes: str, *,
                       synchronize=True) -> torch.Tensor:
    """Check class-index targets against the logits' (num_rows, num_classes); returns them as int64.
    ``shapes`` describes what was given, for the shape error; synchronize: see :func:`check_targets`."""
    if not isinstance(target, torch.Tensor) or target.shape != (num_rows,):
        raise ValueError(f"expected {shapes}")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but input on {device}: put both on the same device")
    check_num_classes(num_classes)
    check_targets(target, num_classes, settings.ignore_index, synchronize=synchronize)
    return target.long()


def check_index_loss_args(input, target, settings: LossSettings, *, synchronize=True) -> torch.Tensor:
    """Validate a class-index EL's tensors, (N, V) logits and (N,) targets (any integer dtype); returns the
    targets as int64. synchronize: see :func:`check_targets`."""
    check_floating(input)
    shapes = f"input (N, V) and target (N,), got input {tuple(input.shape)} and target " \
             f"{tuple(getattr(target, 'shape', ()))}"
    if input.dim() != 2:
        raise ValueError(f"expected {shapes}")
    return check_index_target(target, input.size(0), input.size(1), input.device, settings, shapes,
                              synchronize=synchronize)


def check_linear_loss_args(input, linear_weight, linear_bias, target, settings: LossSettings, *,
                           synchronize=True) -> torch.Tensor:
    """Validate the tensors of EL on ``F.linear(input, linear_weight, linear_bias)``: input (N, d), linear_weight
    (V, d), linear_bias (V,) or None, target (N,), one floating dtype and one device for the three float tensors
    (as F.linear requires); returns the targets as int64."""
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
    return check_index_target(target, input.size(0), linear_weight.size(0), input.device, settings, shapes,
                              synchronize=synchronize)


def check_dense_loss_args(input, target, *, bonus_weight, reduction, what) -> float:
    """Validate the arguments of a dense-target EL (soft or multi-label targets of the logits' shape);
    returns rho."""
    rho = check_bonus_weight(bonus_weight)
    check_choice(reduction, REDUCTIONS, "reduction")
    check_floating(input)
    if input.shape != target.shape:
        raise ValueError(f"{what} must have the shape of the logits {tuple(input.shape)}, got {tuple(target.shape)}")
    return rho
