"""The output layer fused into EL (el_plugins.functional.linear_encouraging_loss, el_plugins.ops) against the
reference (F.linear, then the reference loss), against torch's F.linear_cross_entropy, in float16/bfloat16
with a loss scale, and the Triton path under Triton's interpreter (test_triton_interpreted)."""
import functools

import pytest
import torch
import torch.nn.functional as F

from el_plugins import functional as EF
from el_plugins.core import reduce_rows
from el_plugins.loss import LinearEncouragingLoss
from el_plugins.ops.common import NO_DOUBLE_BACKWARD, SINGLE_BACKWARD_ONLY
from el_evidence.testing.mixed_precision import precision, scaled_linear_gradients, trained_like_features
from el_evidence.testing.triton_interpreter import INTERPRETED, SKIP_REASON, run_interpreted_tests
from test_cpu_kernel import cpu_backend, on_each_cpu_backend  # noqa: F401 (the fixture)

PAD = 1
interpreted = pytest.mark.skipif(not INTERPRETED, reason=SKIP_REASON)
reference = functools.partial(EF.linear_encouraging_loss_with_stats, implementation="reference")
fused = functools.partial(EF.linear_encouraging_loss_with_stats, implementation="fused")


def make_features(n=203, d=50, v=1000, seed=0, bias=False):
    """float64 features, output layer and targets with every regime of b: rows confidently right (p_y ~ 1,
    past the clamp or on the tail), near log_end, confidently wrong, and padding rows."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = torch.randn(v, d, generator=gen, dtype=torch.float64) * 0.4
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    t = torch.randint(0, v, (n,), generator=gen)
    t[t == PAD] = 0

    def raise_logit(row, by, wrong=False):  # the logit of the row's target (or of the next class) goes up by ``by``
        if row < n:
            cls = (t[row] + 1) % v if wrong else t[row]
            x[row] += by * w[cls] / w[cls].pow(2).sum()
    raise_logit(0, 40.0)               # p_y = 1 to float precision
    raise_logit(1, 8.0)                # p_y close to 1
    raise_logit(2, 30.0, wrong=True)   # confidently wrong
    raise_logit(3, 5.0)
    t[5::6] = PAD
    return x, w, b, t


def run(fn, x, w, b, t, dtype=torch.float64, grad_output=None, **kwargs):
    """fn's output and the gradients of fresh leaves made of x, w, b (copies in ``dtype``), after backward."""
    leaves = [None if a is None else a.detach().to(dtype, copy=True).requires_grad_() for a in (x, w, b)]
    out = fn(leaves[0], leaves[1], t, linear_bias=leaves[2], **kwargs)
    out.loss.backward(grad_output)
    return out, [None if leaf is None else leaf.grad for leaf in leaves]


def assert_outputs_close(out, ref, rtol, atol):
    for name in ref._fields:
        expected, actual = getattr(ref, name), getattr(out, name)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(1.0, expected.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


def assert_gradients_close(grads, ref_grads, tol):
    for name, grad, ref_grad in zip(("input", "weight", "bias"), grads, ref_grads):
        if ref_grad is None:
            assert grad is None, name
            continue
        assert grad.dtype == ref_grad.dtype, name
        scale = ref_grad.abs().max().item() or 1.0
        torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=0, atol=tol * scale,
                                   msg=lambda m: f"grad of {name}: {m}")


# --------------------------------------------------------------------------- the torch path, float64
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing,convention,log_end", [
    (0.1, "paper", 0.75), (0.1, "fairseq", 1.0), (0.0, "paper", 0.5), (0.0, "fairseq", 1.0), (0.2, "fairseq", 0.3)])
@on_each_cpu_backend
def test_float64_equals_reference_for_every_chunk_size(bias, reduction, label_smoothing, convention, log_end):
    x, w, b, t = make_features(bias=bias, seed=int(bias) + 2 * len(reduction))
    grad_output = torch.rand(x.size(0), dtype=torch.float64) if reduction == "none" else None
    kwargs = dict(log_end=log_end, label_smoothing=label_smoothing, ignore_index=PAD, reduction=reduction,
                  smoothing_convention=convention)
    ref, ref_grads = run(reference, x, w, b, t, grad_output=grad_output, **kwargs)
    for chunk_size in (None, 1, 7, x.size(0)):
        out, grads = run(fused, x, w, b, t, grad_output=grad_output, chunk_size=chunk_size, **kwargs)
        assert_outputs_close(out, ref, 1e-10, 1e-10)
        assert_gradients_close(grads, ref_grads, 1e-10)


@pytest.mark.parametrize("n,d,v", [(1, 50, 1000), (64, 50, 1000), (300, 8, 40), (37, 50, 3)])
@on_each_cpu_backend
def test_float64_equals_reference_at_other_shapes(n, d, v):
    """One row; V < d (one chunk holds every row); V = 3; no ignore_index."""
    x, w, b, t = make_features(n=n, d=d, v=v, seed=n, bias=True)
    kwargs = dict(log_end=0.75, label_smoothing=0.1, bonus_weight=0.7)
    ref, ref_grads = run(reference, x, w, b, t.clamp(0, v - 1), **kwargs)
    out, grads = run(fused, x, w, b, t.clamp(0, v - 1), **kwargs)
    assert_outputs_close(out, ref, 1e-10, 1e-10)
    assert_gradients_close(grads, ref_grads, 1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyOptions"),
                    reason="torch < 2.13 has no F.linear_cross_entropy to compare with")
@on_each_cpu_backend
def test_bonus_weight_zero_is_torchs_linear_cross_entropy(reduction, eps):
    """bonus_weight=0 with the paper's smoothing convention is torch's F.linear_cross_entropy(label_smoothing=eps),
    loss and gradients; without smoothing its chunked path (LinearCrossEntropyOptions()) too."""
    from torch.nn import LinearCrossEntropyOptions

    x, w, b, t = make_features(bias=True, seed=11)

    def torch_lce(x_, w_, t_, linear_bias, options=None):
        loss = F.linear_cross_entropy(x_, w_, t_, linear_bias=linear_bias, label_smoothing=eps, ignore_index=PAD,
                                      reduction=reduction, options=options)
        return EF.EncouragingLossOutput(loss, loss, loss, loss, loss)

    ours, our_grads = run(fused, x, w, b, t, bonus_weight=0.0, label_smoothing=eps, ignore_index=PAD,
                          reduction=reduction, smoothing_convention="paper")
    options = [None] + ([LinearCrossEntropyOptions()] if eps == 0 else [])
    for option in options:
        theirs, their_grads = run(functools.partial(torch_lce, options=option), x, w, b, t)
        torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-10, atol=1e-10)
        assert_gradients_close(our_grads, their_grads, 1e-10)


@on_each_cpu_backend
def test_correct_counts_the_rows_whose_largest_logit_is_the_target():
    x, w, b, t = make_features(seed=3)
    logits = x @ w.T
    keep = t != PAD
    want = ((logits.argmax(-1) == t) & keep).sum().item()
    for fn in (reference, fused):
        out = fn(x, w, t, ignore_index=PAD, reduction="sum")
        assert out.correct.item() == want
        assert fn(x, w, t, ignore_index=PAD, reduction="mean").correct.item() == pytest.approx(want / keep.sum())
        per_row = fn(x, w, t, ignore_index=PAD, reduction="none").correct
        assert per_row.tolist() == ((logits.argmax(-1) == t) & keep).double().tolist()
    assert 0 < want < keep.sum()


def test_backward_keeps_no_logits_sized_tensor():
    """What the graph saves for backward: the gradients of the input, the weight and the bias, nothing (N, V)."""
    x, w, b, t = make_features(bias=True)
    leaves = [x.float().requires_grad_(), w.float().requires_grad_(), b.float().requires_grad_()]
    out = fused(*leaves[:2], t, linear_bias=leaves[2], label_smoothing=0.1, ignore_index=PAD)
    saved = sorted(tuple(s.shape) for s in out.loss.grad_fn.saved_tensors if s is not None)
    assert saved == sorted([tuple(x.shape), tuple(w.shape), tuple(b.shape)])
    none = fused(*leaves[:2], t, linear_bias=leaves[2], label_smoothing=0.1, ignore_index=PAD, reduction="none")
    assert all(s is None or (x.size(0), w.size(0)) != tuple(s.shape) for s in none.loss.grad_fn.saved_tensors)


@on_each_cpu_backend
def test_only_the_gradients_asked_for():
    """A frozen output layer (weight without requires_grad) gets no gradient; the input's equals the reference's."""
    x, w, b, t = make_features(bias=True)
    grads = []
    for fn in (reference, fused):
        inp = x.clone().requires_grad_()
        fn(inp, w, t, linear_bias=b, label_smoothing=0.1, ignore_index=PAD).loss.backward()
        grads.append(inp.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        out = fused(x.requires_grad_(), w, t, label_smoothing=0.1, ignore_index=PAD)
    assert out.loss.grad_fn is None
    assert out.loss.item() == pytest.approx(reference(x.detach(), w, t, label_smoothing=0.1,
                                                      ignore_index=PAD).loss.item(), abs=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@on_each_cpu_backend
def test_all_padding_and_no_rows(reduction):
    x, w, b, t = make_features(n=6)
    t[:] = PAD
    grad_output = torch.ones(6, dtype=torch.float64) if reduction == "none" else None
    out, grads = run(fused, x, w, b, t, grad_output=grad_output, label_smoothing=0.1, ignore_index=PAD,
                     reduction=reduction)
    assert (out.loss == 0).all() and all((g == 0).all() for g in grads if g is not None)
    empty = fused(x[:0].requires_grad_(), w, t[:0], ignore_index=PAD, reduction=reduction)
    assert all(not torch.isnan(v).any() for v in empty)


@on_each_cpu_backend
def test_second_and_double_backward_say_what_is_supported():
    x, w, b, t = make_features()
    inp = x.requires_grad_()
    loss = fused(inp, w, t, label_smoothing=0.1, ignore_index=PAD, reduction="sum").loss
    (2.0 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError) as error:
        loss.backward()
    assert str(error.value) == SINGLE_BACKWARD_ONLY
    inp = x.detach().requires_grad_()
    with pytest.raises(RuntimeError) as error:
        torch.autograd.grad(fused(inp, w, t, reduction="sum").loss, inp, create_graph=True)
    assert str(error.value) == NO_DOUBLE_BACKWARD


@on_each_cpu_backend
def test_reduction_none_computes_again_in_backward_so_backward_may_repeat():
    x, w, b, t = make_features(bias=True)
    kwargs = dict(label_smoothing=0.1, ignore_index=PAD, reduction="none")
    inp = x.clone().requires_grad_()
    out = fused(inp, w, t, linear_bias=b, **kwargs)
    grad_output = torch.rand(x.size(0), dtype=torch.float64)
    ref_inp = x.clone().requires_grad_()
    reference(ref_inp, w, t, linear_bias=b, **kwargs).loss.backward(grad_output)
    for _ in range(2):
        inp.grad = None
        out.loss.backward(grad_output, retain_graph=True)
        torch.testing.assert_close(inp.grad, ref_inp.grad, rtol=1e-10, atol=1e-12)


def test_module_form():
    x, w, b, t = make_features(bias=True)
    module = LinearEncouragingLoss(x.size(1), w.size(0), bias=True, dtype=torch.float64, log_end=0.5, smoothing=0.1,
                                   ignore_index=PAD)
    with torch.no_grad():
        module.linear.weight.copy_(w)
        module.linear.bias.copy_(b)
    want = EF.encouraging_loss(F.linear(x, w, b), t, log_end=0.5, label_smoothing=0.1, ignore_index=PAD,
                               implementation="reference")
    torch.testing.assert_close(module(x, t), want, rtol=1e-10, atol=1e-12)
    module(x.requires_grad_(), t).backward()
    assert module.linear.weight.grad.shape == w.shape and module.linear.bias.grad is not None
    assert "in_features=50, num_classes=1000, bias=True, log_end=0.5" in repr(module)


def test_module_takes_leading_dimensions_as_f_linear_does():
    """Features (..., d) with targets (...): (B, T, d), and one unbatched row (d,) with a () target, give the loss
    of the flattened rows; reduction='none' keeps the targets' shape (issue 24)."""
    x, w, b, t = make_features(n=24, bias=True)
    module = LinearEncouragingLoss(x.size(1), w.size(0), bias=True, dtype=torch.float64, smoothing=0.1,
                                   ignore_index=PAD, reduction="none")
    with torch.no_grad():
        module.linear.weight.copy_(w)
        module.linear.bias.copy_(b)
    flat = module(x, t)
    assert flat.shape == (24,)
    torch.testing.assert_close(module(x.view(4, 6, -1), t.view(4, 6)), flat.view(4, 6), rtol=1e-12, atol=0)
    one = module(x[5], t[5])
    assert one.shape == () and torch.isclose(one, flat[5])
    module.reduction = "mean"
    torch.testing.assert_close(module(x.view(4, 6, -1), t.view(4, 6)), module(x, t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("x_shape,target,message", [
    ((5, 50), torch.rand(5, 1000).softmax(-1), r"LinearEncouragingLoss takes class-index targets .* soft targets "
                                               r"\(Mixup/CutMix\) need the logits, use EncouragingLoss\(\)"),
    ((5, 49), torch.zeros(5, dtype=torch.long), r"expected features x \(\.\.\., 50\) and class-index targets of "
                                                r"x's leading shape .* got x \(5, 49\) and target \(5,\)"),
    ((2, 3, 50), torch.zeros(6, dtype=torch.long), r"got x \(2, 3, 50\) and target \(6,\)"),
    ((50,), torch.zeros(1, dtype=torch.long), r"got x \(50,\) and target \(1,\)"),
])
def test_module_says_what_it_takes(x_shape, target, message):
    with pytest.raises(ValueError, match=message):
        LinearEncouragingLoss(50, 1000)(torch.randn(*x_shape), target)


# --------------------------------------------------------------------------- the arguments
@pytest.mark.parametrize("kwargs,shapes,target", [
    (dict(log_end=0.0), None, None),
    (dict(label_smoothing=1.0), None, None),
    (dict(bonus_weight=-1.0), None, None),
    (dict(reduction="avg"), None, None),
    (dict(smoothing_convention="timm"), None, None),
    (dict(ignore_index="pad"), None, None),
    (dict(ignore_index=1.5), None, None),
    (dict(), ((4, 6), (5, 7), None), None),          # in_features differ
    (dict(), ((4, 6), (5, 6), (4,)), None),          # bias of the wrong size
    (dict(), ((4, 6, 1), (5, 6), None), None),       # input not (N, d)
    (dict(), None, [0, 1, 2]),                       # fewer targets than rows
    (dict(), None, [0, 1, 2, 5]),                    # outside the 5 classes
    (dict(), None, [0.0, 1.0, 2.0, 3.0]),            # float targets
])
def test_bad_input_errors_match_the_reference(kwargs, shapes, target):
    (x_shape, w_shape, b_shape) = shapes or ((4, 6), (5, 6), None)
    x, w = torch.randn(*x_shape), torch.randn(*w_shape)
    b = None if b_shape is None else torch.randn(*b_shape)
    t = torch.tensor(target if target is not None else [0, 1, 2, 3])
    with pytest.raises(ValueError) as ref_error:
        reference(x, w, t, linear_bias=b, **kwargs)
    with pytest.raises(ValueError) as fused_error:
        fused(x, w, t, linear_bias=b, **kwargs)
    assert str(fused_error.value) == str(ref_error.value)


def test_dtype_and_tuning_errors_name_the_argument():
    x, w, t = torch.randn(4, 6), torch.randn(5, 6), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"linear_weight is torch.float64 but input torch.float32: F.linear takes one"):
        fused(x, w.double(), t)
    with pytest.raises(ValueError, match=r"input must be a real floating-point tensor of features .* got torch.int64"):
        fused(x.long(), w, t)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match=rf"chunk_size must be a positive integer \(rows per chunk\) .*got {bad!r}"):
            fused(x, w, t, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size tune.*implementation='reference' takes none"):
        reference(x, w, t, chunk_size=2)


# --------------------------------------------------------------------------- mixed precision
ROUTES = {
    # name: (rows, features, classes, loss kwargs, loss scale)
    "timm-amp": (384, 64, 1000, dict(reduction="mean", log_end=0.75, label_smoothing=0.1), 65536.0),
    "fairseq-fp16": (2048, 64, 8000, dict(reduction="sum", log_end=0.5, label_smoothing=0.1,
                                          smoothing_convention="fairseq", ignore_index=1), 128.0),
}


def reference_linear_loss(x, w, t, **kwargs):
    return EF.linear_encouraging_loss(x, w, t, implementation="reference", **kwargs)


def fused_linear_loss(x, w, t, **kwargs):
    return EF.linear_encouraging_loss(x, w, t, implementation="fused", **kwargs)


def check_mixed_precision(route, dtype, rows=None, **fused_kwargs):
    route_rows, features, classes, kwargs, scale = ROUTES[route]
    rows = rows or route_rows
    x64, w64, target = trained_like_features(rows, features, classes)
    x, w = x64.to(dtype), w64.to(dtype)
    truth = scaled_linear_gradients(reference_linear_loss, x.double(), w.double(), target, scale, **kwargs)
    autograd = scaled_linear_gradients(reference_linear_loss, x, w, target, scale, **kwargs)
    ours = scaled_linear_gradients(fused_linear_loss, x, w, target, scale, **kwargs, **fused_kwargs)
    for name, t_grad, a_grad, f_grad in zip(("input", "weight"), truth, autograd, ours):
        autograd_flushed, autograd_p99 = precision(a_grad, t_grad, dtype)
        fused_flushed, fused_p99 = precision(f_grad, t_grad, dtype)
        kept_by_autograd = autograd_flushed.logical_not() & (t_grad.abs() >= torch.finfo(dtype).tiny)
        assert int((fused_flushed & kept_by_autograd).sum()) == 0, name
        assert fused_p99 <= autograd_p99 * 1.05, (name, fused_p99, autograd_p99)
        assert f_grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("route", [pytest.param(r, marks=pytest.mark.slow) if ROUTES[r][0] * ROUTES[r][2] > 10**7 else r
                                   for r in sorted(ROUTES)])
@on_each_cpu_backend
def test_half_gradients_as_precise_as_autograd_on_the_unfused_computation(route, dtype):
    """float16/bfloat16 features and weight, the loss scaled as timm's GradScaler (mean, 65536) or fairseq's --fp16
    (sum, 128) do: the input's and the weight's gradients are as precise as autograd's on F.linear + the loss."""
    check_mixed_precision(route, dtype)


@on_each_cpu_backend
def test_half_gradients_reach_the_parameters_in_their_dtype():
    x, w, b, t = make_features(bias=True)
    out, grads = run(fused, x, w, b, t, dtype=torch.bfloat16, label_smoothing=0.1, ignore_index=PAD)
    assert out.loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3


# --------------------------------------------------------------------------- the Triton path, interpreted
def reference_with_logits_rounded_to(dtype):
    """The reference on float64 features whose logits carry F.linear's rounding in ``dtype`` (the fused op's
    logits are the product in the input's dtype), the gradients flowing through them in float64."""
    def loss(x, w, t, linear_bias=None, **kwargs):
        logits = F.linear(x, w, linear_bias)
        rounded = F.linear(*(None if a is None else a.to(dtype) for a in (x, w, linear_bias))).double()
        logits = logits + (rounded - logits).detach()
        out = EF.encouraging_loss_with_stats(logits, t, implementation="reference", **kwargs)
        keep = t.ne(kwargs["ignore_index"])
        correct = reduce_rows(((rounded.argmax(-1) == t) & keep).double(), kwargs["reduction"], keep.sum())
        return EF.LinearEncouragingLossOutput(*out, correct)
    return loss


def check_triton_against_float64(device, dtype, reduction, bias, n=40, v=300, **fused_kwargs):
    """The Triton path on ``dtype`` inputs against the float64 reference on the same (rounded) inputs and logits:
    the fused op rounds its logits as F.linear does in ``dtype``, computes the loss and dz in float32 from them,
    then rounds the gradients to ``dtype``."""
    x, w, b, t = (None if a is None else a.to(device) for a in make_features(n=n, v=v, bias=bias))
    x, w, b = (None if a is None else a.to(dtype).double() for a in (x, w, b))
    grad_output = torch.rand(n, device=device, dtype=torch.float64) if reduction == "none" else None
    kwargs = dict(log_end=0.75, label_smoothing=0.1, ignore_index=PAD, reduction=reduction)
    ref, ref_grads = run(reference_with_logits_rounded_to(dtype), x, w, b, t, torch.float64, grad_output, **kwargs)
    out, grads = run(fused, x, w, b, t, dtype, None if grad_output is None else grad_output.float(),
                     backend="triton", **fused_kwargs, **kwargs)
    for name in ref._fields:
        expected = getattr(ref, name)
        torch.testing.assert_close(getattr(out, name).double(), expected, rtol=2e-5,
                                   atol=2e-5 * max(1.0, expected.abs().max().item()), msg=lambda m: f"{name}: {m}")
    assert [g.dtype for g in grads if g is not None] == [dtype] * (3 if bias else 2)
    assert_gradients_close([None if g is None else g.double() for g in grads], ref_grads,
                           2e-5 if dtype == torch.float32 else 1e-2)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_interpreted_triton_linear(dtype, reduction, bias):
    check_triton_against_float64("cpu", dtype, reduction, bias, chunk_size=16, block_size=128)


@interpreted
def test_interpreted_triton_linear_mixed_precision():
    check_mixed_precision("timm-amp", torch.float16, rows=96, backend="triton")


@interpreted
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_interpreted_triton_linear_never_waits_for_the_device(monkeypatch, reduction):
    from test_fused import count_host_syncs

    x, w, b, t = make_features(n=40, v=300, bias=True)

    def step(backend):
        leaves = [x.float().requires_grad_(), w.float().requires_grad_(), b.float().requires_grad_()]
        out = fused(leaves[0], leaves[1], t, linear_bias=leaves[2], label_smoothing=0.1, ignore_index=PAD,
                    reduction=reduction, backend=backend, chunk_size=16)
        (out.loss * 128.0).backward()

    assert count_host_syncs(monkeypatch, lambda: step("triton")) == []
    assert count_host_syncs(monkeypatch, lambda: step("torch"))  # the counter sees host reads where there are some


# --------------------------------------------------------------------------- torch.autocast, ignored rows
@pytest.mark.parametrize("route", ["function", "module"])
@on_each_cpu_backend
def test_autocast_casts_as_f_linear_does(route):
    """Under bfloat16 autocast (timm's and fairseq's --amp) the fused output layer casts its inputs as autocast
    casts F.linear's: the loss equals encouraging_loss(F.linear(...)) and the reference under the same autocast,
    the products run in bfloat16, and the gradients reach the float32 leaves as precise as autograd's."""
    x64, w64, t = trained_like_features(256, 32, 1000)
    kwargs = dict(label_smoothing=0.1, ignore_index=PAD)

    def step(how, x, w):
        x, w = x.detach().requires_grad_(), torch.nn.Parameter(w.detach())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if how == "unfused":
                loss = EF.encouraging_loss(F.linear(x, w), t, **kwargs)
            elif route == "module":
                module = LinearEncouragingLoss(32, 1000, smoothing=0.1, ignore_index=PAD, implementation=how)
                module.linear.weight = w
                loss = module(x, t)
            else:
                loss = EF.linear_encouraging_loss(x, w, t, implementation=how, **kwargs)
        loss.backward()
        return loss, x.grad, w.grad

    x, w = x64.float(), w64.float()
    unfused, fused_step, reference_step = (step(how, x, w) for how in ("unfused", "fused", "reference"))
    assert fused_step[0].dtype == unfused[0].dtype == torch.float32
    torch.testing.assert_close(fused_step[0], unfused[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(reference_step[0], unfused[0], rtol=1e-6, atol=0)
    # the truth: float64 on the inputs autocast rounds, logits rounded as F.linear rounds them in bfloat16
    xr, wr = (a.to(torch.bfloat16).double().requires_grad_() for a in (x, w))
    logits = F.linear(xr, wr)
    logits = logits + (logits.to(torch.bfloat16).double() - logits).detach()
    EF.encouraging_loss(logits, t, implementation="reference", **kwargs).backward()
    for name, truth, ours, autograd in (("input", xr.grad, fused_step[1], unfused[1]),
                                        ("weight", wr.grad, fused_step[2], unfused[2])):
        assert ours.dtype == torch.float32
        _, ours_p99 = precision(ours.double(), truth, torch.bfloat16)
        _, autograd_p99 = precision(autograd.double(), truth, torch.bfloat16)
        assert ours_p99 <= autograd_p99 * 1.05, (name, ours_p99, autograd_p99)


def nan_and_inf_in_ignored_rows(dtype=torch.float64, bias=True):
    """Features, weight, bias and targets whose ignored rows hold NaN and inf, and the same with those rows finite."""
    x, w, b, t = make_features(n=60, v=300, bias=bias)
    ignored = (t == PAD).nonzero().squeeze(1)
    assert ignored.numel() >= 3
    poisoned = x.clone()
    poisoned[ignored[0]] = float("nan")
    poisoned[ignored[1], 0] = float("inf")
    poisoned[ignored[2], 1:] = -float("inf")
    return [None if a is None else a.to(dtype) for a in (poisoned, x, w, b)] + [t, ignored]


def check_ignored_rows_add_nothing(dtype=torch.float64, **fused_kwargs):
    poisoned, clean, w, b, t, ignored = nan_and_inf_in_ignored_rows(dtype)
    kwargs = dict(label_smoothing=0.1, ignore_index=PAD, reduction="sum")
    for loss_fn in (fused, reference) if not fused_kwargs else (fused,):
        results = []
        for x in (poisoned, clean):
            leaves = [a.detach().requires_grad_() for a in (x, w, b)]
            out = loss_fn(leaves[0], leaves[1], t, linear_bias=leaves[2], **kwargs,
                          **(fused_kwargs if loss_fn is fused else {}))
            out.loss.backward()
            results.append((out, [leaf.grad for leaf in leaves]))
        (bad_out, bad_grads), (good_out, good_grads) = results
        for name in bad_out._fields:
            torch.testing.assert_close(getattr(bad_out, name), getattr(good_out, name), rtol=0, atol=0)
        for bad, good in zip(bad_grads, good_grads):
            assert bad.isfinite().all()
            torch.testing.assert_close(bad, good, rtol=0, atol=0)
        assert (bad_grads[0][ignored] == 0).all()


@on_each_cpu_backend
def test_ignored_rows_add_nothing_whatever_they_hold():
    """NaN and inf in the features of ignored rows: the loss, every logged value and every gradient equal those
    with finite features there, in the fused op (torch path) and the reference; the ignored rows' gradient is 0."""
    check_ignored_rows_add_nothing()


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpreted_triton_ignored_rows_add_nothing_whatever_they_hold(dtype):
    """The same on the CUDA code path (the Triton backend keeps ignored rows in place, never asking the host for
    their count): NaN and inf there reach no gradient (0 * NaN in dz^T x would be NaN)."""
    check_ignored_rows_add_nothing(dtype, backend="triton", chunk_size=16, block_size=128)


@pytest.mark.e2e  # a subprocess under TRITON_INTERPRET=1, about 25 s
def test_triton_interpreted():
    """Runs the ``interpreted`` tests above in a subprocess with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    run_interpreted_tests(__file__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_linear_cuda(dtype, reduction):
    pytest.importorskip("triton")
    check_triton_against_float64("cuda", dtype, reduction, True, n=300, v=3000)


def test_default_chunk_rows_keeps_the_buffers_small_beside_the_logits():
    """Rows per chunk: the input's size in logits, at least MIN_CHUNK_ROWS (speed) unless the two (rows, V)
    buffers would then exceed MAX_BUFFER_FRACTION of the (N, V) logits: at 2048 x 512 x 128000 the 128-row
    floor took 384 MiB where fairseq's LS-CE takes 3005 (benchmarks/results-features-cpu.json as committed in
    2c01ec7)."""
    from el_plugins.ops.linear_encouraging_loss import MAX_BUFFER_FRACTION, default_chunk_rows

    assert default_chunk_rows(8192, 512, 10000) == 420 and default_chunk_rows(8192, 512, 32000) == 132
    assert default_chunk_rows(2048, 512, 128000) == 32
    for n, d, v in ((2048, 512, 128000), (4096, 1024, 256000), (512, 64, 50000), (64, 512, 128000)):
        rows = default_chunk_rows(n, d, v)
        assert 1 <= rows <= n
        assert 2 * rows * v <= MAX_BUFFER_FRACTION * n * v or rows * v <= 2 * (1 << 20)  # or the fewest elements
    assert default_chunk_rows(300, 50, 1000) == 300 and default_chunk_rows(1, 8, 4) == 1
