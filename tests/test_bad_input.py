"""Hostile input to the loss API: mistakes get a clear ValueError that says what is allowed, or are handled as
torch's cross-entropy handles them; nothing is silently read the wrong way."""

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from el_plugins.loss import EncouragingLoss
from el_plugins.testing.spec_example import fused_loss, reference_loss


LOSSES = [reference_loss, fused_loss]


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_float_target_of_another_shape_is_refused_not_read_as_soft(implementation):
    loss = EncouragingLoss(implementation=implementation)
    z = torch.randn(5, 5)
    with pytest.raises(ValueError, match=r"class probabilities .* logits' shape \(5, 5\), got \(5,\); class-index "
                                         r"targets must be an integer tensor of shape \(5,\)"):
        loss(z, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match=r"logits' shape \(5,\), got \(\)"):  # 1-D logits, a float "index"
        loss(z[0], torch.tensor(2.0))


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_square_integer_target_is_an_index_target_and_refused(implementation):
    """(N, N) integer targets: not soft targets (torch reads integers as indices too); their shape is wrong."""
    z = torch.randn(4, 4)
    with pytest.raises(ValueError, match=r"expected input \(N, V\) and target \(N,\)"):
        EncouragingLoss(implementation=implementation)(z, torch.eye(4, dtype=torch.long))


@pytest.mark.parametrize("implementation", ["fused", "reference"])
def test_unbatched_row_as_torch_cross_entropy(implementation):
    z, t = torch.randn(7, dtype=torch.float64), torch.tensor(3)
    el = EncouragingLoss(bonus_weight=0.0, implementation=implementation)
    torch.testing.assert_close(el(z, t), F.cross_entropy(z, t))
    el = EncouragingLoss(log_end=0.5, smoothing=0.1, implementation=implementation)
    torch.testing.assert_close(el(z, t), el(z.unsqueeze(0), t.unsqueeze(0)))
    assert EncouragingLoss(reduction="none", implementation=implementation)(z, t).shape == ()


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_any_integer_target_dtype(loss_fn, dtype):
    z, t = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 5, 2, 1])
    torch.testing.assert_close(loss_fn(z, t.to(dtype), label_smoothing=0.1), loss_fn(z, t, label_smoothing=0.1))


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_target_on_another_device(loss_fn):
    z, t = torch.randn(4, 6), torch.tensor([0, 5, 2, 1], device="meta")
    with pytest.raises(ValueError, match="target is on meta but input on cpu: put both on the same device"):
        loss_fn(z, t)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), torch.tensor([0.5]), 0.5])
def test_log_end_of_any_real_numeric_type(value):
    z, t = torch.randn(4, 6), torch.tensor([0, 5, 2, 1])
    assert EncouragingLoss(log_end=value).log_end == 0.5
    torch.testing.assert_close(reference_loss(z, t, log_end=value), reference_loss(z, t, log_end=0.5))


@pytest.mark.parametrize("name", ["log_end", "smoothing", "bonus_weight"])
@pytest.mark.parametrize("value", [True, np.bool_(True), torch.tensor(True), "0.5", None, torch.tensor([0.5, 0.5])])
def test_non_numbers_refused_booleans_included(name, value):
    with pytest.raises(ValueError, match=f"{name} must be (in .*, )?a (finite )?number"):
        EncouragingLoss(**{name: value})


@pytest.mark.parametrize("tuning", [dict(backend="torch"), dict(chunk_size=4), dict(block_size=64)])
def test_fused_tuning_with_the_reference_is_refused(tuning):
    """The fused implementation's options are not silently ignored by the reference."""
    z, t = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=f"{next(iter(tuning))} tune.*implementation='reference' takes none"):
        reference_loss(z, t, **tuning)
    torch.testing.assert_close(fused_loss(z, t, **tuning), reference_loss(z, t))
