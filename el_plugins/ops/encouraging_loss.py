"""Fused encouraging loss: loss and gradient in one forward pass, the gradient kept for backward.

Per row with p = softmax(z), target weights q = w_y * onehot(y) + q_o (see
:func:`el_plugins.core.smoothing_weights`) and the bonus b of :mod:`el_plugins.core`:

    L      = sum_k q_k (-log p_k + rho b(p_k))
    g_k    = rho q_k p_k b'(p_k),   G = sum_k g_k
    dL/dz_j = (p_j - q_j) + g_j - p_j G

with p b'(p) = -p / (1 - p) on the log branch (0 where the 1e-5 clamp is active) and
-p / (1 - log_end) on the linear tail. With ``input_is_log_probs`` the input x is used as log p
as it is (as the reference does), and dL/dx_j = -q_j + g_j.

Per row this needs only the log-sum-exp, sum_k log p_k, sum_k b(p_k) and sum_k p_k b'(p_k). The
forward pass computes them chunk by chunk and writes dL/dz (already divided by the row count for
``reduction="mean"``) into one (N, V) buffer of the compute dtype (float32 for float16/bfloat16
input); the backward pass multiplies that buffer by grad_output (the loss scale of mixed-precision
training) and only then rounds it to the input's dtype, once, as autograd does: no gradient entry
that autograd keeps is flushed to zero by rounding before the scale is known. For float32/float64
input the buffer itself is handed on, scaled in place; for float16/bfloat16 the rounding is written over
the buffer's own storage (:func:`scaled_and_rounded`). Peak extra memory: that buffer plus a few
chunk-sized float32 temporaries, instead of the (N, V) float32 log-probabilities, their gradient
and the gradient of the logits that autograd keeps or creates.

The buffer is consumed by the backward pass, so the op supports one backward pass per forward (the
usual case); a second one raises a RuntimeError that says so (it works only while the buffer is intact:
a grad_output of 1 on the CPU, nothing accumulated into the handed-on gradient); backward with
create_graph=True (double backward) raises one too. Use
``implementation="reference"`` (plain autograd) for those.
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple, Optional

import torch

from el_plugins.core import (
    EncouragingLossOutput,
    RowTerms,
    assemble_rows,
    bonus_from_log_prob,
    bonus_slope_times_p,
    check_choice,
    check_count,
    compute_dtype,
    reduce_outputs,
)

BACKENDS = ("auto", "torch", "triton")
"""``auto``: the Triton kernel for CUDA tensors of float32/float16/bfloat16 (when triton is
installed), the chunked torch path otherwise; ``torch``, ``triton``: force one."""

MIN_CHUNK_ELEMENTS = 1 << 20
MAX_CHUNKS = 4
"""Default chunking of the torch path: at most MAX_CHUNKS chunks of at least MIN_CHUNK_ELEMENTS
elements. Every large torch op is one OpenMP parallel region, and on a CPU shared with other work
each region can wait milliseconds for a descheduled thread (libgomp spin-waits), so a few big chunks
beat many cache-sized ones. Scratch: one chunk-sized float32 buffer for float32 input (p is
computed in the gradient buffer itself), three for float16/bfloat16 input."""

LARGE_P = 0.5
"""The dense terms form 1 - p as 1 - p only for p <= LARGE_P, where it is exact enough; entries
above it (at most one per row) are computed from log p with -expm1(log p)."""


SINGLE_BACKWARD_ONLY = (
    "the fused encouraging loss computes its gradient in the forward pass and hands it to the one backward "
    "pass it supports; a second backward pass through the same graph is not supported: compute the loss "
    "again, or use implementation='reference' (plain autograd: repeated and double backward, gradcheck)")


NO_DOUBLE_BACKWARD = (
    "the fused encouraging loss has no second derivative (backward with create_graph=True, double backward, "
    "gradient penalties through the loss): use implementation='reference' (plain autograd) for those")


class LossConfig(NamedTuple):
    """The validated scalars of one call."""

    log_end: float
    bonus_weight: float  # rho
    w_target: float  # weight of the target's own term: q = w_target * onehot(y) + q_other
    q_other: float
    input_is_log_probs: bool

    @property
    def dense_bonus(self) -> bool:
        """Whether the bonus of every class counts (label smoothing and rho > 0)."""
        return bool(self.bonus_weight and self.q_other)


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


def chunk_terms(x, target, keep, sum_x, grad_out, scratch, cfg: LossConfig, scale):
    """One chunk of rows (the torch path): returns (log p_y, sum_k log p_k, sum_k b(p_k)) per row and, when
    ``grad_out`` is given, writes scale * dL/dx of the rows into it (zero on ignored rows); ``scale``: a
    number, or a tensor of one scale per row.

    sum_x: sum_k x_k per row. scratch: (probabilities, work, float copy of x), (n, V) buffers of
    the compute dtype or None: p goes into ``grad_out`` itself (of the compute dtype) when given. ``work`` may
    be x's own buffer (x is last read before work is first written).

    p = softmax(x) and lse from it: no (n, V) log-probabilities. The dense bonus terms use 1 - p for
    every class: sum_k log(1 - p_k) = log prod_k (1 - p_k), and p_k / (1 - p_k); the few entries
    with p > min(1/2, log_end), where 1 - p is imprecise, clamped or on the tail, are left out of
    both (1 - p set to 1) and computed exactly from log p = x - lse.
    """
    p, work, x_copy = scratch
    dtype = compute_dtype(x.dtype)
    if x.dtype != dtype:
        x = x_copy.copy_(x)
    if grad_out is not None:
        p = grad_out
    rho, q_other, w_target = cfg.bonus_weight, cfg.q_other, cfg.w_target
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
    sum_log_p = sum_x - x.size(1) * lse if q_other else None

    sum_bonus = p_over_one_minus_p = None
    if cfg.dense_bonus:
        rows, cols = _large_p_positions(p, p.amax(-1), p_target, target, min(LARGE_P, cfg.log_end))
        log_p_large = _large_log_p(p, x, lse, rows, cols, target, log_p_target, cfg.input_is_log_probs)
        one = torch.ones((), dtype=dtype, device=x.device)
        one_minus_p = torch.add(one, p, alpha=-1.0, out=work)
        one_minus_p[rows, cols] = 1.0
        sum_bonus = torch.log(one_minus_p.prod(-1)).index_add_(
            0, rows, bonus_from_log_prob(log_p_large, cfg.log_end))
        # -p b'(p) = p / (1 - p), written over 1 - p
        p_over_one_minus_p = torch.div(p, one_minus_p, out=one_minus_p)
        p_over_one_minus_p[rows, cols] = -bonus_slope_times_p(log_p_large, cfg.log_end)

    if grad_out is not None:
        slope_target = bonus_slope_times_p(log_p_target, cfg.log_end)
        q_target = w_target + q_other
        g_target = rho * q_target * slope_target  # g_y = rho q_y p_y b'(p_y)
        g_others = torch.zeros_like(g_target)  # sum_{k != y} g_k
        if cfg.dense_bonus:
            p_over_one_minus_p.scatter_(1, target_column, 0.0)  # (the target's column is written below)
            g_others = -rho * q_other * p_over_one_minus_p.sum(-1)
        total_g = g_target + g_others  # G = sum_k g_k
        # every class: p_j (1 - G) - q_o + rho q_o p_j b'(p_j)    (logits)
        #                          - q_o + rho q_o p_j b'(p_j)    (log-probabilities)
        # times the scale, and 0 on ignored rows
        row_scale = keep.to(dtype).mul_(scale)
        other = (row_scale * -q_other).unsqueeze(1)
        if cfg.dense_bonus:
            other = torch.addcmul(other, p_over_one_minus_p, (row_scale * (-rho * q_other)).unsqueeze(1),
                                  out=p_over_one_minus_p)
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


def _torch_rows(input, target, keep, scale, cfg: LossConfig, compute_grad: bool, chunk_size: Optional[int]):
    n_rows, n_cols = input.shape
    dtype = compute_dtype(input.dtype)
    rows_per_chunk = chunk_size or max(-(-MIN_CHUNK_ELEMENTS // max(n_cols, 1)), -(-n_rows // MAX_CHUNKS), 1)
    scratch_rows = min(rows_per_chunk, n_rows)
    grad = torch.empty(input.shape, dtype=dtype, device=input.device) if compute_grad else None

    def buffer(needed):
        return torch.empty(scratch_rows, n_cols, dtype=dtype, device=input.device) if needed else None

    scratch = [buffer(not compute_grad), buffer(cfg.dense_bonus), buffer(input.dtype != dtype)]
    if cfg.q_other:  # by chunks: on CPUs a half tensor's sum(dtype=float32) makes a float32 copy of all of it
        sum_x = torch.cat([piece.sum(-1, dtype=dtype) for piece in input.split(rows_per_chunk)])
    else:
        sum_x = torch.zeros(n_rows, dtype=dtype, device=input.device)
    pieces = []
    for start in range(0, n_rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, n_rows)
        grad_out = grad[start:stop] if compute_grad else None
        chunk_scratch = [buf[: stop - start] if buf is not None else None for buf in scratch]
        pieces.append(chunk_terms(input[start:stop], target[start:stop], keep[start:stop], sum_x[start:stop],
                                   grad_out, chunk_scratch, cfg, scale))

    def cat(i):
        if not pieces or pieces[0][i] is None:
            return torch.zeros(n_rows, dtype=dtype, device=input.device)
        return torch.cat([piece[i] for piece in pieces])

    if compute_grad and not bool(keep.all()):  # ignored rows: 0, whatever they hold (0 * NaN would be NaN)
        grad.index_fill_(0, (~keep).nonzero().squeeze(1), 0.0)
    log_p_target = cat(0)
    return RowTerms(log_p_target, cat(1), bonus_from_log_prob(log_p_target, cfg.log_end), cat(2)), grad


# --------------------------------------------------------------------------- autograd
class _FusedEncouragingLoss(torch.autograd.Function):
    """Forward: the loss, its statistics and the gradient buffer; backward: the buffer * grad_output."""

    @staticmethod
    def forward(ctx, input, target, ignore_index, reduction, cfg, backend, compute_grad, chunk_size, block_size):
        keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
        count = keep.sum()
        if backend == "triton":
            from el_plugins.ops import encouraging_loss_triton

            scale = (1.0 / count.clamp(min=1).float()) if reduction == "mean" else torch.ones((), device=input.device)
            # the kernel assembles the row's loss itself: storing RowTerms instead made ptxas spill 8-24 bytes
            # of registers on sm_80 or sm_90 in each of the 3 store placements tried (tests/test_kernel_compile.py)
            log_p_target, nll, bonus, loss, grad = encouraging_loss_triton.encouraging_loss_rows(
                input, target, ignore_index, scale, cfg, compute_grad, block_size)
        else:
            scale = 1.0 / max(int(count), 1) if reduction == "mean" else 1.0
            terms, grad = _torch_rows(input, target.masked_fill(~keep, 0), keep, scale, cfg, compute_grad, chunk_size)
            loss, nll, bonus = assemble_rows(terms, cfg.w_target, cfg.q_other, cfg.bonus_weight)
            log_p_target = terms.log_p_target
        loss_r, nll_r, bonus_r, p_target_r, past_r = reduce_outputs(
            loss, nll, bonus, log_p_target, keep, reduction, cfg.log_end)

        ctx.mark_non_differentiable(nll_r, bonus_r, p_target_r, past_r)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad)
        ctx.input_dtype, ctx.backend, ctx.consumed = input.dtype, backend, False
        return loss_r, nll_r, bonus_r, p_target_r, past_r

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (grad_input,) = scaled_gradients(ctx, grad_loss, (ctx.input_dtype,))
        return (grad_input,) + (None,) * 8


def scaled_gradients(ctx, grad_loss, dtypes):
    """The backward pass of a fused op: the gradient buffers it saved in forward (``ctx.saved_tensors``, None
    where not needed) times ``grad_loss``, each rounded once to its parameter's dtype (``dtypes``), with no
    host synchronisation on CUDA. On the CPU torch path with grad_loss = 1 and buffers already of the
    parameters' dtypes, the buffers themselves are handed on (autograd keeps them as .grad, no copy);
    otherwise they are scaled in place, and the op is consumed: a second backward raises. Reads ``ctx.backend``
    and ``ctx.consumed``."""
    if ctx.consumed:  # scaled in place by an earlier backward pass
        raise RuntimeError(SINGLE_BACKWARD_ONLY)
    if torch.is_grad_enabled():  # backward(create_graph=True): the gradient would have no gradient itself
        raise RuntimeError(NO_DOUBLE_BACKWARD)
    try:
        grads = ctx.saved_tensors
    except RuntimeError as exc:  # handed on as .grad and accumulated into since
        raise RuntimeError(SINGLE_BACKWARD_ONLY) from exc
    if grad_loss is None:
        return (None,) * len(dtypes)
    present = [(grad, dtype) for grad, dtype in zip(grads, dtypes) if grad is not None]
    if (ctx.backend == "torch" and not grad_loss.is_cuda and all(g.dtype == d for g, d in present)
            and grad_loss.numel() == 1 and bool(grad_loss == 1)):
        return tuple(None if grad is None else grad.detach() for grad in grads)  # new aliases of the buffers
    ctx.consumed = True  # the scale first, in the compute dtype; then one rounding to each dtype (no host sync)
    scale = grad_loss.unsqueeze(-1) if grad_loss.dim() else grad_loss
    return tuple(None if grad is None else scaled_and_rounded(grad, scale, dtype) for grad, dtype in zip(grads, dtypes))


ROUNDING_BLOCK_ELEMENTS = 1 << 20
"""Elements per block of :func:`scaled_and_rounded`'s in-place rounding (its only temporaries)."""


def scaled_and_rounded(grad: torch.Tensor, scale, dtype: torch.dtype) -> torch.Tensor:
    """grad * scale rounded once to ``dtype``; grad (a buffer of the op's own, contiguous, first dim = rows) is
    consumed. scale: a number, a 0-dim tensor or one per row ((rows, 1)).

    A narrower dtype (float32 -> float16/bfloat16) is written over grad's own storage, block by block in
    order: block [r0, r1)'s result takes the bytes of grad's rows below r1 / 2, which were read already. So no
    second tensor of grad's size is made (the float32 gradient and its rounding together would be 1.5 times
    it at the end of backward); the result is a view of grad's storage, which stays allocated as long as the
    result does."""
    if grad.dtype == dtype:
        return grad.mul_(scale)
    if not _fits_in(grad, dtype):
        return grad.mul_(scale).to(dtype)
    rows = grad.view(grad.shape[0], -1) if grad.dim() else grad.view(1, 1)
    out = grad.view(-1).view(dtype)[: grad.numel()].view(rows.shape)
    per_row = isinstance(scale, torch.Tensor) and scale.dim() > 0
    step = max(1, ROUNDING_BLOCK_ELEMENTS // max(rows.shape[1], 1))
    for start in range(0, rows.shape[0], step):
        stop = min(start + step, rows.shape[0])
        block = rows[start:stop].mul_(scale[start:stop] if per_row else scale).to(dtype)
        out[start:stop].copy_(block)
    return out.view(grad.shape)


def _fits_in(grad: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` values can be written over grad's storage in place (narrower, grad contiguous)."""
    return dtype.itemsize < grad.dtype.itemsize and grad.is_contiguous() and grad.numel() > 0


# --------------------------------------------------------------------------- entry (from el_plugins.functional)
def pick_backend(backend: str, input: torch.Tensor) -> str:
    """The backend ``auto`` stands for on ``input`` (see :data:`BACKENDS`), or ``backend`` checked."""
    check_choice(backend, BACKENDS, "backend")
    triton_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if backend == "auto":
        has_triton = importlib.util.find_spec("triton") is not None
        return "triton" if input.is_cuda and input.dtype in triton_dtypes and has_triton else "torch"
    if backend == "triton":
        if input.dtype not in triton_dtypes:
            raise ValueError(f"the triton backend takes float32, float16 or bfloat16 input, got {input.dtype}")
        if not input.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is "
                             "imported, to interpret the kernel on CPU tensors)")
    return backend


def check_tuning(chunk_size, block_size):
    """The fused ops' tuning options checked: rows per chunk, a positive int; columns per Triton block, a
    power of 2 >= 16 (None: the defaults). Returns them as ints (or None)."""
    chunk_size = check_count(chunk_size, "chunk_size", "rows per chunk")
    block_size = check_count(block_size, "block_size", "columns per block of the Triton kernel, a power of 2 >= 16")
    if block_size is not None and not (block_size >= 16 and block_size & (block_size - 1) == 0):
        raise ValueError(f"block_size must be a power of 2 >= 16 (columns per block of the Triton kernel), "
                         f"got {block_size!r}")
    return chunk_size, block_size


def fused_encouraging_loss(input: torch.Tensor, target: torch.Tensor, config: LossConfig, *,
                           ignore_index: Optional[int], reduction: str, backend: str,
                           chunk_size: Optional[int] = None, block_size: Optional[int] = None) -> EncouragingLossOutput:
    """The fused op behind ``el_plugins.functional.encouraging_loss_with_stats(implementation='fused')``,
    which checks the loss's arguments, resolves ``backend`` (:func:`pick_backend`) and builds ``config``:
    call that. Checks the tuning options (chunk_size, block_size) and runs the op."""
    chunk_size, block_size = check_tuning(chunk_size, block_size)
    compute_grad = input.requires_grad and torch.is_grad_enabled()
    outputs = _FusedEncouragingLoss.apply(
        input, target, ignore_index, reduction, config, backend, compute_grad, chunk_size, block_size)
    return EncouragingLossOutput(*outputs)
