"""What both fused ops share: the row computation's settings (:class:`LossConfig`), the tuning checks, and how a
gradient computed in the forward pass is kept and handed to the one backward pass (:class:`SavedGradients`)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from el_plugins.checks import check_count
from el_plugins.core import Bonus, TargetWeights

SINGLE_BACKWARD_ONLY = (
    "the fused encouraging loss computes its gradient in the forward pass and hands it to the one backward "
    "pass it supports; a second backward pass through the same graph is not supported: compute the loss "
    "again, or use implementation='reference' (plain autograd: repeated and double backward, gradcheck)")

NO_DOUBLE_BACKWARD = (
    "the fused encouraging loss has no second derivative (backward with create_graph=True, double backward, "
    "gradient penalties through the loss): use implementation='reference' (plain autograd) for those")


class LossConfig(NamedTuple):
    """What a backend's row computation needs: the bonus, the target weights over this call's V classes, and
    whether the input holds log-probabilities (used as they are) instead of logits."""

    bonus: Bonus
    weights: TargetWeights
    input_is_log_probs: bool = False

    @property
    def dense_bonus(self) -> bool:
        return self.weights.dense_bonus


def check_tuning(chunk_size, block_size):
    """The fused ops' tuning options checked: rows per chunk, a positive int; columns per Triton block, a
    power of 2 >= 16 (None: the defaults). Returns them as ints (or None)."""
    chunk_size = check_count(chunk_size, "chunk_size", "rows per chunk")
    block_size = check_count(block_size, "block_size", "columns per block of the Triton kernel, a power of 2 >= 16")
    if block_size is not None and not (block_size >= 16 and block_size & (block_size - 1) == 0):
        raise ValueError(f"block_size must be a power of 2 >= 16 (columns per block of the Triton kernel), "
                         f"got {block_size!r}")
    return chunk_size, block_size


class SavedGradients:
    """The gradients a fused op computed in its forward pass (the reduction's scale included), kept for its one
    backward pass: :meth:`save` in forward, :meth:`backward` in backward. They are kept in the compute dtype
    (float32 for float16/bfloat16 inputs); backward multiplies them by grad_output (the loss scale of mixed
    precision) and only then rounds each once to its parameter's dtype, as autograd does, so nothing is flushed to
    zero before the scale is known. (Kept on ctx, never holding it: no reference cycle delays freeing the buffers.)

    On a backend that may read values on the host (``host_sync``), with grad_output = 1 and buffers already of
    the parameters' dtypes, the buffers themselves are handed on (autograd keeps them as .grad, no copy);
    otherwise they are scaled in place, and a second backward raises."""

    def __init__(self, dtypes: Sequence[Optional[torch.dtype]], host_sync: bool):
        self.dtypes, self.host_sync, self.consumed = tuple(dtypes), host_sync, False

    @classmethod
    def save(cls, ctx, grads, dtypes, host_sync: bool) -> None:
        """Keep ``grads`` (None where not computed) on ``ctx`` for :meth:`backward`; ``dtypes``: their parameters'."""
        ctx.save_for_backward(*grads)
        ctx.saved_gradients = cls(dtypes, host_sync)

    @staticmethod
    def backward(ctx, grad_loss):
        """The gradients saved on ``ctx`` times ``grad_loss``, each rounded once to its dtype (None where not
        computed)."""
        self = ctx.saved_gradients
        if self.consumed:  # scaled in place by an earlier backward pass
            raise RuntimeError(SINGLE_BACKWARD_ONLY)
        if torch.is_grad_enabled():  # backward(create_graph=True): the gradient would have no gradient itself
            raise RuntimeError(NO_DOUBLE_BACKWARD)
        try:
            grads = ctx.saved_tensors
        except RuntimeError as exc:  # handed on as .grad and accumulated into since
            raise RuntimeError(SINGLE_BACKWARD_ONLY) from exc
        if grad_loss is None:
            return (None,) * len(self.dtypes)
        present = [(grad, dtype) for grad, dtype in zip(grads, self.dtypes) if grad is not None]
        if (self.host_sync and not grad_loss.is_cuda and all(g.dtype == d for g, d in present)
                and grad_loss.numel() == 1 and bool(grad_loss == 1)):
            return tuple(None if grad is None else grad.detach() for grad in grads)  # new aliases of the buffers
        self.consumed = True  # the scale first, in the compute dtype; then one rounding to each dtype (no host sync)
        scale = grad_loss.unsqueeze(-1) if grad_loss.dim() else grad_loss
        return tuple(None if grad is None else scaled_and_rounded(grad, scale, dtype)
                     for grad, dtype in zip(grads, self.dtypes))


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
