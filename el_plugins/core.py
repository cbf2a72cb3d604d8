"""The math of the encouraging loss (EL), torch only: the bonus family and its slopes, the schedules of the
bonus weight, the target weights, the per-row terms and how the loss is assembled and reduced from them.
The public functions (:mod:`el_plugins.functional`) and the fused kernels (:mod:`el_plugins.ops`) both
use it; the argument checks that build its settings are :mod:`el_plugins.checks`.

Zhao et al., "Well-classified Examples are Underestimated in Classification with Deep Neural
Networks", AAAI 2022, https://arxiv.org/abs/2110.06537. The formulas are in docs/math.md.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

__all__ = ['assemble_rows', 'autocast_dtype', 'autocast_input', 'Bonus', 'BONUS_CLAMP', 'bonus_from_log_prob',
           'bonus_slope_times_p', 'BONUSES', 'BonusSchedule', 'compute_dtype', 'CONSTANT_SCHEDULE',
           'DEFAULT_LOG_END', 'EncouragingLossOutput', 'LARGE_P', 'LOG_BONUS', 'LossSettings', 'reduce_outputs',
           'reduce_rows', 'REDUCTIONS', 'RowTerms', 'SCHEDULE_UNITS', 'SCHEDULES', 'SMOOTHING_CONVENTIONS',
           'smoothing_weights', 'target_weights', 'TargetWeights']

BONUS_CLAMP = 1e-5
"""The log bonus is log(max(1 - p, BONUS_CLAMP)), bounded below by log(1e-5) = -11.513."""

BONUSES = ("log", "power", "cosine")
"""The members of EL's bonus family (Zhao et al. and the authors' code), each a concave-or-linear decreasing b(p):
``log``: log(max(1 - p, 1e-5)), the paper's bonus, with the conservative tail past ``log_end``;
``power``: -p^gamma (the authors' --bonus_gamma > 0); ``cosine``: cos(pi p) - 1 (their --bonus_gamma -2)."""

DEFAULT_LOG_END = 0.75
"""log_end of the log bonus where none is given (the paper's ImageNet setting)."""

SMOOTHING_CONVENTIONS = ("paper", "fairseq")
"""How label smoothing spreads eps over the classes:
``paper``: q_k = (1 - eps)[k = y] + eps / V (the paper's code, fairseq 0.10, timm);
``fairseq``: q_y = 1 - eps, q_k = eps / (V - 1) for k != y (fairseq >= 0.12)."""

REDUCTIONS = ("none", "sum", "mean")

SCHEDULES = ("constant", "linear", "exp", "cos")
"""How the bonus weight warms up (the authors' --el_schedule): see :class:`BonusSchedule`."""

SCHEDULE_UNITS = ("epoch", "update")

LARGE_P = 0.5
"""Above it 1 - p is formed from log p (or, for the target, from the other classes' probabilities), not as 1 - p."""


# --------------------------------------------------------------------------- the bonus family
class Bonus(NamedTuple):
    """One member of the bonus family, with its parameters (built and checked by el_plugins.checks.bonus_spec):

        log      b(p) = log(max(1 - p, 1e-5))          p <= log_end
                 b(p) = (p - log_end) / (log_end - 1) + log(1 - log_end)   p > log_end (its tangent)
        power    b(p) = -p^gamma
        cosine   b(p) = cos(pi p) - 1

    and, with ``start`` = s > 0 (the aggressive bonus, 'log' and 'power'): 0 for p < s, b(p) - b(s) for p >= s.
    """

    kind: str = "log"
    gamma: float = 1.0  # 'power' only
    start: float = 0.0
    log_end: float = 1.0  # 'log' only; 1 = no tail

    @property
    def tail(self) -> bool:
        """Whether the log bonus turns into its tangent past log_end."""
        return self.kind == "log" and self.log_end < 1.0

    @property
    def value_at_start(self) -> float:
        """b(s), subtracted from the bonus at p >= s (0 without a start)."""
        if not self.start:
            return 0.0
        if self.kind == "log":
            return math.log(max(1.0 - self.start, BONUS_CLAMP))
        return -self.start ** self.gamma

    @property
    def large_p(self) -> float:
        """Above this p the dense terms take a row's entry from its precise log p: 1/2, or log_end where the
        tail starts below it."""
        return min(LARGE_P, self.log_end) if self.tail else LARGE_P


LOG_BONUS = Bonus("log", log_end=1.0)


def _cosine_from_log_prob(log_p):
    """(cos(pi p) - 1, -pi p sin(pi p)) precise at both ends: with u = 1 - p (from log p),
    cos(pi p) - 1 = -2 sin^2(pi p / 2) = -2 + 2 sin^2(pi u / 2), and sin(pi p) = sin(pi u)."""
    p = torch.exp(log_p)
    u = -torch.expm1(log_p)
    small = p <= LARGE_P
    half = torch.sin(torch.where(small, p, u) * (math.pi / 2))
    value = torch.where(small, -2.0 * half.square(), 2.0 * half.square() - 2.0)
    slope = -math.pi * p * torch.sin(math.pi * torch.where(small, p, u))
    return value, slope


def bonus_from_log_prob(log_p: torch.Tensor, bonus: Bonus = LOG_BONUS) -> torch.Tensor:
    """b(p) from log p, elementwise, in log_p's dtype; stable near p = 1 (1 - p is formed as -expm1(log p))."""
    if bonus.kind == "log":
        one_minus_p = -torch.expm1(log_p)
        value = torch.log(torch.clamp(one_minus_p, min=BONUS_CLAMP))
    elif bonus.kind == "power":
        value = -torch.exp(bonus.gamma * log_p)
    else:
        value = _cosine_from_log_prob(log_p)[0]
    if bonus.start:
        value = torch.where(torch.exp(log_p) >= bonus.start, value - bonus.value_at_start, 0.0)
    if bonus.tail:
        p = torch.exp(log_p)
        tail = (p - bonus.log_end) / (bonus.log_end - 1.0) + math.log(1.0 - bonus.log_end)
        value = torch.where(p > bonus.log_end, tail, value)
    return value


def bonus_slope_times_p(log_p: torch.Tensor, bonus: Bonus = LOG_BONUS) -> torch.Tensor:
    """p b'(p) = d b / d log p, from log p: -p / (1 - p) for 'log' (0 where the clamp max(1 - p, 1e-5) is active;
    -p / (1 - log_end) on its tail), -gamma p^gamma for 'power', -pi p sin(pi p) for 'cosine'; 0 below a start.
    The fused gradient's g_k = rho q_k p_k b'(p_k) is built from it."""
    p = torch.exp(log_p)
    if bonus.kind == "log":
        one_minus_p = -torch.expm1(log_p)
        slope = torch.where(one_minus_p >= BONUS_CLAMP, -p / one_minus_p.clamp(min=BONUS_CLAMP), 0.0)
    elif bonus.kind == "power":
        slope = -bonus.gamma * torch.exp(bonus.gamma * log_p)
    else:
        slope = _cosine_from_log_prob(log_p)[1]
    if bonus.start:
        slope = torch.where(p >= bonus.start, slope, 0.0)
    if bonus.tail:
        slope = torch.where(p > bonus.log_end, -p / (1.0 - bonus.log_end), slope)
    return slope


# --------------------------------------------------------------------------- the schedule of the bonus weight
class BonusSchedule(NamedTuple):
    """The bonus weight over training (built and checked by el_plugins.checks.schedule_spec): rho * factor(t), with
    t the number of the ``unit`` being trained, counted from 1 (the epoch as fairseq numbers it; for updates, the
    updates done so far + 1).

        t <= defer                      0                                (the bonus deferred)
        then, with u = min(t / horizon, 1):
        constant                        1
        linear                          u
        exp, exp_ratio r > 0            exp((u - 1) r)
        exp, exp_ratio r < 0            1 - exp(u r)
        cos                             (cos(pi (1 + u)) + 1) / 2

    These are the authors' --el_schedule formulas with u = t / T; past the horizon they hold the value at T
    (the authors' linear kept growing past 1 and their cos fell again: docs/authors-flags.md)."""

    kind: str = "constant"
    horizon: Optional[int] = None
    defer: int = 0
    exp_ratio: float = 5.0
    unit: str = "epoch"

    def factor(self, t: float) -> float:
        """The factor on the bonus weight at time ``t`` (in ``unit``s)."""
        if t <= self.defer:
            return 0.0
        if self.kind == "constant":
            return 1.0
        u = min(t / self.horizon, 1.0)
        if self.kind == "linear":
            return u
        if self.kind == "exp":
            return math.exp((u - 1.0) * self.exp_ratio) if self.exp_ratio > 0 else 1.0 - math.exp(u * self.exp_ratio)
        return (math.cos(math.pi * (1.0 + u)) + 1.0) * 0.5

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant" and self.defer == 0


CONSTANT_SCHEDULE = BonusSchedule()


# --------------------------------------------------------------------------- settings and target weights
class LossSettings(NamedTuple):
    """The checked settings of a class-index EL call (built by el_plugins.checks.loss_settings)."""

    bonus: Bonus
    label_smoothing: float
    bonus_weight: float
    bonus_smoothing: float  # the label smoothing where none was given
    ignore_index: Optional[int]
    smoothing_convention: str
    reduction: str

    @property
    def log_end(self) -> float:
        return self.bonus.log_end


class TargetWeights(NamedTuple):
    """Per row, q = target * onehot(y) + other, once for the nll terms and once for the bonus (rho included):

        loss = nll_target (-log p_y) + nll_other sum_k (-log p_k) + bonus_target b(p_y) + bonus_other sum_k b(p_k)
    """

    nll_target: float
    nll_other: float
    bonus_target: float
    bonus_other: float

    @property
    def dense_bonus(self) -> bool:
        """Whether the bonus of every class counts (bonus smoothing and rho > 0)."""
        return bool(self.bonus_other)


def smoothing_weights(eps: float, num_classes: int, convention: str):
    """(weight on the target's own term, weight q_o on every class) so that q = w_y*onehot + q_o."""
    if convention == "paper":
        q_other = eps / num_classes
        return 1.0 - eps, q_other
    q_other = eps / (num_classes - 1) if num_classes > 1 else 0.0
    return 1.0 - eps - q_other, q_other


def target_weights(settings: LossSettings, num_classes: int) -> TargetWeights:
    """The :class:`TargetWeights` of ``settings`` over ``num_classes`` classes: the nll's from the label smoothing,
    the bonus's from the bonus smoothing (the same convention), times rho."""
    nll_target, nll_other = smoothing_weights(settings.label_smoothing, num_classes, settings.smoothing_convention)
    bonus_target, bonus_other = smoothing_weights(settings.bonus_smoothing, num_classes, settings.smoothing_convention)
    rho = settings.bonus_weight
    return TargetWeights(nll_target, nll_other, rho * bonus_target, rho * bonus_other)


# --------------------------------------------------------------------------- rows, their assembly and reduction
class EncouragingLossOutput(NamedTuple):
    """Reduced like the loss (or per row with reduction='none'); ignored rows count zero.

    loss:        sum_k q_k (-log p_k) + rho sum_k q'_k b(p_k)   (q: the smoothed target, q': the bonus's)
    nll_loss:    -log p_y (no smoothing, no bonus)
    bonus:       rho sum_k q'_k b(p_k), the part of ``loss`` that EL adds
    target_prob: p_y (no gradient)
    past_log_end: 1 where p_y > log_end, else 0 (no gradient; always 0 without the log bonus's tail)
    """

    loss: torch.Tensor
    nll_loss: torch.Tensor
    bonus: torch.Tensor
    target_prob: torch.Tensor
    past_log_end: torch.Tensor


class RowTerms(NamedTuple):
    """The per-row sums the chunked torch backend computes; :func:`assemble_rows` puts the loss together from
    them (the C++ and Triton kernels assemble the same sums themselves, with the same weights; the reference is
    autograd's own computation of the formula)."""

    log_p_target: torch.Tensor  # log p_y
    sum_log_p: torch.Tensor  # sum_k log p_k (zeros when the nll has no smoothing)
    bonus_target: torch.Tensor  # b(p_y)
    sum_bonus: torch.Tensor  # sum_k b(p_k) over every class, y included (zeros without a dense bonus)


def assemble_rows(terms: RowTerms, weights: TargetWeights):
    """Per-row (loss, nll, bonus) from :class:`RowTerms` and :class:`TargetWeights`:

        nll   = -log p_y
        bonus = bonus_target b(p_y) + bonus_other sum_k b(p_k)
        loss  = nll_target nll - nll_other sum_k log p_k + bonus
    """
    nll = -terms.log_p_target
    bonus = weights.bonus_target * terms.bonus_target + weights.bonus_other * terms.sum_bonus
    loss = weights.nll_target * nll - weights.nll_other * terms.sum_log_p + bonus
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


# --------------------------------------------------------------------------- dtypes
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for fp16/bf16/fp32 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


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
