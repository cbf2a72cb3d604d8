"""The chunked torch row computation of the fused encouraging loss (the ``torch`` backend; any device and dtype).

Per row with p = softmax(z), the target weights of :class:`el_plugins.core.TargetWeights` (q for the nll terms,
q' for the bonus, rho included) and the bonus b of :mod:`el_plugins.core`:

    L      = sum_k q_k (-log p_k) + sum_k q'_k b(p_k)
    g_k    = q'_k p_k b'(p_k),   G = sum_k g_k
    dL/dz_j = (p_j - q_j) + g_j - p_j G

With ``input_is_log_probs`` the input x is used as log p as it is (as the reference does), and dL/dx_j = -q_j + g_j.
Per row this needs only the log-sum-exp, sum_k log p_k, sum_k b(p_k) and the slopes p_k b'(p_k). They are
computed chunk by chunk of rows; the gradient (times the reduction's scale) is written into a buffer of the compute
dtype. No (N, V) log-probabilities: p = softmax(x) and the log-sum-exp from it; the few entries with p > 1/2 (or on
the log bonus's tail), where 1 - p formed as 1 - p is imprecise, are computed from a precise log p instead.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from el_plugins.core import (BONUS_CLAMP, RowTerms, bonus_from_log_prob, bonus_slope_times_p, compute_dtype)

from .common import LossConfig

MIN_CHUNK_ELEMENTS = 1 << 20
MAX_CHUNKS = 4
"""Default chunking: at most MAX_CHUNKS chunks of at least MIN_CHUNK_ELEMENTS elements. Every large torch op is one
OpenMP parallel region, and on a CPU shared with other work each region can wait milliseconds for a descheduled
thread (libgomp spin-waits), so a few big chunks beat many cache-sized ones. Scratch: one chunk-sized float32
buffer for float32 input (p is computed in the gradient buffer itself), three for float16/bfloat16 input."""

# --------------------------------------------------------------------------- large probabilities
def _large_p_positions(p, p_max, p_target, target, threshold: float):
    """(rows, cols) of the entries p > threshold, given each row's maximum and target probability.

    For threshold >= 1/2 a row has at most one such entry, its maximum: the target when p_y exceeds
    the threshold, else found by an argmax over the (few) confidently wrong rows."""
    rows = (p_max > threshold).nonzero().squeeze(1)
    if threshold >= 0.5:
        cols = target.index_select(0, rows)
        wrong = (p_target.index_select(0, rows) <= threshold).nonzero().squeeze(1)
        if wrong.numel():
            cols[wrong] = p.index_select(0, rows[wrong]).argmax(-1)
        return rows, cols
    sub_rows, cols = (p.index_select(0, rows) > threshold).nonzero(as_tuple=True)
    return rows.index_select(0, sub_rows), cols


# --------------------------------------------------------------------------- torch path
def _log_sum_exp(x, p, x_target, p_target):
    """lse = log sum_k exp(x_k) per row, from p = softmax(x): x_y - log p_y while p_y is far from
    underflow, else max_k x_k - log max_k p_k (only on the rows that need it)."""
    lse = x_target - torch.log(p_target)
    rows = (p_target < torch.finfo(p.dtype).tiny ** 0.5).nonzero().squeeze(1)
    if rows.numel():
        lse[rows] = x.index_select(0, rows).amax(-1) - torch.log(p.index_select(0, rows).amax(-1))
    return lse


def _precise_log_p(p, column, p_column, log_p_column):
    """log p at one column per row, from 1 - p = sum of the row's other probabilities where p > 1/2 (for the
    target: the well-classified rows EL is about); ``log_p_column`` elsewhere. ``p`` is left as it was.

    There x - lse (or log p) has an absolute error of one float32 ulp, which is a large relative error of
    1 - p, and so of b(p), b'(p) and the whole row's gradient (about 1e-3 at p = 0.9998); the sum of the
    other classes' probabilities is exact to a few ulps of itself (the spec's stable form)."""
    p.scatter_(1, column, 0.0)
    others = p.sum(-1)
    p.scatter_(1, column, p_column.unsqueeze(1))
    return torch.where(p_column > 0.5, torch.log1p(-others), log_p_column)


def _large_log_p(p, x, lse, rows, cols, target, log_p_target, input_is_log_probs):
    """log p at the (rows, cols) entries with large p, precise near p = 1 (:func:`_precise_log_p`): the
    target's own value where the entry is the target, else (a confidently wrong class, rare) computed so."""
    log_p = x[rows, cols] - lse.index_select(0, rows)
    if input_is_log_probs:
        return log_p
    is_target = cols == target.index_select(0, rows)
    log_p = torch.where(is_target, log_p_target.index_select(0, rows), log_p)
    wrong = (~is_target).nonzero().squeeze(1)
    if wrong.numel():
        wrong_rows, wrong_cols = rows.index_select(0, wrong), cols.index_select(0, wrong).unsqueeze(1)
        sub = p.index_select(0, wrong_rows)
        log_p[wrong] = _precise_log_p(sub, wrong_cols, sub.gather(1, wrong_cols).squeeze(1),
                                      log_p.index_select(0, wrong))
    return log_p



def _dense_bonus(p, x, lse, p_target, log_p_target, target, work, cfg: LossConfig):
    """sum_k b(p_k) per row, and the slopes p_k b'(p_k) of every entry written into ``work``, times ``sign``:
    returns (sum_bonus, work, sign). The log bonus without a start takes its fast form, one log per row:
    sum_k log(1 - p_k) = log prod_k (1 - p_k), and -p_k b'(p_k) = p_k / (1 - p_k) (sign -1); the other members
    (and a start) go elementwise. Either way the entries with large p are left out of both and computed from their
    precise log p. ``work`` may be x's own buffer: x is last read before work is first written."""
    bonus = cfg.bonus
    rows, cols = _large_p_positions(p, p.amax(-1), p_target, target, bonus.large_p)
    log_p_large = _large_log_p(p, x, lse, rows, cols, target, log_p_target, cfg.input_is_log_probs)
    if bonus.kind == "log" and not bonus.start:
        one_minus_p = torch.sub(1.0, p, out=work)
        one_minus_p[rows, cols] = 1.0
        sum_bonus = torch.log(one_minus_p.prod(-1))
        slopes, sign = torch.div(p, one_minus_p, out=one_minus_p), -1.0  # -p b'(p) = p / (1 - p), over 1 - p
    else:
        values = bonus_values_from_prob(p, bonus, work)
        values[rows, cols] = 0.0
        sum_bonus = values.sum(-1)
        slopes, sign = bonus_slopes_from_prob(p, bonus, work), 1.0
    sum_bonus.index_add_(0, rows, bonus_from_log_prob(log_p_large, bonus))
    slopes[rows, cols] = sign * bonus_slope_times_p(log_p_large, bonus)
    return sum_bonus, slopes, sign


def bonus_values_from_prob(p, bonus, out):
    """b(p) elementwise into ``out``, from p itself: precise for p <= 1/2 (larger entries are taken from their
    log p by the caller). Every member; a start zeroes the entries below it."""
    if bonus.kind == "power":
        torch.pow(p, bonus.gamma, out=out).neg_()
    elif bonus.kind == "cosine":
        torch.mul(p, math.pi / 2, out=out).sin_().square_().mul_(-2.0)  # cos(pi p) - 1 = -2 sin^2(pi p / 2)
    else:
        torch.sub(1.0, p, out=out).clamp_(min=BONUS_CLAMP).log_()
    if bonus.start:
        out.sub_(bonus.value_at_start).masked_fill_(p < bonus.start, 0.0)
    return out


def bonus_slopes_from_prob(p, bonus, out):
    """p b'(p) elementwise into ``out``, from p itself (as :func:`bonus_values_from_prob`)."""
    if bonus.kind == "power":
        torch.pow(p, bonus.gamma, out=out).mul_(-bonus.gamma)
    elif bonus.kind == "cosine":
        torch.mul(p, math.pi, out=out).sin_().mul_(p).mul_(-math.pi)
    else:
        torch.div(p, torch.sub(1.0, p, out=out).clamp_(min=BONUS_CLAMP), out=out).neg_()
    if bonus.start:
        out.masked_fill_(p < bonus.start, 0.0)
    return out


def chunk_terms(x, target, keep, sum_x, grad_out, scratch, cfg: LossConfig, scale):
    """One chunk of rows: returns (log p_y, sum_k log p_k, sum_k b(p_k)) per row (None for the sums not needed)
    and, when ``grad_out`` is given, writes scale * dL/dx of the rows into it (zero on ignored rows); ``scale``: a
    number, or a tensor of one scale per row.

    sum_x: sum_k x_k per row (None without label smoothing). scratch: (probabilities, work, float copy of x),
    (n, V) buffers of the compute dtype or None: p goes into ``grad_out`` itself (of the compute dtype) when
    given. ``work`` may be x's own buffer (x is last read before work is first written)."""
    p, work, x_copy = scratch
    dtype = compute_dtype(x.dtype)
    if x.dtype != dtype:
        x = x_copy.copy_(x)
    if grad_out is not None:
        p = grad_out
    weights = cfg.weights
    target_column = target.unsqueeze(1)
    x_target = x.gather(1, target_column).squeeze(1)
    if cfg.input_is_log_probs:
        p = torch.exp(x, out=p)
        p_target = p.gather(1, target_column).squeeze(1)
        lse = torch.zeros_like(x_target)
    else:
        p = torch.softmax(x, dim=-1, out=p)
        p_target = p.gather(1, target_column).squeeze(1)
        lse = _log_sum_exp(x, p, x_target, p_target)
    log_p_target = x_target - lse
    if not cfg.input_is_log_probs:
        log_p_target = _precise_log_p(p, target_column, p_target, log_p_target)
    sum_log_p = sum_x - x.size(1) * lse if weights.nll_other else None

    sum_bonus = slopes = None
    if cfg.dense_bonus:
        sum_bonus, slopes, sign = _dense_bonus(p, x, lse, p_target, log_p_target, target, work, cfg)

    if grad_out is not None:
        slope_target = bonus_slope_times_p(log_p_target, cfg.bonus)
        q_target = weights.nll_target + weights.nll_other  # the nll's weight on the target
        g_target = (weights.bonus_target + weights.bonus_other) * slope_target  # g_y = q'_y p_y b'(p_y)
        g_others = torch.zeros_like(g_target)  # sum_{k != y} g_k
        if cfg.dense_bonus:
            slopes.scatter_(1, target_column, 0.0)  # (the target's column is written below)
            g_others = (sign * weights.bonus_other) * slopes.sum(-1)
        total_g = g_target + g_others  # G = sum_k g_k
        # every class: p_j (1 - G) - q_o + q'_o p_j b'(p_j)    (logits)
        #                          - q_o + q'_o p_j b'(p_j)    (log-probabilities)
        # times the scale, and 0 on ignored rows
        row_scale = keep.to(dtype).mul_(scale)
        other = (row_scale * -weights.nll_other).unsqueeze(1)
        if cfg.dense_bonus:
            other = torch.addcmul(other, slopes, (row_scale * (sign * weights.bonus_other)).unsqueeze(1), out=slopes)
        # the target, computed in full precision and written once: -q_y + g_y (log-probabilities), or
        # p_y - q_y + g_y - p_y G = (1 - q_y) - (1 - p_y) + g_y (1 - p_y) - p_y sum_{k != y} g_k (logits),
        # free of the cancellation between g_y and p_y G (both ~1 / (1 - p_y)) near the 1e-5 clamp
        if cfg.input_is_log_probs:
            grad_target = (g_target - q_target) * row_scale
            grad_out.copy_(other.expand_as(grad_out))
        else:
            one_minus_p_target = -torch.expm1(log_p_target)
            grad_target = ((1.0 - q_target) - one_minus_p_target + g_target * one_minus_p_target
                           - torch.exp(log_p_target) * g_others) * row_scale
            row_factor = (1.0 - total_g) * row_scale
            torch.addcmul(other, p, row_factor.unsqueeze(1), out=grad_out)
        grad_out.scatter_(1, target_column, grad_target.unsqueeze(1).to(grad_out.dtype))
    return log_p_target, sum_log_p, sum_bonus


def torch_rows(input, target, keep, scale, cfg: LossConfig, compute_grad: bool, chunk_size: Optional[int]):
    """The rows of ``input`` (N, V) by chunks: (:class:`RowTerms`, the gradient times ``scale`` or None). Targets
    of ignored rows (``keep`` False) must be valid indices (the caller puts 0 there); their gradient is 0 whatever
    their logits hold."""
    n_rows, n_cols = input.shape
    dtype = compute_dtype(input.dtype)
    rows_per_chunk = chunk_size or max(-(-MIN_CHUNK_ELEMENTS // max(n_cols, 1)), -(-n_rows // MAX_CHUNKS), 1)
    scratch_rows = min(rows_per_chunk, n_rows)
    grad = torch.empty(input.shape, dtype=dtype, device=input.device) if compute_grad else None

    def buffer(needed):
        return torch.empty(scratch_rows, n_cols, dtype=dtype, device=input.device) if needed else None

    scratch = [buffer(not compute_grad), buffer(cfg.dense_bonus), buffer(input.dtype != dtype)]
    if cfg.weights.nll_other:  # by chunks: on CPUs a half tensor's sum(dtype=float32) makes a float32 copy of all
        sum_x = torch.cat([piece.sum(-1, dtype=dtype) for piece in input.split(rows_per_chunk)])
    else:
        sum_x = None
    pieces = []
    for start in range(0, n_rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_rows)
        grad_out = grad[start:stop] if compute_grad else None
        chunk_scratch = [buf[: stop - start] if buf is not None else None for buf in scratch]
        pieces.append(chunk_terms(input[start:stop], target[start:stop], keep[start:stop],
                                  None if sum_x is None else sum_x[start:stop], grad_out, chunk_scratch, cfg, scale))
    if compute_grad and not bool(keep.all()):  # ignored rows: 0, whatever they hold (0 * NaN would be NaN)
        grad.index_fill_(0, (~keep).nonzero().squeeze(1), 0.0)

    def cat(i):
        if not pieces or pieces[0][i] is None:
            return torch.zeros(n_rows, dtype=dtype, device=input.device)
        return torch.cat([piece[i] for piece in pieces])

    log_p_target = cat(0)
    return RowTerms(log_p_target, cat(1), bonus_from_log_prob(log_p_target, cfg.bonus), cat(2)), grad
