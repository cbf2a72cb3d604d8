"""The ``cpp`` backend: the fused encouraging loss's row computation on CPU tensors as a small C++ library
(:mod:`.cpp_source`), each row computed in cache: one read of the logits, one write of the gradient.

The library is compiled at first use with the C++ compiler on PATH (``$CXX``, else ``c++``/``g++``/``clang++``;
about 3 s) and cached on disk, keyed by the source, the flags, the compiler and the CPU (it is built for the
machine it runs on, ``-march=native``):

    $EL_PLUGINS_CACHE_DIR/cpu-kernel/  or  $XDG_CACHE_HOME/el-plugins/cpu-kernel/  or  ~/.cache/el-plugins/cpu-kernel/

(a temporary folder where none of those can be written). Processes that need it at the same time build it once,
under a file lock; builds of other versions untouched for a week are removed when a new one is made. It is
called through ctypes (no Python headers, no torch headers: the compile stays short), which releases the GIL; it
runs its rows on ``torch.get_num_threads()`` threads of its own.

Entry points: :func:`cpp_rows` (the values and the gradient times the scale, into a buffer of the compute dtype or
of x's, which may be x itself, rows stored by rows or, written over, by columns), :func:`cpp_rows_deferred` and
:func:`cpp_gradient` (the values and a per-row state in forward, the gradient in x's dtype in backward: float16/
bfloat16 logits).

Where it cannot be built (no compiler, a failed build) or ``EL_PLUGINS_CPU_KERNEL=0`` is set, ``backend='auto'``
takes the chunked torch path instead; the ``el_plugins.ops`` logger says once per process which path CPU tensors
take and why.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

import torch

from el_plugins.core import BONUS_CLAMP, BONUSES, LARGE_P, compute_dtype

from .cpp_source import SOURCE

LOG = logging.getLogger("el_plugins.ops")

ENV_SWITCH = "EL_PLUGINS_CPU_KERNEL"
"""Set to 0 (or off, false, no) to keep CPU tensors on the chunked torch path."""

ENV_CACHE = "EL_PLUGINS_CACHE_DIR"
COMPILERS = ("c++", "g++", "clang++")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno")
NATIVE = ("-march=native",)  # dropped (and the build tried again) where the compiler refuses it
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
BONUS_CODES = {name: code for code, name in enumerate(BONUSES)}
MIN_ELEMENTS_PER_THREAD = 1 << 15
"""Fewer elements than this per thread: fewer threads (starting one costs tens of microseconds)."""
ELEMENTS_PER_TASK = 1 << 15
"""Rows a thread takes at a time from the shared counter: about this many elements, at least one row."""
VERSION = 4  # el_cpu_rows_version() of the source
VALUES_AND_GRADIENT, VALUES_AND_STATE, GRADIENT_FROM_STATE, VALUES_AND_INPUT_DTYPE_GRADIENT = 0, 1, 2, 3  # modes
STATE = 8  # float64 values per row kept between the deferred gradient's two calls

_lock = threading.Lock()
_state = None  # (library or None, what the log said)


class KernelUnavailable(RuntimeError):
    """The C++ kernel cannot be used here (the message says why)."""


def _cache_dirs():
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        yield os.path.join(explicit, "cpu-kernel")
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    yield os.path.join(base, "el-plugins", "cpu-kernel")
    yield os.path.join(tempfile.gettempdir(), f"el-plugins-{os.getuid() if hasattr(os, 'getuid') else 'user'}",
                       "cpu-kernel")


def _writable_dir():
    for path in _cache_dirs():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK | os.X_OK):
            return path
    raise KernelUnavailable("no writable cache folder for the compiled kernel (set EL_PLUGINS_CACHE_DIR)")


def _compiler():
    names = [os.environ["CXX"]] if os.environ.get("CXX") else list(COMPILERS)
    for name in names:
        path = shutil.which(name)
        if path:
            return os.path.realpath(path)
    raise KernelUnavailable(f"no C++ compiler on PATH ({', '.join(names)})")


def _cpu_signature():
    """What -march=native depends on: the CPU's model and feature flags."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name", "CPU part")):
                    parts.append(line.strip())
                if len(parts) > 3:
                    break
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def _key(compiler):
    stat = os.stat(compiler)
    text = "\n".join([SOURCE, " ".join(FLAGS + NATIVE), compiler, str(stat.st_size), str(int(stat.st_mtime)),
                      _cpu_signature()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build(compiler, folder, name):
    """Compile SOURCE into folder/name (atomically: other processes see it whole or not at all); returns '' or a
    note that it was built for the generic CPU (the compiler refused -march=native: several times slower)."""
    source = os.path.join(folder, name[:-3] + ".cpp")
    with open(source, "w") as f:
        f.write(SOURCE)
    errors = []
    for extra in (NATIVE, ()):
        partial = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        cmd = [compiler, *FLAGS, *extra, source, "-o", partial]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode == 0:
            os.replace(partial, os.path.join(folder, name))
            _remove_stale(folder, name)
            return "" if extra else f" for the generic CPU ({errors[0][:300]})"
        errors.append(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stdout.strip()[-2000:]}")
        if os.path.exists(partial):
            os.unlink(partial)
    raise KernelUnavailable("the build failed: " + " | ".join(errors))


STALE_AFTER_S = 7 * 24 * 3600


def _remove_stale(folder, keep):
    """Remove the other builds of the kernel (other versions, compilers, CPUs) not touched for a week."""
    now = time.time()
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if entry.startswith("el_cpu_rows-") and not entry.startswith(keep[:-3]):
            try:
                if now - os.stat(path).st_mtime > STALE_AFTER_S:
                    os.unlink(path)
            except OSError:
                pass


def _load():
    """(library, how it was had: 'built in ... s' or 'cached'); raises KernelUnavailable."""
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "off", "false", "no"):
        raise KernelUnavailable(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]} is set")
    if sys.platform == "win32":
        raise KernelUnavailable("not built on Windows")
    compiler = _compiler()
    folder = _writable_dir()
    name = f"el_cpu_rows-{_key(compiler)}.so"
    path = os.path.join(folder, name)
    how = "cached"
    if not os.path.exists(path):
        import fcntl

        with open(os.path.join(folder, name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
            if not os.path.exists(path):
                start = time.perf_counter()
                note = _build(compiler, folder, name)
                how = f"built in {time.perf_counter() - start:.1f} s{note}"
    try:
        lib = ctypes.CDLL(path)
        if lib.el_cpu_rows_version() != VERSION:
            raise KernelUnavailable(f"{path} is another version of the kernel")
    except (OSError, AttributeError) as exc:
        raise KernelUnavailable(f"{path} does not load: {exc}") from exc
    lib.el_cpu_rows.restype = ctypes.c_int
    lib.el_cpu_rows.argtypes = [ctypes.c_void_p] * 9
    return lib, f"{how}, {path}"


def library():
    """The loaded library, or None where it cannot be had; the first call logs which path CPU tensors take."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                try:
                    lib, how = _load()
                    message = f"the fused encouraging loss runs CPU tensors on its C++ kernel (backend 'cpp'; {how})"
                    LOG.info(message)
                    _state = (lib, message)
                except KernelUnavailable as exc:
                    message = (f"the fused encouraging loss runs CPU tensors on chunked torch (backend 'torch'): "
                               f"its C++ kernel is unavailable: {exc}")
                    (LOG.info if str(exc).startswith(ENV_SWITCH) else LOG.warning)(message)
                    _state = (None, str(exc))
    return _state[0]


def unavailable_reason() -> Optional[str]:
    """None when the kernel loads, else why not."""
    return None if library() is not None else _state[1]


def _reset_for_tests():
    global _state
    with _lock:
        _state = None


def cpp_rows(x, target, keep, cfg, scale, *, compute_grad: bool, ignore_index: Optional[int], grad=None):
    """(loss, nll, bonus, log p_y, correct) per row in the compute dtype (correct: 1 where the target is the first
    largest logit, as argmax finds it, on rows kept; 0 for log-probabilities) and the gradient times ``scale`` (or
    None) of the CPU rows ``x`` (n, V). ``grad``: a buffer (n, V) to write it into, of the compute dtype or of x's
    (each entry computed in the compute dtype and rounded once), which may be x itself (logits, not
    log-probabilities). ``scale``: a number, a 0-dim tensor or one per row. Ignored rows (``keep`` False) are not
    read: their values and gradient are 0."""
    dtype = compute_dtype(x.dtype)
    over_input = grad is not None and x.numel() > 0 and grad.data_ptr() == x.data_ptr()
    if over_input and (cfg.input_is_log_probs or grad.dtype != x.dtype or x.stride() != grad.stride()):
        raise ValueError("the cpp backend writes the gradient over the input only for logits, in their dtype")
    if compute_grad and grad is None:
        grad = torch.empty(x.shape, dtype=dtype)
    if compute_grad and grad.dtype not in (dtype, x.dtype):
        raise ValueError(f"the cpp backend writes the gradient in {dtype} or {x.dtype}, got a {grad.dtype} buffer")
    narrow = compute_grad and grad.dtype != dtype
    out = torch.empty(5, x.shape[0], dtype=dtype)
    _call(VALUES_AND_INPUT_DTYPE_GRADIENT if narrow else VALUES_AND_GRADIENT, x, target, keep, cfg, scale,
          ignore_index, grad=grad if compute_grad else None, out=out, over_input=over_input and not narrow)
    return out.unbind(0), (grad if compute_grad else None)


def cpp_rows_deferred(x, target, keep, cfg, *, ignore_index: Optional[int]):
    """The rows' values as :func:`cpp_rows` gives them, and the state (n, STATE) float64 from which
    :func:`cpp_gradient` writes their gradient later, in x's own dtype (no gradient buffer of the compute dtype
    in between)."""
    out = torch.empty(5, x.shape[0], dtype=compute_dtype(x.dtype))
    state = torch.empty(x.shape[0], STATE, dtype=torch.float64)
    _call(VALUES_AND_STATE, x, target, keep, cfg, 1.0, ignore_index, out=out, state=state)
    return out[:4].unbind(0), state


def cpp_gradient(x, target, keep, cfg, state, scale, *, ignore_index: Optional[int]):
    """dL/dx times ``scale`` (a number, a 0-dim tensor or one per row) in x's dtype, each entry computed in the
    compute dtype and rounded once, from the state :func:`cpp_rows_deferred` kept for the same x."""
    grad = torch.empty(x.shape, dtype=x.dtype)
    _call(GRADIENT_FROM_STATE, x, target, keep, cfg, scale, ignore_index, grad=grad, state=state)
    return grad


def _call(mode, x, target, keep, cfg, scale, ignore_index, *, grad=None, out=None, state=None, over_input=False):
    lib = library()
    if lib is None:
        raise KernelUnavailable(_state[1])
    n_rows, n_cols = x.shape
    if n_rows == 0:
        return
    dtype = compute_dtype(x.dtype)
    # rows stored by columns (the fused output layer's W x^T): computed where they are, a vector's rows at a time,
    # when the gradient is written over them; anything else not in rows is copied into rows
    columns = (n_rows > 1 and n_cols > 1 and x.stride(0) == 1 and x.stride(1) >= n_rows and over_input
               and mode == VALUES_AND_GRADIENT and x.dtype == dtype and not cfg.input_is_log_probs)
    if not columns and x.stride(1) != 1:
        x = x.contiguous()
    if grad is not None and grad.stride(1) != 1 and not (over_input and columns):
        raise ValueError("the cpp backend needs a gradient buffer with contiguous rows")
    target = target.to(torch.int64).contiguous()
    keep_ptr = None
    if ignore_index is not None:
        keep = keep.to(torch.bool).contiguous()
        keep_ptr = keep.data_ptr()
    row_scale = None
    if isinstance(scale, torch.Tensor):
        if scale.dim() == 0:
            scale = float(scale)
        else:
            row_scale = scale.to(dtype).contiguous()
    bonus, weights = cfg.bonus, cfg.weights
    gamma = float(bonus.gamma)
    int_gamma = int(gamma) if bonus.kind == "power" and gamma in (1.0, 2.0, 3.0, 4.0) else 0
    threads = max(1, min(torch.get_num_threads(), (n_rows * n_cols) // MIN_ELEMENTS_PER_THREAD))
    doubles = (weights.nll_target, weights.nll_other, weights.bonus_target, weights.bonus_other, gamma,
               float(bonus.start), bonus.value_at_start, bonus.log_end,
               math.log(1.0 - bonus.log_end) if bonus.tail else 0.0, bonus.large_p, BONUS_CLAMP, LARGE_P,
               1.0 if row_scale is not None else float(scale))
    ints = (n_rows, n_cols, x.stride(1) if columns else x.stride(0), 0 if grad is None else grad.stride(0),
            BONUS_CODES[bonus.kind],
            int(bool(bonus.start)), int(bonus.tail), int(bool(cfg.input_is_log_probs)), int(grad is not None),
            int(cfg.dense_bonus), int_gamma, DTYPE_CODES[x.dtype], threads,
            max(1, ELEMENTS_PER_TASK // max(n_cols, 1)), int(over_input), mode, int(columns))
    dp = (ctypes.c_double * len(doubles))(*doubles)
    ip = (ctypes.c_int64 * len(ints))(*ints)
    status = lib.el_cpu_rows(dp, ip, x.data_ptr(), None if grad is None else grad.data_ptr(), target.data_ptr(),
                             keep_ptr, None if row_scale is None else row_scale.data_ptr(),
                             None if out is None else out.data_ptr(), None if state is None else state.data_ptr())
    if status != 0:
        raise RuntimeError("the cpp backend's kernel failed (el_cpu_rows returned an error)")
