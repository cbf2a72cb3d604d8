"""Forward + backward time and peak memory of the encouraging loss against cross-entropy: on the logits, and
from the decoder's features (the output layer's matrix product included).

    .venv/bin/python benchmarks/loss_benchmark.py --out benchmarks/results-cpu.json
    .venv/bin/python benchmarks/loss_benchmark.py --quick          # small shapes, a smoke run
    .venv/bin/python benchmarks/loss_benchmark.py --markdown benchmarks/results-cpu.json   # the README table
    .venv/bin/python benchmarks/loss_benchmark.py --from-features --out benchmarks/results-features-cpu.json
    .venv/bin/python benchmarks/loss_benchmark.py --from-features --quick   # small shapes, a smoke run
    python3 benchmarks/loss_benchmark.py --device cuda --dtypes bfloat16,float16 --shapes 8192x32000  # on a GPU
    (benchmarks/gpu/run.sh runs it there, on the logits and from 8192 x 4096 features, at V = 32000 and 128000)

On the logits: variants on the same (N, V) logits with ~5% padding rows (ignore_index 1), eps = 0.1:

    autograd_el   el_plugins.functional.encouraging_loss (log_end 0.75), implementation='reference' (autograd)
    fused_el      el_plugins.functional.encouraging_loss (log_end 0.75), implementation='fused' (el_plugins.ops)
    fused_el_power  the same with another member of the bonus family, bonus='power', bonus_gamma=2 (which should
                  cost what the default costs: its ratio to fused_el is reported)
    fairseq_ls_ce fairseq's label_smoothed_nll_loss(log_softmax(logits.float())), as its criterion does
    torch_ce      torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    compiled_el   torch.compile of the reference EL (autograd_el's function): what inductor makes of it
    liger_ce      Liger-Kernel's cross-entropy (liger_cross_entropy, label_smoothing=0.1; CUDA only; it writes its
                  gradient over the logits, so it runs on a copy of them, restored before each step, untimed)

EL and fairseq use reduction "sum" and the fairseq smoothing convention, as the fairseq criterion
does; torch_ce and liger_ce their default "mean".

From the features (--from-features): input (N, d) features and an output layer weight (V, d), both leaves
whose gradients are part of the step, the same targets and padding, reduction "sum" for every variant:

    fairseq_ls_ce_features  F.linear, then fairseq's label_smoothed_nll_loss(log_softmax(logits.float())), eps 0.1
    fused_el_logits         F.linear, then today's fused EL on the logits (encouraging_loss, implementation='fused')
    torch_lce_ls0           torch's F.linear_cross_entropy, chunked (options=LinearCrossEntropyOptions()), eps 0:
                            its best case (it refuses label smoothing ...)
    torch_lce_ls01          ... and with eps 0.1, what translation uses (it warns and falls back to whole logits)
    linear_el               el_plugins.functional.linear_encouraging_loss (log_end 0.75, eps 0.1), the output
                            layer fused in
    torch_ce_features       F.linear, then F.cross_entropy(label_smoothing=0.1): plain torch, on every version
    cce                     Cut Cross-Entropy's linear_cross_entropy (cut-cross-entropy), eps 0 (it has no label
                            smoothing): impl='cce' (its Triton kernels) on CUDA, impl='torch_compile' on a CPU
    liger_flce              Liger-Kernel's fused linear cross-entropy (label_smoothing=0.1; CUDA only)
    compiled_linear_el      torch.compile of F.linear + the reference EL (eps 0.1)

Peers that cannot run here are not dropped: each gets a row with "skipped" and the reason (a package that is not
installed, a CUDA-only kernel on a CPU, a torch without F.linear_cross_entropy); the compiled variants run by
default on CUDA only (inductor compiles each shape for tens of seconds on a small CPU): on a CPU they are skipped
unless --variants names them. A variant that fails gets a row with "error".

Time: one forward + backward (loss.backward(); the leaves' .grad are reset each time). Per shape and
dtype one subprocess warms every variant up, then runs rounds in which each variant runs once
(rotating the order), so that all variants see the same machine load; reported: the median over the
rounds (on CUDA each step timed with CUDA events). Peak memory: the extra memory of one forward + backward
beyond the inputs (logits, targets; or features, weight and targets), the leaves' .grad included: on CPU, where
torch keeps no allocator statistics, the growth of the process's peak resident set size (VmHWM in
/proc/self/status, reset through /proc/self/clear_refs) over its size before, each variant in a fresh subprocess
(after a warm-up on 64 rows); on CUDA torch.cuda.max_memory_allocated() minus memory_allocated() before the
step, in the timing subprocess after its rounds (the caching allocator's statistics are exact there;
--memory-method subprocess measures each variant in a fresh subprocess as on a CPU). Host synchronisations (CUDA
only): the synchronizing CUDA operations of one more step, counted with torch.cuda.set_sync_debug_mode("warn").
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_this_checkout(script=__file__):
    """Measure this checkout's el_plugins, not an installed snapshot of it. An installed el-plugins' activation
    hook (its .pth file) imports the installed copy as Python starts, before any sys.path change here could
    act; so the benchmark (``script``: this one, or another benchmark that uses it) starts again with PYTHONPATH
    naming the checkout (its worker processes inherit it)."""
    loaded = sys.modules.get("el_plugins")
    if loaded is None:
        sys.path.insert(0, REPO)
        return
    if os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__))) == REPO:
        return
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if REPO in paths:
        raise SystemExit(f"{os.path.basename(script)}: error: PYTHONPATH names {REPO}, yet el_plugins came from "
                         f"{loaded.__file__}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *paths]))
    os.execve(sys.executable, [sys.executable, os.path.abspath(script), *sys.argv[1:]], env)

VARIANTS = ("autograd_el", "fused_el", "fused_el_power", "fairseq_ls_ce", "torch_ce", "compiled_el", "liger_ce")
BASELINE = "fairseq_ls_ce"
FULL_SHAPES = ((4096, 6632), (8192, 10000), (8192, 32000))
QUICK_SHAPES = ((512, 1000), (1024, 3000))
FEATURE_VARIANTS = ("fairseq_ls_ce_features", "fused_el_logits", "torch_lce_ls0", "torch_lce_ls01", "linear_el",
                    "torch_ce_features", "cce", "liger_flce", "compiled_linear_el")
FEATURE_BASELINE = "fairseq_ls_ce_features"
CUDA_ONLY = {"liger_ce": "Liger-Kernel's Triton kernels run on CUDA only",
             "liger_flce": "Liger-Kernel's Triton kernels run on CUDA only"}
COMPILED = ("compiled_el", "compiled_linear_el")  # by default on CUDA only (see skip_reason)
NEEDS = {"fairseq_ls_ce": "fairseq", "fairseq_ls_ce_features": "fairseq", "liger_ce": "liger_kernel",
         "liger_flce": "liger_kernel", "cce": "cut_cross_entropy"}
MUTATES_INPUT = ("liger_ce",)  # writes its gradient over the logits: runs on a copy, restored before each step
SYNC_WARNING = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") warns
FEATURE_SHAPES = ((8192, 512, 10000), (8192, 512, 32000), (2048, 512, 128000))  # N, d, V (fits 24 GB)
QUICK_FEATURE_SHAPES = ((512, 64, 1000), (1024, 64, 3000))
EPS, LOG_END, PAD = 0.1, 0.75, 1
RESULT = "RESULT "


# --------------------------------------------------------------------------- one measurement (worker)
def _proc_status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/self/status")


def _make_inputs(n, v, dtype, device, seed=0):
    """Logits ~ N(0, 2^2) with the target's logit raised by 8 in half of the rows (so that many rows
    are confidently right, as late in training); 5% of the rows are padding."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = torch.randn(n, v, generator=gen).mul_(2.0)
    target = torch.randint(0, v, (n,), generator=gen)
    confident = torch.rand(n, generator=gen) < 0.5
    logits[confident, target[confident]] += 8.0
    target[torch.rand(n, generator=gen) < 0.05] = PAD
    return logits.to(device=device, dtype=dtype), target.to(device)


def _make_features(n, d, v, dtype, device, seed=0):
    """Features x (n, d) and an output layer weight (v, d) whose logits are like _make_inputs' (N(0, 2^2) off
    the target, the target's logit raised by 8 in half of the rows), and the same kind of targets."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(v, d, generator=gen).div_(d ** 0.5)
    x = torch.randn(n, d, generator=gen).mul_(2.0)
    target = torch.randint(0, v, (n,), generator=gen)
    confident = (torch.rand(n, generator=gen) < 0.5).nonzero().squeeze(1)
    w_target = weight.index_select(0, target[confident])
    x[confident] += (8.0 / w_target.pow(2).sum(-1)).unsqueeze(1) * w_target
    target[torch.rand(n, generator=gen) < 0.05] = PAD
    return (x.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype)), target.to(device)


def _make_case(n, v, d, dtype, device, seed=0):
    """(leaves, target): the logits (d None), or the features and the weight."""
    if d is None:
        logits, target = _make_inputs(n, v, dtype, device, seed)
        return (logits,), target
    return _make_features(n, d, v, dtype, device, seed)


def _features_loss_fn(variant, chunk_size=None):
    import torch.nn.functional as F

    el_kwargs = dict(log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD, reduction="sum",
                     smoothing_convention="fairseq")
    if variant == "fairseq_ls_ce_features":
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        return lambda x, w, t: label_smoothed_nll_loss(F.log_softmax(F.linear(x, w).float(), dim=-1), t, EPS,
                                                       ignore_index=PAD)[0]
    if variant == "fused_el_logits":
        from el_plugins.functional import encouraging_loss

        return lambda x, w, t: encouraging_loss(F.linear(x, w), t, implementation="fused", **el_kwargs)
    if variant in ("torch_lce_ls0", "torch_lce_ls01"):
        from torch.nn import LinearCrossEntropyOptions

        eps = 0.0 if variant == "torch_lce_ls0" else EPS
        return lambda x, w, t: F.linear_cross_entropy(x, w, t, ignore_index=PAD, reduction="sum", label_smoothing=eps,
                                                      options=LinearCrossEntropyOptions())
    if variant == "linear_el":
        from el_plugins.functional import linear_encouraging_loss

        return lambda x, w, t: linear_encouraging_loss(x, w, t, implementation="fused", chunk_size=chunk_size,
                                                       **el_kwargs)
    if variant == "torch_ce_features":
        return lambda x, w, t: F.cross_entropy(F.linear(x, w), t, label_smoothing=EPS, ignore_index=PAD,
                                               reduction="sum")
    if variant == "cce":
        from cut_cross_entropy import linear_cross_entropy

        def cce(x, w, t):  # no label smoothing in Cut Cross-Entropy; its Triton kernels on CUDA, inductor on a CPU
            return linear_cross_entropy(x, w, t, ignore_index=PAD, reduction="sum", impl=cce_impl(x.device.type))
        return cce
    if variant == "liger_flce":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda x, w, t: liger_fused_linear_cross_entropy(x, w, t, ignore_index=PAD, label_smoothing=EPS,
                                                                reduction="sum")
    if variant == "compiled_linear_el":
        import torch

        from el_plugins.functional import encouraging_loss

        return torch.compile(lambda x, w, t: encouraging_loss(F.linear(x, w), t, implementation="reference",
                                                              **el_kwargs))
    raise ValueError(variant)


def cce_impl(device_type):
    """Cut Cross-Entropy's implementation: its Triton kernels on CUDA, torch.compile elsewhere."""
    return "cce" if device_type == "cuda" else "torch_compile"


def _loss_fn(variant, chunk_size=None):
    import torch.nn.functional as F

    if variant in FEATURE_VARIANTS:
        return _features_loss_fn(variant, chunk_size)

    if variant == "autograd_el":
        from el_plugins.functional import encouraging_loss

        return lambda z, t: encouraging_loss(z, t, log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD,
                                             reduction="sum", smoothing_convention="fairseq",
                                             implementation="reference")
    if variant == "fused_el":
        from el_plugins.functional import encouraging_loss

        return lambda z, t: encouraging_loss(z, t, log_end=LOG_END, label_smoothing=EPS, ignore_index=PAD,
                                             reduction="sum", smoothing_convention="fairseq",
                                             implementation="fused", chunk_size=chunk_size)
    if variant == "fused_el_power":
        from el_plugins.functional import encouraging_loss

        return lambda z, t: encouraging_loss(z, t, bonus="power", bonus_gamma=2.0, label_smoothing=EPS,
                                             ignore_index=PAD, reduction="sum", smoothing_convention="fairseq",
                                             implementation="fused", chunk_size=chunk_size)
    if variant == "fairseq_ls_ce":
        from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

        return lambda z, t: label_smoothed_nll_loss(F.log_softmax(z.float(), dim=-1), t, EPS, ignore_index=PAD)[0]
    if variant == "torch_ce":
        return lambda z, t: F.cross_entropy(z, t, label_smoothing=EPS, ignore_index=PAD)
    if variant == "compiled_el":
        import torch

        from el_plugins.functional import encouraging_loss

        return torch.compile(lambda z, t: encouraging_loss(z, t, log_end=LOG_END, label_smoothing=EPS,
                                                           ignore_index=PAD, reduction="sum",
                                                           smoothing_convention="fairseq", implementation="reference"))
    if variant == "liger_ce":
        from liger_kernel.transformers.functional import liger_cross_entropy

        return lambda z, t: liger_cross_entropy(z, t, ignore_index=PAD, label_smoothing=EPS)
    raise ValueError(variant)


def skip_reason(variant, device, named=False):
    """Why ``variant`` cannot (or by default does not) run on ``device`` here, or None when it runs. ``named``: the
    user named it in --variants (the compiled variants then run on a CPU too)."""
    import importlib.util

    import torch
    import torch.nn.functional as F

    module = NEEDS.get(variant)
    if module and importlib.util.find_spec(module) is None:
        package = {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"}.get(module, module)
        return f"{package} is not installed"
    if variant in CUDA_ONLY and device != "cuda":
        return CUDA_ONLY[variant]
    if variant in ("torch_lce_ls0", "torch_lce_ls01") and not hasattr(F, "linear_cross_entropy"):
        return f"torch {torch.__version__} has no F.linear_cross_entropy (torch >= 2.13 has)"
    if variant in COMPILED and device != "cuda" and not named:
        return ("run on CUDA by default (on a small CPU inductor compiles each shape and dtype for tens of seconds): "
                "name it in --variants to measure it here")
    return None


def _step(fn, leaves, t, cuda, sync=True):
    import torch

    for leaf in leaves:
        leaf.grad = None
    loss = fn(*leaves, t)
    loss.backward()
    if cuda and sync:
        torch.cuda.synchronize()
    return loss.detach()


def _leaves(n, v, d, dtype, device, seed=0):
    leaves, target = _make_case(n, v, d, dtype, device, seed)
    return tuple(leaf.requires_grad_() for leaf in leaves), target


def _mark_rows_dynamic(leaves, target):
    """For a compiled variant warmed up on fewer rows than it is measured on: the row count as a dynamic size, so
    the measured call reuses the compiled graph instead of compiling (and counting the compiler's memory)."""
    import torch

    torch._dynamo.mark_dynamic(leaves[0], 0)
    torch._dynamo.mark_dynamic(target, 0)


def _error(exc):
    """One line naming an exception (its type and its message's first line)."""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def measure_memory(variant, n, v, dtype_name, device, chunk_size=None, d=None):
    """Peak extra memory (MiB) of one forward + backward of one variant, in this (fresh) process."""
    import torch

    dtype, cuda = getattr(torch, dtype_name), device == "cuda"
    fn = _loss_fn(variant, chunk_size)
    # warm-up on a small slice (imports, kernel compilation, thread pools) before measuring
    small, small_t = _leaves(min(n, 64), v, d, dtype, device, seed=1)
    if variant in COMPILED:
        _mark_rows_dynamic(small, small_t)
    _step(fn, small, small_t, cuda)
    del small, small_t
    leaves, target = _leaves(n, v, d, dtype, device)
    if cuda:
        return _cuda_peak_mib(fn, leaves, target)
    before = _proc_status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    _step(fn, leaves, target, cuda)
    return _proc_status_mib("VmHWM") - before


def _cuda_peak_mib(fn, leaves, target):
    """torch.cuda.max_memory_allocated() over memory_allocated() before one step, in MiB."""
    import gc

    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _step(fn, leaves, target, True)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def count_sync_warnings(caught):
    """How many of the caught warnings say a synchronizing CUDA operation ran (set_sync_debug_mode("warn"))."""
    return sum(1 for w in caught if SYNC_WARNING in str(getattr(w, "message", w)))


def count_host_syncs(step, set_mode=None):
    """Synchronizing CUDA operations (device-to-host copies such as .item(), nonzero, boolean masks; stream
    synchronisations) during step(), counted as torch.cuda.set_sync_debug_mode("warn") warns them (warnings of
    the backward pass, raised on autograd's device thread, are replayed on this one). ``set_mode`` replaces
    torch.cuda.set_sync_debug_mode (a test's fake)."""
    import warnings

    if set_mode is None:
        import torch

        set_mode = torch.cuda.set_sync_debug_mode
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_mode("warn")
        try:
            step()
        finally:
            set_mode("default")
    return count_sync_warnings(caught)


class _Restoring:
    """A variant that writes over its inputs (Liger's cross-entropy writes its gradient over the logits) gets
    leaves of its own, copied back from the shared ones before each step (outside the timed region)."""

    def __init__(self, leaves):
        import torch

        self.shared = leaves
        with torch.no_grad():
            self.own = tuple(leaf.detach().clone().requires_grad_() for leaf in leaves)

    def restore(self):
        import torch

        with torch.no_grad():
            for own, shared in zip(self.own, self.shared):
                own.copy_(shared)
        return self.own


def measure_time(variants, n, v, dtype_name, device, repeats, chunk_size=None, d=None, memory=False):
    """Seconds per forward + backward of each variant: a warm-up, then ``repeats`` rounds that run
    every variant once (in rotating order), so that all variants see the same machine load. On CUDA each step is
    timed with CUDA events, and the host synchronisations of one more step are counted; ``memory``: also the peak
    extra memory of one more step (CUDA). A variant whose construction or warm-up fails is left out of the rounds
    with its error. Returns {"times": {variant: [s, ...]}, "errors": {variant: text}, "host_syncs": {...},
    "peak_mib": {...}, "loss": {variant: the warm-up step's loss}}."""
    import torch

    dtype, cuda = getattr(torch, dtype_name), device == "cuda"
    leaves, target = _leaves(n, v, d, dtype, device)
    fns, errors, losses, own = {}, {}, {}, {}
    for variant in variants:
        try:
            fns[variant] = _loss_fn(variant, chunk_size)
            if variant in MUTATES_INPUT:
                own[variant] = _Restoring(leaves)
            args = own[variant].restore() if variant in own else leaves
            losses[variant] = float(_step(fns[variant], args, target, cuda))
        except Exception as exc:  # noqa: BLE001 - the error goes in the results, the other variants go on
            errors[variant] = _error(exc)
            fns.pop(variant, None)
            own.pop(variant, None)
            if cuda:
                torch.cuda.empty_cache()
    running = [variant for variant in variants if variant in fns]
    times = {variant: [] for variant in running}
    for round_ in range(repeats):
        order = running[round_ % max(len(running), 1):] + running[:round_ % max(len(running), 1)]
        for variant in order:
            args = own[variant].restore() if variant in own else leaves
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                _step(fns[variant], args, target, cuda, sync=False)
                end.record()
                end.synchronize()
                times[variant].append(start.elapsed_time(end) / 1000.0)
            else:
                start = time.perf_counter()
                _step(fns[variant], args, target, cuda)
                times[variant].append(time.perf_counter() - start)
    host_syncs, peak = {}, {}
    for variant in running:
        if cuda:
            args = own[variant].restore() if variant in own else leaves
            torch.cuda.synchronize()
            host_syncs[variant] = count_host_syncs(lambda: _step(fns[variant], args, target, cuda, sync=False))
            torch.cuda.synchronize()
        if memory and cuda:
            args = own[variant].restore() if variant in own else leaves
            peak[variant] = _cuda_peak_mib(fns[variant], args, target)
    for leaf in leaves:
        leaf.grad = None
    return {"times": times, "errors": errors, "host_syncs": host_syncs, "peak_mib": peak, "loss": losses}


# --------------------------------------------------------------------------- driver
def machine_info(device):
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ},
        "cpu": platform.processor() or "",
    }
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = models[0] if models else info["cpu"]
        info["logical_cpus"] = len(models)
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def peer_versions(variants, device):
    """The versions of the peers' packages this run used (and Cut Cross-Entropy's implementation)."""
    from importlib.metadata import PackageNotFoundError, version

    peers = {}
    for variant, package in (("liger_ce", "liger-kernel"), ("liger_flce", "liger-kernel"),
                             ("cce", "cut-cross-entropy")):
        if variant in variants and package not in peers:
            try:
                peers[package] = version(package)
            except PackageNotFoundError:
                continue
    if "cut-cross-entropy" in peers:
        peers["cut-cross-entropy impl"] = cce_impl(device)
    return peers


def run_worker(task, **spec):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(dict(spec, task=task))]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{task} worker exited {proc.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1][len(RESULT):])


def shape_name(r):
    return f"{r['n']}x{r['v']}" if r.get("d") is None else f"{r['n']}x{r['d']}x{r['v']}"


def format_table(rows):
    header = (f"{'device':6} {'dtype':8} {'shape':>16} {'variant':22} {'time ms':>9} {'peak MiB':>9} {'time/c':>7} "
              f"{'mem/c':>7}")
    out = [header, "-" * len(header)]
    for r in rows:
        if "error" in r or "skipped" in r:
            what = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            out.append(f"{r['device']:6} {r['dtype']:8} {shape_name(r):>16} {r['variant']:22} {what}")
            continue
        tr = f"{r['time_ratio']:.2f}" if r.get("time_ratio") is not None else "-"
        mr = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") is not None else "-"
        out.append(f"{r['device']:6} {r['dtype']:8} {shape_name(r):>16} {r['variant']:22} {1000 * r['time_s']:9.1f} "
                   f"{r['peak_mib']:9.1f} {tr:>7} {mr:>7}")
    return "\n".join(out)


VARIANT_NAMES = {"autograd_el": "autograd EL", "fused_el": "**fused EL**", "fairseq_ls_ce": "fairseq LS-CE",
                 "fused_el_power": "fused EL, bonus 'power' (gamma 2)",
                 "torch_ce": "torch CE (ls 0.1)",
                 "fairseq_ls_ce_features": "matmul + fairseq LS-CE", "fused_el_logits": "matmul + fused EL",
                 "torch_lce_ls0": "torch linear_cross_entropy, chunked (ls 0)",
                 "torch_lce_ls01": "torch linear_cross_entropy, chunked (ls 0.1)",
                 "linear_el": "**linear_encouraging_loss**",
                 "compiled_el": "torch.compile(reference EL)", "liger_ce": "Liger CE (ls 0.1)",
                 "torch_ce_features": "matmul + torch CE (ls 0.1)", "cce": "Cut Cross-Entropy (ls 0)",
                 "liger_flce": "Liger fused linear CE (ls 0.1)",
                 "compiled_linear_el": "torch.compile(matmul + reference EL)"}


def _ratio(x, bold):
    return "-" if x is None else (f"**{x:.2f}**" if bold else f"{x:.2f}")


def markdown_table(result):
    """The docs' table of a results file (quoted as printed here), with the line naming the code that produced
    it: the logits table, or with rows from --from-features the features table (ratios to LS-CE, to matmul + fused
    EL, and to torch's chunked linear_cross_entropy without smoothing)."""
    from el_plugins.provenance import describe

    rows = [r for r in result["results"] if "error" not in r and "skipped" not in r]
    features = bool(rows) and rows[0].get("d") is not None
    table = _features_markdown_table(rows) if features else _logits_markdown_table(rows)
    not_measured = not_measured_note(result["results"])
    if not_measured:
        table += "\n\n" + not_measured
    table += "\n\n" + (features_goals(rows) if features else logits_goals(rows))
    return table + f"\n\nProduced by {describe(result.get('produced_by'))}."


def not_measured_note(rows):
    """'Not measured: <variant> (<reason>); ...' for the rows skipped or failed, one entry per variant and reason
    (with the dtypes and shapes when not all of them); '' when every row was measured."""
    reasons = {}
    for r in rows:
        if "skipped" in r or "error" in r:
            why = r["skipped"] if "skipped" in r else f"failed: {r['error']}"
            reasons.setdefault((r["variant"], why), []).append(f"{r['dtype']} {shape_name(r)}")
    if not reasons:
        return ""
    cases = {f"{r['dtype']} {shape_name(r)}" for r in rows}
    parts = []
    for (variant, why), where in reasons.items():
        scope = "" if set(where) == cases else f", {', '.join(where)}"
        parts.append(f"{VARIANT_NAMES.get(variant, variant).replace('*', '')} ({why}{scope})")
    return "Not measured: " + "; ".join(parts) + "."


# the goals of linear_encouraging_loss (issue 19): (what, ratio key, at most, only at V >= this)
FEATURE_GOALS = (("extra peak memory at most 0.1x LS-CE's", "mem_ratio", 0.1, 32000),
                 ("extra peak memory at most 1.5x torch's chunked linear_cross_entropy without smoothing",
                  "mem_ratio_torch_chunked", 1.5, 32000),
                 ("time at most 1.1x the matmul + fused EL on the logits", "time_ratio_fused_logits", 1.1, 0),
                 ("time at most LS-CE's", "time_ratio", 1.0, 0))


# the goals of the fused op on the logits (issue 29): (what, variant, ratio key, at most, dtypes)
LOGITS_GOALS = (("time at most 0.35x fairseq LS-CE's", "fused_el", "time_ratio", 0.35, ("float32",)),
                ("time at most torch CE's", "fused_el", "time_ratio_torch_ce", 1.0, ("float16", "bfloat16")),
                ("extra peak memory at most torch CE's", "fused_el", "mem_ratio_torch_ce", 1.0,
                 ("float16", "bfloat16")),
                ("bonus 'power' (gamma 2): time at most 1.1x the default fused EL's", "fused_el_power",
                 "time_ratio_fused_el", 1.1, ("float32", "float16", "bfloat16")))


def logits_goals(rows):
    """One line per goal of the fused op on the logits: met or missed, on which rows (dtype, shape) and ratios."""
    from el_evidence.headlines import ratio_range

    lines = ["Goals of the fused op on the logits, from the rows above:", ""]
    for what, variant, key, limit, dtypes in LOGITS_GOALS:
        measured = [r for r in rows if r["variant"] == variant and r["dtype"] in dtypes and r.get(key) is not None]
        if not measured:
            lines.append(f"- {what} ({', '.join(dtypes)}): not measured")
            continue
        missed = [r for r in measured if round(r[key], 2) > limit]
        lines.append(f"- {what} ({', '.join(sorted({r['dtype'] for r in measured}, key=dtypes.index))}): " + (
            f"met on all {len(measured)} rows, {ratio_range([r[key] for r in measured])}"
            if not missed else f"missed on {len(missed)} of {len(measured)} rows: " +
            ", ".join(f"{r['dtype']} {shape_name(r)} {r[key]:.2f}x" for r in missed)))
    return "\n".join(lines)


def features_goals(rows):
    """One line per goal of linear_encouraging_loss: met or missed, on which rows (dtype, shape) and ratios."""
    from el_evidence.headlines import ratio_range

    lines = ["Goals of `linear_encouraging_loss`, from the rows above:", ""]
    for what, key, limit, min_v in FEATURE_GOALS:
        measured = [r for r in rows if r["variant"] == "linear_el" and r["v"] >= min_v and r.get(key) is not None]
        if not measured:
            lines.append(f"- {what}: not measured")
            continue
        missed = [r for r in measured if round(r[key], 2) > limit]
        where = f" (V >= {min_v})" if min_v else ""
        lines.append(f"- {what}{where}: " + (
            f"met on all {len(measured)} rows, {ratio_range([r[key] for r in measured])}"
            if not missed else f"missed on {len(missed)} of {len(measured)} rows: " +
            ", ".join(f"{r['dtype']} {shape_name(r)} {r[key]:.2f}x" for r in missed)))
    return "\n".join(lines)


def _logits_markdown_table(rows):
    out = ["| dtype | shape | variant | time ms | peak MiB | time / fairseq | memory / fairseq |",
           "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        bold = r["variant"] == "fused_el"
        out.append(f"| {r['dtype']} | {r['n']}x{r['v']} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {_ratio(r.get('time_ratio'), bold)} | "
                   f"{_ratio(r.get('mem_ratio'), bold)} |")
    return "\n".join(out)


def _features_markdown_table(rows):
    out = ["| dtype | N x d x V | variant | time ms | peak MiB | time / LS-CE | time / matmul + fused EL | "
           "memory / LS-CE | memory / torch chunked (ls 0) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bold = r["variant"] == "linear_el"
        out.append(f"| {r['dtype']} | {shape_name(r)} | {VARIANT_NAMES.get(r['variant'], r['variant'])} | "
                   f"{1000 * r['time_s']:.1f} | {r['peak_mib']:.1f} | {_ratio(r.get('time_ratio'), bold)} | "
                   f"{_ratio(r.get('time_ratio_fused_logits'), bold)} | {_ratio(r.get('mem_ratio'), bold)} | "
                   f"{_ratio(r.get('mem_ratio_torch_chunked'), bold)} |")
    return "\n".join(out)


def parse_shapes(text, features):
    """--shapes: comma-separated NxV (logits) or NxdxV (--from-features)."""
    want = 3 if features else 2
    try:
        shapes = tuple(tuple(int(x) for x in item.split("x")) for item in text.split(",") if item.strip())
    except ValueError:
        shapes = ()
    if not shapes or any(len(shape) != want or min(shape) < 1 for shape in shapes):
        raise ValueError(f"--shapes takes comma-separated {'NxdxV' if features else 'NxV'} of positive integers, "
                         f"got {text!r}")
    return shapes


def ratios(results, variant, baseline, key, value):
    """{key: results[variant][value] / results[baseline][value]} when both were measured, else {}."""
    base, res = results.get(baseline), results[variant]
    if not base or any(k in r for k in ("error", "skipped") for r in (base, res)) or not base.get(value) \
            or res.get(value) is None:
        return {}
    return {key: res[value] / base[value]}


def main(argv=None):
    run_on_this_checkout()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="small shapes and 2 repeats: a smoke run")
    parser.add_argument("--from-features", action="store_true",
                        help="the features table: input (N, d) and the output layer's weight (V, d), the matrix "
                             "product included (default shapes: N x 512 x V for 8192x10000, 8192x32000, 2048x128000)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per shape (default 5, 3 above 1e8 elements; 2 with --quick)")
    parser.add_argument("--shapes", help="comma-separated NxV, e.g. 4096x6632,8192x32000 (NxdxV with --from-features)")
    parser.add_argument("--variants", help=f"comma-separated (default {','.join(VARIANTS)}; with --from-features "
                                           f"{','.join(FEATURE_VARIANTS)})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtypes", help="comma-separated logits dtypes (default: float32,float16 on CPU, "
                                         "float32,float16,bfloat16 on CUDA; float32,bfloat16 on CPU with "
                                         "--from-features)")
    parser.add_argument("--markdown", metavar="RESULTS_JSON",
                        help="print the README's table of a results file and exit")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="rows per chunk of fused_el's torch path (of linear_el with --from-features)")
    parser.add_argument("--memory-method", choices=("auto", "subprocess", "in-process"), default="auto",
                        help="peak memory in a fresh subprocess per variant (auto on a CPU) or in the timing "
                             "subprocess after its rounds (auto on CUDA, where the allocator's statistics are exact)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.markdown:
        with open(args.markdown) as f:
            print(markdown_table(json.load(f)))
        return
    if args.worker:
        spec = json.loads(args.worker)
        task = spec.pop("task")
        result = measure_memory(**spec) if task == "memory" else measure_time(**spec)
        print(RESULT + json.dumps(result), flush=True)
        return

    import torch

    features = args.from_features
    all_variants, baseline = (FEATURE_VARIANTS, FEATURE_BASELINE) if features else (VARIANTS, BASELINE)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if features:
        shapes = QUICK_FEATURE_SHAPES if args.quick else FEATURE_SHAPES
    else:
        shapes = tuple((n, None, v) for n, v in (QUICK_SHAPES if args.quick else FULL_SHAPES))
    if args.shapes:
        try:
            shapes = parse_shapes(args.shapes, features)
        except ValueError as error:
            parser.error(str(error))
        if not features:
            shapes = tuple((n, None, v) for n, v in shapes)
    if features:
        dtypes = ("float32", "bfloat16") if device == "cpu" else ("float32", "float16", "bfloat16")
    else:
        dtypes = ("float32", "float16", "bfloat16")
    if args.dtypes:
        dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
        bad = [d for d in dtypes if d not in ("float32", "float16", "bfloat16", "float64")]
        if bad or not dtypes:
            parser.error(f"--dtypes takes float32, float16, bfloat16 or float64, got {args.dtypes!r}")
    variants = [v for v in (args.variants or ",".join(all_variants)).split(",") if v]
    unknown = [v for v in variants if v not in all_variants]
    if unknown:
        parser.error(f"--variants takes {', '.join(all_variants)}{' (with --from-features)' if features else ''}, "
                     f"got {', '.join(unknown)}")
    if args.memory_method == "in-process" and device != "cuda":
        parser.error("--memory-method in-process needs CUDA (a CPU process's peak RSS is not per variant)")
    in_process = device == "cuda" and args.memory_method != "subprocess"
    skipped = {variant: reason for variant in variants
               if (reason := skip_reason(variant, device, named=bool(args.variants)))}
    for variant, reason in skipped.items():
        print(f"skipping {variant}: {reason}", flush=True)
    running = [variant for variant in variants if variant not in skipped]
    rows = []
    load_before = os.getloadavg()
    for dtype_name in dtypes:
        for n, d, v in shapes:
            elements = n * v
            repeats = args.repeats or (2 if args.quick else (3 if elements > 10**8 else 5))
            if device == "cuda" and not args.repeats and not args.quick:
                repeats = 20  # milliseconds a step: more rounds cost little
            common = dict(n=n, v=v, dtype_name=dtype_name, device=device, chunk_size=args.chunk_size)
            if features:
                common["d"] = d
            results = {variant: ({"skipped": skipped[variant]} if variant in skipped else {}) for variant in variants}
            if running:
                try:
                    measured = run_worker("time", variants=running, repeats=repeats, memory=in_process, **common)
                except RuntimeError as error:
                    measured = {"times": {}, "errors": {variant: str(error) for variant in running}}
                for variant in running:
                    res = results[variant]
                    if variant in measured.get("errors", {}):
                        res["error"] = measured["errors"][variant]
                        continue
                    res.update(time_s=statistics.median(measured["times"][variant]),
                               times_s=measured["times"][variant])
                    if variant in measured.get("loss", {}):
                        res["loss"] = measured["loss"][variant]
                    if variant in measured.get("host_syncs", {}):
                        res["host_syncs"] = measured["host_syncs"][variant]
                    if variant in measured.get("peak_mib", {}):
                        res["peak_mib"] = measured["peak_mib"][variant]
            for variant in running:
                if in_process or "error" in results[variant]:
                    continue
                try:
                    results[variant]["peak_mib"] = run_worker("memory", variant=variant, **common)
                except RuntimeError as error:
                    results[variant]["error"] = str(error)
            for variant, res in results.items():
                row = dict(device=device, dtype=dtype_name, n=n, v=v, variant=variant, **res)
                if features:
                    row["d"] = d
                row.update(ratios(results, variant, baseline, "time_ratio", "time_s"))
                row.update(ratios(results, variant, baseline, "mem_ratio", "peak_mib"))
                if features:
                    row.update(ratios(results, variant, "fused_el_logits", "time_ratio_fused_logits", "time_s"))
                    row.update(ratios(results, variant, "torch_lce_ls0", "mem_ratio_torch_chunked", "peak_mib"))
                else:
                    row.update(ratios(results, variant, "torch_ce", "time_ratio_torch_ce", "time_s"))
                    row.update(ratios(results, variant, "torch_ce", "mem_ratio_torch_ce", "peak_mib"))
                    row.update(ratios(results, variant, "fused_el", "time_ratio_fused_el", "time_s"))
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)
            if args.out:
                write_results(partial_path(args.out), dict(
                    results_document(args, device, features, baseline, in_process, variants, rows, load_before),
                    partial=True))
    table = format_table(rows)
    print()
    print(table)
    print(f"\ntime/c, mem/c: ratio to {baseline} (c). Peak memory: {memory_method(device, in_process)}.")
    if args.out:
        document = results_document(args, device, features, baseline, in_process, variants, rows, load_before)
        write_results(args.out, document)
        partial = partial_path(args.out)
        if os.path.exists(partial):
            os.unlink(partial)
        print(f"written {args.out}")


def memory_method(device, in_process):
    if device == "cuda":
        return ("torch.cuda.max_memory_allocated() - memory_allocated() before the call" +
                (", in the timing subprocess after its rounds" if in_process else ", one fresh subprocess per variant"))
    return ("growth of peak RSS (VmHWM, reset via /proc/self/clear_refs) over RSS before the call, "
            "one fresh subprocess per variant")


def partial_path(out):
    """Where the rows measured so far go while a run is under way (--out's name + '.partial'), so that a run cut
    short keeps what it measured; removed when --out itself is written."""
    return out + ".partial"


def results_document(args, device, features, baseline, in_process, variants, rows, load_before):
    reduction = "sum (every variant)" if features else "sum (EL, fairseq), mean (torch_ce, liger_ce)"
    settings = {"label_smoothing": EPS, "log_end": LOG_END, "padding_fraction": 0.05,
                "reduction": reduction, "baseline": baseline, "from_features": features,
                "memory_method": memory_method(device, in_process), "quick": args.quick, "chunk_size": args.chunk_size}
    if device == "cuda":
        settings["time_method"] = "CUDA events around each step"
        settings["host_syncs_method"] = ("synchronizing CUDA operations of one step, counted with "
                                         "torch.cuda.set_sync_debug_mode('warn')")
    peers = peer_versions(variants, device)
    if peers:
        settings["peers"] = peers
    from el_plugins.provenance import provenance

    return {
        "machine": dict(machine_info(device), load_average_before=load_before, load_average_after=os.getloadavg()),
        "settings": settings,
        "results": rows,
        "produced_by": provenance(),
    }


def write_results(path, document):
    from el_plugins.files import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, document)  # all or nothing

if __name__ == "__main__":
    main()
