"""Interrupting a command the way a user does: SIGTERM or SIGKILL while it runs, at a chosen moment (for the
tests of reruns and interrupted runs, el_plugins.files' promise that nothing is left half-written)."""
import os
import signal
import subprocess
import time

from el_evidence.testing.programs import BIN


def start_cli(name, *args, cwd=None, env=None):
    """Start a console script of this environment as its own process (its output discarded); returns the Popen."""
    return subprocess.Popen([os.path.join(BIN, name), *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


def interrupt_when(proc, ready, signum=signal.SIGTERM, timeout=600):
    """Once ``ready()`` is true, send ``signum`` to ``proc`` and wait for it; returns its exit status.
    AssertionError if it ended first, or ``ready()`` was not true within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the program ended (exit {proc.returncode}) before it could be interrupted")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"not ready to be interrupted within {timeout} s")
        time.sleep(0.01)
    proc.send_signal(signum)
    return proc.wait(timeout=timeout)


def staging_folders(folder):
    """The staging folders (el_plugins.files.output_set) in ``folder``."""
    from el_plugins.files import PARTIAL

    return sorted(name for name in os.listdir(folder) if name.startswith(PARTIAL)) if os.path.isdir(folder) else []


def sigterm_at_rename(folder, names, n, monkeypatch):
    """SIGTERM this process just before the ``n``-th rename (os.replace or os.rename) of one of ``names`` into
    ``folder``: a user's kill arriving while the outputs are put in place. ``monkeypatch``: pytest's."""
    seen = []
    for fn in ("replace", "rename"):
        real = getattr(os, fn)

        def hooked(src, dst, *a, _real=real, **kw):
            if os.path.dirname(os.path.abspath(dst)) == os.path.abspath(folder) and os.path.basename(dst) in names:
                seen.append(dst)
                if len(seen) == n:
                    os.kill(os.getpid(), signal.SIGTERM)
            return _real(src, dst, *a, **kw)

        monkeypatch.setattr(os, fn, hooked)
