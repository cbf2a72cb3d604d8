"""The EL math (el_plugins.functional) against the spec, autograd and its closed-form gradient."""
import math

import pytest
import torch
import torch.nn.functional as F

from el_plugins import functional as EF
from el_plugins.core import smoothing_weights
from el_evidence.testing import spec_example as spec
from el_evidence.testing.spec_example import reference_loss, reference_loss_with_stats

spec_logits = spec.logits_and_targets


def smoothed_target_weight(k, y, V, eps, convention):
    """q_k of the spec for class k of a row with target y, V classes."""
    if convention == "paper":
        return (1 - eps) * float(k == y) + eps / V
    return (1 - eps) if k == y else eps / (V - 1)


def bonus_by_hand(p, log_end):
    """The spec's b(p) of one probability, in Python floats: log(max(1 - p, 1e-5)) up to log_end, its tangent after."""
    if p <= log_end:
        return math.log(max(1 - p, 1e-5))
    return (p - log_end) / (log_end - 1) + math.log(1 - log_end)


@pytest.mark.parametrize("convention,log_end,rho,expected", spec.SUM_TABLE)
def test_spec_worked_example(convention, log_end, rho, expected):
    z, t = spec_logits()
    out = reference_loss_with_stats(z, t, log_end=log_end, label_smoothing=spec.LABEL_SMOOTHING, bonus_weight=rho,
                                    ignore_index=spec.PADDING_INDEX, reduction="sum", smoothing_convention=convention)
    assert out.loss.item() == pytest.approx(expected, abs=1e-11)
    assert out.nll_loss.item() == pytest.approx(spec.NLL_LOSS_SUM, abs=1e-11)
    # the part of the loss EL adds: rho * sum over the counted rows and the classes of q_k b(p_k)
    V = z.size(1)
    bonus = sum(rho * smoothed_target_weight(k, y, V, spec.LABEL_SMOOTHING, convention) * bonus_by_hand(p_k, log_end)
                for row, y in zip(z.softmax(-1).tolist(), t.tolist()) if y != spec.PADDING_INDEX
                for k, p_k in enumerate(row))
    assert out.bonus.item() == pytest.approx(bonus, abs=1e-11)


def test_spec_timm_mean_example():
    z, t = spec_logits()
    loss = reference_loss(z, t, log_end=spec.TIMM_LOG_END, label_smoothing=spec.LABEL_SMOOTHING, reduction="mean")
    assert loss.item() == pytest.approx(spec.TIMM_MEAN_LOSS, abs=1e-11)


def dense_reference(z, t, log_end, eps, rho, convention, ignore_index=None):
    """Per-row loss written straight from the spec's formula, one class at a time."""
    V = z.size(1)
    p = z.softmax(-1)
    rows = []
    for i in range(z.size(0)):
        if ignore_index is not None and t[i] == ignore_index:
            rows.append(torch.zeros((), dtype=z.dtype))
            continue
        total = 0.0
        for k in range(V):
            q = smoothed_target_weight(k, t[i], V, eps, convention)
            pk = p[i, k]
            if pk <= log_end:
                b = torch.log(torch.clamp(1 - pk, min=1e-5))
            else:
                b = (pk - log_end) / (log_end - 1) + math.log(1 - log_end)
            total = total + q * (-torch.log(pk) + rho * b)
        rows.append(total)
    return torch.stack(rows)


@pytest.mark.parametrize("convention", EF.SMOOTHING_CONVENTIONS)
@pytest.mark.parametrize("log_end", [1.0, 0.75, 0.5])
def test_matches_dense_formula_per_row(convention, log_end):
    z, t = spec_logits()
    got = reference_loss(z, t, log_end=log_end, label_smoothing=0.1, bonus_weight=0.7, ignore_index=1,
                              reduction="none", smoothing_convention=convention)
    want = dense_reference(z, t, log_end, 0.1, 0.7, convention, ignore_index=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def closed_form_grad(z, t, log_end, eps, rho, convention):
    """dL/dz_j = (p_j - q_j) + g_j - p_j G, g_k = rho q_k p_k b'(p_k), G = sum_k g_k (the spec)."""
    V = z.size(1)
    p = z.softmax(-1)
    w_target, q_other = smoothing_weights(eps, V, convention)
    q = torch.full_like(p, q_other)
    q[torch.arange(z.size(0)), t] += w_target
    db = torch.where(1 - p > 1e-5, -1 / (1 - p), torch.zeros_like(p))
    if log_end < 1:
        db = torch.where(p > log_end, torch.full_like(p, -1 / (1 - log_end)), db)
    g = rho * q * p * db
    return (p - q) + g - p * g.sum(-1, keepdim=True)


@pytest.mark.parametrize("convention", EF.SMOOTHING_CONVENTIONS)
@pytest.mark.parametrize("log_end,eps", [(1.0, 0.0), (0.75, 0.1), (0.5, 0.2)])
def test_autograd_matches_closed_form_gradient(convention, log_end, eps):
    torch.manual_seed(1)
    z = (torch.randn(16, 9, dtype=torch.float64) * 2.5).requires_grad_()
    t = torch.randint(0, 9, (16,))
    reference_loss(z, t, log_end=log_end, label_smoothing=eps, reduction="sum",
                        smoothing_convention=convention).backward()
    torch.testing.assert_close(z.grad, closed_form_grad(z.detach(), t, log_end, eps, 1.0, convention),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("convention", EF.SMOOTHING_CONVENTIONS)
@pytest.mark.parametrize("log_end", [1.0, 0.75, 0.5])
def test_gradcheck_class_index(convention, log_end):
    torch.manual_seed(2)
    z = (torch.randn(7, 5, dtype=torch.float64) * 2).requires_grad_()
    t = torch.tensor([0, 4, 2, 1, 3, 1, 0])
    assert torch.autograd.gradcheck(
        lambda x: reference_loss(x, t, log_end=log_end, label_smoothing=0.1, ignore_index=1,
                                      reduction="none", smoothing_convention=convention), (z,))


def test_gradient_is_ce_gradient_scaled_per_row_without_smoothing():
    """eps = 0, rho = 1: w (p - onehot) with w = 1/(1 - p_y) on the log branch, 1 + p_y/(1 - LE) past LE."""
    z = torch.tensor([[1.0, 0.0, -1.0], [6.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 0])
    reference_loss(z, t, log_end=0.75, reduction="sum").backward()
    p = z.detach().softmax(-1)
    ce_grad = p - F.one_hot(t, 3)
    p_y = p[:, 0]
    assert p_y[0] < 0.75 < p_y[1]
    w = torch.stack([1 / (1 - p_y[0]), 1 + p_y[1] / 0.25])
    torch.testing.assert_close(z.grad, w[:, None] * ce_grad)


def test_bonus_values_and_continuity():
    assert EF.bonus(torch.tensor(0.5), 1.0).item() == pytest.approx(math.log(0.5))
    assert EF.bonus(torch.tensor(1.0), 1.0).item() == pytest.approx(math.log(1e-5))  # the clamp
    for le in (0.5, 0.75, 0.9):
        below, at, above = EF.bonus(torch.tensor([le - 1e-7, le, le + 1e-7], dtype=torch.float64), le)
        assert below.item() == pytest.approx(at.item(), abs=1e-6)
        assert above.item() == pytest.approx(at.item(), abs=1e-6)
        # tangent: slope -1/(1 - le) on both sides
        slope = (EF.bonus(torch.tensor(le + 1e-3, dtype=torch.float64), le) - at) / 1e-3
        assert slope.item() == pytest.approx(-1 / (1 - le), rel=1e-9)
        assert EF.bonus(torch.tensor(1.0, dtype=torch.float64), le).item() == pytest.approx(
            (1 - le) / (le - 1) + math.log(1 - le))


def test_bonus_weight_zero_is_label_smoothed_cross_entropy():
    z, t = spec_logits()
    got = reference_loss(z, t, label_smoothing=0.1, bonus_weight=0.0, reduction="mean")
    torch.testing.assert_close(got, F.cross_entropy(z, t, label_smoothing=0.1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_all_padding_gives_zero_not_nan(reduction):
    z = torch.randn(4, 7, requires_grad=True)
    t = torch.full((4,), 1)
    out = reference_loss_with_stats(z, t, label_smoothing=0.1, ignore_index=1, reduction=reduction)
    assert torch.all(out.loss == 0) and torch.all(out.target_prob == 0)
    out.loss.sum().backward()
    assert torch.all(z.grad == 0)


def test_empty_batch_gives_zero():
    z = torch.zeros(0, 7, requires_grad=True)
    loss = reference_loss(z, torch.zeros(0, dtype=torch.long), reduction="mean")
    assert loss.item() == 0.0


@pytest.mark.parametrize("kwargs,message", [
    (dict(log_end=0.0), r"log_end must be in \(0, 1\]"),
    (dict(log_end=1.5), r"log_end must be in \(0, 1\]"),
    (dict(log_end=float("nan")), r"log_end must be in \(0, 1\]"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    (dict(label_smoothing=-0.1), r"label_smoothing must be in \[0, 1\)"),
    (dict(bonus_weight=-1.0), r"bonus_weight must be a finite number >= 0"),
    (dict(bonus_weight=float("inf")), r"bonus_weight must be a finite number >= 0"),
    (dict(reduction="avg"), r"reduction must be one of 'none', 'sum', 'mean'"),
    (dict(smoothing_convention="timm"), r"smoothing_convention must be one of 'paper', 'fairseq'"),
])
def test_bad_options_raise_clear_errors(kwargs, message):
    z, t = spec_logits()
    with pytest.raises(ValueError, match=message):
        reference_loss(z, t, **kwargs)


@pytest.mark.parametrize("bad", [11, -1, 100])
def test_target_outside_vocabulary_is_an_error(bad):
    z, t = spec_logits()
    t[3] = bad
    with pytest.raises(ValueError, match=rf"target {bad} is outside the 11 classes: targets must be in \[0, 10\]"):
        reference_loss(z, t)


def test_ignore_index_outside_vocabulary_is_allowed():
    z, t = spec_logits()
    t[0] = -100
    loss = reference_loss(z, t, ignore_index=-100, reduction="none")
    assert loss[0] == 0 and torch.isfinite(loss).all()


def test_float_targets_are_rejected_for_index_loss():
    z, _ = spec_logits()
    with pytest.raises(ValueError, match="class-index targets must be an integer tensor"):
        reference_loss(z, torch.zeros(6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("log_end", [1.0, 0.75])
def test_extreme_logits_give_finite_loss_and_gradients(dtype, log_end):
    V = 50
    z = torch.zeros(4, V)
    z[0, 3] = 1e4          # p_y = 1 up to rounding
    z[1, :] = -1e4
    z[1, 7] = 1e4
    z[2, 5] = 16.2         # p_y within ~1e-7 of 1 in float32
    z[3, :] = torch.linspace(-1e4, 1e4, V)
    t = torch.tensor([3, 8, 5, 0])  # row 1 and 3: confidently wrong
    z = z.to(dtype).requires_grad_()
    for eps in (0.0, 0.1):
        out = reference_loss_with_stats(z, t, log_end=log_end, label_smoothing=eps, reduction="sum")
        assert out.loss.dtype == torch.float32
        assert torch.isfinite(out.loss), (dtype, eps, out.loss)
        (grad,) = torch.autograd.grad(out.loss, z)
        assert torch.isfinite(grad.float()).all(), (dtype, eps)


def test_low_precision_is_computed_in_float32():
    z, t = spec_logits()
    ref = reference_loss(z.float().bfloat16().float(), t, label_smoothing=0.1)
    got = reference_loss(z.float().bfloat16(), t, label_smoothing=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


# --------------------------------------------------------------------------- soft and multi-label targets
def test_soft_targets_match_formula_and_index_targets():
    z, t = spec_logits()
    one_hot = F.one_hot(t, 11).double()
    torch.testing.assert_close(
        EF.soft_target_encouraging_loss(z, one_hot, log_end=0.75, reduction="none"),
        reference_loss(z, t, log_end=0.75, reduction="none"), rtol=1e-12, atol=1e-12)
    # smoothed one-hot as a soft target = paper-convention smoothing
    smooth = one_hot * 0.9 + 0.1 / 11
    torch.testing.assert_close(
        EF.soft_target_encouraging_loss(z, smooth, log_end=0.75),
        reference_loss(z, t, log_end=0.75, label_smoothing=0.1), rtol=1e-12, atol=1e-12)
    # a genuine mixture (Mixup of two rows)
    mix = 0.7 * one_hot + 0.3 * one_hot.roll(1, 0)
    want = 0.7 * dense_reference(z, t, 0.75, 0.0, 1.0, "paper") + 0.3 * dense_reference(z, t.roll(1), 0.75, 0.0, 1.0, "paper")
    torch.testing.assert_close(EF.soft_target_encouraging_loss(z, mix, log_end=0.75, reduction="none"), want)


def test_gradcheck_soft_and_multilabel():
    torch.manual_seed(3)
    z = (torch.randn(5, 6, dtype=torch.float64) * 2).requires_grad_()
    soft = torch.rand(5, 6, dtype=torch.float64).softmax(-1)
    multi = torch.rand(5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: EF.soft_target_encouraging_loss(x, soft, log_end=0.75), (z,))
    assert torch.autograd.gradcheck(lambda x: EF.binary_encouraging_loss(x, multi, log_end=0.75), (z,))
    assert torch.autograd.gradcheck(lambda x: EF.binary_encouraging_loss(x, multi, log_end=1.0), (z,))


def test_multilabel_matches_formula():
    z = torch.tensor([[3.0, -1.0, 0.2], [-4.0, 2.5, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 1.0]], dtype=torch.float64)
    s = torch.sigmoid(z)

    def b(p, le=0.75):
        return torch.where(p > le, (p - le) / (le - 1) + math.log(1 - le), torch.log(torch.clamp(1 - p, min=1e-5)))

    want = t * (-torch.log(s) + b(s)) + (1 - t) * (-torch.log(1 - s) + b(1 - s))
    torch.testing.assert_close(EF.binary_encouraging_loss(z, t, log_end=0.75, reduction="none"), want)
    torch.testing.assert_close(EF.binary_encouraging_loss(z, t, bonus_weight=0.0),
                               F.binary_cross_entropy_with_logits(z, t))


def test_soft_and_multilabel_shape_errors():
    z = torch.randn(4, 5)
    with pytest.raises(ValueError, match="soft targets must have the shape of the logits"):
        EF.soft_target_encouraging_loss(z, torch.rand(4, 6))
    with pytest.raises(ValueError, match="multi-label targets must have the shape of the logits"):
        EF.binary_encouraging_loss(z, torch.rand(4))
