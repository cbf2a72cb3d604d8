"""The Triton kernel's tests on CPU tensors, under Triton's interpreter. TRITON_INTERPRET=1 has to be set
before triton is first imported, so a test file marks its interpreted tests (skipped unless INTERPRETED)
and one test of the file runs them in a subprocess with the variable set (:func:`run_interpreted_tests`)."""
import os
import subprocess
import sys

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether this process interprets Triton kernels (set before triton was imported)."""

SKIP_REASON = "runs in test_triton_interpreted's subprocess (TRITON_INTERPRET=1)"


def run_interpreted_tests(test_file, selection="interpreted and not test_triton_interpreted", timeout=600):
    """Run the tests of ``test_file`` that ``selection`` (a pytest -k expression) picks, with TRITON_INTERPRET=1;
    returns pytest's output. AssertionError, with the output's end, unless they ran and all passed. Nothing to do
    (returns None) in a process that interprets already: there the interpreted tests run directly."""
    if INTERPRETED:
        return None
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           os.path.abspath(test_file), "-k", selection],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or " passed" not in summary or "skipped" in summary:
        raise AssertionError(f"interpreted tests of {test_file} failed or did not run:\n{proc.stdout[-6000:]}")
    return proc.stdout
