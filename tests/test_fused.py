"""The fused encouraging loss (el_plugins.ops) against the reference el_plugins.functional.

The Triton kernel is tested on CPU tensors under Triton's interpreter: TRITON_INTERPRET=1 has to be
set before triton is first imported, so test_triton_interpreted runs the tests marked ``interpreted``
below in a subprocess with it set (they are skipped in a normal run).
"""
import math

import pytest
import torch

from el_plugins import functional as EF
from el_evidence.testing import spec_example as spec
from el_evidence.testing.spec_example import fused_loss, fused_loss_with_stats, reference_loss, reference_loss_with_stats
from el_evidence.testing.triton_interpreter import INTERPRETED, SKIP_REASON, run_interpreted_tests
from test_cpu_kernel import cpu_backend, on_each_cpu_backend  # noqa: F401 (the fixture)


PAD = 1
interpreted = pytest.mark.skipif(not INTERPRETED, reason=SKIP_REASON)

# (rtol, atol) of loss and stats, and of the gradient relative to its largest entry
TOLERANCES = {
    torch.float64: ((1e-10, 1e-10), 1e-10),
    torch.float32: ((1e-5, 1e-5), 2e-5),
    torch.float16: ((1e-5, 1e-5), 2e-3),  # the loss is float32 either way; the gradient is float16
    torch.bfloat16: ((1e-5, 1e-5), 1e-2),  # ... or bfloat16
}


def make_logits(n=37, v=300, seed=0, scale=3.0):
    """Random logits and targets with every regime of b: rows confidently right (p_y ~ 1, past the
    clamp or on the tail), near log_end, confidently wrong, and padding rows."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=gen, dtype=torch.float64) * scale
    t = torch.randint(0, v, (n,), generator=gen)
    t[t == PAD] = 0
    z[0, t[0]] += 40.0                 # p_y = 1 to float precision
    z[1, t[1]] += 8.0                  # p_y close to 1
    z[2, (t[2] + 1) % v] += 30.0       # confidently wrong
    z[3, t[3]] = z[3].max() + 1.1      # p_y around 0.6-0.8
    t[4] = 5
    z[4, :2] = z[4].max() + 5.0        # two large entries, neither the target
    t[5::6] = PAD
    return z, t


def run(fn, z, t, dtype, grad_output=None, **kwargs):
    x = z.to(dtype).detach().requires_grad_()
    out = fn(x, t, **kwargs)
    out.loss.backward(grad_output)
    return out, x.grad


def assert_matches_reference(z, t, dtype=torch.float64, grad_output=None, **kwargs):
    ref, ref_grad = run(reference_loss_with_stats, z, t, dtype, grad_output, **kwargs)
    out, grad = run(fused_loss_with_stats, z, t, dtype, grad_output, **kwargs)
    (rtol, atol), grad_tol = TOLERANCES[dtype]
    for name in ref._fields:
        expected, actual = getattr(ref, name), getattr(out, name)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(1.0, expected.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")
    assert grad.dtype == ref_grad.dtype
    scale = ref_grad.abs().max().item() or 1.0
    torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=0, atol=grad_tol * scale)
    assert torch.isfinite(out.loss).all() and torch.isfinite(grad).all()
    return out, grad


# --------------------------------------------------------------------------- torch path
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("convention", ["paper", "fairseq"])
@pytest.mark.parametrize("log_end", [1.0, 0.75, 0.5])
@pytest.mark.parametrize("rho", [0.0, 0.7])
@on_each_cpu_backend
def test_matches_reference(dtype, convention, log_end, rho):
    z, t = make_logits()
    for reduction in ("sum", "mean"):
        assert_matches_reference(z, t, dtype, log_end=log_end, label_smoothing=0.1, bonus_weight=rho,
                                 ignore_index=PAD, reduction=reduction, smoothing_convention=convention)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("log_end", [1.0, 0.75, 0.3])
@on_each_cpu_backend
def test_matches_reference_default_weight_and_no_smoothing(dtype, log_end):
    z, t = make_logits(seed=1)
    assert_matches_reference(z, t, dtype, log_end=log_end, ignore_index=PAD)
    assert_matches_reference(z, t, dtype, log_end=log_end, label_smoothing=0.2, ignore_index=PAD)


@pytest.mark.parametrize("convention,log_end,rho,expected", spec.SUM_TABLE)
@on_each_cpu_backend
def test_spec_worked_example(convention, log_end, rho, expected):
    z, t = spec.logits_and_targets()
    out = fused_loss_with_stats(z, t, log_end=log_end, label_smoothing=spec.LABEL_SMOOTHING,
                                            bonus_weight=rho, ignore_index=spec.PADDING_INDEX, reduction="sum",
                                            smoothing_convention=convention)
    assert out.loss.item() == pytest.approx(expected, abs=1e-11)
    assert out.nll_loss.item() == pytest.approx(spec.NLL_LOSS_SUM, abs=1e-11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@on_each_cpu_backend
def test_reduction_none(dtype):
    z, t = make_logits(seed=2)
    grad_output = torch.rand(z.size(0), generator=torch.Generator().manual_seed(0)).to(EF.compute_dtype(dtype))
    out, grad = assert_matches_reference(z, t, dtype, grad_output=grad_output, log_end=0.75, label_smoothing=0.1,
                                         ignore_index=PAD, reduction="none")
    assert out.loss.shape == (z.size(0),)
    assert (grad[t == PAD] == 0).all() and (out.loss[t == PAD] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rho", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("convention", ["paper", "fairseq"])
@on_each_cpu_backend
def test_input_is_log_probs(dtype, rho, convention):
    z, t = make_logits(seed=3)
    kwargs = dict(log_end=0.75, label_smoothing=0.1, bonus_weight=rho, ignore_index=PAD,
                  smoothing_convention=convention, input_is_log_probs=True)
    # the gradient with respect to the log-probabilities themselves ...
    assert_matches_reference(torch.log_softmax(z, -1), t, dtype, **kwargs)
    # ... and through a log_softmax in front of the loss
    grads = []
    for fn in (reference_loss_with_stats, fused_loss_with_stats):
        x = z.to(dtype).requires_grad_()
        fn(torch.log_softmax(x, -1), t, **kwargs).loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=TOLERANCES[dtype][1] * grads[0].abs().max().item())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@on_each_cpu_backend
def test_all_padding_and_empty(reduction):
    z, t = make_logits(n=5)
    t[:] = PAD
    out, grad = assert_matches_reference(z, t, log_end=0.75, label_smoothing=0.1, ignore_index=PAD,
                                         reduction=reduction, grad_output=torch.ones(5, dtype=torch.float64)
                                         if reduction == "none" else None)
    assert (out.loss == 0).all() and (grad == 0).all() and not torch.isnan(out.loss).any()
    empty = fused_loss_with_stats(z[:0].requires_grad_(), t[:0], ignore_index=PAD, reduction=reduction)
    assert all(not torch.isnan(x).any() for x in empty)


@on_each_cpu_backend
def test_no_ignore_index_and_no_grad():
    z, t = make_logits(seed=4)
    t[t == PAD] = 2
    assert_matches_reference(z, t, label_smoothing=0.1)
    with torch.no_grad():
        out = fused_loss(z.requires_grad_(), t, label_smoothing=0.1)
    assert out.grad_fn is None
    assert out.item() == pytest.approx(reference_loss(z.detach(), t, label_smoothing=0.1).item(), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("log_end", [1.0, 0.75])
@on_each_cpu_backend
def test_extreme_logits(dtype, log_end):
    """|z| up to 1e4, and rows with 1 - p_y = 1e-7: finite, and equal to the reference."""
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(8, 50, generator=gen, dtype=torch.float64) * 3
    t = torch.randint(2, 50, (8,), generator=gen)
    rows = torch.arange(8)
    others = z.clone()
    others[rows, t] = float("-inf")
    z[rows, t] = torch.logsumexp(others, -1) + 16.118  # 1 - p_y = 1e-7
    z[0] *= 3000.0                                      # |z| ~ 1e4
    z[1, t[1]], z[1, 0] = 1e4, -1e4
    z[2, 0] = 1e4                                       # confidently wrong by 1e4
    for reduction in ("sum", "mean"):
        assert_matches_reference(z, t, dtype, log_end=log_end, label_smoothing=0.1, ignore_index=PAD,
                                 reduction=reduction)


@pytest.mark.parametrize("chunk_size", [1, 5, 36, 37, 100])
def test_chunk_boundaries(chunk_size):
    z, t = make_logits()
    ref, ref_grad = run(reference_loss_with_stats, z, t, torch.float64, log_end=0.75, label_smoothing=0.1,
                        ignore_index=PAD)
    out, grad = run(fused_loss_with_stats, z, t, torch.float64, log_end=0.75, label_smoothing=0.1,
                    ignore_index=PAD, chunk_size=chunk_size, backend="torch")
    for name in ref._fields:
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("log_end,log_probs", [(0.75, False), (1.0, False), (0.75, True)])
@on_each_cpu_backend
def test_gradcheck(reduction, log_end, log_probs):
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    if log_probs:
        z = torch.log_softmax(z, -1)
    t = torch.tensor([0, 1, 2, 3, 1, 6])
    z[0, 0] += 3.0  # a row on the tail (p_y > log_end)

    def loss(x):
        return fused_loss(x, t, log_end=log_end, label_smoothing=0.2, bonus_weight=0.7,
                                      ignore_index=PAD, reduction=reduction, input_is_log_probs=log_probs)

    assert torch.autograd.gradcheck(loss, (z.requires_grad_(),), eps=1e-6, atol=1e-7)


@on_each_cpu_backend
def test_gradient_buffer_handed_over_without_copy():
    z, t = make_logits()
    x = z.float().requires_grad_()
    loss = fused_loss(x, t, label_smoothing=0.1, ignore_index=PAD)
    (buffer,) = loss.grad_fn.saved_tensors
    loss.backward()
    assert x.grad.data_ptr() == buffer.data_ptr()


@on_each_cpu_backend
def test_second_backward_after_scaled_grad_output_raises():
    z, t = make_logits()
    x = z.requires_grad_()
    loss = fused_loss(x, t, label_smoothing=0.1, ignore_index=PAD, reduction="sum")
    (2.0 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward pass .* not supported.*implementation='reference'"):
        loss.backward()


@on_each_cpu_backend
def test_fused_limits_say_what_is_supported():
    """A third backward (after .grad accumulated into the handed-on buffer), gradcheck with reduction='none'
    (one backward per output with different grad_outputs), double backward: a message naming the reference,
    not torch's generic in-place error, a Jacobian mismatch or a silently missing second derivative."""
    z, t = make_logits()
    x = z.requires_grad_()
    loss = fused_loss(x, t, label_smoothing=0.1, ignore_index=PAD, reduction="sum")
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)  # x.grad += buffer: accumulated into the buffer itself
    with pytest.raises(RuntimeError, match="second backward pass .* not supported.*implementation='reference'"):
        loss.backward()

    small, small_t = make_logits(n=5, v=7)

    def per_row(inp):
        return fused_loss(inp, small_t, label_smoothing=0.1, ignore_index=PAD, reduction="none")

    with pytest.raises(RuntimeError, match="not supported.*implementation='reference'"):
        torch.autograd.gradcheck(per_row, (small.requires_grad_(),))
    x = z.detach().requires_grad_()
    with pytest.raises(RuntimeError, match="no second derivative .*implementation='reference'"):
        torch.autograd.grad(fused_loss(x, t, reduction="sum"), x, create_graph=True)


@on_each_cpu_backend
def test_stats_carry_no_gradient():
    z, t = make_logits()
    out = fused_loss_with_stats(z.requires_grad_(), t, label_smoothing=0.1, ignore_index=PAD)
    assert out.loss.requires_grad
    assert not any(x.requires_grad for x in out[1:])


@pytest.mark.parametrize("kwargs,input_shape,target", [
    (dict(log_end=0.0), (4, 5), [0, 1, 2, 3]),
    (dict(log_end=1.5), (4, 5), [0, 1, 2, 3]),
    (dict(label_smoothing=1.0), (4, 5), [0, 1, 2, 3]),
    (dict(bonus_weight=-1.0), (4, 5), [0, 1, 2, 3]),
    (dict(bonus_weight=float("inf")), (4, 5), [0, 1, 2, 3]),
    (dict(reduction="avg"), (4, 5), [0, 1, 2, 3]),
    (dict(smoothing_convention="timm"), (4, 5), [0, 1, 2, 3]),
    (dict(), (4, 5, 1), [0, 1, 2, 3]),
    (dict(), (4, 5), [0, 1, 2]),
    (dict(), (4, 5), [0, 1, 2, 5]),
    (dict(), (4, 5), [0, -1, 2, 3]),
    (dict(ignore_index=-100), (4, 5), [0, -100, 2, 7]),
    (dict(), (4, 5), [0.0, 1.0, 2.0, 3.0]),
])
def test_bad_input_errors_match_reference(kwargs, input_shape, target):
    z, t = torch.randn(*input_shape), torch.tensor(target)
    with pytest.raises(ValueError) as ref_error:
        reference_loss_with_stats(z, t, **kwargs)
    with pytest.raises(ValueError) as fused_error:
        fused_loss_with_stats(z, t, **kwargs)
    assert str(fused_error.value) == str(ref_error.value)


def test_bad_options():
    z, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    bad = [dict(chunk_size=0), dict(backend="numba"), dict(block_size=1000), dict(backend="triton", block_size=8)]
    if not INTERPRETED:
        bad.append(dict(backend="triton"))  # CPU tensors need the interpreter
    for kwargs in bad:
        with pytest.raises(ValueError):
            fused_loss(z, t, **kwargs)


def logits_near_the_clamp(seed, n=256, v=50, wrong_class=False):
    """Rows whose largest class (the target, or a wrong class) has 1 - p within a factor 1.2 of the bonus's
    1e-5 clamp, where b'(p) jumps from -1e5 to 0 and float32 rounding of 1 - p decides the branch."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=gen, dtype=torch.float64)
    target = torch.randint(0, v, (n,), generator=gen)
    col = (target + 1) % v if wrong_class else target
    gap = EF.BONUS_CLAMP * torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.log(1.2))
    others = z.clone()
    others[torch.arange(n), col] = -math.inf
    z[torch.arange(n), col] = torch.logsumexp(others, -1) + torch.log((1 - gap) / gap)
    return z.float(), target


@pytest.mark.parametrize("wrong_class", [False, True])
@pytest.mark.parametrize("seed", range(4))
@on_each_cpu_backend
def test_float32_gradient_near_the_clamp_at_least_as_accurate_as_reference(seed, wrong_class):
    x, t = logits_near_the_clamp(seed, wrong_class=wrong_class)
    kwargs = dict(log_end=1.0, label_smoothing=0.1, reduction="sum")

    def grad(fn, inp):
        inp = inp.detach().requires_grad_()
        fn(inp, t, **kwargs).backward()
        return inp.grad.double()

    truth = grad(reference_loss, x.double())
    scale = truth.abs().max()
    reference_error = ((grad(reference_loss, x) - truth).abs().max() / scale).item()
    fused_error = ((grad(fused_loss, x) - truth).abs().max() / scale).item()
    assert fused_error <= reference_error and fused_error < 1e-3, (fused_error, reference_error)


# --------------------------------------------------------------------------- Triton
TRITON_CASES = [
    # dtype, V, block_size, kwargs
    (torch.float32, 3000, 1024, dict(log_end=0.75, label_smoothing=0.1)),  # rows longer than one block
    (torch.float32, 3000, None, dict(log_end=1.0, label_smoothing=0.1, smoothing_convention="fairseq")),
    (torch.float32, 300, 128, dict(log_end=0.5, label_smoothing=0.1, bonus_weight=0.7, reduction="sum")),
    (torch.float32, 300, 64, dict(log_end=0.75, label_smoothing=0.0)),
    (torch.float32, 300, 64, dict(log_end=0.75, label_smoothing=0.1, bonus_weight=0.0, reduction="sum")),
    (torch.float32, 300, 128, dict(log_end=0.3, label_smoothing=0.2, input_is_log_probs=True)),
    (torch.float32, 300, 128, dict(log_end=0.75, label_smoothing=0.1, reduction="none")),
    (torch.bfloat16, 3000, 1024, dict(log_end=0.75, label_smoothing=0.1)),
    (torch.float16, 300, 128, dict(log_end=0.75, label_smoothing=0.1, smoothing_convention="fairseq")),
    # the bonus family (issue 25): every member, a start, a bonus smoothing of its own
    (torch.float32, 3000, 1024, dict(bonus="power", bonus_gamma=2, label_smoothing=0.1)),
    (torch.float32, 300, 128, dict(bonus="power", bonus_gamma=3, bonus_start=0.4, label_smoothing=0.1,
                                   reduction="sum")),
    (torch.float32, 300, 128, dict(bonus="cosine", label_smoothing=0.1, bonus_smoothing=0.0)),
    (torch.float32, 300, 128, dict(bonus="cosine", bonus_smoothing=0.2, input_is_log_probs=True)),
    (torch.float32, 300, 64, dict(bonus="log", log_end=1.0, bonus_start=0.5, label_smoothing=0.1,
                                  smoothing_convention="fairseq")),
    (torch.bfloat16, 300, 128, dict(bonus="cosine", label_smoothing=0.1, reduction="none")),
]


def _check_triton(device, dtype, v, block_size, kwargs):
    z, t = make_logits(v=v, seed=7)
    z, t = z.to(device), t.to(device)
    if kwargs.get("input_is_log_probs"):
        z = torch.log_softmax(z, -1)
    grad_output = torch.rand(z.size(0), device=device) if kwargs.get("reduction") == "none" else None
    ref, ref_grad = run(reference_loss_with_stats, z, t, dtype, grad_output, ignore_index=PAD, **kwargs)
    out, grad = run(fused_loss_with_stats, z, t, dtype, grad_output, ignore_index=PAD,
                    backend="triton", block_size=block_size, **kwargs)
    for name in ref._fields:
        expected = getattr(ref, name)
        torch.testing.assert_close(getattr(out, name), expected, rtol=2e-5,
                                   atol=2e-5 * max(1.0, expected.abs().max().item()), msg=lambda m: f"{name}: {m}")
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=0, atol=tol * ref_grad.abs().max().item())


@interpreted
@pytest.mark.parametrize("dtype,v,block_size,kwargs", TRITON_CASES)
def test_interpreted_triton_kernel(dtype, v, block_size, kwargs):
    _check_triton("cpu", dtype, v, block_size, kwargs)


@interpreted
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_interpreted_triton_all_padding_and_extreme_logits(reduction):
    z, t = make_logits(n=6, v=200)
    z[:, 0] = 1e4
    z[0, t[0]] = 2e4
    for targets in (t, torch.full_like(t, PAD)):
        x = z.float().requires_grad_()
        out = fused_loss_with_stats(x, targets, label_smoothing=0.1, ignore_index=PAD,
                                                reduction=reduction, backend="triton", block_size=64)
        out.loss.backward()
        assert all(torch.isfinite(s).all() for s in out) and torch.isfinite(x.grad).all()
    assert out.loss.item() == 0 and (x.grad == 0).all()


HOST_SYNCS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "nonzero", "numpy")


def count_host_syncs(monkeypatch, fn):
    """Calls of the tensor methods that make the host wait for the device, during fn() (forward and backward)."""
    calls = []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return calls


@interpreted
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_interpreted_triton_path_never_waits_for_the_device(monkeypatch, reduction):
    """The CUDA path (the Triton backend) reads nothing back to the host: no per-step stall, and no graph
    break under torch.compile. The torch backend on a CPU does (its target check names the bad value)."""
    z, t = make_logits(n=8, v=200)

    def step(backend):
        x = z.float().requires_grad_()
        out = fused_loss_with_stats(x, t, label_smoothing=0.1, ignore_index=PAD, reduction=reduction,
                                                backend=backend)
        (out.loss * 128.0).backward()

    assert count_host_syncs(monkeypatch, lambda: step("triton")) == []
    assert count_host_syncs(monkeypatch, lambda: step("torch"))  # the counter sees host reads where there are some


@interpreted
def test_interpreted_triton_bad_target_is_an_asynchronous_assertion():
    z, t = make_logits(n=8, v=200)
    t[3] = 200
    with pytest.raises(RuntimeError, match=r"a target is outside the 200 classes: targets must be in \[0, 199\] "
                                           r"or equal ignore_index=1"):
        fused_loss(z.float(), t, ignore_index=PAD, backend="triton")


@interpreted
@pytest.mark.parametrize("wrong_class", [False, True])
def test_interpreted_triton_gradient_near_the_clamp(wrong_class):
    x, t = logits_near_the_clamp(0, n=64, wrong_class=wrong_class)
    kwargs = dict(log_end=1.0, label_smoothing=0.1, reduction="sum")

    def grad(fn, inp, **extra):
        inp = inp.detach().requires_grad_()
        fn(inp, t, **kwargs, **extra).backward()
        return inp.grad.double()

    truth = grad(reference_loss, x.double())
    scale = truth.abs().max()
    reference_error = ((grad(reference_loss, x) - truth).abs().max() / scale).item()
    triton_error = ((grad(fused_loss, x, backend="triton") - truth).abs().max() / scale).item()
    assert triton_error <= reference_error, (triton_error, reference_error)
    # the target near the clamp is exact; a confidently wrong class near it is as (im)precise as the reference
    assert wrong_class or triton_error < 1e-3, triton_error


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpreted_triton_mixed_precision(dtype):
    from el_evidence.testing.mixed_precision import precision, scaled_gradient, trained_like_logits

    z, target = trained_like_logits(96, 1000)
    x, kwargs, scale = z.to(dtype), dict(reduction="mean", log_end=0.75, label_smoothing=0.1), 65536.0
    truth = scaled_gradient(reference_loss, x.double(), target, scale, **kwargs)
    autograd_flushed, autograd_p99 = precision(scaled_gradient(reference_loss, x, target, scale, **kwargs), truth, dtype)
    fused_flushed, fused_p99 = precision(
        scaled_gradient(fused_loss, x, target, scale, backend="triton", **kwargs), truth, dtype)
    assert int((fused_flushed & ~autograd_flushed).sum()) == 0
    assert fused_p99 <= autograd_p99 * 1.05, (fused_p99, autograd_p99)


@interpreted
def test_interpreted_triton_one_class_is_refused():
    """V = 1 (issue 24) is refused on the Triton path too, before the kernel runs."""
    z, t = torch.randn(5, 1), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"softmax EL needs at least 2 classes"):
        fused_loss(z, t, label_smoothing=0.1, backend="triton")


def check_ignored_rows_add_nothing(dtype=torch.float64, implementations=("fused", "reference"), **fused_kwargs):
    """NaN and inf in the logits of ignored rows: the loss, every logged value and the gradient equal those with
    finite logits there; the ignored rows' gradient is 0 (torch's own cross_entropy gives them NaN)."""
    z, t = make_logits(n=40, v=200)
    ignored = (t == PAD).nonzero().squeeze(1)
    poisoned = z.clone()
    poisoned[ignored[0]] = float("nan")
    poisoned[ignored[1], 3] = float("inf")
    poisoned[ignored[2], :7] = -float("inf")
    for implementation in implementations:
        kwargs = dict(label_smoothing=0.1, ignore_index=PAD, reduction="sum", implementation=implementation,
                      **(fused_kwargs if implementation == "fused" else {}))
        (bad, bad_grad), (good, good_grad) = (run(EF.encouraging_loss_with_stats, logits, t, dtype, **kwargs)
                                              for logits in (poisoned, z))
        for name in bad._fields:
            torch.testing.assert_close(getattr(bad, name), getattr(good, name), rtol=0, atol=0)
        assert bad_grad.isfinite().all() and (bad_grad[ignored] == 0).all()
        torch.testing.assert_close(bad_grad, good_grad, rtol=0, atol=0)


@on_each_cpu_backend
def test_ignored_rows_add_nothing_whatever_they_hold():
    check_ignored_rows_add_nothing()


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interpreted_triton_ignored_rows_add_nothing_whatever_they_hold(dtype):
    check_ignored_rows_add_nothing(dtype, ("fused",), backend="triton", block_size=64)


@pytest.mark.e2e  # a subprocess under TRITON_INTERPRET=1, about 25 s
def test_triton_interpreted():
    """Runs the ``interpreted`` tests above in a subprocess with TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    run_interpreted_tests(__file__)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,v,block_size,kwargs", TRITON_CASES)
def test_triton_kernel_cuda(dtype, v, block_size, kwargs):
    pytest.importorskip("triton")
    _check_triton("cuda", dtype, v, block_size, kwargs)


def test_one_public_function_dispatches():
    """el_plugins.functional.encouraging_loss_with_stats is the one entry point; implementation= chooses."""
    z, t = make_logits()
    kinds = {}
    for implementation in EF.IMPLEMENTATIONS:
        x = z.float().requires_grad_()
        out = EF.encouraging_loss_with_stats(x, t, label_smoothing=0.1, ignore_index=PAD, implementation=implementation)
        kinds[implementation] = type(out.loss.grad_fn).__name__
    assert kinds["auto"] == kinds["fused"] == "_FusedEncouragingLossBackward"
    assert kinds["reference"] != kinds["fused"]
    with pytest.raises(ValueError, match="implementation must be one of 'auto', 'fused', 'reference', got 'triton'"):
        EF.encouraging_loss(z, t, implementation="triton")
