"""Running programs as their own processes, as a user runs them: this environment's console scripts and
``python -m`` modules. They import the installed el_plugins (the one el_plugins.pth activates at start-up),
or whatever the caller's own PYTHONPATH puts first: the caller's environment is passed on, never rewritten."""
import os
import socket
import subprocess
import sys

BIN = os.path.dirname(sys.executable)  # the environment's bin: fairseq-train, torchrun, the el-* console scripts


def run_cli(name, *args, cwd=None, env=None, check=True, timeout=600):
    """Run a console script of this environment; returns the CompletedProcess (text, merged output).
    ``env`` adds to (or overrides) the caller's environment; ``check``: a non-zero exit raises AssertionError."""
    cmd = [os.path.join(BIN, name), *map(str, args)]
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


def run_module(module, *args, cwd=None, env=None, timeout=600):
    """``python -m module args`` with this interpreter; returns the CompletedProcess (text, stdout and stderr
    apart; the caller checks the exit status). ``env`` adds to (or overrides) the caller's environment."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for torchrun's or fairseq's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
