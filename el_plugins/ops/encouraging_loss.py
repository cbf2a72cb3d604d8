"""The fused encouraging loss on the logits: the loss and its gradient in one forward pass, the gradient kept for
the backward pass (:class:`el_plugins.ops.common.SavedGradients`) instead of the (N, V) float32 log-probabilities,
probabilities and autograd intermediates. The row computation is a backend's (:mod:`el_plugins.ops.backends`).

The gradient buffer holds dL/dz in the compute dtype (float32 for float16/bfloat16 input), already divided by the
row count for ``reduction="mean"``; backward multiplies it by grad_output (the loss scale of mixed-precision
training) and only then rounds it to the input's dtype, once, as autograd does. Peak extra memory: that buffer
plus a few chunk-sized float32 temporaries.

The buffer is consumed by the backward pass, so the op supports one backward pass per forward (the usual case); a
second one raises a RuntimeError that says so (it works only while the buffer is intact: a grad_output of 1 on the
CPU, nothing accumulated into the handed-on gradient); backward with create_graph=True (double backward) raises one
too. Use ``implementation="reference"`` (plain autograd) for those.

A backend that defers the gradient (:meth:`Backend.defers_gradient`: the C++ kernel, for float16/bfloat16 logits)
keeps instead the logits (saved for backward, as autograd keeps a softmax's input) and a few float64 values per row
(the log-sum-exp, the row's sums): the backward pass reads the logits once more and writes dL/dz * grad_output
directly in their dtype, each entry computed in float32 and rounded once. No float32 (N, V) buffer ever exists (for
half-precision logits it would be twice their size), and that backward may run more than once.
"""
from __future__ import annotations

import torch

from el_plugins.core import reduce_outputs

from .common import NO_DOUBLE_BACKWARD, SavedGradients


class _FusedEncouragingLoss(torch.autograd.Function):
    """Forward: the loss, its statistics and the gradient buffer; backward: the buffer * grad_output."""

    @staticmethod
    def forward(ctx, input, target, ignore_index, reduction, cfg, backend, compute_grad, chunk_size, block_size):
        keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target.ne(ignore_index)
        count = keep.sum()
        if reduction != "mean":
            scale = 1.0 if backend.host_sync else torch.ones((), device=input.device)
        elif backend.host_sync:
            scale = 1.0 / max(int(count), 1)
        else:  # the count stays on the device
            scale = 1.0 / count.clamp(min=1).float()
        deferred = compute_grad and backend.defers_gradient(input)
        if deferred:
            values, state = backend.deferred_rows(input, target, keep, cfg, ignore_index=ignore_index)
        else:
            values, grad = backend.rows(input, target, keep, cfg, scale, compute_grad=compute_grad,
                                        ignore_index=ignore_index, chunk_size=chunk_size, block_size=block_size)
        outputs = reduce_outputs(values.loss, values.nll, values.bonus, values.log_p_target, keep, reduction,
                                 cfg.bonus.log_end)
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.set_materialize_grads(False)
        ctx.deferred = deferred
        if deferred:
            ctx.save_for_backward(input, target, keep, state)
            ctx.settings = (backend, cfg, ignore_index, scale)
        else:
            SavedGradients.save(ctx, (grad,), (input.dtype,), backend.host_sync)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if not ctx.deferred:
            (grad_input,) = SavedGradients.backward(ctx, grad_loss)
            return (grad_input,) + (None,) * 8
        if torch.is_grad_enabled():
            raise RuntimeError(NO_DOUBLE_BACKWARD)
        if grad_loss is None:
            return (None,) * 9
        input, target, keep, state = ctx.saved_tensors
        backend, cfg, ignore_index, scale = ctx.settings
        row_scale = grad_loss * scale  # one per row with reduction "none", else 0-dim
        grad_input = backend.deferred_gradient(input, target, keep, cfg, state, row_scale, ignore_index=ignore_index)
        return (grad_input,) + (None,) * 8
