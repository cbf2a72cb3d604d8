""" Encouraging loss (EL) modules, plain torch (timm's train.py gets them through its loss factory)

Paper: `Well-classified Examples are Underestimated in Classification with Deep Neural Networks`
    - Guangxiang Zhao, Wenkai Yang, Xuancheng Ren, Lei Li, Yunfang Wu, Xu Sun
    - AAAI 2022, https://arxiv.org/abs/2110.06537

EL adds a bonus to cross-entropy that keeps rewarding well-classified examples:
L = sum_k q_k (-log p_k) + rho sum_k q'_k b(p_k), with b one member of the bonus family: by default
b(p) = log(1 - p) up to ``log_end`` and its tangent beyond (the conservative bonus; log_end = 1 is the normal
bonus, clamped at log(1e-5)), or -p^gamma ('power'), cos(pi p) - 1 ('cosine'), each optionally aggressive (0 below
``bonus_start``). The paper reports EfficientNet-B0 77.80 -> 78.28 and ResNet-50 75.49 -> 76.43 ImageNet top-1 with
log_end = 0.75. The bonus weight may warm up over epochs (``bonus_schedule``; call :meth:`set_epoch`, as
el-timm-train does). The math is el_plugins.functional; these modules only hold the settings.
"""
from typing import Optional

import torch
import torch.nn as nn

from el_plugins import checks
from el_plugins import functional as EF
from el_plugins.core import compute_dtype

__all__ = ['BinaryEncouragingLoss', 'EncouragingLoss', 'JsdEncouragingLoss', 'LinearEncouragingLoss',
           'jensen_shannon_consistency']

NOT_SCRIPTABLE = (
    "{name} cannot be compiled by torch.jit.script: its loss is Python (argument checks and the fused op's "
    "autograd.Function), which TorchScript cannot compile. Use torch.compile (implementation='auto' or "
    "'reference' compiles with fullgraph=True), or keep the loss outside the scripted module.")


class _LossModule(nn.Module):
    """What every EL module shares: the bonus family's settings, checked once (:attr:`bonus_spec`); the schedule of
    the bonus weight over epochs (:meth:`set_epoch`, the epoch being trained, from 1); and a clear refusal of
    torch.jit.script (called on the module or on a model holding it), before TorchScript's own error about the
    first line it cannot read."""

    def _set_bonus(self, log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
                   bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio):
        self.bonus_spec = checks.bonus_spec(bonus, bonus_gamma, bonus_start, log_end)
        self.log_end = self.bonus_spec.log_end
        self.bonus_weight = checks.check_bonus_weight(bonus_weight)
        self.bonus_smoothing = None if bonus_smoothing is None else checks.check_label_smoothing(
            bonus_smoothing, 'bonus_smoothing')
        self.schedule = checks.schedule_spec(bonus_schedule, bonus_schedule_horizon, bonus_defer,
                                             bonus_schedule_exp_ratio, 'epoch')
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """The epoch being trained, counted from 1, for the bonus weight's schedule."""
        self.epoch = int(epoch)

    @property
    def current_bonus_weight(self) -> float:
        """rho times the schedule's factor at :attr:`epoch`."""
        return self.bonus_weight * self.schedule.factor(self.epoch)

    def _bonus_arguments(self) -> dict:
        spec = self.bonus_spec
        return dict(log_end=spec.log_end, bonus_weight=self.current_bonus_weight, bonus=spec.kind,
                    bonus_gamma=spec.gamma if spec.kind == 'power' else None, bonus_start=spec.start,
                    bonus_smoothing=self.bonus_smoothing)

    def _bonus_repr(self) -> str:
        spec = self.bonus_spec
        text = f'log_end={self.log_end}' if spec.kind == 'log' else f'bonus={spec.kind!r}'
        if spec.kind == 'power':
            text += f', bonus_gamma={spec.gamma:g}'
        if spec.start:
            text += f', bonus_start={spec.start:g}'
        if self.bonus_smoothing is not None:
            text += f', bonus_smoothing={self.bonus_smoothing:g}'
        if not self.schedule.is_constant:
            text += f', schedule={self.schedule.kind}/{self.schedule.horizon}, defer={self.schedule.defer}'
        return text

    def __prepare_scriptable__(self):
        raise RuntimeError(NOT_SCRIPTABLE.format(name=type(self).__name__))


class EncouragingLoss(_LossModule):
    """Softmax EL for single-label classification.

    Targets are class indices (N,) -- smoothed as timm and the paper do, q = (1 - eps) onehot + eps / C --
    or dense distributions (N, C) from Mixup/CutMix, used as they are (they arrive smoothed).

    Args:
        log_end: where the log bonus log(1 - p) turns into its tangent, in (0, 1]; 1 = normal bonus; None: 0.75
            for the log bonus (the other members have no tail).
        smoothing: label smoothing for class-index targets, in [0, 1).
        bonus_weight: rho >= 0; 0 is (label-smoothed) cross-entropy.
        bonus, bonus_gamma, bonus_start: the member of the bonus family: 'log' (default), 'power' (-p^bonus_gamma),
            'cosine'; bonus_start > 0: the aggressive bonus of 'log' and 'power'.
        bonus_smoothing: label smoothing of the bonus term, in [0, 1); None: ``smoothing`` (for soft targets:
            the targets as they are).
        bonus_schedule, bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio: the bonus weight over
            epochs (see el_plugins.core.BonusSchedule): 'constant' (default), 'linear', 'exp' or 'cos' over
            ``bonus_schedule_horizon`` epochs, after ``bonus_defer`` epochs without the bonus. Call
            :meth:`set_epoch` each epoch (el-timm-train does).
        ignore_index: class-index targets equal to it contribute nothing (None: no such index).
        reduction: 'mean' over rows, 'sum', or 'none' for per-row losses.
        implementation: for class-index targets, 'auto' (default), 'fused' (loss and gradient in one pass,
            no float32 (N, C) intermediates kept) or 'reference' (plain autograd); see
            el_plugins.functional.IMPLEMENTATIONS. Soft targets use the reference.
    """

    def __init__(self, log_end: Optional[float] = None, smoothing: float = 0., bonus_weight: float = 1.,
                 bonus: str = 'log', bonus_gamma: Optional[float] = None, bonus_start: float = 0.,
                 bonus_smoothing: Optional[float] = None, bonus_schedule: str = 'constant',
                 bonus_schedule_horizon: Optional[int] = None, bonus_defer: int = 0,
                 bonus_schedule_exp_ratio: Optional[float] = None, ignore_index=None, reduction: str = 'mean',
                 implementation: str = 'auto'):
        super().__init__()
        self.implementation = checks.check_choice(implementation, EF.IMPLEMENTATIONS, 'implementation')
        self.smoothing = checks.check_label_smoothing(smoothing, 'smoothing')
        self._set_bonus(log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
                        bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio)
        self.ignore_index = checks.check_ignore_index(ignore_index)
        self.reduction = checks.check_choice(reduction, EF.REDUCTIONS, 'reduction')

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: (N, C) logits, or (C,) for one unbatched row. target: class indices, an integer tensor of shape
        (N,) (or () with (C,) logits); or class probabilities, a floating tensor of the logits' shape."""
        if target.dtype.is_floating_point:
            if target.shape != x.shape:
                raise ValueError(
                    f'a floating-point target is read as class probabilities (Mixup/CutMix) and must have the '
                    f'logits\' shape {tuple(x.shape)}, got {tuple(target.shape)}; class-index targets must be an '
                    f'integer tensor of shape {tuple(x.shape[:-1])}')
            if self.ignore_index is not None:
                raise ValueError(
                    f'ignore_index={self.ignore_index} applies to class-index targets only; soft targets (class '
                    f'probabilities) have no index to ignore: give rows to skip zero weight instead, or use '
                    f'EncouragingLoss(ignore_index=None) for soft targets (torch\'s cross_entropy refuses this too)')
            return EF.soft_target_encouraging_loss(x, target, **self._bonus_arguments(), reduction=self.reduction)
        unbatched = x.dim() == 1 and target.dim() == 0
        if unbatched:
            x, target = x.unsqueeze(0), target.unsqueeze(0)
        loss = EF.encouraging_loss(
            x, target, **self._bonus_arguments(), label_smoothing=self.smoothing, ignore_index=self.ignore_index,
            reduction=self.reduction, smoothing_convention='paper', implementation=self.implementation)
        return loss.squeeze(0) if unbatched and self.reduction == 'none' else loss

    def extra_repr(self) -> str:
        return (f'{self._bonus_repr()}, smoothing={self.smoothing}, bonus_weight={self.bonus_weight}, '
                f'reduction={self.reduction!r}')


class LinearEncouragingLoss(_LossModule):
    """The output layer and softmax EL in one module, as torch's nn.LinearCrossEntropyLoss: it owns the
    ``linear`` layer (in_features -> num_classes) and computes EL of its logits with
    el_plugins.functional.linear_encouraging_loss, which by default never holds the whole (N, C) logits.

    Takes class-index targets only (the paper's smoothing): soft targets (Mixup/CutMix) need the logits, so use
    ``EncouragingLoss()(module.linear(x), soft_target)`` for those.

    Args:
        in_features, num_classes, bias, device, dtype: the linear layer's (``self.linear``).
        the others: as in EncouragingLoss.
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = False, device=None, dtype=None,
                 log_end: Optional[float] = None, smoothing: float = 0., bonus_weight: float = 1.,
                 bonus: str = 'log', bonus_gamma: Optional[float] = None, bonus_start: float = 0.,
                 bonus_smoothing: Optional[float] = None, bonus_schedule: str = 'constant',
                 bonus_schedule_horizon: Optional[int] = None, bonus_defer: int = 0,
                 bonus_schedule_exp_ratio: Optional[float] = None, ignore_index=None, reduction: str = 'mean',
                 implementation: str = 'auto'):
        super().__init__()
        self.implementation = checks.check_choice(implementation, EF.IMPLEMENTATIONS, 'implementation')
        self.smoothing = checks.check_label_smoothing(smoothing, 'smoothing')
        self._set_bonus(log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
                        bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio)
        self.ignore_index = checks.check_ignore_index(ignore_index)
        self.reduction = checks.check_choice(reduction, EF.REDUCTIONS, 'reduction')
        self.linear = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: features (..., in_features), as nn.Linear takes them: (N, in_features), (B, T, in_features), or one
        unbatched row (in_features,). target: class indices, an integer tensor of x's leading shape (...).
        reduction='none' returns one loss per row, of the target's shape."""
        in_features = self.linear.in_features
        if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point:
            raise ValueError(
                f'LinearEncouragingLoss takes class-index targets (an integer tensor of the features\' leading shape); '
                f'got {getattr(target, "dtype", type(target).__name__)}: soft targets (Mixup/CutMix) need the logits, '
                f'use EncouragingLoss()(module.linear(x), target) for those')
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != in_features \
                or tuple(target.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f'expected features x (..., {in_features}) and class-index targets of x\'s leading shape (...), '
                f'e.g. x (N, {in_features}) and target (N,), or x (B, T, {in_features}) and target (B, T); got x '
                f'{tuple(getattr(x, "shape", ()))} and target {tuple(target.shape)}')
        loss = EF.linear_encouraging_loss(
            x.reshape(-1, in_features), self.linear.weight, target.reshape(-1), linear_bias=self.linear.bias,
            **self._bonus_arguments(), label_smoothing=self.smoothing, ignore_index=self.ignore_index,
            reduction=self.reduction, smoothing_convention='paper', implementation=self.implementation)
        return loss.reshape(target.shape) if self.reduction == 'none' else loss

    def extra_repr(self) -> str:
        return (f'in_features={self.linear.in_features}, num_classes={self.linear.out_features}, '
                f'bias={self.linear.bias is not None}, {self._bonus_repr()}, smoothing={self.smoothing}, '
                f'bonus_weight={self.bonus_weight}, reduction={self.reduction!r}')


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _weight_buffer(value, name: str, what: str) -> Optional[torch.Tensor]:
    """A class or positive weight as a float32 tensor (a number, a sequence or a tensor), finite and >= 0."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        tensor = value
    elif checks.real_number(value) is not None:
        tensor = torch.tensor(checks.real_number(value))
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            tensor = None
    if tensor is None or tensor.dtype == torch.bool or tensor.is_complex() or tensor.dim() > 1 or (
            not tensor.dtype.is_floating_point and tensor.dtype not in (torch.int8, torch.int16, torch.int32,
                                                                        torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be None, a number or one number per class ({what}), got {value!r}")
    tensor = tensor.detach().to(torch.float32)
    finite = tensor.isfinite() & (tensor >= 0)
    if not bool(finite.all()):
        raise ValueError(f"{name} must be finite and >= 0 ({what}), got {tensor[~finite][0].item()!r}")
    return tensor


class BinaryEncouragingLoss(_LossModule):
    """Sigmoid EL, per class with s = sigmoid(z): for multi-label classification, and the BCE form of
    single-label training (timm's ``--bce-loss``):

        L_c = w_c [ a_c ( t (-log s) + rho t' b(s) ) + (1 - t) (-log(1 - s)) + rho (1 - t') b(1 - s) ]

    The targets t are made as timm's BinaryCrossEntropy makes them: class indices (N,) become one-hot, smoothed to
    eps / C off and 1 - eps + eps / C on; dense targets (N, C) (multi-label, or Mixup/CutMix) are used as they are,
    or with ``smooth_dense`` moved towards 0.5 (t (1 - eps) + eps / 2); then, with ``target_threshold``, every
    t above it becomes 1 and every other 0. t' is t, or with ``bonus_smoothing`` lambda, t moved towards 0.5 by
    lambda. With bonus_weight 0 the loss is timm's BinaryCrossEntropy with the same arguments. The math is
    el_plugins.functional.binary_encouraging_loss (autograd on float32 logits or wider: sigmoid EL has no fused op).

    Args:
        log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
            bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio: as in EncouragingLoss.
        smoothing: label smoothing eps in [0, 1).
        reduction: 'mean' over rows and classes (as BCE), 'sum', or 'none' for (N, C); with ``sum_classes``,
            over rows of the per-row sums ('none': (N,)).
        target_threshold: None, or in [0, 1]: binarize the targets (timm's bce_target_thresh).
        weight: w, None, a number or one per class (C,): a rescaling weight of each class (timm's class_weight).
        pos_weight: a, None, a number or one per class (C,): the weight of the positive side, nll and bonus alike
            (timm's pos_weight).
        sum_classes: sum over the classes first, then reduce over rows (timm's bce_sum, with 'mean').
        smooth_dense: whether ``smoothing`` also moves dense targets towards 0.5 (True, the multi-label default;
            timm's single-label BCE form passes False: dense targets come from Mixup/CutMix, smoothed there).
    """

    def __init__(self, log_end: Optional[float] = None, smoothing: float = 0., bonus_weight: float = 1.,
                 bonus: str = 'log', bonus_gamma: Optional[float] = None, bonus_start: float = 0.,
                 bonus_smoothing: Optional[float] = None, bonus_schedule: str = 'constant',
                 bonus_schedule_horizon: Optional[int] = None, bonus_defer: int = 0,
                 bonus_schedule_exp_ratio: Optional[float] = None, reduction: str = 'mean', *,
                 target_threshold: Optional[float] = None, weight=None, pos_weight=None, sum_classes: bool = False,
                 smooth_dense: bool = True):
        super().__init__()
        self.smoothing = checks.check_label_smoothing(smoothing, 'smoothing')
        self._set_bonus(log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
                        bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio)
        self.reduction = checks.check_choice(reduction, EF.REDUCTIONS, 'reduction')
        self.target_threshold = checks.check_target_threshold(target_threshold)
        self.sum_classes = _check_flag(sum_classes, 'sum_classes')
        self.smooth_dense = _check_flag(smooth_dense, 'smooth_dense')
        self.register_buffer('weight', _weight_buffer(weight, 'weight', 'a rescaling weight of each class'))
        self.register_buffer('pos_weight', _weight_buffer(pos_weight, 'pos_weight',
                                                          'the weight of the positive side of each class'))

    def targets(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The dense targets t the loss scores ``x`` against (smoothed and thresholded), in float32 or wider."""
        checks.check_floating(x)
        dtype = compute_dtype(x.dtype)
        if target.shape != x.shape:
            if target.dtype.is_floating_point or target.shape != x.shape[:-1]:
                raise ValueError(
                    f'multi-label targets must be dense targets of the logits\' shape {tuple(x.shape)} (one value '
                    f'in [0, 1] per class), or class indices: an integer tensor of shape {tuple(x.shape[:-1])} (one '
                    f'positive class per row); got a {target.dtype} target of shape {tuple(target.shape)}')
            checks.check_targets(target, x.shape[-1], None)
            num_classes = x.shape[-1]
            off = self.smoothing / num_classes
            target = torch.full(x.shape, off, dtype=dtype, device=x.device).scatter_(
                -1, target.long().unsqueeze(-1), 1. - self.smoothing + off)
        else:
            target = target.to(dtype)
            if self.smooth_dense and self.smoothing:
                target = target * (1. - self.smoothing) + 0.5 * self.smoothing
        if self.target_threshold is not None:
            target = target.gt(self.target_threshold).to(dtype)
        return target

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: (N, C) logits. target: dense, the logits' shape (N, C), values in [0, 1]; or class indices, an
        integer tensor of shape (N,) (one positive class per row)."""
        target = self.targets(x, target)
        loss = EF.binary_encouraging_loss(x, target, weight=self.weight, pos_weight=self.pos_weight,
                                          **self._bonus_arguments(),
                                          reduction='none' if self.sum_classes else self.reduction)
        if not self.sum_classes:
            return loss
        loss = loss.sum(-1)
        if self.reduction == 'mean':
            return loss.mean() if loss.numel() else loss.sum()
        return loss.sum() if self.reduction == 'sum' else loss

    def extra_repr(self) -> str:
        text = (f'{self._bonus_repr()}, smoothing={self.smoothing}, bonus_weight={self.bonus_weight}, '
                f'reduction={self.reduction!r}')
        if self.target_threshold is not None:
            text += f', target_threshold={self.target_threshold:g}'
        if self.sum_classes:
            text += ', sum_classes=True'
        for name in ('weight', 'pos_weight'):
            value = getattr(self, name)
            if value is not None:
                shown = f'{value.item():g}' if value.numel() == 1 else f'({value.numel()} values)'
                text += f', {name}={shown}'
        if not self.smooth_dense and self.smoothing:
            text += ', smooth_dense=False'
        return text


JS_CLAMP = 1e-7
"""The mixture of the splits' predictions is clamped to [JS_CLAMP, 1] before its log (as AugMix does)."""


def jensen_shannon_consistency(logits: torch.Tensor, num_splits: int) -> torch.Tensor:
    """AugMix's consistency term over ``num_splits`` equal parts of the batch (the clean images first, then each
    augmentation): with p_i = softmax of split i's logits and m = clamp(mean_i p_i, 1e-7, 1),

        JS = (1 / S) sum_i (1 / B) sum_rows KL(p_i || m),   KL(p || m) = sum_k p_k (log p_k - log m_k)

    B rows per split. Computed on float32 (float64 for float64 logits) by autograd."""
    rows, classes = logits.shape
    z = logits.to(compute_dtype(logits.dtype)).reshape(num_splits, rows // num_splits, classes)
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    log_m = p.mean(0).clamp(JS_CLAMP, 1.0).log()
    return (p * (log_p - log_m)).sum() / rows


class JsdEncouragingLoss(_LossModule):
    """EL for AugMix (timm's ``--jsd-loss --aug-splits S``): the batch holds S equal splits, the clean images
    first; EL (softmax, label smoothing ``smoothing``) scores the clean split against its class indices, and
    ``alpha`` times the Jensen-Shannon consistency term (:func:`jensen_shannon_consistency`) ties the splits'
    predictions together:

        L = EL(z_clean, y) + alpha JS(z_1, ..., z_S)

    With bonus_weight 0 this is timm's JsdCrossEntropy. Both terms are computed from one float32 (float64 for
    float64) copy of the logits, whose gradient is rounded to the logits' dtype once (the loss scale applied
    first): the clean split's EL by el_plugins.functional.encouraging_loss (``implementation``: the fused op by
    default), the JS term by autograd.

    Args:
        num_splits: S >= 2, the splits in the batch (train.py's --aug-splits).
        alpha: the weight of the JS term, >= 0 (AugMix's and timm's 12).
        the others: as in EncouragingLoss (class-index targets only: the splits are not mixed).
    """

    def __init__(self, num_splits: int = 3, alpha: float = 12., log_end: Optional[float] = None,
                 smoothing: float = 0., bonus_weight: float = 1., bonus: str = 'log',
                 bonus_gamma: Optional[float] = None, bonus_start: float = 0., bonus_smoothing: Optional[float] = None,
                 bonus_schedule: str = 'constant', bonus_schedule_horizon: Optional[int] = None, bonus_defer: int = 0,
                 bonus_schedule_exp_ratio: Optional[float] = None, implementation: str = 'auto'):
        super().__init__()
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 2:
            raise ValueError(f"num_splits must be an integer >= 2 (the clean split and at least one augmented one), "
                             f"got {num_splits!r}")
        self.num_splits = num_splits
        alpha_value = checks.real_number(alpha)
        if alpha_value is None or not (alpha_value >= 0 and alpha_value < float('inf')):
            raise ValueError(f"alpha must be a finite number >= 0 (the weight of the Jensen-Shannon term; AugMix "
                             f"uses 12), got {alpha!r}")
        self.alpha = alpha_value
        self.implementation = checks.check_choice(implementation, EF.IMPLEMENTATIONS, 'implementation')
        self.smoothing = checks.check_label_smoothing(smoothing, 'smoothing')
        self._set_bonus(log_end, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, bonus_schedule,
                        bonus_schedule_horizon, bonus_defer, bonus_schedule_exp_ratio)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """x: (S B, C) logits, the S splits one after another (the clean split first). target: class indices, an
        integer tensor of shape (S B,) (each split's targets, as timm's loader repeats them) or (B,); the first B
        are the clean split's."""
        checks.check_floating(x)
        if x.dim() != 2 or x.shape[0] % self.num_splits:
            raise ValueError(f"expected logits (S B, C) holding num_splits={self.num_splits} equal splits, got shape "
                             f"{tuple(x.shape)}")
        rows = x.shape[0] // self.num_splits
        if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point:
            raise ValueError(
                f"JsdEncouragingLoss takes class-index targets (an integer tensor); got "
                f"{getattr(target, 'dtype', type(target).__name__)}: the splits of AugMix are not mixed, so Mixup/"
                f"CutMix soft targets do not apply (timm's JsdCrossEntropy takes class indices too)")
        if target.shape not in ((x.shape[0],), (rows,)):
            raise ValueError(f"expected class-index targets of shape ({x.shape[0]},) (every split's) or ({rows},) (the "
                             f"clean split's) for logits {tuple(x.shape)}, got {tuple(target.shape)}")
        if self.alpha:  # both terms on one float32 (or wider) copy: the gradient is rounded to x's dtype once
            x = x.to(compute_dtype(x.dtype))
        loss = EF.encouraging_loss(
            x[:rows], target[:rows], **self._bonus_arguments(), label_smoothing=self.smoothing,
            smoothing_convention='paper', implementation=self.implementation)
        if self.alpha:
            loss = loss + self.alpha * jensen_shannon_consistency(x, self.num_splits)
        return loss

    def extra_repr(self) -> str:
        return (f'num_splits={self.num_splits}, alpha={self.alpha:g}, {self._bonus_repr()}, '
                f'smoothing={self.smoothing}, bonus_weight={self.bonus_weight}')
