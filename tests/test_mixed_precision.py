"""Mixed precision: the fused path's gradient on float16/bfloat16 logits with a loss scale is as precise as
autograd's, element by element, against the float64 truth.

Routes: timm's --amp (GradScaler: the mean over the batch, times a scale up to 65536) and fairseq's --fp16
(the sum over tokens, times its dynamic loss scale, 128 at the start)."""

import pytest
import torch

from el_evidence.testing.mixed_precision import precision, scaled_gradient, trained_like_logits
from el_evidence.testing.spec_example import fused_loss, reference_loss
from test_cpu_kernel import cpu_backend, on_each_cpu_backend  # noqa: F401 (the fixture)


ROUTES = {
    # name: (rows, classes, loss kwargs, loss scale)
    "timm-amp-imagenet": (384, 1000, dict(reduction="mean", log_end=0.75, label_smoothing=0.1), 65536.0),
    "timm-amp-no-smoothing": (384, 1000, dict(reduction="mean", log_end=1.0), 65536.0),
    "fairseq-fp16-iwslt": (2048, 8000, dict(reduction="sum", log_end=0.5, label_smoothing=0.1,
                                            smoothing_convention="fairseq", ignore_index=1), 128.0),
    # the other members of the bonus family (issue 25)
    "timm-amp-power": (384, 1000, dict(reduction="mean", bonus="power", bonus_gamma=2, label_smoothing=0.1), 65536.0),
    "timm-amp-cosine": (384, 1000, dict(reduction="mean", bonus="cosine", label_smoothing=0.1), 65536.0),
    "fairseq-fp16-aggressive-log": (512, 8000, dict(reduction="sum", log_end=1.0, bonus_start=0.5,
                                                    label_smoothing=0.1, bonus_smoothing=0.1, ignore_index=1), 128.0),
    "fairseq-fp16-power-start": (512, 8000, dict(reduction="sum", bonus="power", bonus_gamma=3, bonus_start=0.4,
                                                 label_smoothing=0.1, ignore_index=1), 128.0),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("route", [pytest.param(r, marks=pytest.mark.slow) if ROUTES[r][0] * ROUTES[r][1] > 10**7 else r
                                   for r in sorted(ROUTES)])
@on_each_cpu_backend
def test_fused_gradient_as_precise_as_autograd(route, dtype):
    rows, classes, kwargs, scale = ROUTES[route]
    z, target = trained_like_logits(rows, classes)
    x = z.to(dtype)
    truth = scaled_gradient(reference_loss, x.double(), target, scale, **kwargs)
    autograd = scaled_gradient(reference_loss, x, target, scale, **kwargs)
    fused = scaled_gradient(fused_loss, x, target, scale, **kwargs)

    autograd_flushed, autograd_p99 = precision(autograd, truth, dtype)
    fused_flushed, fused_p99 = precision(fused, truth, dtype)
    kept_by_autograd = autograd_flushed.logical_not() & (truth.abs() >= torch.finfo(dtype).tiny)
    assert int((fused_flushed & kept_by_autograd).sum()) == 0
    assert fused_p99 <= autograd_p99 * 1.05, (fused_p99, autograd_p99)
    # the gradient reaches the model in the logits' dtype, as autograd's does
    assert fused.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,per_row,block", [((300, 77), False, 50), ((300, 77), True, 50), ((5, 3), True, 1),
                                                 ((1000,), False, 64), ((300, 77), True, 1 << 20)])
def test_rounding_over_the_gradients_own_storage(monkeypatch, dtype, shape, per_row, block):
    """The fused ops' last step, grad * scale rounded once to the parameter's dtype, written over the float32
    buffer's own storage block by block (no second gradient-sized tensor): the same values as
    ``(grad * scale).to(dtype)``, whatever the block size, the result a view of the buffer's storage."""
    from el_plugins.ops import common as ops_loss

    monkeypatch.setattr(ops_loss, "ROUNDING_BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(0)
    grad = torch.randn(*shape, generator=gen) * 1e-3
    scale = torch.rand(shape[0], 1, generator=gen) * 65536 if per_row else torch.tensor(128.0)
    expected = (grad * scale).to(dtype)
    buffer = grad.clone()
    rounded = ops_loss.scaled_and_rounded(buffer, scale, dtype)
    assert rounded.dtype == dtype and rounded.shape == expected.shape and rounded.is_contiguous()
    assert torch.equal(rounded, expected)
    assert rounded.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_rounding_keeps_the_dtype_or_copies_where_it_cannot_reuse_the_storage():
    from el_plugins.ops.common import scaled_and_rounded

    grad = torch.arange(12.0).view(3, 4)
    assert torch.equal(scaled_and_rounded(grad.clone(), 2.0, torch.float32), grad * 2)  # same dtype: in place
    strided = torch.arange(24.0).view(3, 8)[:, ::2]  # not contiguous: a plain rounded copy
    expected = (strided * 2).to(torch.bfloat16)
    assert not strided.is_contiguous() and torch.equal(scaled_and_rounded(strided, 2.0, torch.bfloat16), expected)
    assert scaled_and_rounded(torch.zeros(0, 5), 2.0, torch.float16).shape == (0, 5)
