"""Issue 26: timm's recipes with ``loss_type='el'``: the BCE form (sigmoid EL with timm's target handling, the
"ResNet strikes back" options), the JSD form (AugMix) and the softmax form.

- float64: at bonus weight 0 each equals timm's own loss for the same arguments, loss and gradient, on class-index
  targets and on Mixup soft targets;
- at bonus weight 1 each equals an independent formula written here (sigmoid EL on the thresholded, smoothed
  targets; EL on the clean split plus the Jensen-Shannon term);
- the JSD form's clean split runs on the fused op, the BCE form on autograd (sigmoid EL has no fused op);
- float16/bfloat16 logits with a GradScaler-sized loss scale: gradients as precise as autograd's;
- what a form cannot honour is refused with a message naming the option.
(train.py with each recipe's flags: tests/test_timm.py.)"""
import math

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")
import timm.loss  # noqa: E402
from timm.data.mixup import mixup_target  # noqa: E402

from el_plugins import ops  # noqa: E402
from el_plugins.functional import binary_encouraging_loss  # noqa: E402
from el_plugins.loss import (BinaryEncouragingLoss, EncouragingLoss, JsdEncouragingLoss,  # noqa: E402
                             jensen_shannon_consistency)
from el_evidence.testing.mixed_precision import precision, trained_like_logits  # noqa: E402
from el_plugins.timm_plugin import loss_factory  # noqa: E402

C = 10
ROWS = 12
CLASS_WEIGHT = [0.25 * (k + 1) for k in range(C)]  # exact in float32, so timm's float32 buffers lose nothing
POS_WEIGHT = [1.0 + 0.5 * (k % 3) for k in range(C)]

# name: (EL's factory arguments, timm's own for the same recipe); every one also takes soft_targets=True
RECIPES = {
    "ce": (dict(smoothing=0.1), dict(loss_type="ce", smoothing=0.1)),
    "ce-no-smoothing": (dict(), dict(loss_type="ce")),
    "bce": (dict(el_binary=True, smoothing=0.1), dict(loss_type="bce", smoothing=0.1)),
    "bce-no-smoothing": (dict(el_binary=True), dict(loss_type="bce")),
    "bce-rsb": (dict(el_binary=True, smoothing=0.1, bce_target_thresh=0.2),
                dict(loss_type="bce", smoothing=0.1, bce_target_thresh=0.2)),
    "bce-sum": (dict(el_binary=True, smoothing=0.1, bce_sum=True), dict(loss_type="bce", smoothing=0.1, bce_sum=True)),
    "bce-pos-weight": (dict(el_binary=True, pos_weight=2.0), dict(loss_type="bce", pos_weight=2.0)),
    "bce-weights": (dict(el_binary=True, smoothing=0.1, class_weight=CLASS_WEIGHT, pos_weight=POS_WEIGHT),
                    dict(loss_type="bce", smoothing=0.1, class_weight=CLASS_WEIGHT, pos_weight=POS_WEIGHT)),
    "bce-all": (dict(el_binary=True, smoothing=0.1, bce_target_thresh=0.2, bce_sum=True, pos_weight=POS_WEIGHT,
                     class_weight=CLASS_WEIGHT),
                dict(loss_type="bce", smoothing=0.1, bce_target_thresh=0.2, bce_sum=True, pos_weight=POS_WEIGHT,
                     class_weight=CLASS_WEIGHT)),
    "multi-label": (dict(multi_label=True, smoothing=0.1), dict(loss_type="bce", multi_label=True, smoothing=0.1)),
    "multi-label-thresh": (dict(multi_label=True, smoothing=0.1, bce_target_thresh=0.5, pos_weight=3.0),
                           dict(loss_type="bce", multi_label=True, smoothing=0.1, bce_target_thresh=0.5,
                                pos_weight=3.0)),
    "jsd": (dict(jsd_splits=3, smoothing=0.1), dict(loss_type="jsd", jsd_splits=3, smoothing=0.1)),
    "jsd-2-no-smoothing": (dict(jsd_splits=2), dict(loss_type="jsd", jsd_splits=2)),
}


def _logits(rows, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, C, generator=gen, dtype=torch.float64) * 3


def _inputs(recipe, targets, rows=ROWS, seed=0):
    """(logits, targets) for a recipe: class indices or Mixup's soft targets (timm's mixup_target, smoothing 0.1);
    multi-label: dense 0/1 labels, or two of them mixed; the JSD form: the splits one after another, their class
    indices repeated."""
    el_kwargs = RECIPES[recipe][0]
    gen = torch.Generator().manual_seed(seed + 1)
    splits = el_kwargs.get("jsd_splits", 0)
    if el_kwargs.get("multi_label"):
        labels = (torch.rand(rows, C, generator=gen) < 0.3).double()
        if targets == "mixup":
            labels = 0.7 * labels + 0.3 * labels.flip(0)
        return _logits(rows, seed), labels
    y = torch.randint(0, C, (rows,), generator=gen)
    if splits:
        return _logits(rows * splits, seed), y.repeat(splits)
    if targets == "mixup":
        return _logits(rows, seed), mixup_target(y, C, lam=0.7, smoothing=0.1).double()
    return _logits(rows, seed), y


def _loss_and_grad(loss_fn, z, t):
    z = z.detach().clone().requires_grad_()
    loss = loss_fn(z, t)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def bind(fn, **bound):
    """fn(z, t) with keyword arguments bound (more given at the call override them)."""
    def call(z, t, **more):
        return fn(z, t, **{**bound, **more})
    return call


def _cases():
    for recipe, (el_kwargs, _) in RECIPES.items():
        for targets in ("hard", "mixup"):
            if "jsd_splits" in el_kwargs and targets == "mixup":
                continue  # the JSD form takes class indices (refused: test_factory_refuses)
            yield recipe, targets


# --------------------------------------------------------------------------- bonus weight 0: timm's own losses
@pytest.mark.parametrize("recipe,targets", list(_cases()))
def test_bonus_weight_0_equals_timms_own_loss(recipe, targets):
    el_kwargs, timm_kwargs = RECIPES[recipe]
    soft = dict(soft_targets=targets == "mixup")
    el = timm.loss.create_classification_loss(loss_type="el", el_bonus_weight=0.0, **el_kwargs, **soft).double()
    theirs = timm.loss.create_classification_loss(**timm_kwargs, **soft).double()
    assert type(el).__name__ == {"ce": "EncouragingLoss", "bce": "BinaryEncouragingLoss",
                                 "multi": "BinaryEncouragingLoss", "jsd": "JsdEncouragingLoss"}[recipe.split("-")[0]]
    z, t = _inputs(recipe, targets)
    loss, grad = _loss_and_grad(el, z, t)
    want, want_grad = _loss_and_grad(theirs, z, t)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- bonus weight 1: independent formulas
def log_bonus(p, log_end):
    """log(1 - p) up to log_end, its tangent beyond (the paper's conservative bonus), written out; log_end 1: the
    normal bonus log(max(1 - p, 1e-5))."""
    if log_end == 1.0:
        return torch.log(torch.clamp(1.0 - p, min=1e-5))
    below = torch.log1p(-torch.minimum(p, torch.full_like(p, log_end)))
    return torch.where(p <= log_end, below, (p - log_end) / (log_end - 1.0) + math.log(1.0 - log_end))


def power_bonus(p, gamma):
    return -p ** gamma


def independent_sigmoid_el(z, target, *, bonus, smoothing=0.0, thresh=None, class_weight=None, pos_weight=None,
                           sum_classes=False, smooth_dense=False, rho=1.0):
    """Sigmoid EL from its definition: targets one-hot and smoothed as timm's BinaryCrossEntropy makes them
    (eps / C off, 1 - eps + eps / C on; dense ones towards 1/2 when smooth_dense), thresholded; then per class
    a [t (-log s) + rho t b(s)] + (1 - t) (-log(1 - s)) + rho (1 - t) b(1 - s), weighted by w."""
    classes = z.shape[-1]
    if target.dim() == 1:
        t = torch.full_like(z, smoothing / classes)
        t[torch.arange(len(target)), target] = 1.0 - smoothing + smoothing / classes
    else:
        t = target * (1.0 - smoothing) + smoothing / 2 if smooth_dense else target.clone()
    if thresh is not None:
        t = (t > thresh).double()
    s, not_s = torch.sigmoid(z), torch.sigmoid(-z)
    a = 1.0 if pos_weight is None else torch.as_tensor(pos_weight, dtype=z.dtype)
    w = 1.0 if class_weight is None else torch.as_tensor(class_weight, dtype=z.dtype)
    positive = t * F.softplus(-z) + rho * t * bonus(s)
    negative = (1 - t) * F.softplus(z) + rho * (1 - t) * bonus(not_s)
    per_class = w * (a * positive + negative)
    return per_class.sum(-1).mean() if sum_classes else per_class.mean()


def independent_jsd_el(z, y, *, splits, bonus, smoothing=0.0, rho=1.0, alpha=12.0):
    """EL on the clean split (q = (1 - eps) onehot + eps / C for the nll and the bonus alike) plus alpha times the
    mean over the splits of KL(p_i || m), m the splits' mean prediction clamped to [1e-7, 1]."""
    rows, classes = z.shape[0] // splits, z.shape[1]
    parts = z.split(rows)
    q = torch.full((rows, classes), smoothing / classes, dtype=z.dtype)
    q[torch.arange(rows), y[:rows]] += 1.0 - smoothing
    p_clean = torch.softmax(parts[0], -1)
    el = (q * -torch.log(p_clean) + rho * q * bonus(p_clean)).sum(-1).mean()
    probs = [torch.softmax(part, -1) for part in parts]
    m = torch.stack(probs).mean(0).clamp(1e-7, 1.0)
    js = sum((p * (torch.log(p) - torch.log(m))).sum() / rows for p in probs) / splits
    return el + alpha * js


BONUSES = {"log-0.75": (dict(el_log_end=0.75), lambda p: log_bonus(p, 0.75)),
           "log-1": (dict(el_log_end=1.0), lambda p: log_bonus(p, 1.0)),
           "power-2": (dict(el_bonus="power", el_bonus_gamma=2.0), lambda p: power_bonus(p, 2.0))}


@pytest.mark.parametrize("bonus", sorted(BONUSES))
@pytest.mark.parametrize("recipe,targets", [c for c in _cases() if not c[0].startswith("ce")])
def test_bonus_weight_1_equals_an_independent_formula(recipe, targets, bonus):
    el_kwargs, _ = RECIPES[recipe]
    bonus_kwargs, b = BONUSES[bonus]
    soft = targets == "mixup"
    el = timm.loss.create_classification_loss(loss_type="el", soft_targets=soft, **bonus_kwargs, **el_kwargs).double()
    assert el.bonus_weight == 1.0
    z, t = _inputs(recipe, targets)
    if "jsd_splits" in el_kwargs:
        formula = bind(independent_jsd_el, splits=el_kwargs["jsd_splits"], bonus=b,
                                    smoothing=el_kwargs.get("smoothing", 0.0))
    else:
        formula = bind(
            independent_sigmoid_el, bonus=b, smoothing=0.0 if soft else el_kwargs.get("smoothing", 0.0),
            thresh=el_kwargs.get("bce_target_thresh"), class_weight=el_kwargs.get("class_weight"),
            pos_weight=el_kwargs.get("pos_weight"), sum_classes=el_kwargs.get("bce_sum", False),
            smooth_dense=el_kwargs.get("multi_label", False))
    loss, grad = _loss_and_grad(el, z, t)
    want, want_grad = _loss_and_grad(formula, z, t)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-8, atol=1e-12)
    # and the bonus matters: the loss is not the bonus-free one
    assert not torch.allclose(loss, _loss_and_grad(bind(formula, rho=0.0), z, t)[0])


def test_binary_encouraging_loss_weights_in_the_functional():
    """binary_encouraging_loss's weight and pos_weight: the BCE semantics (a per-element rescaling, a weight on
    the positive side), the positive side's bonus weighted with its nll; rho = 0 is torch's BCE with logits."""
    z, t = _logits(7), torch.rand(7, C, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w, a = torch.tensor(CLASS_WEIGHT, dtype=torch.float64), torch.tensor(POS_WEIGHT, dtype=torch.float64)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            binary_encouraging_loss(z, t, weight=w, pos_weight=a, bonus_weight=0.0, reduction=reduction),
            F.binary_cross_entropy_with_logits(z, t, w, pos_weight=a, reduction=reduction), rtol=1e-12, atol=1e-14)
    got = binary_encouraging_loss(z, t, weight=w, pos_weight=a, log_end=0.75, reduction="none")
    s = torch.sigmoid(z)
    want = w * (a * (t * F.softplus(-z) + t * log_bonus(s, 0.75)) + (1 - t) * F.softplus(z)
                + (1 - t) * log_bonus(1 - s, 0.75))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # a number, or a weight broadcast over the rows
    torch.testing.assert_close(binary_encouraging_loss(z, t, pos_weight=2.0, reduction="none"),
                               binary_encouraging_loss(z, t, pos_weight=torch.full((C,), 2.0), reduction="none"))


# --------------------------------------------------------------------------- the forms and their paths
@pytest.mark.parametrize("kwargs,cls,attributes", [
    (dict(el_binary=True, smoothing=0.1), BinaryEncouragingLoss, dict(smoothing=0.1, smooth_dense=False)),
    (dict(el_binary=True, smoothing=0.1, soft_targets=True, bce_target_thresh=0.2), BinaryEncouragingLoss,
     dict(smoothing=0.0, target_threshold=0.2)),
    (dict(multi_label=True, smoothing=0.1, bce_sum=True), BinaryEncouragingLoss,
     dict(smoothing=0.1, smooth_dense=True, sum_classes=True)),
    (dict(jsd_splits=3, smoothing=0.1), JsdEncouragingLoss, dict(num_splits=3, alpha=12.0, smoothing=0.1)),
    (dict(jsd_splits=4, el_log_end=0.5, el_bonus_weight=2.0), JsdEncouragingLoss,
     dict(num_splits=4, log_end=0.5, bonus_weight=2.0)),
    (dict(el_binary=False, smoothing=0.1), EncouragingLoss, dict(smoothing=0.1)),
])
def test_factory_forms(kwargs, cls, attributes):
    loss = timm.loss.create_classification_loss(loss_type="el", **kwargs)
    assert type(loss) is cls
    for name, value in attributes.items():
        assert getattr(loss, name) == value, name
    assert loss in set(loss_factory._made)  # told the epoch by el-timm-train, as the softmax form is


def test_the_jsd_forms_clean_split_runs_on_the_fused_op_and_the_bce_form_on_autograd(monkeypatch):
    calls = []
    fused_loss = ops.fused_loss

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return fused_loss(*args, **kwargs)

    monkeypatch.setattr(ops, "fused_loss", counting)
    z, y = _inputs("jsd", "hard")
    jsd = timm.loss.create_classification_loss(loss_type="el", jsd_splits=3, smoothing=0.1)
    assert jsd.implementation == "auto"
    loss, grad = _loss_and_grad(jsd, z, y)
    assert calls == [(ROWS, C)]  # the clean split only
    reference = JsdEncouragingLoss(3, smoothing=0.1, implementation="reference")
    want, want_grad = _loss_and_grad(reference, z, y)
    assert len(calls) == 1
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    bce = timm.loss.create_classification_loss(loss_type="el", el_binary=True, smoothing=0.1)
    _loss_and_grad(bce, *_inputs("bce", "hard"))
    assert len(calls) == 1  # sigmoid EL has no fused op


def test_jensen_shannon_term_is_augmix_consistency():
    """0 when the splits agree; the mean KL to the mixture otherwise (two splits: the Jensen-Shannon divergence)."""
    z = _logits(8)
    assert jensen_shannon_consistency(torch.cat([z, z, z]), 3).abs().item() < 1e-15
    a, b = z[:4], z[4:]
    p, q = torch.softmax(a, -1), torch.softmax(b, -1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / 4
    torch.testing.assert_close(jensen_shannon_consistency(z, 2), js, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- fp16/bf16 with a GradScaler's scale
MIXED_PRECISION = {
    # name: (EL module, the independent formula, which autograd computes on the logits cast to float32)
    "bce-rsb": (lambda: BinaryEncouragingLoss(smoothing=0.1, target_threshold=0.2, smooth_dense=False),
                bind(independent_sigmoid_el, bonus=lambda p: log_bonus(p, 0.75), smoothing=0.1,
                                  thresh=0.2)),
    "bce-weights-sum": (lambda: BinaryEncouragingLoss(smoothing=0.1, weight=CLASS_WEIGHT * 100, pos_weight=2.0,
                                                      sum_classes=True, smooth_dense=False),
                        bind(independent_sigmoid_el, bonus=lambda p: log_bonus(p, 0.75), smoothing=0.1,
                                          class_weight=CLASS_WEIGHT * 100, pos_weight=2.0, sum_classes=True)),
    "jsd": (lambda: JsdEncouragingLoss(3, smoothing=0.1),
            bind(independent_jsd_el, splits=3, bonus=lambda p: log_bonus(p, 0.75), smoothing=0.1)),
    "jsd-power-2-splits": (lambda: JsdEncouragingLoss(2, smoothing=0.1, bonus="power", bonus_gamma=2),
                           bind(independent_jsd_el, splits=2, bonus=lambda p: power_bonus(p, 2.0),
                                             smoothing=0.1)),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("form", sorted(MIXED_PRECISION))
def test_gradient_under_amp_as_precise_as_autograd(form, dtype):
    """timm's --amp: half-precision logits, the mean loss times a GradScaler scale (65536): the gradient of each
    new form, rounded to the logits' dtype, flushes nothing autograd keeps and is as precise as autograd's
    against the float64 truth."""
    rows, classes, scale = 384, 1000, 65536.0
    make, autograd_formula = MIXED_PRECISION[form]
    z, y = trained_like_logits(rows, classes)
    x = z.to(dtype)

    def gradient(loss_fn, logits):
        logits = logits.detach().requires_grad_()
        (loss_fn(logits, y) * scale).backward()
        assert logits.grad.dtype == logits.dtype
        return logits.grad.double()

    module = make()
    truth = gradient(module, x.double())
    ours = gradient(module, x)
    autograd = gradient(lambda logits, t: autograd_formula(logits.float(), t), x)
    autograd_flushed, autograd_p99 = precision(autograd, truth, dtype)
    our_flushed, our_p99 = precision(ours, truth, dtype)
    kept_by_autograd = ~autograd_flushed & (truth.abs() >= torch.finfo(dtype).tiny)
    assert int((our_flushed & kept_by_autograd).sum()) == 0
    assert our_p99 <= autograd_p99 * 1.05, (our_p99, autograd_p99)
    assert ours.abs().max() > 0
    print(form, dtype, f"p99 relative error: ours {our_p99:.3g}, autograd {autograd_p99:.3g}")


# --------------------------------------------------------------------------- what is refused
@pytest.mark.parametrize("kwargs,message", [
    (dict(jsd_splits=1), r"jsd_splits must be 0 \(no JSD\) or an integer >= 2 .* got 1"),
    (dict(jsd_splits=2.5), r"jsd_splits must be 0 \(no JSD\) or an integer >= 2"),
    (dict(jsd_splits=3, multi_label=True), r"jsd_splits=3 \(the JSD form of EL, softmax\) does not combine with "
                                           r"multi_label=True"),
    (dict(jsd_splits=3, el_binary=True), r"does not combine with el_binary=True \(sigmoid EL\)"),
    (dict(jsd_splits=3, soft_targets=True), r"jsd_splits=3 does not combine with soft_targets=True: the JSD form "
                                            r"scores the clean split against class indices"),
    (dict(jsd_splits=3, bce_target_thresh=0.2), r"bce_target_thresh applies to the BCE form of EL \(el_binary=True "
                                                r"or multi_label=True\), not to the JSD form"),
    (dict(bce_target_thresh=0.2), r"bce_target_thresh applies to the BCE form of EL only \(sigmoid EL, as timm's "
                                  r"'bce' loss\): pass el_binary=True \(el-timm-train: --loss el --bce-loss\)"),
    (dict(class_weight=[1.0] * 10), r"class_weight applies to the BCE form of EL only"),
    (dict(bce_sum=True, pos_weight=2.0), r"bce_sum, pos_weight apply to the BCE form of EL only"),
    (dict(el_binary=True, bce_target_thresh=1.5), r"bce_target_thresh must be a number in \[0, 1\] \(targets above "
                                                  r"it become 1, the others 0.* got 1.5"),
    (dict(el_binary=True, bce_target_thresh=-0.1), r"bce_target_thresh must be a number in \[0, 1\]"),
    (dict(el_binary=True, bce_target_thresh="0.2"), r"bce_target_thresh must be a number in \[0, 1\]"),
    (dict(el_binary=True, pos_weight=-1.0), r"pos_weight must be finite and >= 0 .* got -1.0"),
    (dict(el_binary=True, class_weight=[1.0, float("nan")]), r"weight must be finite and >= 0"),
    (dict(el_binary=True, class_weight="heavy"), r"weight must be None, a number or one number per class"),
    (dict(el_binary=True, bce_sum=1), r"bce_sum must be True or False, got 1"),
    (dict(el_binary="yes"), r"el_binary must be True \(sigmoid EL, the BCE form\), False or None, got 'yes'"),
    (dict(class_counts=[1, 2], num_samples=3), r"Class counts are only used by the db loss"),
])
def test_factory_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.loss.create_classification_loss(loss_type="el", **kwargs)


def test_el_binary_only_applies_to_el():
    with pytest.raises(ValueError, match=r"el_binary \(el-plugins' settings of the encouraging loss\) only apply to "
                                         r"loss_type='el'"):
        timm.loss.create_classification_loss(loss_type="bce", el_binary=True)


@pytest.mark.parametrize("make,call,message", [
    (lambda: JsdEncouragingLoss(3), lambda f: f(torch.randn(10, 4), torch.zeros(10, dtype=torch.long)),
     r"expected logits \(S B, C\) holding num_splits=3 equal splits, got shape \(10, 4\)"),
    (lambda: JsdEncouragingLoss(3), lambda f: f(torch.randn(9, 4), torch.softmax(torch.randn(9, 4), -1)),
     r"JsdEncouragingLoss takes class-index targets .* Mixup/CutMix soft targets do not apply"),
    (lambda: JsdEncouragingLoss(3), lambda f: f(torch.randn(9, 4), torch.zeros(4, dtype=torch.long)),
     r"expected class-index targets of shape \(9,\) \(every split's\) or \(3,\) \(the clean split's\)"),
    (lambda: JsdEncouragingLoss(1), None, r"num_splits must be an integer >= 2"),
    (lambda: JsdEncouragingLoss(3, alpha=-1), None, r"alpha must be a finite number >= 0"),
    (lambda: BinaryEncouragingLoss(sum_classes="yes"), None, r"sum_classes must be True or False"),
    (lambda: BinaryEncouragingLoss(weight=[1.0, 2.0, 3.0]),
     lambda f: f(torch.randn(5, 4), torch.zeros(5, dtype=torch.long)),
     r"weight must broadcast to the logits' shape \(5, 4\) .* got shape \(3,\)"),
    (lambda: BinaryEncouragingLoss(), lambda f: binary_encouraging_loss(torch.randn(5, 4), torch.rand(5, 4),
                                                                        pos_weight=torch.tensor([1.0, -2, 1, 1])),
     r"pos_weight must be finite and >= 0 .* got -2.0"),
])
def test_modules_refuse(make, call, message):
    with pytest.raises(ValueError, match=message):
        module = make()
        call(module)


def test_jsd_takes_the_clean_splits_targets_alone_too():
    z, y = _inputs("jsd", "hard")
    loss = JsdEncouragingLoss(3, smoothing=0.1)
    torch.testing.assert_close(loss(z, y), loss(z, y[:ROWS]), rtol=0, atol=0)
