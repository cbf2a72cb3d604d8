"""Memory-efficient ("fused") kernels for the encouraging loss.

:func:`fused_encouraging_loss_with_stats` returns what
:func:`el_plugins.functional.encouraging_loss_with_stats` returns, but computes the loss and its
gradient together in the forward pass, over row chunks (torch, any device) or one row per Triton
program (CUDA), and keeps only the gradient for the backward: no (N, V) float32 log-probabilities,
probabilities or autograd intermediates.
"""
from .encouraging_loss import BACKENDS, fused_encouraging_loss, fused_encouraging_loss_with_stats

__all__ = ["BACKENDS", "fused_encouraging_loss", "fused_encouraging_loss_with_stats"]
