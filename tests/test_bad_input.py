"""Hostile input to the loss API: mistakes get a clear ValueError that says what is allowed, or are handled as
torch's cross-entropy handles them; nothing is silently read the wrong way."""

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from el_plugins import functional as EF
from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss, LinearEncouragingLoss
from el_evidence.testing.spec_example import fused_loss, reference_loss


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
    if name == "log_end" and value is None:  # None is log_end's default: 0.75 for the log bonus
        assert EncouragingLoss(log_end=None).log_end == 0.75
        return
    with pytest.raises(ValueError, match=f"{name} must be (in .*, )?a (finite )?number"):
        EncouragingLoss(**{name: value})


@pytest.mark.parametrize("tuning", [dict(backend="torch"), dict(chunk_size=4), dict(block_size=64)])
def test_fused_tuning_with_the_reference_is_refused(tuning):
    """The fused implementation's options are not silently ignored by the reference."""
    z, t = torch.randn(3, 5), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=f"{next(iter(tuning))} tune.*implementation='reference' takes none"):
        reference_loss(z, t, **tuning)
    torch.testing.assert_close(fused_loss(z, t, **tuning), reference_loss(z, t))


# --------------------------------------------------------------------------- issue 18: arguments named, nonsense refused
@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("ignore_index", ["pad", 1.5, True, torch.tensor(1.5), [1]])
def test_ignore_index_must_be_an_integer(loss_fn, ignore_index):
    z, t = torch.randn(4, 6), torch.tensor([0, 5, 2, 1])
    with pytest.raises(ValueError, match=r"ignore_index must be an integer class index .* or None, got "):
        loss_fn(z, t, ignore_index=ignore_index)


@pytest.mark.parametrize("value", [1, np.int64(1), torch.tensor(1)])
def test_ignore_index_of_any_integer_type(value):
    z, t = torch.randn(4, 6), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(reference_loss(z, t, ignore_index=value), reference_loss(z, t, ignore_index=1))
    assert EncouragingLoss(ignore_index=value).ignore_index == 1


def test_encouraging_loss_checks_ignore_index_at_construction():
    with pytest.raises(ValueError, match=r"ignore_index must be an integer class index .* got 'x'"):
        EncouragingLoss(ignore_index="x")


@pytest.mark.parametrize("chunk_size", [True, 2.0, 0, "4"])
def test_chunk_size_must_be_a_positive_integer(chunk_size):
    z, t = torch.randn(4, 6), torch.tensor([0, 5, 2, 1])
    with pytest.raises(ValueError, match=r"chunk_size must be a positive integer \(rows per chunk\)"):
        fused_loss(z, t, chunk_size=chunk_size)
    with pytest.raises(ValueError, match=r"block_size must be a positive integer"):
        fused_loss(z, t, block_size=True)


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.int32, torch.bool])
def test_logits_must_be_real_floating_point(loss_fn, dtype):
    """torch's cross_entropy refuses integer logits; EL says what it needs instead of computing on them."""
    z, t = torch.randn(4, 6).to(dtype), torch.tensor([0, 5, 2, 1])
    with pytest.raises(ValueError, match=rf"input must be a real floating-point tensor of logits \(float16, bfloat16, "
                                         rf"float32 or float64\), got {dtype}"):
        loss_fn(z, t)
    with pytest.raises(ValueError, match="input must be a real floating-point tensor"):
        EncouragingLoss()(z, torch.softmax(torch.randn(4, 6), -1))


@pytest.mark.parametrize("make_bad,found", [
    (lambda t: t.index_put_((torch.tensor([2]), torch.tensor([0])), torch.tensor(-0.25)), r"row 2 has the entry -0.25"),
    (lambda t: t.index_put_((torch.tensor([1]), torch.tensor([3])), torch.tensor(float("nan"))), r"row 1 has a NaN"),
    (lambda t: t.mul_(0.5), r"row 0 has the sum 0.5"),
    (lambda t: t.mul_(torch.tensor([1.0, 1.0, 1.0, 1.01]).unsqueeze(1)), r"row 3 has the sum 1.01"),
])
def test_soft_targets_must_be_probabilities(make_bad, found):
    z = torch.randn(4, 6)
    target = make_bad(torch.softmax(torch.randn(4, 6), -1))
    with pytest.raises(ValueError, match=r"soft targets must be class probabilities, every entry >= 0 and each row "
                                         rf"summing to 1 \(within 0.001\); {found}"):
        EncouragingLoss()(z, target)


def test_soft_targets_within_rounding_of_their_dtype_are_accepted():
    z = torch.randn(8, 1000)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        target = torch.softmax(torch.randn(8, 1000), -1).to(dtype)  # rows sum to 1 within the dtype's rounding
        assert torch.isfinite(EncouragingLoss()(z, target))


def test_ignore_index_with_soft_targets_is_refused():
    """Soft targets have no index to ignore; silently not ignoring anything would be a surprise (torch refuses too)."""
    z = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"ignore_index=1 applies to class-index targets only; soft targets"):
        EncouragingLoss(ignore_index=1)(z, torch.softmax(torch.randn(4, 6), -1))
    torch.testing.assert_close(EncouragingLoss(ignore_index=1)(z, torch.tensor([0, 1, 2, 3])),
                               reference_loss(z, torch.tensor([0, 1, 2, 3]), ignore_index=1, log_end=0.75))


@pytest.mark.parametrize("loss_fn", LOSSES)
@pytest.mark.parametrize("kwargs", [dict(), dict(label_smoothing=0.1, smoothing_convention="fairseq"),
                                    dict(label_smoothing=0.1, smoothing_convention="paper")])
def test_one_class_is_refused(loss_fn, kwargs):
    """V = 1: p = 1 whatever the logit, so the loss is a constant and nothing is learned (issue 24; with the fairseq
    convention and eps > 0 the target weights would not even sum to 1). Refused in every convention, soft targets too;
    sigmoid EL on one output is binary classification and stays allowed."""
    z, t = torch.randn(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"softmax EL needs at least 2 classes, got logits of 1 class\(es\): with one "
                                         r"class p = 1 whatever the logit"):
        loss_fn(z, t, **kwargs)
    with pytest.raises(ValueError, match=r"softmax EL needs at least 2 classes"):
        EF.soft_target_encouraging_loss(z, torch.ones_like(z))
    with pytest.raises(ValueError, match=r"softmax EL needs at least 2 classes"):
        EF.linear_encouraging_loss(torch.randn(5, 3), torch.randn(1, 3), t)
    assert EF.binary_encouraging_loss(z, torch.ones_like(z)).isfinite()


# --------------------------------------------------------------------------- issue 18, item 1: multi-label target shapes
@pytest.mark.parametrize("target", [torch.tensor([0, 1, 2]), torch.tensor([1, 1]), torch.tensor([[0], [1], [2], [1]]),
                                    torch.tensor([0.0, 1.0, 2.0, 1.0]), torch.ones(4, 2)])
def test_binary_loss_refuses_targets_of_another_shape(target):
    """Index targets must have one entry per row, dense targets the logits' shape: anything else (fewer rows, an
    (N, 1) column, a float index, another number of classes) names both forms instead of scoring silently."""
    from el_plugins.loss import BinaryEncouragingLoss

    with pytest.raises(ValueError, match=r"multi-label targets must be dense targets of the logits' shape \(4, 3\) .* "
                                         r"or class indices: an integer tensor of shape \(4,\)"):
        BinaryEncouragingLoss(reduction="none")(torch.randn(4, 3), target)


def test_binary_loss_takes_both_target_forms():
    from el_plugins.loss import BinaryEncouragingLoss

    z = torch.randn(4, 3)
    loss = BinaryEncouragingLoss(reduction="none")
    torch.testing.assert_close(loss(z, torch.tensor([0, 1, 2, 1])), loss(z, F.one_hot(torch.tensor([0, 1, 2, 1]), 3)))
    with pytest.raises(ValueError, match=r"target 3 is outside the 3 classes"):
        loss(z, torch.tensor([0, 1, 2, 3]))


# --------------------------------------------------------------------------- issue 24, item 4
@pytest.mark.parametrize("p,found", [(torch.tensor([0.3, 1.5]), "1.5"), (-0.2, "-0.2"), (float("nan"), "nan"),
                                     (torch.tensor([[0.1], [-1e-9]], dtype=torch.float64), "-1e-09")])
def test_bonus_refuses_values_that_are_not_probabilities(p, found):
    """b(p) takes probabilities: outside [0, 1] (it gave the clamp's value above 1 and NaN below 0) is refused."""
    with pytest.raises(ValueError, match=rf"p must be probabilities in \[0, 1\], got {found}$"):
        EF.bonus(p)


def test_bonus_takes_numbers_and_tensors():
    torch.testing.assert_close(EF.bonus(0.5), torch.tensor(0.5, dtype=torch.float64).log())
    torch.testing.assert_close(EF.bonus(torch.tensor([0.0, 1.0])), torch.tensor([0.0, -11.512925]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"p must be a real floating-point tensor of probabilities"):
        EF.bonus(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\] \(a number or a floating-point tensor\), "
                                         r"got 'x'"):
        EF.bonus("x")


@pytest.mark.parametrize("make", [lambda: EncouragingLoss(), lambda: BinaryEncouragingLoss(),
                                  lambda: LinearEncouragingLoss(4, 3),
                                  lambda: torch.nn.Sequential(torch.nn.Linear(3, 3), EncouragingLoss())])
def test_torch_jit_script_is_refused_with_what_to_use_instead(make):
    """TorchScript cannot compile the loss (Python checks, an autograd.Function): refused by name, before
    TorchScript's own error ('int' object has no attribute or method 'is_floating_point'), naming torch.compile."""
    with pytest.raises(RuntimeError, match=r"(Encouraging|BinaryEncouraging|LinearEncouraging)Loss cannot be compiled "
                                           r"by torch.jit.script: .* Use torch.compile"):
        torch.jit.script(make())


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_multi_label_targets_outside_zero_one_are_refused(bad):
    z, t = torch.randn(3, 4), torch.rand(3, 4)
    t[1, 2] = bad
    with pytest.raises(ValueError, match=r"multi-label targets must be values in \[0, 1\], got "):
        EF.binary_encouraging_loss(z, t)
