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


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])  # python re-raises SIGINT after clean-up
def test_interrupted_writer_leaves_no_partial_file(tmp_path, signum, code):
    out = tmp_path / "avg.pt"
    out.write_bytes(b"previous")
    proc = start_writer(out)
    assert os.path.exists(f"{out}{PARTIAL}{proc.pid}")  # named so that a user recognises it
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert sorted(os.listdir(tmp_path)) == ["avg.pt"] and out.read_bytes() == b"previous"


def test_partial_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "avg.pt"
    proc = start_writer(out)
    proc.kill()  # SIGKILL: nothing can clean up
    proc.wait(timeout=30)
    partial = f"{out}{PARTIAL}{proc.pid}"
    assert os.path.exists(partial) and partial_files(str(out)) == [partial]
    write_text(out, "done")
    assert sorted(os.listdir(tmp_path)) == ["avg.pt"] and out.read_text() == "done"


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
