"""Memory-efficient ("fused") kernels for the encouraging loss: the ``implementation='fused'`` of the public
functions in :mod:`el_plugins.functional` (call those). :func:`fused_loss` is the one entry point:

- on the logits (``encouraging_loss_with_stats``): the loss and its gradient together in the forward pass, keeping
  only the gradient for the backward: no (N, V) float32 log-probabilities, probabilities or autograd intermediates;
- with ``linear_weight`` (``linear_encouraging_loss_with_stats``): the output layer fused in, chunk by chunk, the
  same row computation per chunk: never the whole (N, V) logits or their gradient.

It chooses the backend (:mod:`.backends`: the C++ kernel, chunked torch, the Triton kernel), checks the tensors as
that backend allows (host reads or device-side assertions), builds the row computation's settings from the checked
loss settings (:class:`el_plugins.core.LossSettings`) and runs the op. This package imports only el_plugins.core and
el_plugins.checks.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from el_plugins.checks import check_index_loss_args, check_linear_loss_args
from el_plugins.core import LossSettings, autocast_dtype, autocast_input, target_weights

from .backends import BACKEND_CHOICES, BACKENDS, Backend, select_backend
from .common import NO_DOUBLE_BACKWARD, SINGLE_BACKWARD_ONLY, LossConfig, check_tuning
from .encouraging_loss import _FusedEncouragingLoss
from .linear_encouraging_loss import _FusedLinearEncouragingLoss, chunk_buffers, default_chunk_rows


def fused_loss(input: torch.Tensor, target: torch.Tensor, settings: LossSettings, *,
               linear_weight: Optional[torch.Tensor] = None, linear_bias: Optional[torch.Tensor] = None,
               input_is_log_probs: bool = False, backend: str = "auto", chunk_size: Optional[int] = None,
               block_size: Optional[int] = None):
    """The fused op behind ``el_plugins.functional``'s ``implementation='fused'``, which checks the settings (call
    that): on (N, V) logits (or log-probabilities), or with ``linear_weight`` (V, d) on the features ``input``
    (N, d), as F.linear(input, linear_weight, linear_bias) under any torch.autocast (its inputs cast as autocast
    casts F.linear's). Returns (loss, nll_loss, bonus, target_prob, past_log_end) reduced as ``settings.reduction``
    says, and with ``linear_weight`` also ``correct``."""
    chunk_size, block_size = check_tuning(chunk_size, block_size)
    grad_enabled = torch.is_grad_enabled()
    if linear_weight is None:
        chosen = select_backend(backend, input)
        target = check_index_loss_args(input, target, settings, synchronize=chosen.host_sync)
        cfg = LossConfig(settings.bonus, target_weights(settings, input.size(1)), bool(input_is_log_probs))
        return _FusedEncouragingLoss.apply(input, target, settings.ignore_index, settings.reduction, cfg, chosen,
                                           input.requires_grad and grad_enabled, chunk_size, block_size)
    device_type = input.device.type
    cast_dtype = autocast_dtype(device_type)
    if cast_dtype is not None:  # as F.linear under torch.autocast: its inputs cast (differentiably) first
        input, linear_weight, linear_bias = (autocast_input(t, cast_dtype) for t in (input, linear_weight, linear_bias))
    chosen = select_backend(backend, input)
    target = check_linear_loss_args(input, linear_weight, linear_bias, target, settings, synchronize=chosen.host_sync)
    cfg = LossConfig(settings.bonus, target_weights(settings, linear_weight.size(0)))
    needs = (grad_enabled and input.requires_grad, grad_enabled and linear_weight.requires_grad,
             grad_enabled and linear_bias is not None and linear_bias.requires_grad)
    chunk_rows = chunk_size or default_chunk_rows(input.size(0), input.size(1), linear_weight.size(0),
                                                  chunk_buffers(chosen, input.dtype))
    with torch.autocast(device_type, enabled=False) if cast_dtype is not None else contextlib.nullcontext():
        return _FusedLinearEncouragingLoss.apply(input, linear_weight, linear_bias, target, settings.ignore_index,
                                                 settings.reduction, cfg, chosen, chunk_rows, block_size, needs)


__all__ = ["BACKENDS", "BACKEND_CHOICES", "Backend", "LossConfig", "NO_DOUBLE_BACKWARD", "SINGLE_BACKWARD_ONLY",
           "fused_loss", "select_backend"]
