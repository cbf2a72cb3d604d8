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
"""
from __future__ import annotations

import torch

from el_plugins.core import reduce_outputs

from .common import SavedGradients


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
        values, grad = backend.rows(input, target, keep, cfg, scale, compute_grad=compute_grad,
                                    ignore_index=ignore_index, chunk_size=chunk_size, block_size=block_size)
        outputs = reduce_outputs(values.loss, values.nll, values.bonus, values.log_p_target, keep, reduction,
                                 cfg.bonus.log_end)
        ctx.mark_non_differentiable(*outputs[1:])
        ctx.set_materialize_grads(False)
        SavedGradients.save(ctx, (grad,), (input.dtype,), backend.host_sync)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        (grad_input,) = SavedGradients.backward(ctx, grad_loss)
        return (grad_input,) + (None,) * 8
