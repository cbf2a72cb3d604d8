"""What every el-* console command shares: the error convention, progress bars, logging, fairseq's programs.

The convention (the same as argparse's own usage errors):

- a usage error (a bad option or value, found before any work) is ``prog: error: ...`` and exit 2:
  ``parser.error(...)``, or :class:`UsageError` raised later;
- a failure (a file that is not what it should be, a child program that failed) is ``prog: error: ...``
  and exit 1: raise :class:`CommandError` (or a subclass); :func:`run` turns it into the message;
- messages go through :mod:`logging` to stderr as ``prog: message`` (:func:`setup_logging`);
- ``--no-progress`` (:func:`add_progress_argument`) turns tqdm's bars off; they are on by default and
  written to stderr, so that stdout holds only a command's result;
- a child program that failed is reported in one line: its cause (:func:`failure_cause`) and the log
  with its whole output.
- a rerun into the same output starts it over and swaps the new outputs in whole once they are complete
  (:func:`el_plugins.files.output_set`); an interrupted or failed run leaves the previous ones as they were.

Torch-free and framework-free, so every command can import it before anything heavy.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from typing import Callable, Optional, Sequence

USAGE_EXIT = 2
FAILURE_EXIT = 1


class CommandError(Exception):
    """A failure the user can act on: reported as ``prog: error: <message>``, exit 1 (no traceback)."""

    exit_code = FAILURE_EXIT


class UsageError(CommandError):
    """A bad option found after parsing: ``prog: error: <message>``, exit 2, as argparse's own."""

    exit_code = USAGE_EXIT


def error(prog: str, message: str, exit_code: int = FAILURE_EXIT) -> int:
    """Print ``prog: error: message`` to stderr and return ``exit_code`` (for ``return error(...)``)."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    return exit_code


def run(prog: str, main: Callable[[], Optional[int]], errors: Sequence[type] = ()) -> int:
    """Call ``main()`` and return its exit code; a :class:`CommandError`, or one of ``errors`` (e.g. a
    library's ValueError for bad data), becomes ``prog: error: ...`` with exit 1 (2 for UsageError);
    Ctrl-C becomes ``prog: interrupted`` with exit 130, no traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{prog}: interrupted\n")
        return 130  # 128 + SIGINT, as a shell reports it; files are written atomically, none is half-written
    except CommandError as exc:
        return error(prog, str(exc), exc.exit_code)
    except tuple(errors) as exc:  # noqa: B030 (a tuple of exception types)
        return error(prog, describe_error(exc), FAILURE_EXIT)
    return 0 if code is None else int(code)


def describe_error(exc: BaseException) -> str:
    """The message of ``exc`` for ``prog: error: ...``: an OSError as ``path: reason`` (``[Errno 30] Read-only file
    system: 'out'`` becomes ``out: read-only file system``), anything else as it is."""
    if isinstance(exc, OSError) and exc.strerror:
        paths = [p for p in (exc.filename, exc.filename2) if p is not None]
        reason = exc.strerror[:1].lower() + exc.strerror[1:]
        return f"{' -> '.join(map(os.fsdecode, paths))}: {reason}" if paths else reason
    return str(exc)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: sets ``args.progress`` False (bars on stderr by default)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they are written to stderr)")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is emitted (not the stream of the first call), so
    a command run twice in one process (tests, notebooks) with stderr redirected in between still works."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ and setStream assign it; the live sys.stderr wins
        pass


def setup_logging(prog: str, level: int = logging.INFO, also: Sequence[str] = ()) -> logging.Logger:
    """The ``el_plugins`` logger (and the loggers named in ``also``, a command outside the package: its own
    package's) writing ``prog: message`` lines to stderr; returns the ``el_plugins`` logger."""
    for name in ("el_plugins", *also):
        logger = logging.getLogger(name)
        handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
        if handler is None:  # one handler, however often (and for however many commands) this is called
            handler = _StderrHandler()
            logger.addHandler(handler)
        handler.setFormatter(logging.Formatter(f"{prog}: %(message)s"))  # the command running now
        logger.setLevel(level)
        logger.propagate = False
    return logging.getLogger("el_plugins")


_CAUSE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt|error)\b(:|$)")


def failure_cause(output: str) -> str:
    """The line of a failed program's output that says why: its last exception line (and the next line, where
    that one ends in ':'), else its last line. For ``prog: error: <program> failed: <cause> (log: ...)``."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    cause = lines[-1] if lines else "it printed nothing"
    for i in range(len(lines) - 1, -1, -1):
        if _CAUSE.match(lines[i]):
            cause = lines[i] + (f" {lines[i + 1]}" if lines[i].endswith(":") and i + 1 < len(lines) else "")
            break
    return cause if len(cause) <= 400 else cause[:399] + "\u2026"


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, between fork and exec)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up (kill on interrupt) is all there is


def child_process_options() -> dict:
    """Keyword arguments for subprocess.run/Popen of a program that writes into a command's output (fairseq-
    preprocess, -train, -generate): on Linux the child is killed when the command dies, even by SIGKILL, so an
    interrupted run leaves no orphan writing into a staging folder that the next run removes."""
    return {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}


@contextlib.contextmanager
def stopped_on_error(proc: "subprocess.Popen"):
    """``with stopped_on_error(proc):`` an exception, Ctrl-C or SIGTERM inside the block kills the program
    ``proc`` and waits for it before it propagates: nothing goes on writing into the command's output."""
    try:
        yield proc
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def start_program(cmd: Sequence[str], **popen_kwargs) -> "subprocess.Popen":
    """``subprocess.Popen(cmd, **popen_kwargs)`` with :func:`child_process_options`. A SIGTERM that arrived
    while the program started can have been dropped by Python (see :func:`el_plugins.files.raise_if_terminated`):
    then the program is killed and SystemExit(143) raised, as the SIGTERM itself would have done."""
    import subprocess

    from el_plugins.files import raise_if_terminated

    proc = subprocess.Popen(cmd, **popen_kwargs, **child_process_options())
    with stopped_on_error(proc):
        raise_if_terminated()
    return proc


def run_program(cmd: Sequence[str], **popen_kwargs) -> "subprocess.CompletedProcess":
    """``subprocess.run(cmd, **popen_kwargs)`` through :func:`start_program`: the program dies with the command
    (an exception, Ctrl-C or SIGTERM while it runs kills it). OSError when it cannot be started."""
    import subprocess

    with stopped_on_error(start_program(cmd, **popen_kwargs)) as proc:
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def fairseq_program(name: str) -> str:
    """The path of fairseq's console program ``name`` (fairseq-train, -generate, -preprocess, ...) of this
    Python's environment: beside the interpreter, so a virtual environment that is not activated works."""
    return os.path.join(os.path.dirname(sys.executable), name)


__all__ = ["CommandError", "FAILURE_EXIT", "USAGE_EXIT", "UsageError", "add_progress_argument", "error",
           "failure_cause", "fairseq_program", "run", "run_program", "setup_logging", "start_program",
           "stopped_on_error"]
