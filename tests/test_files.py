"""el_plugins.files: outputs written all-or-nothing, also when the writer is interrupted or killed."""
import os
import signal
import subprocess
import sys
import time

import pytest

from el_plugins.files import PARTIAL, atomic_write, partial_files, write_text

WRITER = """
import sys, time
from el_plugins.files import atomic_write
with atomic_write(sys.argv[1], "wb") as f:
    f.write(b"x" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _default_sigint():
    # a shell's background job inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: give the writer the disposition a user's terminal gives it, wherever pytest itself runs
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_writer(out):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    assert proc.stdout.readline().strip() == "writing"
    return proc


@pytest.mark.e2e
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])  # python re-raises SIGINT after clean-up
def test_interrupted_writer_leaves_no_partial_file(tmp_path, signum, code):
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous")
    proc = start_writer(out)
    assert os.path.exists(f"{out}{PARTIAL}{proc.pid}")  # named so that a user recognises it
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert sorted(os.listdir(tmp_path)) == ["avg.pt"] and out.read_bytes() == b"previous"


@pytest.mark.e2e
def test_partial_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "avg.pt"
    proc = start_writer(out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(timeout=30)
    partial = f"{out}{PARTIAL}{proc.pid}"
    assert os.path.exists(partial) and partial_files(str(out)) == [partial]
    write_text(out, "done")
    assert sorted(os.listdir(tmp_path)) == ["avg.pt"] and out.read_text() == "done"


@pytest.mark.e2e
def test_a_running_writers_partial_is_left_alone(tmp_path):
    out = tmp_path / "avg.pt"
    proc = start_writer(out)
    try:
        assert partial_files(str(out)) == []
        write_text(tmp_path / "other.txt", "x")
        assert os.path.exists(f"{out}{PARTIAL}{proc.pid}")
    finally:
        proc.kill()
        proc.wait()


def test_error_inside_leaves_the_previous_file(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(out) as f:
            f.write("new, half")
            raise RuntimeError("disk full")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(out, "a"):
            pass


# --------------------------------------------------------------------------- output sets
from el_plugins.files import finish_interrupted, output_set, read_lines  # noqa: E402


def write_set(out, version, names=("report.json", "table.md", "plots")):
    with output_set(out, owns=("report.json", "table.md", "plots", "roc.png")) as staged:
        for name in names:
            if name == "plots":
                os.makedirs(staged.path("plots"))
                (open(staged.path("plots", "a.png"), "w")).write(version)
            else:
                open(staged.path(name), "w").write(version)
    return out


def snapshot(folder):
    """{relative path: content} of every file under ``folder``."""
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, folder)] = open(path).read()
    return found


def test_output_set_replaces_the_whole_set_and_leaves_other_files(tmp_path):
    out = tmp_path / "report"
    write_set(out, "old", names=("report.json", "table.md", "plots", "roc.png"))
    (out / "notes.txt").write_text("mine")
    write_set(out, "new")
    assert snapshot(out) == {"report.json": "new", "table.md": "new", os.path.join("plots", "a.png"): "new",
                             "notes.txt": "mine"}  # roc.png belonged to the old set only: removed with it


def test_output_set_error_leaves_the_previous_set(tmp_path):
    out = write_set(tmp_path / "report", "old")
    with pytest.raises(RuntimeError):
        with output_set(out) as staged:
            open(staged.path("report.json"), "w").write("new, half")
            raise RuntimeError("disk full")
    assert snapshot(out) == {"report.json": "old", "table.md": "old", os.path.join("plots", "a.png"): "old"}
    with pytest.raises(RuntimeError):  # an error that names no file in the set: nothing is kept
        with output_set(out, keep_failed=True) as staged:
            open(staged.path("work.bin"), "w").write("work")
            raise RuntimeError("cannot run fairseq-train: not installed")
    assert not os.path.exists(staged.staging)
    with pytest.raises(RuntimeError):  # one that names its log: the log is kept for the user to read
        with output_set(out, keep_failed=True) as staged:
            open(staged.path("train.log"), "w").write("why it failed")
            raise RuntimeError(f"fairseq-train failed (its output is in {staged.path('train.log')})")
    kept = staged.path("train.log")
    assert open(kept).read() == "why it failed" and staged.final(kept) == str(out / "train.log")
    write_set(out, "new")  # the next run removes the kept staging folder
    assert sorted(os.listdir(out)) == ["plots", "report.json", "table.md"]


SET_WRITER = """
import os, sys, time
from el_plugins.files import output_set
with output_set(sys.argv[1]) as staged:
    for name in ("report.json", "table.md"):
        open(staged.path(name), "w").write("new")
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_output_set_interrupted_or_killed_leaves_the_previous_set(tmp_path, signum):
    out = write_set(tmp_path / "report", "old")
    proc = subprocess.Popen([sys.executable, "-c", SET_WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    assert proc.stdout.readline().strip() == "writing"
    assert os.path.isdir(out / f"{PARTIAL}{proc.pid}")
    proc.send_signal(signum)
    proc.wait(timeout=30)
    old = {"report.json": "old", "table.md": "old", os.path.join("plots", "a.png"): "old"}
    if signum == signal.SIGKILL:  # nothing could clean up: the staging folder stays until the next run
        assert os.path.isdir(out / f"{PARTIAL}{proc.pid}")
        finish_interrupted(out)
    assert snapshot(out) == old and sorted(os.listdir(out)) == ["plots", "report.json", "table.md"]


@pytest.mark.e2e
def test_a_swap_cut_short_by_a_kill_is_finished_by_the_next_run(tmp_path):
    """The state a kill -9 between two renames of the swap leaves: report.json swapped in, table.md not yet."""
    out = write_set(tmp_path / "report", "old")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE,
                          text=True).stdout.strip()
    staging = out / f"{PARTIAL}{dead}"
    (staging / ".el-old").mkdir(parents=True)
    (staging / "table.md").write_text("new")
    (staging / ".el-commit.json").write_text('{"move": ["report.json", "table.md"], "remove": ["plots"]}')
    os.rename(out / "report.json", staging / ".el-old" / "report.json")
    (out / "report.json").write_text("new")
    write_set(out, "newer", names=("report.json",))  # finishes the swap first, then writes its own set
    assert snapshot(out) == {"report.json": "newer"}
    staging.mkdir()
    (staging / "table.md").write_text("new")
    (staging / ".el-commit.json").write_text('{"move": ["table.md"], "remove": []}')
    finish_interrupted(out)
    assert snapshot(out) == {"report.json": "newer", "table.md": "new"}


DROPPED_SIGTERM = """
import os, signal, sys, time
from el_plugins import commands
from el_plugins.files import output_set

class SignalledInAFinalizer:  # Python drops an exception raised in a finalizer, as in an at-fork hook
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)

with output_set(sys.argv[1]) as staged:
    open(staged.path("report.json"), "w").write("new")
    SignalledInAFinalizer()
    print("went on", flush=True)
    if sys.argv[2] == "start":
        commands.start_program(["sleep", "61.25"])
        print("started", flush=True)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("then", ["commit", "start"])
def test_a_sigterm_python_dropped_still_stops_the_command(tmp_path, then):
    """A SIGTERM whose exception Python drops (it arrived in a callback: subprocess's at-fork hooks, a
    finalizer) stopped nothing: el-demo went on and swapped in its new set. Now the set is not swapped in, and
    a program started after it is killed."""
    out = write_set(tmp_path / "report", "old")
    done = subprocess.run([sys.executable, "-c", DROPPED_SIGTERM, str(out), then], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert "_TerminatedError" in done.stderr  # Python's "Exception ignored in ...": the drop happened
    assert done.stdout.splitlines() == ["went on"] and done.returncode == 128 + signal.SIGTERM, done
    assert snapshot(out) == {"report.json": "old", "table.md": "old", os.path.join("plots", "a.png"): "old"}
    assert sorted(os.listdir(out)) == ["plots", "report.json", "table.md"]
    assert subprocess.run(["pgrep", "-f", "sleep 61.25"], stdout=subprocess.PIPE).returncode == 1  # none left


def test_signals_are_held_during_the_swap(tmp_path):
    from el_plugins.files import _signals_held

    done = []
    with pytest.raises(SystemExit) as exc:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            done.append("swap finished")
    assert done == ["swap finished"] and exc.value.code == 128 + signal.SIGTERM


def test_read_lines_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "ref.txt"
    path.write_bytes(b"\xef\xbb\xbfthe cat\r\nsat\n")
    assert read_lines(path) == ["the cat", "sat"]
    path.write_bytes(b"\xef\xbb\xbfthe c\xe4t\n")
    with pytest.raises(ValueError, match=r"line 1, column 6: byte 0xe4 is not UTF-8"):  # counted in the file's bytes
        read_lines(path)
