"""The output layer fused into the encouraging loss: EL of z = x W^T + b, chunk by chunk, never the whole
(N, V) logits (``el_plugins.functional.linear_encouraging_loss_with_stats(implementation='fused')``).

Per chunk of rows (the row computation in the compute dtype, float32 for float16/bfloat16):

    z      = x_c W^T + b                                  one matrix product, in the input's dtype
    dL/dz  = a backend's row computation                  (the C++ kernel or chunked torch; Triton on CUDA)
    dL/dx_c = dz W,   dL/dW += dz^T x_c,   dL/db += sum_rows dz

dz already carries the reduction's scale (1 / rows for "mean"). The three gradients accumulate in the
compute dtype; backward multiplies them by grad_output (the loss scale of mixed precision) and only then
rounds each to its parameter's dtype. For float16/bfloat16 inputs each product is rounded as the unfused
computation (F.linear, then the loss, then autograd) rounds it, never more:
- the logits are the product in the input's dtype, widened to float32 for the row computation, as F.linear's
  half-precision logits are;
- dz W, bfloat16: dz rounded to bfloat16 once and the product rounded once, as autograd's gradient of the
  logits and its product are. bfloat16 has float32's exponent range, so rounding dz before the loss scale is
  applied flushes nothing. float16: dz would underflow before the loss scale, so the product runs in
  float32 on W's float32 copy (V x d, held during the forward pass: torch has no float16 product with a
  float32 result on CPUs);
- dz^T x_c in float32 (x_c's float32 copy), accumulated over the chunks in float32: the weight's gradient is
  rounded once, in backward, over its float32 accumulator's own storage (``scaled_and_rounded``), so the
  accumulator and its rounding never both exist. With the C++ kernel and bfloat16 inputs, dz itself is the
  bfloat16 one above (as autograd's dz^T x is), widened to float32 block by block of classes for the product.
tests/test_fused_linear.py checks that these gradients are as precise as autograd's, against float64.

Peak extra memory: the gradients (float32 for half inputs) plus the chunk's (chunk, V) buffers. With the C++
kernel (``Backend.grad_over_input``), one: the product, overwritten by dz (bfloat16: both in bfloat16; float16:
the product in float16 and dz in a float32 buffer beside it). Otherwise two: the logits, whose buffer also
serves as the row computation's work space, and the gradient of the chunk's logits (the probabilities, forward
only); for half inputs a third (chunk, V) buffer in their dtype, for the products.
Ignored rows contribute nothing, whatever they hold (NaN, inf): a backend that may read values on the host
(torch) drops them before the matrix product; one that may not (Triton, on CUDA) keeps them in place, since
dropping them would make the host wait for their count: their dz is zero, and their features are zeroed for
dz^T x_c (0 * NaN is NaN). With reduction="none" the forward pass computes no gradient, and the backward pass
computes the chunks again with each row's grad_output (so it may run more than once); otherwise one backward
per forward, as the logits' fused op.
"""
from __future__ import annotations

from typing import Optional

import torch

from el_plugins.core import compute_dtype, reduce_outputs, reduce_rows

from .backends import ChunkBuffers
from .common import NO_DOUBLE_BACKWARD, LossConfig, SavedGradients
from .torch_rows import MIN_CHUNK_ELEMENTS

MIN_CHUNK_ROWS = 128
"""The fewest rows per chunk by default: a matrix product of fewer rows runs far below the machine's speed
(measured on 2 CPU cores at V = 32000, d = 512: 16 rows ran at a quarter of 1024 rows' speed, 64 at half,
128 at two thirds), unless that many rows would break :data:`MAX_BUFFER_FRACTION`."""

MAX_BUFFER_FRACTION = 1 / 32
"""The chunk's (rows, V) buffers (two of the compute dtype; one, and for half inputs a half-size second, where
the backend writes dz over the logits: :func:`chunk_buffers`) hold at most this fraction of the whole (N, V)
logits by default, so that at large V and few rows they stay small beside the gradients. At 2048 x 512 x 128000
float32 on 2 CPU cores (benchmarks/loss_benchmark.py --from-features) 32 rows (this rule, two buffers) took 291
MiB and 1.04x the time of the matrix product + the fused op on the logits (benchmarks/results-features-cpu.json
as committed in aa09689); 128 rows took 384 MiB and 0.82x (the same benchmark's run committed in 2c01ec7); the
weight's gradient alone is 250 MiB, fairseq's LS-CE takes 3005 MiB."""


ROW_MULTIPLE = 16
"""With the C++ kernel, default chunks are a multiple of this many rows (its column groups take 16 at a time)."""

WIDENED_BLOCK_ELEMENTS = 1 << 20
"""bfloat16 dz is widened to float32 for dz^T x_c in blocks of classes of about this many elements (4 MiB)."""


def chunk_buffers(backend, dtype: torch.dtype) -> float:
    """How many (rows, V) buffers of the compute dtype the chunk loop keeps with ``backend`` for inputs of
    ``dtype``, where the backend writes dz over the logits: one (float32/float64), a half-size one (bfloat16: dz
    in bfloat16 over the product), one and a half (float16: the product, and dz in float32); 2 for the others
    (the torch path's two; its half product's buffer and the Triton path's are not counted, as before)."""
    if not backend.grad_over_input:
        return 2.0
    if dtype == torch.bfloat16:
        return 0.5
    return 1.0 if compute_dtype(dtype) == dtype else 1.5


def default_chunk_rows(n_rows: int, in_features: int, n_classes: int, buffers: float = 2.0) -> int:
    """Rows per chunk: a chunk's logits (rows x n_classes) about the size of the input (n_rows x in_features),
    as torch's and Liger-Kernel's heuristics choose; at least MIN_CHUNK_ELEMENTS logits (every torch op is one
    OpenMP region, and many small ones stall on a shared CPU, see encouraging_loss) and MIN_CHUNK_ROWS rows,
    that floor lowered to keep the chunk's ``buffers`` (:func:`chunk_buffers`) within MAX_BUFFER_FRACTION of
    the (N, V) logits."""
    n_classes = max(n_classes, 1)
    floor = min(MIN_CHUNK_ROWS, max(1, int(n_rows * MAX_BUFFER_FRACTION / buffers)))
    rows = max(-(-n_rows * in_features // n_classes), -(-MIN_CHUNK_ELEMENTS // n_classes), floor)
    if buffers < 2 and rows > ROW_MULTIPLE:  # the C++ kernel's column groups: whole vectors of rows
        rows -= rows % ROW_MULTIPLE
    return max(1, min(n_rows, rows))


def _chunks(input, weight, bias, target, rows, keep, cfg: LossConfig, backend, chunk_rows, block_size,
            ignore_index, scale, needs):
    """The chunk loop, for forward and for the recomputing backward.

    rows: the indices of the rows to compute (the kept ones), or None for all; target, keep: those rows'.
    scale: the gradient's factor: a number, a 0-dim tensor or one per row. needs: which of the (input, weight,
    bias) gradients to compute (none: the loss only). Returns the rows' (loss, nll, bonus, log p_y, correct) and
    the gradients (input's over all N rows, zero on rows not computed), None where not needed.
    """
    dtype = compute_dtype(input.dtype)
    n_rows = target.numel()
    n_classes, in_features = weight.shape
    compute_grad = any(needs)
    half = input.dtype != dtype  # float16/bfloat16: see the module docstring for which product runs in which dtype
    # dz @ W: in bfloat16 on W itself; in float32 on W's float32 copy for float16 (and float32/float64: W itself)
    w_for_input = weight.to(dtype) if needs[0] and input.dtype == torch.float16 else weight
    chunk = max(1, min(chunk_rows, n_rows))
    # a backend that writes the gradient over the logits (cpp) reads the product itself, in the input's dtype, and
    # writes dz over it (bfloat16: dz in bfloat16, rounded once, as autograd's is) or into logits_buffer (float16:
    # dz stays float32, see above); another that takes lent buffers (torch) gets a second one for dz (or the
    # probabilities), the logits' buffer its work space
    in_place = backend.grad_over_input
    narrow_dz = in_place and input.dtype == torch.bfloat16
    # float32/float64 with such a backend: the product as W x_c^T, (V, rows), class by class (the layout in which
    # a CPU's BLAS runs a product of few rows fastest), the rows computed where they are
    by_columns = in_place and not half
    logits_buffer = None if narrow_dz else torch.empty(chunk, n_classes, dtype=dtype, device=input.device)
    # half inputs: the product in the input's dtype, then widened into logits_buffer (later dz, rounded for dz @ W)
    half_buffer = torch.empty(chunk, n_classes, dtype=input.dtype, device=input.device) if half else None
    second_buffer = torch.empty_like(logits_buffer) if backend.host_sync and not in_place else None
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = (torch.empty if rows is None else torch.zeros)(input.shape, dtype=dtype, device=input.device)
    if needs[1]:
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=input.device)
    if needs[2]:
        grad_bias = torch.zeros(n_classes, dtype=dtype, device=input.device)
    per_row = []
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        x = input[start:stop] if rows is None else input.index_select(0, rows[start:stop])
        if by_columns:  # (V, rows) in the buffer; z its transpose, (rows, V) by columns
            product = logits_buffer.view(-1)[: (stop - start) * n_classes].view(n_classes, stop - start)
            if bias is None:
                torch.mm(weight, x.t(), out=product)
            else:
                torch.addmm(bias.unsqueeze(1), weight, x.t(), out=product)
            product = z = product.t()
        else:
            product = half_buffer[: stop - start] if half else logits_buffer[: stop - start]
            z = product if narrow_dz else logits_buffer[: stop - start]
            if bias is None:
                torch.mm(x, weight.t(), out=product)
            else:
                torch.addmm(bias, x, weight.t(), out=product)
        if half and not in_place:
            z.copy_(product)
        t, k = target[start:stop], keep[start:stop]
        # before the row computation, which may write over z; the cpp backend finds it on the way
        correct = None if in_place else (product.argmax(-1) == t) & k
        row_scale = scale[start:stop] if isinstance(scale, torch.Tensor) and scale.dim() else scale
        if in_place:
            buffers = ChunkBuffers(z, None)
        else:
            buffers = None if second_buffer is None else ChunkBuffers(second_buffer[: stop - start], z)
        values, grad_z = backend.rows(product if in_place else z, t, k, cfg, row_scale, compute_grad=compute_grad,
                                      ignore_index=ignore_index, chunk_size=stop - start, block_size=block_size,
                                      buffers=buffers)
        if correct is None:
            correct = values.correct.to(torch.bool)
        per_row.append((*values[:4], correct))
        if not compute_grad:
            continue
        if grad_input is not None:
            # bfloat16: dz rounded once, the product rounded once (as autograd's dz and dz @ W are)
            dz = grad_z if grad_z.dtype == w_for_input.dtype else product.copy_(grad_z)
            if rows is None and dz.dtype == dtype:
                torch.mm(dz, w_for_input, out=grad_input[start:stop])
            elif rows is None:
                grad_input[start:stop].copy_(torch.mm(dz, w_for_input))
            else:
                grad_input.index_copy_(0, rows[start:stop], torch.mm(dz, w_for_input).to(dtype))
        if grad_weight is not None:
            if rows is None and ignore_index is not None:  # 0 * NaN would be NaN: an ignored row adds nothing
                x = x.masked_fill(~k.unsqueeze(1), 0.0)
            if grad_z.dtype == dtype:
                grad_weight.addmm_(grad_z.t(), x.to(dtype))
            else:  # bfloat16 dz: widened block by block of classes (float32 products, no (chunk, V) float32 copy)
                x32 = x.to(dtype)
                step = max(1, WIDENED_BLOCK_ELEMENTS // (stop - start))
                for v0 in range(0, n_classes, step):
                    grad_weight[v0:v0 + step].addmm_(grad_z[:, v0:v0 + step].to(dtype).t(), x32)
        if grad_bias is not None:
            grad_bias.add_(grad_z.sum(0, dtype=dtype))
    del w_for_input, logits_buffer, half_buffer, second_buffer
    if per_row:
        values = [torch.cat(column) for column in zip(*per_row)]
    else:
        values = [torch.zeros(0, dtype=dtype, device=input.device)] * 4 + [torch.zeros(0, dtype=torch.bool,
                                                                                      device=input.device)]
    return values, (grad_input, grad_weight, grad_bias)


def _select_rows(target, ignore_index, backend):
    """(keep mask of all rows, indices of the rows to compute or None for all): a backend that may read values on
    the host drops the ignored rows."""
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
    if ignore_index is None or not backend.host_sync:
        return keep, None
    return keep, keep.nonzero().squeeze(1)


def _gradient_scale(keep, rows, reduction, backend):
    """The reduction's factor on the gradient: 1 / (rows counted) for "mean", else 1 (a 0-dim tensor where the
    backend must not read the count on the host)."""
    if backend.host_sync:
        count = keep.numel() if rows is None else rows.numel()
        return 1.0 / max(count, 1) if reduction == "mean" else 1.0
    if reduction == "mean":
        return 1.0 / keep.sum().clamp(min=1).float()
    return torch.ones((), device=keep.device)


class _FusedLinearEncouragingLoss(torch.autograd.Function):
    """Forward: the loss, its statistics and (reduction 'mean'/'sum') the gradients of the input, weight and
    bias; backward: those gradients * grad_output, or (reduction 'none') the chunks computed again."""

    @staticmethod
    def forward(ctx, input, weight, bias, target, ignore_index, reduction, cfg, backend, chunk_rows, block_size,
                needs):
        keep, rows = _select_rows(target, ignore_index, backend)
        recompute = reduction == "none"
        computed = target if rows is None else target.index_select(0, rows)
        computed_keep = keep if rows is None else torch.ones_like(computed, dtype=torch.bool)
        values, grads = _chunks(input, weight, bias, computed, rows, computed_keep, cfg, backend, chunk_rows,
                                block_size, ignore_index, _gradient_scale(keep, rows, reduction, backend),
                                (False,) * 3 if recompute else needs)
        if rows is not None:  # back to one value per row of the input (zero on the ignored rows)
            values = [torch.zeros(target.shape, dtype=v.dtype, device=v.device).index_copy_(0, rows, v)
                      for v in values]
        loss, nll, bonus, log_p_target, correct = values
        outputs = reduce_outputs(loss, nll, bonus, log_p_target, keep, reduction, cfg.bonus.log_end)
        correct = reduce_rows(correct.to(outputs.loss.dtype), reduction, keep.sum())

        ctx.mark_non_differentiable(*outputs[1:], correct)
        ctx.set_materialize_grads(False)
        dtypes = (input.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.backend, ctx.recompute = backend, recompute
        if recompute:
            ctx.settings = (ignore_index, cfg, chunk_rows, block_size, needs, dtypes)
            ctx.save_for_backward(input, weight, bias, target, rows)
        else:
            SavedGradients.save(ctx, grads, dtypes, backend.host_sync)
        return (*outputs, correct)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if not ctx.recompute:
            return (*SavedGradients.backward(ctx, grad_loss),) + (None,) * 8
        if torch.is_grad_enabled():
            raise RuntimeError(NO_DOUBLE_BACKWARD)
        if grad_loss is None:
            return (None,) * 11
        input, weight, bias, target, rows = ctx.saved_tensors
        ignore_index, cfg, chunk_rows, block_size, needs, dtypes = ctx.settings
        keep, _ = _select_rows(target, ignore_index, ctx.backend)
        computed = target if rows is None else target.index_select(0, rows)
        computed_keep = keep if rows is None else torch.ones_like(computed, dtype=torch.bool)
        grad_rows = grad_loss.to(compute_dtype(input.dtype))
        if rows is not None:
            grad_rows = grad_rows.index_select(0, rows)
        _, grads = _chunks(input, weight, bias, computed, rows, computed_keep, cfg, ctx.backend, chunk_rows,
                           block_size, ignore_index, grad_rows, needs)
        return tuple(None if g is None else g.to(d) for g, d in zip(grads, dtypes)) + (None,) * 8
