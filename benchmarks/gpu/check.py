#!/usr/bin/env python3
"""The GPU check of issue 29 in one call of a lent GPU machine (run it through run.sh beside this file).

    bash benchmarks/gpu/run.sh                      # on the GPU machine: results in $OUT
    bash benchmarks/gpu/run.sh --dry-run --out DIR  # here, on a CPU: every step with tiny shapes, nothing installed
    python3 benchmarks/gpu/check.py --plan          # print the steps, their budgets and commands

Steps, in order of what matters most (each one time-boxed: a step that fails or runs out of time is recorded and
the next one runs; a step that would start with less than MIN_STEP_S left is recorded as skipped):

    machine          the GPU, driver, Python, torch, Triton
    install          the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh fills it here): liger-kernel,
                     cut-cross-entropy, timm, fairseq-fixed (built here for cp312 and torch 2.11) and what it needs,
                     el-plugins; then which versions import (el_plugins from this checkout: PYTHONPATH)
    tests_cuda       pytest -m cuda tests/
    tests_fused      tests/test_fused.py and tests/test_fused_linear.py (the tests not marked cuda)
    loss_32000       loss_benchmark.py on the logits, bfloat16 and float16, 8192 x 32000, every variant
    features_32000   loss_benchmark.py --from-features, bfloat16 and float16, 8192 x 4096 x 32000
    timm_amp         timm's own train.py (carried as .whl/timm_train.py) through el-timm-train: resnet18 on the
                     digits at 32 px, one epoch (11 steps), --amp --loss el
    fairseq_fp16     fairseq-train --fp16 of a tiny transformer on the toy corpus, 30 updates, EL with smoothing
    loss_128000      as loss_32000 at 8192 x 128000
    features_128000  as features_32000 at 8192 x 4096 x 128000

It writes two files into the output folder: gpu-results.json (every step's status, time and parsed results; all
or nothing) and gpu-logs.txt (each step's command and output). benchmarks/gpu/report.py turns the results file
into docs/performance.md's GPU table. Only the Python standard library is used here; the steps use the machine's.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EVIDENCE = os.path.join(REPO, "evidence")  # el_evidence: the test helpers, beside the package in the checkout
WHL = os.path.join(REPO, ".whl")
RESULTS = "gpu-results.json"
LOGS = "gpu-logs.txt"
SCHEMA = 1
DEFAULT_BUDGET_S = 450  # the call may take 8 minutes: this leaves time for starting Python and copying the files
MIN_STEP_S = 15
RESERVE_S = 8  # kept back for writing the results
LOG_TAIL_BYTES = 200_000  # per step, in gpu-logs.txt
TIMM_TRAIN_PY = os.path.join(WHL, "timm_train.py")
MANIFEST = os.path.join(WHL, "manifest.json")
# tests not run there, and why
DESELECT_ALWAYS = {
    "tests/test_reproduce.py::test_el_reproduce_both_setups_cuda":
        "needs MNIST, which el-data fetches from the package cache scripts/setup.sh fills (no network there)",
    "tests/test_fused.py::test_triton_interpreted":
        "Triton's interpreter on CPU tensors, CI's stand-in for the CUDA kernel tests that run there; Triton 3.6's "
        "interpreter fails on numpy >= 2.4 (the machine has 2.5: 'only 0-dimensional arrays can be converted')",
    "tests/test_fused_linear.py::test_triton_interpreted":
        "as tests/test_fused.py::test_triton_interpreted",
}
DESELECT_WITHOUT_LCE = {
    "tests/test_fused_linear.py::test_bonus_weight_zero_is_torchs_linear_cross_entropy":
        "compares with torch's F.linear_cross_entropy, which torch < 2.13 lacks (the machine has 2.11)",
}
# what the digits folder and the toy corpus are made with (el_plugins' own helpers, from this checkout)
DIGITS_PY = ("import sys; from el_plugins.demo.digits import write_digits_image_folder; "
             "print(write_digits_image_folder(sys.argv[1], size=32))")
TOY_CORPUS_PY = ("import sys; from el_plugins.demo.toy_corpus import write_corpus; "
                 "write_corpus(sys.argv[1], sizes=(('train', 600), ('valid', 60), ('test', 40)), seed=1)")
PROBE_PY = r"""
import json, os, platform, subprocess, sys
out = {"python": platform.python_version(), "executable": sys.executable, "cpus": os.cpu_count(),
       "platform": platform.platform()}
try:
    import torch
    out.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), torch_cuda=torch.version.cuda)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
except Exception as e:
    out["torch_error"] = repr(e)
from importlib.metadata import version, PackageNotFoundError
versions = {}
for name in ("torch", "triton", "numpy", "timm", "fairseq-fixed", "liger-kernel", "cut-cross-entropy", "el-plugins",
             "transformers", "hydra-core", "omegaconf"):
    try:
        versions[name] = version(name)
    except PackageNotFoundError:
        versions[name] = None
out["versions"] = versions
imports = {}
for module in ("el_plugins", "fairseq", "timm", "liger_kernel", "cut_cross_entropy", "triton"):
    try:
        m = __import__(module)
        imports[module] = os.path.dirname(os.path.abspath(m.__file__))
    except Exception as e:
        imports[module] = "ERROR " + repr(e)[:300]
out["imports"] = imports
try:
    out["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20).stdout.strip()
except Exception as e:
    out["nvidia_smi"] = "unavailable: " + repr(e)[:200]
print("PROBE " + json.dumps(out))
"""


# --------------------------------------------------------------------------- parsing what the steps print
def parse_junit(path):
    """Counts, failures and skip reasons of a pytest --junitxml report ({} when there is none)."""
    if not os.path.isfile(path):
        return {}
    root = ET.parse(path).getroot()
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures, skips = [], {}
    for case in root.iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        counts["tests"] += 1
        counts[outcome] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if outcome in ("failed", "errors"):
            element = case.find("failure") if outcome == "failed" else case.find("error")
            lines = (element.get("message") or element.text or "").strip().splitlines()
            failures.append({"test": name, "message": lines[0][:400] if lines else ""})
        elif outcome == "skipped":
            reason = (case.find("skipped").get("message") or "").strip()[:200]
            skips[reason] = skips.get(reason, 0) + 1
    # collection errors are <testcase> elements with an <error> too: counted above
    return {"counts": counts, "failures": failures, "skip_reasons": skips}


def parse_collected(output):
    """'N tests collected' (pytest --collect-only -q) -> N, or None."""
    match = re.search(r"(\d+)(?:/\d+)? tests? collected", output) or re.search(r"^(\d+) tests? collected", output, re.M)
    return int(match.group(1)) if match else None


def parse_timm_log(output):
    """The per-step training losses of timm train.py's log, the --result block's last epoch, and the lines that
    name the loss (el-timm-train says which it set up)."""
    losses = [float(x) for x in re.findall(r"^Train: \d+ \[.*?\]\s+Loss:\s+([-\d.naif]+)", output, re.M)]
    result = None
    match = re.search(r"--result\s*(\[.*\])", output, re.S)
    if match:
        try:
            result = json.loads(match.group(1))[-1]
        except (ValueError, IndexError):
            result = None
    loss_lines = [line.strip() for line in output.splitlines()
                  if re.search(r"encouraging|loss_type|criterion", line, re.I)][:5]
    criterion = re.search(r"criterion=(\w+)", output)
    return {"train_losses": losses, "result": result, "loss_lines": loss_lines,
            "criterion": criterion.group(1) if criterion else None,
            "finite": bool(losses) and all(v == v and abs(v) != float("inf") for v in losses)}


def parse_fairseq_log(output):
    """fairseq-train's train_inner records (--log-format json --log-interval 1): losses, loss scales, words/s,
    and the criterion it built."""
    records = []
    for raw in re.findall(r"\| train_inner \| (\{.*\})", output):
        try:
            records.append(json.loads(raw))
        except ValueError:
            continue
    criterion = re.search(r"criterion: (\w+)", output)

    def floats(key):
        return [float(r[key]) for r in records if key in r]
    losses = floats("loss")
    return {"updates": len(records), "losses": losses, "loss_scales": floats("loss_scale"), "wps": floats("wps"),
            "criterion": criterion.group(1) if criterion else None,
            "finite": bool(losses) and all(v == v and abs(v) != float("inf") for v in losses)}


def read_benchmark(path):
    """A loss_benchmark.py results file, or the rows it had measured when it was cut short (its .partial)."""
    for candidate, partial in ((path, False), (path + ".partial", True)):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                doc = json.load(f)
            doc["partial"] = partial
            return doc
    return None


# --------------------------------------------------------------------------- the code that runs there
def tree_digest(root=REPO, folders=("el_plugins", "benchmarks", "tests"), files=("setup.py",)):
    """One sha256 over the files (path and content) of ``folders`` and ``files``, __pycache__, *.pyc, *.partial
    and results of runs left out: the same on this machine and the GPU machine when the same code travelled."""
    digest = hashlib.sha256()
    paths = [os.path.join(root, f) for f in files if os.path.isfile(os.path.join(root, f))]
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.endswith(".egg-info"))
            paths += [os.path.join(dirpath, f) for f in filenames
                      if not f.endswith((".pyc", ".partial")) and f != "_build_info.json"]
    for path in sorted(paths):
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, root).encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def code_state():
    """What code ran: the manifest fetch_wheels.sh wrote (the commit it was run at), whether the tree here is the
    one it hashed, and git's own answer where .git travelled."""
    state = {"tree_sha256": tree_digest()}
    try:
        with open(MANIFEST) as f:
            manifest = json.load(f)
        state["manifest"] = {k: manifest.get(k) for k in ("git_commit", "git_dirty", "tree_sha256", "created_utc")}
        state["same_tree_as_manifest"] = manifest.get("tree_sha256") == state["tree_sha256"]
    except (OSError, ValueError):
        state["manifest"] = None
    try:
        state["git_commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True, check=True).stdout.strip()
        state["git_dirty"] = bool(subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "el_plugins",
                                                  "benchmarks", "tests"], stdout=subprocess.PIPE,
                                                 stderr=subprocess.DEVNULL, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        manifest = state.get("manifest") or {}
        state["git_commit"] = manifest.get("git_commit")
        state["git_dirty"] = (manifest.get("git_dirty") or not state.get("same_tree_as_manifest")) \
            if manifest else None
    return state


def carried_wheels():
    return sorted(glob.glob(os.path.join(WHL, "*.whl")))


# --------------------------------------------------------------------------- running steps
class Run:
    """The steps' shared state: the deadline, the results so far, the log, the environment."""

    def __init__(self, out, budget_s, dry_run, python, work):
        self.out, self.dry_run, self.python, self.work = out, dry_run, python, work
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.budget_s = budget_s
        self.steps = []
        self.data = {}
        self.log_path = os.path.join(out, LOGS)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        paths = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (REPO, EVIDENCE)]
        # this checkout's el_plugins, benchmarks, tests, and its evidence (el_evidence: the tests' helpers)
        self.env["PYTHONPATH"] = os.pathsep.join([REPO, EVIDENCE, *paths])
        with open(self.log_path, "w") as f:
            f.write(f"# benchmarks/gpu/check.py {'--dry-run ' if dry_run else ''}(budget {budget_s} s)\n")

    def left(self):
        return self.deadline - time.monotonic() - RESERVE_S

    def log(self, text):
        with open(self.log_path, "a", errors="replace") as f:
            f.write(text)

    def record(self, name, status, seconds=0.0, budget=None, **extra):
        step = {"name": name, "status": status, "seconds": round(seconds, 1), "budget_s": budget, **extra}
        self.steps.append(step)
        print(f"[gpu-check] {name}: {status} ({step['seconds']} s)" +
              (f": {extra['reason']}" if extra.get("reason") else ""), flush=True)
        return step

    def command(self, name, argv, budget, cwd=REPO, env=None, record=True):
        """Run one command within min(budget, time left); returns (status, output, seconds)."""
        left = self.left()
        if left < MIN_STEP_S:
            if record:
                self.record(name, "skipped", budget=budget, reason=f"no time left ({max(left, 0):.0f} s)")
            return "skipped", "", 0.0
        timeout = min(budget, left)
        start = time.monotonic()
        self.log(f"\n\n===== {name} (budget {budget} s, limit {timeout:.0f} s)\n$ {' '.join(map(str, argv))}\n")
        try:
            proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=dict(self.env, **(env or {})),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            seconds = time.monotonic() - start
            if record:
                self.record(name, "failed", seconds, budget, reason=f"could not start: {error}")
            return "failed", str(error), seconds
        try:
            output, _ = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()
            status = "timeout"
        seconds = time.monotonic() - start
        text = output.decode("utf-8", errors="replace")
        self.log(text[-LOG_TAIL_BYTES:] + f"\n----- {name}: {status}, exit {proc.returncode}, {seconds:.1f} s\n")
        if record:
            self.record(name, status, seconds, budget, exit=proc.returncode,
                        **({"reason": _last_line(text)} if status != "ok" else {}))
        return status, text, seconds

    def finish(self, complete=True):
        """Write the results file (all or nothing): after each step with complete=False, so that a call cut short
        still returns the steps done, and at the end."""
        if not hasattr(self, "code"):
            self.code = code_state()
        document = {"schema": SCHEMA, "what": "benchmarks/gpu/check.py: issue 29's GPU check in one call",
                    "dry_run": self.dry_run, "complete": complete, "started_utc": self.started_utc,
                    "wall_seconds": round(time.monotonic() - self.started, 1), "budget_s": self.budget_s,
                    "code": self.code, "steps": self.steps, **self.data}
        write_json_atomically(os.path.join(self.out, RESULTS), document)
        return document


def _kill_group(proc):
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def write_json_atomically(path, obj, indent=1):
    """Write the whole file or nothing: a temporary file in the same folder, then renamed over ``path``
    (scripts/check_torch_versions.py writes its results through this one too)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- the steps
def step_machine(run):
    status, text, seconds = run.command("machine", [run.python, "-c", PROBE_PY], 40, record=False)
    probe = _probe(text)
    run.data["machine"] = probe
    run.record("machine", status if probe else "failed", seconds, 40,
               **({} if probe else {"reason": _last_line(text)}))


def _probe(text):
    lines = [line for line in text.splitlines() if line.startswith("PROBE ")]
    return json.loads(lines[-1][len("PROBE "):]) if lines else None


def install_command(run, target=None):
    wheels = carried_wheels()
    if run.dry_run:  # whether pip would install them on CPython 3.12 (x86-64 Linux), installing nothing
        platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                                 "linux_x86_64") for a in ("--platform", p)]
        return [run.python, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps", "--only-binary=:all:",
                "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", *platforms, "--target",
                os.path.join(run.work, "dry-site"), "--disable-pip-version-check", *wheels]
    return [run.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--upgrade", "--disable-pip-version-check", *(["--target", target] if target else []), *wheels]


def step_install(run):
    wheels = carried_wheels()
    if not wheels:
        run.record("install", "failed", budget=90, reason=f"no wheels in {WHL}: run benchmarks/gpu/fetch_wheels.sh "
                                                            "before the call")
    else:
        status, text, seconds = run.command("install", install_command(run), 90, record=False)
        fallback = None
        if status == "failed" and not run.dry_run:
            # a venv that is not writable: a folder of its own, made a site directory (its .pth files run) by a
            # sitecustomize module; console scripts then live in its bin/
            site = os.path.join(run.work, "site")
            hook = os.path.join(run.work, "site-hook")
            os.makedirs(hook, exist_ok=True)
            with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
                f.write(f"import site\nsite.addsitedir({site!r})\n")
            status, text2, seconds2 = run.command("install", install_command(run, site), 90, record=False)
            text, seconds, fallback = text + text2, seconds + seconds2, site
            if status == "ok":
                run.env["PYTHONPATH"] = os.pathsep.join([REPO, EVIDENCE, hook, site])
                run.env["PATH"] = os.pathsep.join([os.path.join(site, "bin"), run.env.get("PATH", "")])
        run.record("install", status, seconds, 90, wheels=[os.path.basename(w) for w in wheels],
                   **({"target": fallback} if fallback else {}),
                   **({"reason": _last_line(text)} if status != "ok" else {}))
    status, text, seconds = run.command("packages", [run.python, "-c", PROBE_PY], 40, record=False)
    probe = _probe(text)
    run.data["packages"] = probe and {"versions": probe.get("versions"), "imports": probe.get("imports")}
    run.record("packages", "ok" if probe else "failed", seconds, 40, **({} if probe else {"reason": _last_line(text)}))


def has_module(run, module):
    try:
        return subprocess.run([run.python, "-c", f"import {module}"], env=run.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def torch_has_linear_cross_entropy(run):
    try:
        return subprocess.run([run.python, "-c", "import torch.nn.functional as F; "
                               "raise SystemExit(0 if hasattr(F, 'linear_cross_entropy') else 1)"], env=run.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def pytest_command(run, name, selection, deselect, budget_s):
    junit = os.path.join(run.work, f"{name}.xml")
    argv = [run.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", f"--junitxml={junit}",
            "--continue-on-collection-errors", *(f"--deselect={d}" for d in deselect), *selection]
    if run.dry_run:
        argv.insert(argv.index("-q"), "--collect-only")
    elif has_module(run, "pytest_timeout"):  # the plugin loads itself; a test that hangs fails alone
        argv.insert(argv.index("-q"), f"--timeout={max(budget_s // 2, 30)}")
    return argv, junit


def step_tests(run, name, selection, budget):
    deselect = dict(DESELECT_ALWAYS)
    if not torch_has_linear_cross_entropy(run):
        deselect.update(DESELECT_WITHOUT_LCE)
    argv, junit = pytest_command(run, name, selection, sorted(deselect), budget)
    status, text, seconds = run.command(name, argv, budget, record=False)
    report = {} if run.dry_run else parse_junit(junit)  # --collect-only: no test ran
    extra = {"deselected": deselect, "summary": _last_line(text)}
    if run.dry_run:
        extra["collected"] = parse_collected(text)
        extra["deselect_ids_exist"] = _deselected_ids_exist(deselect)
    if report:
        extra.update(report)
    run.data.setdefault("tests", {})[name] = extra
    if status == "ok" and report and (report["counts"]["failed"] or report["counts"]["errors"]):
        status = "failed"
    run.record(name, status, seconds, budget, **({"reason": extra["summary"]} if status != "ok" else {}))


def _deselected_ids_exist(deselect):
    """Whether each deselected test id names a test that exists (pytest ignores unknown ids silently)."""
    found = {}
    for test_id in deselect:
        path, _, function = test_id.partition("::")
        try:
            with open(os.path.join(REPO, path)) as f:
                found[test_id] = re.search(rf"^def {re.escape(function)}\(", f.read(), re.M) is not None
        except OSError:
            found[test_id] = False
    return found


def bench_argv(run, features, v):
    out = os.path.join(run.work, f"{'features' if features else 'loss'}-{v}.json")
    argv = [run.python, os.path.join(REPO, "benchmarks", "loss_benchmark.py"), "--out", out]
    if features:
        argv.append("--from-features")
    if run.dry_run:
        shape = f"64x32x{v // 64}" if features else f"64x{v // 64}"
        argv += ["--device", "cpu", "--dtypes", "bfloat16", "--shapes", shape, "--repeats", "1"]
    else:
        shape = f"8192x4096x{v}" if features else f"8192x{v}"
        argv += ["--device", "cuda", "--dtypes", "bfloat16,float16", "--shapes", shape, "--repeats", "10"]
    return argv, out


def step_benchmark(run, features, v, budget):
    name = f"{'features' if features else 'loss'}_{v}"
    argv, out = bench_argv(run, features, v)
    status, text, seconds = run.command(name, argv, budget, record=False)
    doc = read_benchmark(out)
    if doc is not None:
        run.data.setdefault("benchmarks", {})[name] = doc
    extra = {}
    if doc is not None:
        rows = doc.get("results", [])
        extra = {"rows": len(rows), "measured": sum(1 for r in rows if "time_s" in r),
                 "skipped_rows": sum(1 for r in rows if "skipped" in r),
                 "error_rows": sum(1 for r in rows if "error" in r), "partial": doc["partial"]}
    if status != "ok":
        extra["reason"] = _last_line(text)
    run.record(name, status, seconds, budget, **extra)


def step_timm(run, budget):
    name = "timm_amp"
    if not os.path.isfile(TIMM_TRAIN_PY):
        run.record(name, "skipped", budget=budget, reason=f"{os.path.relpath(TIMM_TRAIN_PY, REPO)} was not carried "
                                                          "(fetch_wheels.sh --timm-train-py PATH)")
        return
    digits = os.path.join(run.work, "digits")
    status, text, seconds = run.command(name, [run.python, "-c", DIGITS_PY, digits], 30, record=False)
    if status != "ok":
        run.record(name, status, seconds, budget, reason="digits: " + _last_line(text))
        return
    argv = [run.python, "-m", "el_plugins.timm_plugin.launcher", TIMM_TRAIN_PY, digits, "--num-classes", "10",
            "--img-size", "32", "--epochs", "1", "-b", "128", "--amp", "--loss", "el", "--output",
            os.path.join(run.work, "timm"), "--log-interval", "1", "--warmup-epochs", "0", "--opt", "adamw",
            "--lr", "1e-3", "--checkpoint-hist", "1", "--seed", "0"]
    if run.dry_run:
        argv += ["--device", "cpu", "--amp-dtype", "bfloat16", "--model", "test_resnet", "--workers", "0",
                 "--no-prefetcher"]
    else:
        argv += ["--device", "cuda", "--model", "resnet18", "--workers", "4"]
    status, text, seconds2 = run.command(name, argv, max(budget - seconds, 1), record=False)
    parsed = parse_timm_log(text)
    run.data["timm"] = dict(parsed, command=" ".join(map(str, argv[1:])).replace(REPO + os.sep, ""))
    if status == "ok" and not parsed["finite"]:
        status = "failed"
    run.record(name, status, seconds + seconds2, budget, steps=len(parsed["train_losses"]),
               **({"reason": _last_line(text)} if status != "ok" else {}))


def step_fairseq(run, budget):
    name = "fairseq_fp16"
    if not has_module(run, "fairseq"):
        run.record(name, "skipped", budget=budget, reason="fairseq does not import (its wheel was not carried or "
                                                          "does not load: see the packages step)")
        return
    root = os.path.join(run.work, "toy")
    started = time.monotonic()
    status, text, _ = run.command(name, [run.python, "-c", TOY_CORPUS_PY, os.path.join(root, "raw")], 30,
                                  record=False)
    if status == "ok":
        status, text, _ = run.command(name, [
            run.python, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "en",
            "--trainpref", f"{root}/raw/train", "--validpref", f"{root}/raw/valid", "--destdir", f"{root}/bin",
            "--workers", "1"], 60, record=False)
    if status != "ok":
        run.record(name, status, time.monotonic() - started, budget, reason="toy data: " + _last_line(text))
        return
    from_tiny = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                 "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                 "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    argv = [run.python, "-m", "fairseq_cli.train", f"{root}/bin", *from_tiny, "--optimizer", "adam", "--lr", "0.002",
            "--max-tokens", "2000", "--criterion", "label_smoothed_encouraging_loss", "--label-smoothing", "0.1",
            "--log-end", "0.75", "--log-format", "json", "--log-interval", "1", "--no-progress-bar",
            "--num-workers", "0", "--no-epoch-checkpoints", "--disable-validation", "--seed", "1",
            "--save-dir", f"{root}/ckpt"]
    argv += ["--cpu", "--max-update", "3"] if run.dry_run else ["--fp16", "--max-update", "30"]
    left = budget - (time.monotonic() - started)
    status, text, _ = run.command(name, argv, max(left, 1), record=False)
    parsed = parse_fairseq_log(text)
    run.data["fairseq"] = dict(parsed, command=" ".join(map(str, argv[3:])))
    if status == "ok" and not parsed["finite"]:
        status = "failed"
    run.record(name, status, time.monotonic() - started, budget, updates=parsed["updates"],
               **({"reason": _last_line(text)} if status != "ok" else {}))


STEPS = (  # name, budget (s), what it runs; expected on an H100 machine (16 cores): ~410 s in all
    ("machine", 40, step_machine),
    ("install", 120, step_install),
    ("tests_cuda", 60, lambda run: step_tests(run, "tests_cuda", ["-m", "cuda", "tests/"], 60)),
    ("tests_fused", 60, lambda run: step_tests(run, "tests_fused", ["-m", "not cuda", "tests/test_fused.py",
                                                                     "tests/test_fused_linear.py"], 60)),
    ("loss_32000", 65, lambda run: step_benchmark(run, False, 32000, 65)),
    ("features_32000", 90, lambda run: step_benchmark(run, True, 32000, 90)),
    ("timm_amp", 40, lambda run: step_timm(run, 40)),
    ("fairseq_fp16", 45, lambda run: step_fairseq(run, 45)),
    ("loss_128000", 65, lambda run: step_benchmark(run, False, 128000, 65)),
    ("features_128000", 90, lambda run: step_benchmark(run, True, 128000, 90)),
)


def plan():
    lines = [f"{name:16} budget {budget:4d} s" for name, budget, _ in STEPS]
    return "\n".join(lines) + f"\nwhole run: at most the --budget (default {DEFAULT_BUDGET_S} s), results kept back " \
                              f"{RESERVE_S} s; a step starts only with {MIN_STEP_S} s left"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the output folder (on the GPU machine: $OUT)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET_S, help="seconds for everything")
    parser.add_argument("--dry-run", action="store_true",
                        help="on a CPU: every step with tiny shapes, the tests collected only, nothing installed")
    parser.add_argument("--python", default=sys.executable, help="the Python the steps run (default: this one)")
    parser.add_argument("--only", help="comma-separated step names to run (the others are recorded as skipped)")
    parser.add_argument("--plan", action="store_true", help="print the steps and their budgets, and exit")
    args = parser.parse_args(argv)
    if args.plan:
        print(plan())
        return 0
    if not args.out:
        parser.error("--out is required (on the GPU machine run.sh passes $OUT)")
    names = [name for name, _, _ in STEPS]
    only = [n for n in (args.only or "").split(",") if n]
    unknown = [n for n in only if n not in names]
    if unknown:
        parser.error(f"--only takes {', '.join(names)}; got {', '.join(unknown)}")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="el-gpu-check-")
    run = Run(args.out, args.budget, args.dry_run, args.python, work)
    run.started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for name, budget, function in STEPS:
        if only and name not in only and name != "machine":
            run.record(name, "skipped", budget=budget, reason="not in --only")
            continue
        try:
            function(run)
        except Exception as error:  # noqa: BLE001 - one step's bug must not cost the others
            run.record(name, "failed", budget=budget, reason=f"check.py: {type(error).__name__}: {error}")
        run.finish(complete=False)
    document = run.finish()
    sys.path.insert(0, HERE)
    from report import summary

    print(summary(document))
    print(f"[gpu-check] written {os.path.join(args.out, RESULTS)} and {os.path.join(args.out, LOGS)} "
          f"({document['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
