"""Logits like a partly trained classifier's, a loss-scaled gradient, and the precision measure with which
the tests compare the fused path's float16/bfloat16 gradient to autograd's against the float64 truth
(tests/test_mixed_precision.py, and the Triton interpreter run of tests/test_fused.py)."""
import torch


def trained_like_logits(rows, classes, seed=0):
    """Logits of a partly trained classifier: most rows confident in their target, some not, some wrong."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, classes, generator=gen, dtype=torch.float64) * 2
    target = torch.randint(2, classes, (rows,), generator=gen)
    boost = torch.rand(rows, generator=gen, dtype=torch.float64) * 16 - 2
    z[torch.arange(rows), target] += boost
    target[torch.rand(rows, generator=gen) < 0.05] = 1  # padding for the fairseq route
    return z, target


def scaled_gradient(loss_fn, x, target, scale, **kwargs):
    """The gradient of ``loss_fn(x, target, **kwargs) * scale`` with respect to x, as float64."""
    x = x.detach().requires_grad_()
    (loss_fn(x, target, **kwargs) * scale).backward()
    return x.grad.double()


def precision(grad, truth, dtype):
    """(entries autograd would keep that ``grad`` flushes to zero, p99 relative error) over the entries whose
    true value lies in the dtype's normal range."""
    normal = truth.abs() >= torch.finfo(dtype).tiny
    rel = ((grad - truth).abs() / truth.abs())[normal]
    return normal & (grad == 0), torch.quantile(rel.float()[torch.randperm(rel.numel())[:1 << 24]], 0.99).item()


def trained_like_features(rows, features, classes, seed=0):
    """(x, weight, target): float64 features (rows, features) and an output layer (classes, features) whose
    logits x @ weight.T are like :func:`trained_like_logits`' (the target's logit raised by -2 to 14)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, features, generator=gen, dtype=torch.float64) / features ** 0.5
    x = torch.randn(rows, features, generator=gen, dtype=torch.float64)
    target = torch.randint(2, classes, (rows,), generator=gen)
    boost = torch.rand(rows, generator=gen, dtype=torch.float64) * 16 - 2
    w_target = weight[target]
    x += (boost / w_target.pow(2).sum(-1)).unsqueeze(1) * w_target
    target[torch.rand(rows, generator=gen) < 0.05] = 1  # padding for the fairseq route
    return x, weight, target


def scaled_linear_gradients(loss_fn, x, weight, target, scale, **kwargs):
    """The gradients of ``loss_fn(x, weight, target, **kwargs) * scale`` with respect to x and weight, as float64."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    (loss_fn(x, weight, target, **kwargs) * scale).backward()
    return x.grad.double(), weight.grad.double()
