"""Files written all-or-nothing, for every el-plugins command.

:func:`atomic_write` writes to a temporary file beside the output, named ``NAME.el-partial-PID`` so that a
user who finds one knows what it is, and renames it over ``NAME`` only when the write finished. The temporary
is removed on an exception, on Ctrl-C (SIGINT) and on SIGTERM; a process killed outright (SIGKILL, a crash)
cannot clean up, so the next write of the same output removes the partials that no living process owns.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import signal
import threading
from typing import List

PARTIAL = ".el-partial-"


def partial_files(path: str):
    """The temporaries of ``path`` left by writers that are no longer running."""
    stale = []
    for candidate in glob.glob(glob.escape(path) + PARTIAL + "*"):
        pid = candidate.rsplit(PARTIAL, 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            stale.append(candidate)
    return stale


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class _TerminatedError(BaseException):
    """SIGTERM arrived while a file was being written; re-raised as SystemExit after clean-up."""


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into an exception for the duration (main thread only), so that ``finally`` blocks run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _TerminatedError()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _TerminatedError:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = None):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` gets the whole content or stays as it was.

    mode: "w" (text, UTF-8 unless ``encoding``) or "wb". The data is flushed and fsynced before the rename,
    and the folder is created if needed. Stale partials of the same output (see :func:`partial_files`) are
    removed first."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    for stale in partial_files(path):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    tmp = f"{path}{PARTIAL}{os.getpid()}"
    with _sigterm_raises():
        try:
            with open(tmp, mode, encoding=(encoding or "utf-8") if mode == "w" else None) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) all-or-nothing."""
    with atomic_write(path) as f:
        f.write(text)


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` all-or-nothing."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_lines(path, lines) -> None:
    """Write ``lines`` (without newlines) to ``path``, one per line, all-or-nothing."""
    with atomic_write(path) as f:
        f.writelines(line.rstrip("\n") + "\n" for line in lines)


def read_lines(path) -> List[str]:
    """The lines of a UTF-8 text file, without their newlines (universal newlines, as ``open`` reads them).
    A byte sequence that is not UTF-8 is a ValueError that names the file and the line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{path}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8 text "
                         "(el-plugins reads text files as UTF-8; convert it, e.g. with iconv)") from None
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None)]
