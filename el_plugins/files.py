"""Files and output folders written all-or-nothing, and text read, for every el-plugins command.

:func:`atomic_write` writes to a temporary file beside the output, named ``NAME.el-partial-PID`` so that a
user who finds one knows what it is, and renames it over ``NAME`` only when the write finished. The temporary
is removed on an exception, on Ctrl-C (SIGINT) and on SIGTERM; a process killed outright (SIGKILL, a crash)
cannot clean up, so the next write of the same output removes the partials that no living process owns.

:func:`output_set` does the same for a set of outputs in one folder (files and folders: a report and its
plots, a data-bin with its text and subword model, a whole demo run). The set is written into a staging
folder ``OUT/.el-partial-PID`` and swapped in when it is complete: the previous set is moved out and the new
one in, with Ctrl-C and SIGTERM held back for those few renames, so that ``OUT`` holds either the old set or
the new one, never a mix. An interrupted or failed run leaves the previous set as it was. The staging folder
is removed on Ctrl-C and SIGTERM; a killed run's is removed by the next run into the same folder, or, if the
kill fell in the swap itself, the swap is finished by it (the staging folder records what it swaps first).

This is what a rerun of every command does: it starts its output over, and replaces the previous output only
when the new one is complete.
"""
from __future__ import annotations

import codecs
import contextlib
import glob
import io
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Iterable, List, Optional

__all__ = ['atomic_write', 'finish_interrupted', 'output_folder_problem', 'output_set', 'OutputSet', 'PARTIAL',
           'partial_files', 'raise_if_terminated', 'read_lines', 'write_json', 'write_lines', 'write_text']

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


_terminated = threading.Event()  # a SIGTERM arrived and its exception has not reached _sigterm_raises yet


@contextlib.contextmanager
def _sigterm_raises():
    """Turn SIGTERM into an exception for the duration (main thread only), so that ``finally`` blocks run.

    Python runs a signal handler wherever the main thread is, and an exception it raises inside a callback
    (an at-fork hook while subprocess starts a program, a finalizer) is printed and dropped: the run would go
    on. So the handler also records the signal, and :func:`raise_if_terminated` (called before an output is
    put in place, and after a program is started) raises it again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _terminated.set()
        raise _TerminatedError()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _TerminatedError:
        _terminated.clear()
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def raise_if_terminated() -> None:
    """SystemExit(143) if a SIGTERM arrived whose exception was dropped (see :func:`_sigterm_raises`): call it
    before anything that must not happen after the user asked the command to stop."""
    if _terminated.is_set():
        _terminated.clear()
        raise SystemExit(128 + signal.SIGTERM)


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
            raise_if_terminated()
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync(directory)  # make the rename itself durable


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
    A byte-order mark at the start is dropped, as text editors do (it would stick to the first word).
    A byte sequence that is not UTF-8 is a ValueError that names the file and the line."""
    with open(path, "rb") as f:
        data = f.read()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line = data.count(b"\n", 0, at) + 1
        column = at - max(data.rfind(b"\n", 0, at) + 1, start) + 1  # a byte-order mark is not a column
        raise ValueError(f"{path}, line {line}, column {column}: byte 0x{data[at]:02x} is not UTF-8 text "
                         "(el-plugins reads text files as UTF-8; convert it, e.g. with iconv)") from None
    return [line.rstrip("\n") for line in io.StringIO(text, newline=None)]


def output_folder_problem(path) -> Optional[str]:
    """Why ``path`` cannot be an output folder (it, or a folder above it, is a file), or None."""
    given, path = path, os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if os.path.isdir(path):
        return None
    what = "a file" if os.path.exists(path) else "a broken link"
    return f"is {what}, not a folder" if path == os.path.abspath(given) else f"{path} is {what}, not a folder"


# --------------------------------------------------------------------------- output sets
_COMMIT = ".el-commit.json"  # in a staging folder: what its swap moves in and out (written before it starts)
_OLD = ".el-old"             # in a staging folder: the previous outputs, moved out during the swap
_SCRATCH = ".el-scratch-"    # in a staging folder: work space that is not part of the set


class OutputSet:
    """The staging folder of one :func:`output_set`: write the outputs into :attr:`staging` (or
    :meth:`path`); :meth:`final` is where a staged path ends up once the set is swapped in."""

    def __init__(self, folder: str, staging: str):
        self.folder, self.staging = folder, staging

    def path(self, *parts: str) -> str:
        """A path inside the staging folder."""
        return os.path.join(self.staging, *parts)

    def final(self, path) -> str:
        """Where ``path`` (inside the staging folder) will be once the set is swapped in."""
        path = os.fspath(path)
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(self.staging))
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return path  # not a staged path
        return os.path.normpath(os.path.join(self.folder, rel))

    def scratch(self, name: str) -> str:
        """A folder for work files that are not outputs (an unpacked archive, ...): removed with the staging folder."""
        path = self.path(_SCRATCH + name)
        os.makedirs(path, exist_ok=True)
        return path


def _staging_folders(folder: str):
    """The staging folders in ``folder`` of processes that are no longer running."""
    stale = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            pid = name[len(PARTIAL):] if name.startswith(PARTIAL) else ""
            path = os.path.join(folder, name)
            if pid.isdigit() and os.path.isdir(path) and not os.path.islink(path) and not _running(int(pid)):
                stale.append(path)
    return sorted(stale)


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive lock on ``folder`` (flock on the folder itself: no lock file is left behind)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM back for the duration (main thread only); one that arrived is acted on after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if arrived:
        if arrived[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signal.SIGTERM)


def _fsync(path: str) -> None:
    """Make a file's data, or a folder's entries, durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(dirpath, name))
        _fsync(dirpath)


def _swap_in(staging: str, folder: str) -> None:
    """Move the outputs that ``staging``'s commit record names out of ``folder`` and the staged ones in, then
    remove ``staging``. Every step can be run again, so a swap cut short by a kill is finished by the next."""
    with open(os.path.join(staging, _COMMIT), encoding="utf-8") as f:
        record = json.load(f)
    old = os.path.join(staging, _OLD)
    os.makedirs(old, exist_ok=True)
    for name in record["remove"] + record["move"]:
        new, dest, moved_out = os.path.join(staging, name), os.path.join(folder, name), os.path.join(old, name)
        if name in record["move"] and not os.path.lexists(new):
            continue  # already swapped in
        if os.path.lexists(dest):
            if os.path.lexists(moved_out):
                _remove(moved_out)
            os.rename(dest, moved_out)
        if name in record["move"]:
            os.rename(new, dest)
    _fsync(folder)
    # the swap is complete: drop its record first, so that a staging folder whose removal is cut short (or
    # refilled by a program still writing into it) is only ever removed by the next run, never swapped in again
    os.unlink(os.path.join(staging, _COMMIT))
    _fsync(staging)
    _remove(staging)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        for _ in range(50):  # a program still writing into it (a killed run's child) can refill it meanwhile
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                return
            time.sleep(0.1)
        logging.getLogger(__name__).warning("warning: could not remove %s (something still writes into it); "
                                            "the next run into this folder removes it", path)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def finish_interrupted(folder) -> None:
    """Clean up after runs into ``folder`` that were killed: finish a swap a kill cut short, remove the staging
    folders of runs that never got to theirs. :func:`output_set` calls it first."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    with _locked(folder):
        for staging in _staging_folders(folder):
            if os.path.isfile(os.path.join(staging, _COMMIT)):
                _swap_in(staging, folder)
            else:
                _remove(staging)


@contextlib.contextmanager
def output_set(folder, owns: Iterable[str] = (), keep_failed: bool = False):
    """``with output_set(out) as staged:`` write the outputs into ``staged.staging``; when the block ends
    without an error they replace their namesakes in ``out`` all together (see the module's docstring).

    owns: further names in ``out`` that belong to this kind of output: those the new set lacks are removed in
    the same swap (a plot that this run has no data for must not stay beside the new report). Other entries of
    ``out`` are left alone. keep_failed: on an error (not on Ctrl-C or SIGTERM) whose message names a path in the
    staging folder, keep that folder for the logs the message names (not its :meth:`OutputSet.scratch` folders);
    the next run removes it. An error that names none (a program that is not installed, a bad value) leaves
    nothing behind."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    finish_interrupted(folder)
    staging = os.path.join(folder, f"{PARTIAL}{os.getpid()}")
    if os.path.isfile(os.path.join(staging, _COMMIT)):  # this process's own, from a set whose swap failed
        with _locked(folder):
            _swap_in(staging, folder)
    _remove(staging)  # this process's own, kept from a failed set
    os.makedirs(staging)
    staged = OutputSet(folder, staging)
    committed = False
    with _sigterm_raises():
        try:
            yield staged
            names = sorted(n for n in os.listdir(staging) if not n.startswith((_COMMIT, _OLD, _SCRATCH)))
            for name in os.listdir(staging):
                if name.startswith(_SCRATCH):
                    _remove(os.path.join(staging, name))
            _fsync_tree(staging)
            raise_if_terminated()
            with _signals_held(), _locked(folder):
                write_json(os.path.join(staging, _COMMIT), {"move": names, "remove": sorted(set(owns) - set(names))})
                committed = True  # from here on the swap is finished, if not by this process then by the next run
                _swap_in(staging, folder)
        except (KeyboardInterrupt, SystemExit, _TerminatedError):
            if not committed:
                _remove(staging)
            raise
        except BaseException as exc:
            if not committed:
                keep = keep_failed and staging in str(exc)  # a log the message names is in there
                for name in os.listdir(staging) if keep else ():
                    if name.startswith(_SCRATCH):  # kept for its logs, not its work files
                        _remove(os.path.join(staging, name))
                if not keep or not os.listdir(staging):
                    _remove(staging)
            raise
