"""Memory-efficient ("fused") kernels for the encouraging loss: the ``implementation='fused'`` of
:func:`el_plugins.functional.encouraging_loss_with_stats`, the one public loss function (call that).

It computes the loss and its gradient together in the forward pass, over row chunks (torch, any device)
or one row per Triton program (CUDA), and keeps only the gradient for the backward: no (N, V) float32
log-probabilities, probabilities or autograd intermediates.
"""
from .encouraging_loss import BACKENDS, LossConfig, fused_encouraging_loss, pick_backend

__all__ = ["BACKENDS", "LossConfig", "fused_encouraging_loss", "pick_backend"]
