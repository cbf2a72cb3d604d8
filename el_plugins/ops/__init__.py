"""Memory-efficient ("fused") kernels for the encouraging loss: the ``implementation='fused'`` of the public
functions in :mod:`el_plugins.functional` (call those).

- :func:`fused_encouraging_loss` (``encouraging_loss_with_stats``): the loss and its gradient together in the
  forward pass, over row chunks (torch, any device) or one row per Triton program (CUDA), keeping only the
  gradient for the backward: no (N, V) float32 log-probabilities, probabilities or autograd intermediates.
- :func:`fused_linear_encouraging_loss` (``linear_encouraging_loss_with_stats``): the output layer fused in,
  chunk by chunk, the same row computation per chunk: never the whole (N, V) logits or their gradient.

The math they share with the reference is :mod:`el_plugins.core`; this package imports only that.
"""
from .encouraging_loss import BACKENDS, LossConfig, fused_encouraging_loss, pick_backend
from .linear_encouraging_loss import fused_linear_encouraging_loss

__all__ = ["BACKENDS", "LossConfig", "fused_encouraging_loss", "fused_linear_encouraging_loss", "pick_backend"]
