#!/usr/bin/env python3
"""The torch versions setup.py declares are the ones tested: el-plugins' core tests on a given torch, each in a
venv of its own (issue 29, part 3).

    python3 scripts/check_torch_versions.py --out results/torch-versions/results.json
                                            # setup.py's declared minimum, and 2.11.0 on Python 3.12 (the GPU machines')
    python3 scripts/check_torch_versions.py 2.8.0 2.11.0@3.12     # chosen versions: VERSION[@PYTHON]
    python3 scripts/check_torch_versions.py --dry-run             # print what it would do, change nothing

It tests one state of the code, taken at once: the commit HEAD (git archive; --source working-tree takes the files
as they are), since others may edit or commit while it runs. For each VERSION[@PYTHON] it makes (or reuses) a venv
under --venvs (default ~/.cache/el-plugins/torch-venvs, outside the checkout: PyPI's torch is a CUDA build, and with
the nvidia-* wheels it requires a venv takes 4.5-7 GiB), installs torch==VERSION with numpy (as of that torch:
torch_pins) and pytest, nothing else, then el-plugins from a wheel of that state (pip install --no-deps), runs
`pip check` (el-plugins' requirements, the torch range included, must hold there) and the core tests against the
installed copy, from a folder outside the checkout:

    tests/test_functional.py tests/test_fused.py tests/test_fused_linear.py tests/test_mixed_precision.py
    tests/test_compile_and_transforms.py   (torch.compile and torch.func: they set the oldest torch that works)

They need only torch, numpy and pytest (and Triton, which torch's Linux wheels bring, for the kernel's interpreted
tests); tests that need CUDA skip; a test of torch's own API that an older torch lacks is deselected there and
listed (TORCH_API_TESTS). The results (versions, pass/fail/skip counts per file, failures, skip reasons, date,
commit) go to --out all or nothing, once every check has run; the exit status is 0 only when every check passed.

A script rather than a CI job: each check downloads a CUDA build of torch (0.5-0.9 GiB, 3-4 GiB with its nvidia-*
wheels; CPU-only builds are not on PyPI), which CI's time has no room for. Python rather than shell: it reads
pytest's junit XML and writes JSON. It needs only Python's standard library and the package index.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_TESTS = ("tests/test_functional.py", "tests/test_fused.py", "tests/test_fused_linear.py",
              "tests/test_mixed_precision.py", "tests/test_compile_and_transforms.py")
DEFAULT_VENVS = os.path.join(os.path.expanduser("~"), ".cache", "el-plugins", "torch-venvs")
DEFAULT_OUT = os.path.join("results", "torch-versions", "results.json")
GPU_MACHINE = ("2.11.0", "3.12")  # the lent GPU machines run torch 2.11.0 on Python 3.12
PROBE = r"""
import json, os, sys, platform
import torch, numpy, el_plugins
try:
    import triton
    triton_version = triton.__version__
except Exception:
    triton_version = None
from importlib.metadata import version
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                  "triton": triton_version, "el_plugins": version("el-plugins"),
                  "el_plugins_file": os.path.dirname(el_plugins.__file__)}))
"""


def log(msg):
    print(f"[check-torch] {msg}", flush=True)


def run(cmd, log_file=None, cwd=None, env=None, check=True, timeout=None):
    """Run cmd; its output goes to log_file (appended) or is returned. CalledProcessError names the log."""
    if log_file:
        with open(log_file, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env, timeout=timeout)
        out = None
    else:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env,
                              timeout=timeout)
        out = proc.stdout
    if check and proc.returncode != 0:
        where = f" (see {log_file})" if log_file else f":\n{out[-3000:]}"
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}{where}")
    return out


# --------------------------------------------------------------------------- what to check
def declared_torch_requirement(setup_py=os.path.join(REPO, "setup.py")):
    """The torch requirement of setup.py's install_requires, e.g. 'torch>=2.7,<2.15'."""
    with open(setup_py, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"install_requires\s*=\s*\[([^\]]*)\]", text)
    if not match:
        raise ValueError("setup.py has no install_requires list")
    for item in re.findall(r"[\"']([^\"']+)[\"']", match.group(1)):
        if re.match(r"torch\s*(?:[<>=!~;]|$)", item):
            return item.replace(" ", "")
    raise ValueError("setup.py's install_requires names no torch")


def declared_minimum(requirement):
    """'2.7' of 'torch>=2.7,<2.15' (None without a lower bound)."""
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    return match.group(1) if match else None


def release(version):
    """'2.7.0' of '2.7' (torch's releases have three parts), '2.11.0' of '2.11.0+cu130'."""
    parts = version.split("+")[0].split(".")
    return ".".join((parts + ["0", "0"])[:3])


def parse_spec(text, default_python):
    """'2.7.0' or '2.11.0@3.12' -> (torch version, python version)."""
    version, _, python = text.partition("@")
    if not re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", version) or python and not re.fullmatch(r"3\.[0-9]+", python):
        raise ValueError(f"expected VERSION[@PYTHON] such as 2.7.0 or 2.11.0@3.12, got {text!r}")
    return release(version), python or default_python


def default_checks(requirement, default_python):
    minimum = declared_minimum(requirement)
    checks = []
    if minimum:
        checks.append((release(minimum), default_python))
    if GPU_MACHINE not in checks:
        checks.append(GPU_MACHINE)
    return checks


def find_python(version):
    """An interpreter of Python ``version`` ('3.12'): pythonX.Y on PATH if it runs, else pyenv's."""
    candidates = [shutil.which(f"python{version}")]
    root = os.environ.get("PYENV_ROOT", os.path.join(os.path.expanduser("~"), ".pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")),
                         reverse=True)
    if platform.python_version().startswith(version + "."):
        candidates.insert(0, sys.executable)
    for path in filter(None, candidates):
        try:
            out = subprocess.run([path, "-c", "import platform, venv; print(platform.python_version())"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip().startswith(version + "."):
            return path
    raise RuntimeError(f"no Python {version} found (python{version} on PATH, or pyenv's)")


# Tests that check el-plugins against an API of torch itself that older torch lacks: deselected below that
# version (and listed in the results), since they test torch's side, not el-plugins'.
# (node id prefix, torch release from which the test applies, why)
TORCH_API_TESTS = (
    ("tests/test_fused_linear.py::test_bonus_weight_zero_is_torchs_linear_cross_entropy", "2.13.0",
     "compares with torch's F.linear_cross_entropy and torch.nn.LinearCrossEntropyOptions, which torch < 2.13 "
     "lacks (the test skips itself there too)"),
)


def as_tuple(version):
    return tuple(int(x) for x in release(version).split("."))


def deselected(version):
    return [{"test": test, "torch_from": since, "why": why} for test, since, why in TORCH_API_TESTS
            if as_tuple(version) < as_tuple(since)]


def torch_pins(version):
    """What to install beside torch: numpy as of that torch's time, and pytest. numpy < 2 for torch < 2.3 (built
    against numpy 1); numpy < 2.4 for torch < 2.12, whose Triton (3.6 and older) runs the kernel's interpreted tests
    with an interpreter that converts one-element arrays to Python integers, which numpy >= 2.4 refuses ('only
    0-dimensional arrays can be converted to Python scalars': seen with torch 2.6, 2.7 and 2.11)."""
    v = as_tuple(version)
    numpy = "numpy<2" if v < (2, 3, 0) else "numpy<2.4" if v < (2, 12, 0) else "numpy"
    return [f"torch=={version}", numpy, "pytest"]


def git_state():
    def git(*args):
        return subprocess.run(["git", "-C", REPO, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--", "el_plugins", "setup.py", "el_plugins.pth",
                                  "tests"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


# --------------------------------------------------------------------------- pytest's report
def parse_junit(path):
    """{'tests', 'passed', 'failed', 'errors', 'skipped', 'files': {file: counts}, 'failures': [...],
    'skip_reasons': {reason: count}} of a pytest --junitxml report."""
    root = ET.parse(path).getroot()
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    files, failures, skip_reasons = {}, [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        module = case.get("classname", "").split(".")[-1] or "?"
        file_counts = files.setdefault(module, {"passed": 0, "failed": 0, "errors": 0, "skipped": 0})
        outcome = "passed"
        for child in case:
            if child.tag == "failure":
                outcome = "failed"
            elif child.tag == "error":
                outcome = "errors"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        counts["tests"] += 1
        counts[outcome] += 1
        file_counts[outcome] += 1
        if outcome in ("failed", "errors"):
            element = case.find("failure") if outcome == "failed" else case.find("error")
            message = (element.get("message") or element.text or "").strip().splitlines()
            failures.append({"test": name, "outcome": outcome, "message": message[0][:400] if message else ""})
        elif outcome == "skipped":
            reason = (case.find("skipped").get("message") or "").strip()
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    return {"counts": counts, "files": files, "failures": failures, "skip_reasons": skip_reasons}


# --------------------------------------------------------------------------- one check
def venv_python(venv):
    return os.path.join(venv, "bin", "python")


def prepare_venv(version, python_version, venvs, work, dry_run):
    """The venv of torch ``version`` on Python ``python_version`` (made once, then reused while its torch is
    that version)."""
    venv = os.path.join(venvs, f"torch-{version}-py{python_version}")
    marker = os.path.join(venv, ".el-plugins-torch")
    if dry_run:
        log(f"would use the venv {venv} (python{python_version} -m venv; pip install {' '.join(torch_pins(version))})")
        return venv
    pins = " ".join(torch_pins(version))
    if os.path.isfile(marker):
        with open(marker) as f:
            if f.read().strip() == pins:
                log(f"reusing {venv}")
                return venv
    if os.path.isdir(venv):
        shutil.rmtree(venv)
    python = find_python(python_version)
    pip_log = os.path.join(work, f"pip-{version}-py{python_version}.log")
    log(f"making {venv} with {python}; pip install {' '.join(torch_pins(version))} (log: {pip_log})")
    os.makedirs(venvs, exist_ok=True)
    run([python, "-m", "venv", venv], pip_log)
    run([venv_python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=torch",
         *torch_pins(version)], pip_log)
    with open(marker, "w") as f:
        f.write(pins + "\n")
    return venv


SNAPSHOT = ("setup.py", "el_plugins.pth", "README.md", "CHANGELOG.md", "LICENSE", "MANIFEST.in", "pytest.ini",
            "el_plugins", "evidence", "tests", "docs")


def snapshot(work, source, commit, dry_run):
    """A copy of the package and its tests, taken at one moment (others may edit or commit meanwhile: the wheel
    and the tests it runs must be of the same state): ``source`` 'HEAD' (git archive of the commit) or
    'working-tree' (the files as they are, uncommitted changes included)."""
    folder = os.path.join(work, "source")
    if dry_run:
        log(f"would copy {', '.join(SNAPSHOT)} of {'HEAD (git archive)' if source == 'HEAD' else 'the working tree'} "
            f"to {folder}")
        return folder
    os.makedirs(folder)
    if source == "HEAD":
        archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", commit, *SNAPSHOT],
                                 stdout=subprocess.PIPE, check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_build_info.json")
        for name in SNAPSHOT:
            path = os.path.join(REPO, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(folder, name), ignore=ignore)
            elif os.path.isfile(path):
                shutil.copy2(path, os.path.join(folder, name))
    return folder


def build_wheel(source_dir, work, dry_run):
    """el-plugins' wheel, built from the snapshot."""
    if dry_run:
        log(f"would build el-plugins' wheel from {source_dir} (pip wheel --no-deps)")
        return os.path.join(work, "el_plugins-0-py3-none-any.whl")
    out = os.path.join(work, "wheel")
    log(f"building el-plugins' wheel from {source_dir}")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", out,
         source_dir], os.path.join(work, "wheel.log"))
    wheels = glob.glob(os.path.join(out, "el_plugins-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one el-plugins wheel in {out}, found {wheels}")
    return wheels[0]


def check(version, python_version, wheel, source_dir, venvs, work, tests, dry_run):
    started = time.time()
    venv = prepare_venv(version, python_version, venvs, work, dry_run)
    junit = os.path.join(work, f"junit-{version}-py{python_version}.xml")
    skip = deselected(version)
    pytest_cmd = [venv_python(venv), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                  os.path.join(source_dir, "pytest.ini"), "--rootdir", source_dir, f"--junitxml={junit}",
                  *(f"--deselect={d['test']}" for d in skip), *(os.path.join(source_dir, t) for t in tests)]
    if dry_run:
        log(f"would install {os.path.basename(wheel)} (--no-deps), run pip check, then: {' '.join(pytest_cmd)}")
        return None
    log_file = os.path.join(work, f"tests-{version}-py{python_version}.log")
    run([venv_python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--force-reinstall", "--no-index", wheel], log_file)
    pip_check = subprocess.run([venv_python(venv), "-m", "pip", "check", "--disable-pip-version-check"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PYTHONWARNINGS"] = "ignore"
    empty = tempfile.mkdtemp(dir=work, prefix="cwd-")  # not the checkout: its el_plugins must not be imported
    versions = json.loads(run([venv_python(venv), "-c", PROBE], cwd=empty, env=env).strip().splitlines()[-1])
    if not os.path.realpath(versions["el_plugins_file"]).startswith(os.path.realpath(venv) + os.sep):
        raise RuntimeError(f"the venv imports el_plugins from {versions['el_plugins_file']}, not its own copy")
    log(f"torch {versions['torch']} (Python {versions['python']}, triton {versions['triton']}): pytest "
        f"{' '.join(tests)} (log: {log_file})")
    tests_started = time.time()
    proc = subprocess.run(pytest_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=empty,
                          env=env)
    with open(log_file, "a") as f:
        f.write(proc.stdout)
    if not os.path.isfile(junit):
        raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    report = parse_junit(junit)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    counts = report["counts"]
    passed = (proc.returncode == 0 and counts["failed"] == 0 and counts["errors"] == 0 and counts["tests"] > 0
              and pip_check.returncode == 0)
    log(f"torch {version}: {'PASS' if passed else 'FAIL'}: {summary}; pip check: {pip_check.stdout.strip()}")
    return {"torch_requested": version, "python_requested": python_version, "versions": versions,
            "passed": passed, "pytest_exit": proc.returncode, "pytest_summary": summary, "deselected": skip,
            "installed_with": torch_pins(version),
            "pip_check": {"exit": pip_check.returncode, "output": pip_check.stdout.strip()},
            "tests_seconds": round(time.time() - tests_started, 1), "seconds": round(time.time() - started, 1),
            **report}


def write_json_atomically(path, obj):
    """All or nothing, through the GPU check's writer (benchmarks/gpu/check.py, standard library only too)."""
    spec = importlib.util.spec_from_file_location(
        "gpu_check", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "gpu",
                                  "check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_json_atomically(path, obj, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checks", nargs="*", metavar="VERSION[@PYTHON]",
                        help="torch versions to check (default: setup.py's declared minimum on --python, and "
                             f"{GPU_MACHINE[0]} on Python {GPU_MACHINE[1]}, the GPU machines' pair)")
    parser.add_argument("--python", default=".".join(platform.python_version_tuple()[:2]),
                        help="Python version for checks that name none (default: this interpreter's, %(default)s)")
    parser.add_argument("--venvs", default=DEFAULT_VENVS, help="where the venvs live (default %(default)s)")
    parser.add_argument("--out", default=None, help=f"write the results here as JSON (e.g. {DEFAULT_OUT})")
    parser.add_argument("--tests", default=",".join(CORE_TESTS), help="comma-separated test files (default: the core)")
    parser.add_argument("--source", choices=("HEAD", "working-tree"), default="HEAD",
                        help="test the committed HEAD (default: git archive, so the results name one commit) or the "
                             "working tree as it is (uncommitted changes included)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.add_argument("--prepare-only", action="store_true",
                        help="make (or keep) the venvs of the VERSION[@PYTHON] given, run nothing")
    args = parser.parse_args(argv)
    if args.prepare_only:
        if not args.checks:
            parser.error("--prepare-only needs VERSION[@PYTHON]")
        work = tempfile.mkdtemp(prefix="el-check-torch-")
        for spec in args.checks:
            version, python_version = parse_spec(spec, args.python)
            log(f"ready: {prepare_venv(version, python_version, args.venvs, work, args.dry_run)}")
        return 0

    tests = tuple(t for t in args.tests.split(",") if t)
    missing = [t for t in tests if not os.path.isfile(os.path.join(REPO, t))]
    if missing:
        parser.error(f"no such test file: {', '.join(missing)}")
    work = os.path.join(tempfile.gettempdir(), "el-check-torch-DRY-RUN") if args.dry_run else \
        tempfile.mkdtemp(prefix="el-check-torch-")
    started = datetime.datetime.now(datetime.timezone.utc)
    state = git_state()
    if args.source == "HEAD":
        if not state["commit"]:
            parser.error("--source HEAD needs a git checkout (use --source working-tree)")
        state["dirty"] = False  # the snapshot is the commit itself
    source_dir = snapshot(work, args.source, state["commit"], args.dry_run)
    requirement = declared_torch_requirement(os.path.join(REPO if args.dry_run else source_dir, "setup.py"))
    try:
        checks = [parse_spec(c, args.python) for c in args.checks] or default_checks(requirement, args.python)
    except ValueError as error:
        parser.error(str(error))
    log(f"setup.py declares {requirement}; checking " + ", ".join(f"torch {v} on Python {p}" for v, p in checks))
    wheel = build_wheel(source_dir, work, args.dry_run)
    results = [check(v, p, wheel, source_dir, args.venvs, work, tests, args.dry_run) for v, p in checks]
    if args.dry_run:
        return 0
    passed = all(r["passed"] for r in results)
    out = {"what": "el-plugins' core tests on each torch version, in a venv of its own "
                   "(scripts/check_torch_versions.py)",
           "declared": requirement, "tests": list(tests), "passed": passed, "source": args.source,
           "date": started.strftime("%Y-%m-%d"), "started_utc": started.isoformat(timespec="seconds"),
           "git_commit": state["commit"], "git_dirty": state["dirty"],
           "host": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()},
           "checks": results}
    for r in results:
        c = r["counts"]
        log(f"torch {r['versions']['torch']} on Python {r['versions']['python']}: {'PASS' if r['passed'] else 'FAIL'}, "
            f"{c['tests']} tests: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
            f"{c['skipped']} skipped")
        for failure in r["failures"]:
            log(f"  {failure['outcome']}: {failure['test']}: {failure['message']}")
    if args.out:
        write_json_atomically(args.out, out)
        log(f"written {args.out}")
    log(f"logs and reports: {work}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
