"""The Triton kernel of the fused encouraging loss (the ``triton`` backend): one program per row, three passes over V.

    pass 1  lse = log sum_k exp(z_k), and 1 - p_y = sum_{k != y} p_k   (online max and rescaled sums)
    pass 2  sum_k log p_k, sum_k b(p_k), sum_{k != y} p_k b'(p_k)
    pass 3  dL/dz_j = (p_j - q_j) + g_j - p_j G,  g_j = q'_j p_j b'(p_j),  G = sum_k g_k

(q: the nll's target weights, q': the bonus's, rho included: :class:`el_plugins.core.TargetWeights`; with
log-probability input: no pass 1, and dL/dx_j = -q_j + g_j). The bonus is a member of the family
(:class:`el_plugins.core.Bonus`: BONUS 0 log, 1 power, 2 cosine; START the aggressive bonus; TAIL the log bonus's
conservative tail), computed from log p with 1 - p precise near p = 1: this kernel holds its own copy of the
formulas of :mod:`el_plugins.core`, tested against them. The target's terms use pass 1's 1 - p_y, precise near
p_y = 1, and its gradient entry is written without the cancellation of g_y against p_y G (as the torch path does).
Loads any float dtype, accumulates in float32, writes the gradient in float32 (the caller applies the loss scale,
then rounds once to the input's dtype), already multiplied by the reduction's scale. Imported only when the Triton
backend is used; set TRITON_INTERPRET=1 before the first import of triton to run it on CPU tensors.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from el_plugins.core import BONUS_CLAMP, BONUSES, LARGE_P

MAX_BLOCK = 2048  # 4096 columns per block spilled registers on sm_90 (ptxas, 8 warps)
BONUS_CODES = {name: code for code, name in enumerate(BONUSES)}  # the kernel's BONUS constexpr


@triton.jit
def _one_minus_p(log_p, p):
    """1 - p, stable near p = 1: -expm1(log p) by its Taylor series for log p > -0.1, else 1 - p."""
    x = log_p
    series = -x * (1.0 + x / 2.0 * (1.0 + x / 3.0 * (1.0 + x / 4.0 * (1.0 + x / 5.0 * (1.0 + x / 6.0 * (1.0 + x / 7.0))))))
    return tl.where(x > -0.1, series, 1.0 - p)


@triton.jit
def _sin_small(x):
    """sin(x) for 0 <= x <= pi / 2, by its Taylor series to x^13 (error below 1e-9 there, relative to sin(x) too):
    the kernel's sines never need range reduction, and the libdevice sine's reduction path spilled registers."""
    x2 = x * x
    return x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * (1.0 - x2 / 110.0
                                                                                             * (1.0 - x2 / 156.0))))))


@triton.jit
def _bonus_and_slope(log_p, log_end, log_one_minus_log_end, gamma, start, value_at_start,
                     BONUS: tl.constexpr, START: tl.constexpr, TAIL: tl.constexpr, CLAMP: tl.constexpr,
                     SMALL: tl.constexpr):
    """b(p) and p b'(p) from log p, for the member BONUS (0 log, 1 power, 2 cosine):
    log     log(max(1 - p, CLAMP)) and -p / (1 - p) (0 when clamped); on the tail p > log_end (TAIL):
            (p - log_end) / (log_end - 1) + log(1 - log_end) and -p / (1 - log_end);
    power   -p^gamma and -gamma p^gamma;
    cosine  cos(pi p) - 1 and -pi p sin(pi p), from u = 1 - p where p > SMALL (= 1/2): -2 + 2 sin^2(pi u / 2);
    START: 0 and 0 below ``start``, b(p) - b(start) from it."""
    p = tl.exp(log_p)
    one_minus_p = _one_minus_p(log_p, p)
    if BONUS == 0:
        clamped = tl.maximum(one_minus_p, CLAMP)
        bonus = tl.log(clamped)
        slope = tl.where(one_minus_p >= CLAMP, -p / clamped, 0.0)
    elif BONUS == 1:
        bonus = -tl.exp(gamma * log_p)
        slope = gamma * bonus
    else:
        small = p <= SMALL
        angle = tl.where(small, p, one_minus_p) * 3.141592653589793  # in [0, pi / 2]: min(p, 1 - p) <= 1/2
        half = _sin_small(angle * 0.5)
        bonus = tl.where(small, -2.0 * half * half, 2.0 * half * half - 2.0)
        slope = -3.141592653589793 * p * _sin_small(angle)
    if START:
        on = p >= start
        bonus = tl.where(on, bonus - value_at_start, 0.0)
        slope = tl.where(on, slope, 0.0)
    if TAIL:
        tail = p > log_end
        bonus = tl.where(tail, (p - log_end) / (log_end - 1.0) + log_one_minus_log_end, bonus)
        slope = tl.where(tail, -p / (1.0 - log_end), slope)
    return bonus, slope


@triton.jit
def encouraging_loss_kernel(
    x_ptr, x_row_stride, grad_ptr, grad_row_stride, target_ptr, scale_ptr,
    log_p_target_ptr, nll_ptr, bonus_ptr, loss_ptr,
    n_cols, ignore_index, nll_target, nll_other, bonus_target, bonus_other,
    log_end, log_one_minus_log_end, gamma, start, value_at_start,
    HAS_IGNORE: tl.constexpr, LOG_PROBS: tl.constexpr, SMOOTHING: tl.constexpr, DENSE_BONUS: tl.constexpr,
    BONUS: tl.constexpr, START: tl.constexpr, TAIL: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
    CLAMP: tl.constexpr, SMALL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    target = tl.load(target_ptr + row)
    columns = tl.arange(0, BLOCK)

    if HAS_IGNORE:
        if target == ignore_index:
            tl.store(log_p_target_ptr + row, 0.0)
            tl.store(nll_ptr + row, 0.0)
            tl.store(bonus_ptr + row, 0.0)
            tl.store(loss_ptr + row, 0.0)
            if COMPUTE_GRAD:
                for start_col in range(0, n_cols, BLOCK):
                    offsets = start_col + columns
                    tl.store(grad_row + offsets, tl.zeros([BLOCK], dtype=grad_ptr.dtype.element_ty),
                             mask=offsets < n_cols)
            return

    # pass 1: log-sum-exp, and the sum over the other classes (1 - p_y = sum_{k != y} p_k, precise near p_y = 1)
    lse = 0.0
    log_p_target = tl.load(x_row + target).to(tl.float32)
    if not LOG_PROBS:
        running_max = float("-inf")
        running_sum = 0.0
        running_other = 0.0
        for start_col in range(0, n_cols, BLOCK):
            offsets = start_col + columns
            x = tl.load(x_row + offsets, mask=offsets < n_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            rescale = tl.exp(running_max - new_max)
            e = tl.exp(x - new_max)
            running_sum = running_sum * rescale + tl.sum(e, axis=0)
            running_other = running_other * rescale + tl.sum(tl.where(offsets != target, e, 0.0), axis=0)
            running_max = new_max
        lse = running_max + tl.log(running_sum)
        one_minus_p_target = running_other / running_sum
        # log p_y = log1p(-u), u = 1 - p_y, where p_y > 1/2 (Triton has no log1p: w = 1 - u rounded,
        # log1p(-u) = log(w) * -u / (w - 1), exact to a few ulps; -u itself where w rounds to 1)
        u = one_minus_p_target
        w = 1.0 - u
        log1p_minus_u = tl.where(w == 1.0, -u, tl.log(w) * (-u) / (w - 1.0))
        log_p_target = tl.where(u < 0.5, log1p_minus_u, log_p_target - lse)
    bonus_y, slope_target = _bonus_and_slope(log_p_target, log_end, log_one_minus_log_end, gamma, start,
                                             value_at_start, BONUS, START, TAIL, CLAMP, SMALL)

    # pass 2: sum_k log p_k, sum_k b(p_k), sum_{k != y} p_k b'(p_k) (the target's terms from pass 1's precise p_y)
    sum_log_p = 0.0
    sum_bonus = 0.0
    sum_slope_others = 0.0
    if SMOOTHING:
        for start_col in range(0, n_cols, BLOCK):
            offsets = start_col + columns
            mask = offsets < n_cols
            log_p = tl.load(x_row + offsets, mask=mask, other=0.0).to(tl.float32) - lse
            sum_log_p += tl.sum(tl.where(mask, log_p, 0.0), axis=0)
            if DENSE_BONUS:
                others = mask & (offsets != target)
                bonus, slope = _bonus_and_slope(log_p, log_end, log_one_minus_log_end, gamma, start, value_at_start,
                                                BONUS, START, TAIL, CLAMP, SMALL)
                sum_bonus += tl.sum(tl.where(others, bonus, 0.0), axis=0)
                sum_slope_others += tl.sum(tl.where(others, slope, 0.0), axis=0)
        if DENSE_BONUS:
            sum_bonus += bonus_y

    bonus_row = bonus_target * bonus_y + bonus_other * sum_bonus
    tl.store(log_p_target_ptr + row, log_p_target)
    tl.store(nll_ptr + row, -log_p_target)
    tl.store(bonus_ptr + row, bonus_row)
    tl.store(loss_ptr + row, -nll_target * log_p_target - nll_other * sum_log_p + bonus_row)

    # pass 3: the gradient, times the reduction's scale
    if COMPUTE_GRAD:
        scale = tl.load(scale_ptr).to(tl.float32)
        q_target = nll_target + nll_other
        g_target = (bonus_target + bonus_other) * slope_target
        g_others = bonus_other * sum_slope_others
        total_g = g_target + g_others
        p_target = tl.exp(log_p_target)
        one_minus_p = 1.0 - p_target
        if not LOG_PROBS:
            one_minus_p = one_minus_p_target
        # the target's entry without the cancellation of g_y against p_y G near the clamp (see the torch path)
        grad_target = g_target - q_target
        if not LOG_PROBS:
            grad_target = (1.0 - q_target) - one_minus_p + g_target * one_minus_p - p_target * g_others
        for start_col in range(0, n_cols, BLOCK):
            offsets = start_col + columns
            mask = offsets < n_cols
            log_p = tl.load(x_row + offsets, mask=mask, other=0.0).to(tl.float32) - lse
            grad = tl.zeros([BLOCK], dtype=tl.float32) - nll_other
            if not LOG_PROBS:
                grad += tl.exp(log_p) * (1.0 - total_g)
            if DENSE_BONUS:
                bonus, slope = _bonus_and_slope(log_p, log_end, log_one_minus_log_end, gamma, start, value_at_start,
                                                BONUS, START, TAIL, CLAMP, SMALL)
                grad += bonus_other * slope
            grad = tl.where(offsets == target, grad_target, grad)
            tl.store(grad_row + offsets, (grad * scale).to(grad_ptr.dtype.element_ty), mask=mask)


def kernel_constants(cfg, ignore_index, compute_grad: bool, block: int) -> dict:
    """The constexpr specialization of :func:`encouraging_loss_kernel` for ``cfg`` (an ops.common.LossConfig)."""
    bonus = cfg.bonus
    return dict(HAS_IGNORE=ignore_index is not None, LOG_PROBS=cfg.input_is_log_probs,
                SMOOTHING=bool(cfg.weights.nll_other or cfg.dense_bonus), DENSE_BONUS=cfg.dense_bonus,
                BONUS=BONUS_CODES[bonus.kind], START=bool(bonus.start), TAIL=bonus.tail, COMPUTE_GRAD=compute_grad,
                CLAMP=BONUS_CLAMP, SMALL=LARGE_P, BLOCK=block)


def encouraging_loss_rows(input, target, ignore_index, scale, cfg, compute_grad, block_size=None):
    """Run the kernel over the rows of ``input`` (N, V).

    scale: a 0-dim tensor on the input's device (1 / count for "mean", else 1).
    Returns per-row float32 (loss, -log p_y, bonus, log p_y) and the gradient buffer (or None).
    """
    n_rows, n_cols = input.shape
    if input.stride(1) != 1:
        input = input.contiguous()
    block = block_size or min(triton.next_power_of_2(max(n_cols, 1)), MAX_BLOCK)
    row_stats = torch.empty(4, n_rows, dtype=torch.float32, device=input.device)
    grad = (torch.empty(input.shape, dtype=torch.promote_types(input.dtype, torch.float32), device=input.device)
            if compute_grad else None)  # the compute dtype: the loss scale is applied before rounding (backward)
    bonus, weights = cfg.bonus, cfg.weights
    if n_rows:
        encouraging_loss_kernel[(n_rows,)](
            input, input.stride(0), grad if compute_grad else input, grad.stride(0) if compute_grad else 0,
            target, scale.to(torch.float32).reshape(1),
            row_stats[0], row_stats[1], row_stats[2], row_stats[3],
            n_cols, 0 if ignore_index is None else int(ignore_index),
            weights.nll_target, weights.nll_other, weights.bonus_target, weights.bonus_other,
            bonus.log_end, math.log1p(-bonus.log_end) if bonus.tail else 0.0,
            bonus.gamma, bonus.start, bonus.value_at_start,
            **kernel_constants(cfg, ignore_index, compute_grad, block),
            num_warps=4 if block <= 1024 else 8,
        )
    log_p_target, nll, bonus_rows, loss = row_stats.unbind(0)
    return loss, nll, bonus_rows, log_p_target, grad
