"""The losses under torch.compile and torch.func: implementation='auto' takes the reference there (traceable, with
the target check queued on the device instead of read on the host), so torch.compile(fullgraph=True), vmap and
torch.func.grad work; implementation='fused' says what it does not support, in its message."""
import pytest
import torch

from el_plugins import functional as EF
from el_evidence.testing.spec_example import reference_loss

PAD = 1
KWARGS = dict(log_end=0.75, label_smoothing=0.1, ignore_index=PAD, reduction="sum")


def logits_and_targets(n=12, v=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, v, generator=gen) * 3
    t = torch.randint(0, v, (n,), generator=gen)
    t[::4] = PAD
    return z, t


def loss_and_grad(fn, z, *args):
    z = z.detach().requires_grad_()
    loss = fn(z, *args)
    loss.backward()
    return loss.detach(), z.grad


@pytest.fixture
def fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_fullgraph_with_the_default_implementation(fresh_compiler):
    z, t = logits_and_targets()
    want = loss_and_grad(lambda x, y: reference_loss(x, y, **KWARGS), z, t)

    def step(x, y):
        return EF.encouraging_loss(x, y, **KWARGS)

    got = loss_and_grad(torch.compile(step, fullgraph=True), z, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bad = t.clone()
    bad[1] = 9
    with pytest.raises(RuntimeError, match=r"a target is outside the 9 classes: targets must be in \[0, 8\] or "
                                           r"equal ignore_index=1"):
        torch.compile(step, fullgraph=True)(z, bad)


@pytest.mark.slow
def test_compile_fullgraph_of_the_output_layer_fused_in(fresh_compiler):
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(12, 5, generator=gen), torch.randn(9, 5, generator=gen)
    _, t = logits_and_targets()

    def step(inp, weight, y):
        return EF.linear_encouraging_loss(inp, weight, y, **KWARGS)

    want = EF.linear_encouraging_loss(x, w, t, implementation="reference", **KWARGS)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # traced whole; no C++ compile needed
    torch.testing.assert_close(compiled(x, w, t), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_runs_the_fused_implementation_at_a_graph_break_and_fullgraph_says_why(fresh_compiler):
    z, t = logits_and_targets()

    def step(x, y):
        return EF.encouraging_loss(x, y, implementation="fused", **KWARGS)

    want = loss_and_grad(lambda x, y: reference_loss(x, y, **KWARGS), z, t)
    torch.testing.assert_close(loss_and_grad(torch.compile(step, backend="aot_eager"), z, t), want,
                               rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"implementation='fused' has data-dependent steps.*fullgraph=True\) needs "
                                        r"implementation='auto'"):
        torch.compile(step, fullgraph=True, backend="aot_eager")(z, t)


def test_torch_func_grad_and_vmap_with_the_default_implementation():
    z, t = logits_and_targets()
    want = loss_and_grad(lambda x, y: reference_loss(x, y, **KWARGS), z, t)[1]
    got = torch.func.grad(lambda x: EF.encouraging_loss(x, t, **KWARGS))(z)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)

    batch = torch.stack([z, z.flip(0)])
    targets = torch.stack([t, t.flip(0)])
    per_example = torch.func.vmap(lambda x, y: EF.encouraging_loss(x, y, **KWARGS))(batch, targets)
    torch.testing.assert_close(per_example, torch.stack([reference_loss(x, y, **KWARGS) for x, y in zip(batch, targets)]))
    grads = torch.func.vmap(torch.func.grad(lambda x, y: EF.encouraging_loss(x, y, **KWARGS)))(batch, targets)
    torch.testing.assert_close(grads[0], want, rtol=1e-6, atol=1e-7)

    bad = targets.clone()
    bad[1, 2] = 9
    with pytest.raises(ValueError, match=r"a target is outside the 9 classes"):
        torch.func.vmap(lambda x, y: EF.encouraging_loss(x, y, **KWARGS))(batch, bad)


def test_torch_func_with_the_linear_form_and_soft_targets():
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(12, 5, generator=gen), torch.randn(9, 5, generator=gen)
    _, t = logits_and_targets()
    got = torch.func.grad(lambda weight: EF.linear_encouraging_loss(x, weight, t, **KWARGS))(w)
    weight = w.clone().requires_grad_()
    EF.linear_encouraging_loss(x, weight, t, implementation="reference", **KWARGS).backward()
    torch.testing.assert_close(got, weight.grad, rtol=1e-6, atol=1e-7)
    soft = torch.softmax(torch.randn(2, 12, 9, generator=gen), -1)
    logits = torch.randn(2, 12, 9, generator=gen)
    per_example = torch.func.vmap(EF.soft_target_encouraging_loss)(logits, soft)
    torch.testing.assert_close(per_example, torch.stack([EF.soft_target_encouraging_loss(a, b)
                                                         for a, b in zip(logits, soft)]))


def test_fused_implementation_under_torch_func_says_what_to_use():
    z, t = logits_and_targets()
    for transform in (torch.func.grad, torch.func.vmap):
        with pytest.raises(ValueError, match=r"implementation='fused' computes its gradient by hand .* torch.func "
                                             r"transforms \(vmap, grad, jacrev, ...\) cannot see through: use "
                                             r"implementation='auto'"):
            transform(lambda x: EF.encouraging_loss(x, t, implementation="fused", **KWARGS))(
                z if transform is torch.func.grad else z.unsqueeze(0))
    x, w = torch.randn(12, 5), torch.randn(9, 5)
    with pytest.raises(ValueError, match=r"implementation='fused' computes its gradient by hand"):
        torch.func.grad(lambda inp: EF.linear_encouraging_loss(inp, w, t, implementation="fused", **KWARGS))(x)


def test_outside_transforms_auto_is_the_fused_op():
    z, t = logits_and_targets()
    loss = EF.encouraging_loss(z.requires_grad_(), t, **KWARGS)
    assert type(loss.grad_fn).__name__ == "_FusedEncouragingLossBackward"
    x, w = torch.randn(12, 5, requires_grad=True), torch.randn(9, 5)
    assert type(EF.linear_encouraging_loss(x, w, t).grad_fn).__name__ == "_FusedLinearEncouragingLossBackward"
