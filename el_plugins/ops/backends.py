"""The backends of the fused ops: each computes the per-row values and the gradient of a block of rows, and knows
which tensors it takes and whether it may make the host wait for the device.

    torch   chunked torch (torch_rows.py): any device, any floating dtype; reads a few values on the host
    triton  the Triton kernel (triton_rows.py): CUDA tensors of float32/float16/bfloat16 (CPU tensors under
            TRITON_INTERPRET=1); never makes the host wait
    cpp     the C++ kernel (cpp_rows.py, cpp_source.py): CPU tensors of float32/float64/float16/bfloat16, each row
            in cache; compiled at first use and cached (auto falls back to torch where it cannot be built)

How to add one: docs/design.md ("How to add a backend").
"""
from __future__ import annotations

import importlib.util
import os
from typing import NamedTuple, Optional

import torch

from el_plugins.checks import check_choice
from el_plugins.core import RowTerms, assemble_rows, bonus_from_log_prob

from .common import LossConfig
from .torch_rows import chunk_terms, torch_rows


class RowValues(NamedTuple):
    """Per row, in the compute dtype: the loss, -log p_y, the bonus term and log p_y; and, from a backend that finds
    it on the way, ``correct``: whether the target is the first largest logit (argmax's), 0 on rows ignored."""

    loss: torch.Tensor
    nll: torch.Tensor
    bonus: torch.Tensor
    log_p_target: torch.Tensor
    correct: Optional[torch.Tensor] = None


class ChunkBuffers(NamedTuple):
    """(n, V) buffers of the compute dtype a caller lends a backend for one chunk: ``grad`` (the gradient, or the
    probabilities when none is computed) and ``work`` (work space; it may be the chunk's logits themselves, which
    the row computation reads before it writes there)."""

    grad: torch.Tensor
    work: torch.Tensor


class Backend:
    """A backend of the fused ops. ``host_sync``: whether it may read tensor values on the host (counts, the rows
    a step keeps, the entries with large p): a CUDA step then waits for the device, so the ops let a backend without
    it keep ignored rows in place and queue the target checks as device-side assertions. ``grad_over_input``:
    whether ``rows`` takes ChunkBuffers whose ``grad`` is x itself (the chunk's logits, of the compute dtype,
    overwritten by their gradient) and input of any dtype it takes with a ``grad`` of the compute dtype (no
    ``work``): the fused output layer then keeps one (chunk, V) buffer instead of two."""

    name: str = ""
    host_sync: bool = True
    grad_over_input: bool = False

    def takes(self, input: torch.Tensor) -> Optional[str]:
        """None when this backend takes ``input``, else why not (the ValueError's message when it is asked for)."""
        raise NotImplementedError

    def preferred_for(self, input: torch.Tensor) -> bool:
        """Whether ``backend='auto'`` picks it for ``input`` (asked in :data:`AUTO_ORDER`)."""
        return self.takes(input) is None

    def rows(self, x, target, keep, cfg: LossConfig, scale, *, compute_grad: bool, ignore_index: Optional[int],
             chunk_size: Optional[int] = None, block_size: Optional[int] = None, buffers=None):
        """(:class:`RowValues`, dL/dx times ``scale`` in the compute dtype or None) of the rows of ``x`` (n, V):
        targets (n,) (valid indices on every row kept), ``keep`` (n,) bool, ``scale`` a number, a 0-dim tensor
        or one per row. Ignored rows' values and gradient are 0, whatever they hold. ``buffers``:
        :class:`ChunkBuffers` the caller lends for one chunk (a backend may ignore them)."""
        raise NotImplementedError

    def defers_gradient(self, input: torch.Tensor) -> bool:
        """Whether the fused op on the logits ``input`` takes :meth:`deferred_rows` in forward and
        :meth:`deferred_gradient` in backward instead of :meth:`rows` with the gradient."""
        return False

    def deferred_rows(self, x, target, keep, cfg: LossConfig, *, ignore_index: Optional[int]):
        """(:class:`RowValues`, a state tensor) of the rows of ``x``, as :meth:`rows` without a gradient; the state
        is what :meth:`deferred_gradient` needs besides x."""
        raise NotImplementedError

    def deferred_gradient(self, x, target, keep, cfg: LossConfig, state, scale, *, ignore_index: Optional[int]):
        """dL/dx times ``scale`` (a 0-dim tensor or one per row) in x's dtype, from :meth:`deferred_rows`' state."""
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"
    host_sync = True

    def takes(self, input):
        return None

    def rows(self, x, target, keep, cfg, scale, *, compute_grad, ignore_index, chunk_size=None, block_size=None,
             buffers=None):
        if isinstance(scale, torch.Tensor) and scale.dim() == 0:
            scale = float(scale)
        safe_target = target if ignore_index is None else target.masked_fill(~keep, 0)
        if buffers is None:
            terms, grad = torch_rows(x, safe_target, keep, scale, cfg, compute_grad, chunk_size)
        else:  # one chunk in the caller's buffers: (gradient or probabilities, work space that may be x itself)
            grad = buffers.grad if compute_grad else None
            sum_x = x.sum(-1) if cfg.weights.nll_other else None
            scratch = (None if compute_grad else buffers.grad, buffers.work if cfg.dense_bonus else None, None)
            log_p, sum_log_p, sum_bonus = chunk_terms(x, safe_target, keep, sum_x, grad, scratch, cfg, scale)
            zeros = torch.zeros_like(log_p)
            terms = RowTerms(log_p, zeros if sum_log_p is None else sum_log_p,
                             bonus_from_log_prob(log_p, cfg.bonus), zeros if sum_bonus is None else sum_bonus)
        loss, nll, bonus = assemble_rows(terms, cfg.weights)
        return RowValues(loss, nll, bonus, terms.log_p_target), grad


class TritonBackend(Backend):
    name = "triton"
    host_sync = False
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def takes(self, input):
        if input.dtype not in self.dtypes:
            return f"the triton backend takes float32, float16 or bfloat16 input, got {input.dtype}"
        if not input.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return ("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported, to "
                    "interpret the kernel on CPU tensors)")
        if importlib.util.find_spec("triton") is None:
            return "the triton backend needs triton, which is not installed here"
        return None

    def preferred_for(self, input):
        return input.is_cuda and self.takes(input) is None

    def rows(self, x, target, keep, cfg, scale, *, compute_grad, ignore_index, chunk_size=None, block_size=None,
             buffers=None):
        from .triton_rows import encouraging_loss_rows

        per_row_scale = isinstance(scale, torch.Tensor) and scale.dim() == 1
        if not isinstance(scale, torch.Tensor) or per_row_scale:
            kernel_scale = torch.full((), 1.0 if per_row_scale else scale, device=x.device)
        else:
            kernel_scale = scale
        loss, nll, bonus, log_p, grad = encouraging_loss_rows(x, target, ignore_index, kernel_scale, cfg,
                                                              compute_grad, block_size)
        if per_row_scale and compute_grad:
            grad.mul_(scale.unsqueeze(1))
        return RowValues(loss, nll, bonus, log_p), grad


class CppBackend(Backend):
    name = "cpp"
    host_sync = True
    grad_over_input = True
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    deferred_dtypes = (torch.float16, torch.bfloat16)
    """Half-precision logits: the gradient written in backward, in their dtype (no float32 (N, V) buffer, twice
    their size); float32/float64: written in forward, handed on as it is."""

    def takes(self, input):
        if input.device.type != "cpu":
            return f"the cpp backend takes CPU tensors, got a {input.device.type} tensor"
        if input.dtype not in self.dtypes:
            return f"the cpp backend takes float32, float64, float16 or bfloat16 input, got {input.dtype}"
        from .cpp_rows import unavailable_reason

        problem = unavailable_reason()
        if problem:
            return f"the cpp backend (the C++ kernel for CPU tensors) is unavailable: {problem}"
        return None

    def rows(self, x, target, keep, cfg, scale, *, compute_grad, ignore_index, chunk_size=None, block_size=None,
             buffers=None):
        from .cpp_rows import cpp_rows

        grad = buffers.grad if buffers is not None and compute_grad else None
        values, grad = cpp_rows(x, target, keep, cfg, scale, compute_grad=compute_grad, ignore_index=ignore_index,
                                grad=grad)
        return RowValues(*values), grad

    def defers_gradient(self, input):
        return input.dtype in self.deferred_dtypes

    def deferred_rows(self, x, target, keep, cfg, *, ignore_index):
        from .cpp_rows import cpp_rows_deferred

        (loss, nll, bonus, log_p), state = cpp_rows_deferred(x, target, keep, cfg, ignore_index=ignore_index)
        return RowValues(loss, nll, bonus, log_p), state

    def deferred_gradient(self, x, target, keep, cfg, state, scale, *, ignore_index):
        from .cpp_rows import cpp_gradient

        return cpp_gradient(x, target, keep, cfg, state, scale, ignore_index=ignore_index)


BACKENDS = {backend.name: backend for backend in (TorchBackend(), TritonBackend(), CppBackend())}
"""The backends by name; ``backend='auto'`` asks them in :data:`AUTO_ORDER`."""

AUTO_ORDER = ("triton", "cpp", "torch")

BACKEND_CHOICES = ("auto", *BACKENDS)


def select_backend(name: str, input: torch.Tensor) -> Backend:
    """The backend ``name`` stands for on ``input``: ``auto`` the first of AUTO_ORDER that prefers it (the Triton
    kernel for CUDA tensors it takes, the C++ kernel for CPU tensors where it can be built, chunked torch
    otherwise); a named one checked (a ValueError saying what it takes)."""
    check_choice(name, BACKEND_CHOICES, "backend")
    if name == "auto":
        return next(BACKENDS[n] for n in AUTO_ORDER if BACKENDS[n].preferred_for(input))
    problem = BACKENDS[name].takes(input)
    if problem:
        raise ValueError(problem)
    return BACKENDS[name]
