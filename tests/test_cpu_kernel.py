"""The cpp backend (el_plugins/ops/cpp_rows.py, cpp_source.py): the fused op's C++ row kernel for CPU tensors,
against the reference, the formulas of every member of the bonus family and the chunked torch path; its half-
precision conversions; its build, cache, log line and fallback. ``on_each_cpu_backend`` runs a test once per CPU
backend ('auto' made to pick it): test_fused.py, test_fused_linear.py and test_mixed_precision.py use it, so that
the chunked torch path keeps its coverage now that 'auto' takes the C++ kernel where it can be built."""
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from el_plugins import functional as EF
from el_plugins.ops import backends
from el_plugins.ops.backends import BACKENDS, ChunkBuffers, select_backend

PAD = 1
CPU_BACKENDS = ("cpp", "torch")


@pytest.fixture
def cpu_backend(request, monkeypatch):
    """The CPU backend named by the test's parameter, made the one 'auto' picks for CPU tensors."""
    name = request.param
    problem = BACKENDS[name].takes(torch.zeros(2, 3))
    if problem:
        pytest.skip(problem)
    monkeypatch.setattr(backends, "AUTO_ORDER", ("triton", name, "torch"))
    return name


def on_each_cpu_backend(test):
    """Run ``test`` once per CPU backend (the fixture cpu_backend picks it for backend='auto')."""
    test = pytest.mark.usefixtures("cpu_backend")(test)
    return pytest.mark.parametrize("cpu_backend", CPU_BACKENDS, indirect=True)(test)


def compiler_here():
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return any(shutil.which(name) for name in names)


needs_kernel = pytest.mark.skipif(BACKENDS["cpp"].takes(torch.zeros(2, 3)) is not None,
                                  reason="the C++ kernel is unavailable here")


def run_python(code, env=None, check=True):
    """Run ``code`` in a fresh interpreter (this checkout's el_plugins first); (stdout, stderr)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(EF.__file__)))
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=full_env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


LOGGED_STEP = """
import logging, json, torch
logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
from el_plugins import functional as EF
from el_plugins.ops.backends import select_backend
z = torch.randn(6, 50, dtype=torch.float64, requires_grad=True)
t = torch.tensor([0, 1, 2, 3, 4, 5])
for _ in range(2):
    loss = EF.encouraging_loss(z, t, label_smoothing=0.1, implementation="fused")
    loss.backward()
ref = EF.encouraging_loss(z.detach(), t, label_smoothing=0.1, implementation="reference")
print(json.dumps({"backend": select_backend("auto", z).name, "error": abs(loss.item() - ref.item())}))
"""


# --------------------------------------------------------------------------- build, cache, log, fallback
def test_the_kernel_is_built_where_there_is_a_compiler():
    """Where a C++ compiler is on PATH, the kernel builds and 'auto' takes it for CPU tensors (a broken build fails
    here instead of falling back to chunked torch unnoticed)."""
    if not compiler_here():
        pytest.skip("no C++ compiler here: the fallback is tested below")
    if os.environ.get("EL_PLUGINS_CPU_KERNEL", "").lower() in ("0", "off", "false", "no"):
        pytest.skip("EL_PLUGINS_CPU_KERNEL switches the kernel off")
    from el_plugins.ops.cpp_rows import unavailable_reason

    assert unavailable_reason() is None
    assert select_backend("auto", torch.zeros(2, 3)).name == "cpp"
    assert select_backend("auto", torch.zeros(2, 3, dtype=torch.bfloat16)).name == "cpp"


@pytest.mark.slow
@pytest.mark.e2e
def test_built_once_then_cached_and_logged_once_per_process(tmp_path):
    """Two processes that need the kernel at once in an empty cache folder: one builds it (the other waits for
    it under the lock), a third loads it; each logs once which path CPU tensors take."""
    if not compiler_here():
        pytest.skip("no C++ compiler here")
    env = {"EL_PLUGINS_CACHE_DIR": str(tmp_path), "EL_PLUGINS_CPU_KERNEL": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(EF.__file__)))
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), **env)
    procs = [subprocess.Popen([sys.executable, "-c", LOGGED_STEP], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=full_env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    outputs.append(run_python(LOGGED_STEP, env))
    hows = []
    for out, err in outputs:
        result = json.loads(out.strip().splitlines()[-1])
        assert result["backend"] == "cpp" and result["error"] < 1e-12
        lines = [line for line in err.splitlines() if line.startswith("LOG") and "fused encouraging loss" in line]
        assert len(lines) == 1, err
        assert "runs CPU tensors on its C++ kernel (backend 'cpp'" in lines[0]
        hows.append("built in" if "built in" in lines[0] else "cached")
    assert sorted(hows[:2]) == ["built in", "cached"] and hows[2] == "cached", hows
    assert len(list((tmp_path / "cpu-kernel").glob("*.so"))) == 1


@pytest.mark.e2e  # runs Python subprocesses
def test_switched_off_falls_back_to_chunked_torch_and_says_so():
    out, err = run_python(LOGGED_STEP, {"EL_PLUGINS_CPU_KERNEL": "0"})
    assert json.loads(out.strip().splitlines()[-1])["backend"] == "torch"
    assert ("LOG INFO the fused encouraging loss runs CPU tensors on chunked torch (backend 'torch'): its C++ kernel "
            "is unavailable: EL_PLUGINS_CPU_KERNEL=0 is set") in err
    code = ("import torch\nfrom el_plugins import functional as EF\n"
            "EF.encouraging_loss(torch.randn(3, 5), torch.tensor([0, 1, 2]), implementation='fused', backend='cpp')")
    _, err = run_python(code, {"EL_PLUGINS_CPU_KERNEL": "0"}, check=False)
    assert ("ValueError: the cpp backend (the C++ kernel for CPU tensors) is unavailable: EL_PLUGINS_CPU_KERNEL=0 "
            "is set") in err


@pytest.mark.e2e  # runs a Python subprocess
def test_without_a_compiler_falls_back_with_a_warning(tmp_path):
    out, err = run_python(LOGGED_STEP, {"CXX": "no-such-compiler-el-plugins", "EL_PLUGINS_CACHE_DIR": str(tmp_path),
                                        "EL_PLUGINS_CPU_KERNEL": "1"})
    result = json.loads(out.strip().splitlines()[-1])
    assert result["backend"] == "torch" and result["error"] < 1e-12
    assert ("LOG WARNING the fused encouraging loss runs CPU tensors on chunked torch (backend 'torch'): its C++ "
            "kernel is unavailable: no C++ compiler on PATH (no-such-compiler-el-plugins)") in err


def test_cpp_takes_cpu_tensors_of_the_float_dtypes_only():
    cpp = BACKENDS["cpp"]
    assert "takes float32, float64, float16 or bfloat16 input, got torch.int64" in cpp.takes(torch.zeros(2, 3).long())
    assert cpp.takes(torch.zeros(2, 3, device="meta")) == "the cpp backend takes CPU tensors, got a meta tensor"
    assert not cpp.preferred_for(torch.zeros(2, 3, device="meta"))
    assert "cpp" in backends.BACKEND_CHOICES and backends.AUTO_ORDER.index("cpp") < backends.AUTO_ORDER.index("torch")


# --------------------------------------------------------------------------- float16 / bfloat16 conversions
def special_floats():
    """float32 values around every float16 and bfloat16 rounding case: each half value, the midpoints between
    neighbours (ties to even) and a little either side, the overflow and subnormal edges, inf, NaN, signed 0."""
    out = []
    for dtype in (torch.float16, torch.bfloat16):
        every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype).float()
        every = every[every.isfinite()].unique()
        mid = (every[1:].double() + every[:-1].double()) / 2
        out += [every, mid.float(), (mid * (1 + 1e-6)).float(), (mid * (1 - 1e-6)).float()]
    out.append(torch.tensor([65504.0, 65519.99, 65520.0, 65536.0, 1e10, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26,
                             2.0 ** -14, 2.0 ** -14 * (1 - 2 ** -11), 1e-30, 1e-40, 0.0, -0.0, math.inf, -math.inf,
                             math.nan, -math.nan, 3.4e38, -3.4e38]))
    gen = torch.Generator().manual_seed(0)
    out.append(torch.randn(100003, generator=gen) * torch.exp(torch.randn(100003, generator=gen) * 8))
    return torch.cat(out)


@needs_kernel
@pytest.mark.parametrize("dtype,code", [(torch.float16, 2), (torch.bfloat16, 3)])
def test_half_conversions_are_torchs(dtype, code):
    """Every float16/bfloat16 value widened as torch widens it; float32 values rounded as torch rounds them (to
    nearest even; NaN stays NaN), through the vector path and the one-by-one rest (an odd count)."""
    from el_plugins.ops.cpp_rows import library

    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)
    floats = special_floats()
    n = floats.numel() // 16 * 16 + 7  # an odd count: the last 7 one by one
    floats = floats[:n].contiguous()
    every = every.repeat(n // every.numel() + 1)[:n].contiguous()
    assert n > every.unique().numel() >= 65536 - 2048  # every bit pattern (NaNs may compare equal)
    widened, narrowed = torch.empty(n), torch.empty(n, dtype=dtype)
    assert library().el_cpu_convert(ctypes.c_int64(code), ctypes.c_void_p(every.data_ptr()),
                                    ctypes.c_void_p(widened.data_ptr()), ctypes.c_void_p(floats.data_ptr()),
                                    ctypes.c_void_p(narrowed.data_ptr()), ctypes.c_int64(n)) == 0
    want = every.float()
    assert torch.equal(widened.isnan(), want.isnan())
    assert torch.equal(widened[~want.isnan()].view(torch.int32), want[~want.isnan()].view(torch.int32))
    want = floats.to(dtype)
    assert torch.equal(narrowed.isnan(), want.isnan())
    ok = ~want.isnan()
    assert torch.equal(narrowed[ok].view(torch.int16), want[ok].view(torch.int16))


# --------------------------------------------------------------------------- every member, both CPU backends
def members():
    from test_bonus_family import MEMBERS, SMOOTHINGS

    return [(m, s) for m in sorted(MEMBERS) for s in sorted(SMOOTHINGS)]


@pytest.mark.parametrize("member,smoothing", members())
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_member_on_each_cpu_backend_equals_its_formula(member, smoothing, backend):
    """float64, both conventions and the reductions: the loss and the gradient of each CPU backend equal the
    transcription of the formulas (tests/test_bonus_family.py) to 1e-10, on rows with every regime of p."""
    from test_bonus_family import MEMBERS, SMOOTHINGS, grad_of, make_batch, transcribed_loss

    if BACKENDS[backend].takes(torch.zeros(2, 3)):
        pytest.skip(BACKENDS[backend].takes(torch.zeros(2, 3)))
    label_smoothing, bonus_smoothing = SMOOTHINGS[smoothing]
    for convention, reduction in (("paper", "sum"), ("fairseq", "none"), ("fairseq", "mean")):
        seed = sum(map(ord, member + smoothing + convention + reduction)) % 1000
        z, t = make_batch(seed)
        rho = 0.7 if seed % 2 else 1.0
        want, want_grad = grad_of(transcribed_loss, z, t, label_smoothing=label_smoothing,
                                  bonus_smoothing=bonus_smoothing, rho=rho, convention=convention,
                                  reduction=reduction, member=MEMBERS[member])
        got, got_grad = grad_of(EF.encouraging_loss, z, t, implementation="fused", backend=backend,
                                label_smoothing=label_smoothing, bonus_smoothing=bonus_smoothing, bonus_weight=rho,
                                smoothing_convention=convention, reduction=reduction, ignore_index=PAD,
                                **MEMBERS[member])
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("member", ["log", "power-2", "cosine", "log-start-0.5", "power-3-start-0.4"])
@on_each_cpu_backend
def test_confident_rows_keep_their_precision_on_each_cpu_backend(member):
    from test_bonus_family import test_confident_rows_keep_their_precision

    test_confident_rows_keep_their_precision(member)


# --------------------------------------------------------------------------- the kernel's own paths
def logits_with_large_entries(v=300, seed=0):
    """Rows whose entries above large_p (1/2, or log_end below it) take the kernel's precise scalar path: two
    classes near 0.45 (with log_end 0.3 both are large), a confidently wrong class (its 1 - p from the others),
    the target near 1, a target among two large entries, and padding."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(12, v, generator=gen, dtype=torch.float64)
    t = torch.randint(2, v, (12,), generator=gen)
    z[0, :2] = z[0].max() + 8.0                   # two large entries, p ~ 0.45 each, neither the target
    z[1, t[1]] = z[1].max() + 8.0
    z[1, 0] = z[1, t[1]]                          # the target and another, p ~ 0.45 each
    z[2, (t[2] + 1) % v] += 25.0                  # confidently wrong
    z[3, t[3]] += 25.0                            # confidently right
    z[4, (t[4] + 1) % v] = z[4].max() + math.log(0.6 / 0.4 * (v - 1))  # a wrong class at p ~ 0.6
    t[10:] = PAD
    return z, t


@needs_kernel
@pytest.mark.parametrize("kwargs", [dict(log_end=0.3, label_smoothing=0.1), dict(log_end=1.0, label_smoothing=0.2),
                                    dict(bonus="power", bonus_gamma=2.5, bonus_start=0.3, label_smoothing=0.1),
                                    dict(bonus="cosine", bonus_smoothing=0.2),
                                    dict(log_end=0.4, label_smoothing=0.1, input_is_log_probs=True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_large_entries_and_log_probabilities(dtype, kwargs):
    """The kernel's scalar path for the entries above large_p, against the reference: float64 to 1e-10, the
    others as close as the torch backend is."""
    z, t = logits_with_large_entries()
    if kwargs.get("input_is_log_probs"):
        z = torch.log_softmax(z, -1)
    results = {}
    for name in ("reference", "cpp", "torch"):
        x = z.to(dtype).requires_grad_()
        impl = dict(implementation="reference") if name == "reference" else dict(implementation="fused", backend=name)
        out = EF.encouraging_loss_with_stats(x, t, ignore_index=PAD, reduction="sum", **impl, **kwargs)
        out.loss.backward()
        results[name] = (out, x.grad)
    truth = results["reference"] if dtype == torch.float64 else None
    if truth is None:
        z64 = z.requires_grad_()
        out = EF.encouraging_loss_with_stats(z64, t, ignore_index=PAD, reduction="sum", implementation="reference",
                                             **kwargs)
        out.loss.backward()
        truth = (out, z64.grad)
    for name in ("cpp", "torch"):
        out, grad = results[name]
        assert grad.dtype == dtype and grad.isfinite().all()
        if dtype == torch.float64:
            for field in out._fields:
                torch.testing.assert_close(getattr(out, field), getattr(truth[0], field), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(grad, truth[1], rtol=1e-10, atol=1e-10)
    if dtype != torch.float64:
        scale = truth[1].abs().max()
        errors = {name: ((results[name][1].double() - truth[1]).abs().max() / scale).item()
                  for name in ("cpp", "torch")}
        loss_errors = {name: abs(results[name][0].loss.item() - truth[0].loss.item()) for name in ("cpp", "torch")}
        assert errors["cpp"] <= max(errors["torch"] * 1.5, 4 * torch.finfo(dtype).eps), errors
        assert loss_errors["cpp"] <= max(loss_errors["torch"] * 1.5, 1e-5 * abs(truth[0].loss.item())), loss_errors


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_logits_get_their_gradient_in_backward_in_their_dtype(dtype):
    """float16/bfloat16 logits: the graph keeps the logits and a (N, 8) float64 state, nothing float32 (N, V); the
    gradient is written in backward, times grad_output before its one rounding, and may be asked for again."""
    z, t = logits_with_large_entries(v=1000)
    x = z.to(dtype).requires_grad_()
    kwargs = dict(label_smoothing=0.1, ignore_index=PAD, implementation="fused")
    loss = EF.encouraging_loss(x, t, reduction="none", **kwargs)
    saved = loss.grad_fn.saved_tensors
    assert [(s.dtype, tuple(s.shape)) for s in saved if s.dim() == 2] == [(dtype, tuple(x.shape)),
                                                                        (torch.float64, (x.size(0), 8))]
    grad_output = torch.rand(x.size(0), generator=torch.Generator().manual_seed(0)) * 1000
    first = torch.autograd.grad(loss, x, grad_output, retain_graph=True)[0]
    again = torch.autograd.grad(loss, x, grad_output)[0]
    assert first.dtype == dtype and torch.equal(first, again)
    torch_x = z.to(dtype).requires_grad_()
    EF.encouraging_loss(torch_x, t, reduction="none", backend="torch", **kwargs).backward(grad_output)
    truth = z.clone().requires_grad_()
    EF.encouraging_loss(truth, t, reduction="none", implementation="reference",
                        label_smoothing=0.1, ignore_index=PAD).backward(grad_output.double())
    scale = truth.grad.abs().max()
    cpp_error = ((first.double() - truth.grad).abs().max() / scale).item()
    torch_error = ((torch_x.grad.double() - truth.grad).abs().max() / scale).item()
    assert cpp_error <= max(torch_error, torch.finfo(dtype).eps), (cpp_error, torch_error)
    assert (first[t == PAD] == 0).all()


@needs_kernel
def test_rows_are_the_same_on_any_number_of_threads():
    z, t = logits_with_large_entries(v=5000)
    z = torch.cat([z] * 20)
    t = torch.cat([t] * 20)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            x = z.float().requires_grad_()
            out = EF.encouraging_loss_with_stats(x, t, label_smoothing=0.1, ignore_index=PAD, reduction="none",
                                                 implementation="fused", backend="cpp")
            out.loss.sum().backward()
            results.append((out, x.grad))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, results[0][0])) and torch.equal(grad, results[0][1])


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_written_over_the_logits(dtype):
    """What the fused output layer asks of the cpp backend: the chunk's logits overwritten by their gradient (one
    (chunk, V) buffer), the same values as into a buffer of its own; log-probabilities are refused."""
    from el_plugins.core import LossSettings, Bonus, target_weights
    from el_plugins.ops.common import LossConfig

    z, t = logits_with_large_entries()
    keep = t != PAD
    cpp = BACKENDS["cpp"]
    for bonus in (Bonus("log", log_end=0.3), Bonus("power", gamma=2.0), Bonus("cosine")):
        settings = LossSettings(bonus, 0.1, 1.0, 0.1, PAD, "fairseq", "sum")
        cfg = LossConfig(bonus, target_weights(settings, z.size(1)))
        x = z.to(dtype)
        own = cpp.rows(x, t, keep, cfg, 0.5, compute_grad=True, ignore_index=PAD)
        z_buffer = x.clone()
        over = cpp.rows(z_buffer, t, keep, cfg, 0.5, compute_grad=True, ignore_index=PAD,
                        buffers=ChunkBuffers(z_buffer, None))
        assert over[1].data_ptr() == z_buffer.data_ptr()
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        for a, b in zip(over[0], own[0]):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        torch.testing.assert_close(over[1], own[1], rtol=tol, atol=tol)
    log_probs = LossConfig(cfg.bonus, cfg.weights, True)
    with pytest.raises(ValueError, match="over the input only for logits, in their dtype"):
        cpp.rows(z_buffer, t, keep, log_probs, 1.0, compute_grad=True, ignore_index=PAD,
                 buffers=ChunkBuffers(z_buffer, None))


@needs_kernel
@pytest.mark.parametrize("n,v", [(1, 2), (5, 3), (7, 17), (33, 1000), (3, 4099)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_odd_shapes_and_strides(n, v, dtype):
    """Rows shorter than a vector, not a multiple of one, one row; input that is a transposed (strided) view."""
    gen = torch.Generator().manual_seed(n * v)
    z = torch.randn(v, n, generator=gen, dtype=torch.float64).T * 3  # a non-contiguous view
    t = torch.randint(0, v, (n,), generator=gen)
    kwargs = dict(log_end=0.75, label_smoothing=0.1, reduction="sum")
    grads = []
    for impl in (dict(implementation="reference"), dict(implementation="fused", backend="cpp")):
        x = z.to(dtype).requires_grad_()
        out = EF.encouraging_loss_with_stats(x, t, **impl, **kwargs)
        out.loss.backward()
        grads.append((out, x.grad))
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(grads[1][0].loss, grads[0][0].loss, rtol=tol, atol=tol)
    scale = grads[0][1].abs().max().item()
    torch.testing.assert_close(grads[1][1].double(), grads[0][1].double(), rtol=0, atol=tol * scale)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_correct_is_where_argmax_finds_the_target(dtype):
    """The kernel's ``correct`` (the fused output layer's accuracy count): the target is the first largest logit,
    as torch's argmax has it, ties included; 0 on ignored rows."""
    from el_plugins.core import LossSettings, Bonus, target_weights
    from el_plugins.ops.common import LossConfig

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 100, generator=gen).to(dtype)
    t = torch.randint(0, 100, (64,), generator=gen)
    z[:20, 10] = 50.0
    z[:10, 30] = 50.0           # a tie: argmax is 10
    t[:5], t[5:10] = 10, 30     # first of the tie: correct; second: not
    t[10:15] = 10               # the only largest: correct
    t[20:24] = z[20:24].float().argmax(-1)
    keep = torch.ones(64, dtype=torch.bool)
    keep[3] = keep[22] = False
    settings = LossSettings(Bonus("log", log_end=0.75), 0.1, 1.0, 0.1, PAD, "fairseq", "sum")
    cfg = LossConfig(settings.bonus, target_weights(settings, 100))
    values, _ = BACKENDS["cpp"].rows(z, t, keep, cfg, 1.0, compute_grad=False, ignore_index=PAD)
    want = (z.argmax(-1) == t) & keep
    assert values.correct.tolist() == want.float().tolist() and 0 < int(want.sum()) < 64


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradient_in_the_inputs_dtype_written_over_the_input(dtype):
    """The fused output layer's bfloat16 chunks: dz written over the product in its own dtype, each entry the
    float32 gradient rounded once (as torch rounds it)."""
    from el_plugins.core import LossSettings, Bonus, target_weights
    from el_plugins.ops.common import LossConfig

    z, t = logits_with_large_entries()
    keep = t != PAD
    settings = LossSettings(Bonus("log", log_end=0.3), 0.1, 1.0, 0.1, PAD, "fairseq", "sum")
    cfg = LossConfig(settings.bonus, target_weights(settings, z.size(1)))
    x = z.to(dtype)
    values, wide = BACKENDS["cpp"].rows(x, t, keep, cfg, 0.25, compute_grad=True, ignore_index=PAD)
    over = x.clone()
    narrow_values, narrow = BACKENDS["cpp"].rows(over, t, keep, cfg, 0.25, compute_grad=True, ignore_index=PAD,
                                                 buffers=ChunkBuffers(over, None))
    assert narrow.data_ptr() == over.data_ptr() and narrow.dtype == dtype
    assert torch.equal(narrow.view(torch.int16), wide.to(dtype).view(torch.int16))
    assert all(torch.equal(a, b) for a, b in zip(values, narrow_values))


def test_chunk_rows_count_the_buffers_the_backend_keeps():
    """With the cpp backend the fused output layer keeps one (chunk, V) buffer (a half-size one in bfloat16), so
    at 2048 x 512 x 128000 its chunks are 64 rows in float32 and 128 in bfloat16: the memory of the torch path's
    two buffers of 32 rows."""
    from el_plugins.ops.linear_encouraging_loss import chunk_buffers, default_chunk_rows

    cpp, torch_path = BACKENDS["cpp"], BACKENDS["torch"]
    assert [chunk_buffers(cpp, d) for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16)] == \
        [1.0, 1.0, 0.5, 1.5]
    assert chunk_buffers(torch_path, torch.float32) == chunk_buffers(BACKENDS["triton"], torch.bfloat16) == 2.0
    assert default_chunk_rows(2048, 512, 128000, chunk_buffers(cpp, torch.float32)) == 64
    assert default_chunk_rows(2048, 512, 128000, chunk_buffers(cpp, torch.bfloat16)) == 128
    assert default_chunk_rows(2048, 512, 128000) == 32


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bonus", ["log-0.3", "log-start", "power-2.5", "cosine"])
def test_rows_stored_by_columns(dtype, bonus):
    """The fused output layer's float32/float64 chunks are W x^T, (V, rows): the kernel computes those rows where
    they are, 16 at a time (a partial group too), the gradient over them: the values, the gradient and the
    correct count of rows stored by rows, and nothing from the ignored rows (NaN there)."""
    from el_plugins.core import LossSettings, Bonus, target_weights
    from el_plugins.ops.common import LossConfig

    bonus_of = {"log-0.3": Bonus("log", log_end=0.3), "log-start": Bonus("log", start=0.5),
                "power-2.5": Bonus("power", gamma=2.5, start=0.3), "cosine": Bonus("cosine")}[bonus]
    z, t = logits_with_large_entries()
    z, t = torch.cat([z, z * 0.5, z[:13]]), torch.cat([t, t, t[:13]])  # 37 rows: 2 groups of 16 and 5
    keep = t != PAD
    z[~keep] = float("nan")
    settings = LossSettings(bonus_of, 0.1, 0.8, 0.1, PAD, "fairseq", "sum")
    cfg = LossConfig(bonus_of, target_weights(settings, z.size(1)))
    x = z.to(dtype)
    scale = torch.rand(x.size(0), generator=torch.Generator().manual_seed(1)).to(dtype)
    want, want_grad = BACKENDS["cpp"].rows(x, t, keep, cfg, scale, compute_grad=True, ignore_index=PAD)
    by_columns = x.t().contiguous().t()
    assert by_columns.stride() == (1, x.size(0))
    got, grad = BACKENDS["cpp"].rows(by_columns, t, keep, cfg, scale, compute_grad=True, ignore_index=PAD,
                                     buffers=ChunkBuffers(by_columns, None))
    assert grad.data_ptr() == by_columns.data_ptr()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for name, a, b in zip(want._fields, got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(grad, want_grad, rtol=tol, atol=tol)
    assert (grad[~keep] == 0).all() and (got.loss[~keep] == 0).all()
    assert got.correct.tolist() == ((x.argmax(-1) == t) & keep).to(dtype).tolist()
