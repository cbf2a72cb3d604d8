"""Every el-* console command keeps one convention (el_plugins.commands): a usage error is ``prog: error: ...``
with exit 2, a failure is ``prog: error: ...`` with exit 1, both on stderr as the last line, no traceback and
nothing on stdout; and each command's module says which command it is."""
import importlib
import os
import subprocess
import sys

import pytest

from el_plugins import commands

BIN = os.path.dirname(sys.executable)
# command -> the module of its main (setup.py's console_scripts); el-demo and el-analyze are tested elsewhere
MODULES = {
    "el-timm-train": "el_plugins.timm_plugin.launcher",
    "el-prepare-iwslt": "el_plugins.translation.prepare",
    "el-average-checkpoints": "el_plugins.translation.average_checkpoints",
    "el-bleu": "el_plugins.translation.bleu",
    "el-translation-train": "el_plugins.translation.recipe",
    "el-data": "el_evidence.data.__main__",
    "el-reproduce": "el_evidence.reproduce.__main__",
}


def run(name, *args, cwd=None):
    """The installed console script ``name`` as its own process (stdout and stderr apart)."""
    return subprocess.run([os.path.join(BIN, name), *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


def assert_error(proc, prog, code, message=""):
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == "", (proc.stdout, proc.stderr[-2000:])


@pytest.mark.e2e
@pytest.mark.parametrize("name,args", [
    ("el-bleu", ["score", "--hyp", "h", "--ref", "r", "--bogus"]),
    ("el-average-checkpoints", ["--inputs", "a.pt", "--output", "b.pt", "--bogus"]),
    ("el-prepare-iwslt", ["--release", "r.tgz", "--corpus", "iwslt14.de-en", "--out", "o", "--bogus"]),
    ("el-translation-train", ["--recipe", "toy", "--data", "d", "--loss", "el", "--save-dir", "s", "--bogus"]),
    ("el-data", ["mnist", "--bogus"]),
    ("el-reproduce", ["mnist", "--bogus"]),
])
def test_a_bad_option_is_a_usage_error(tmp_path, name, args):
    prog = f"{name} mnist" if name == "el-reproduce" else name  # every message of an experiment names it
    assert_error(run(name, *args, cwd=tmp_path), prog, 2, "unrecognized arguments: --bogus")


@pytest.mark.e2e
def test_el_timm_train_usage_errors(tmp_path):
    assert_error(run("el-timm-train", "--bogus", cwd=tmp_path), "el-timm-train", 2,
                 "the first argument must be the path to timm's train.py")
    assert_error(run("el-timm-train", cwd=tmp_path), "el-timm-train", 2, "the path to timm's train.py is required")


@pytest.mark.e2e
@pytest.mark.parametrize("name,args,code,message", [
    # an input named by an option that is not there: found while parsing, a usage error ...
    ("el-bleu", ["score", "--hyp", "missing.txt", "--ref", "missing.txt"], 2, "--hyp: no such file"),
    ("el-timm-train", ["missing.py", "--loss", "el"], 2, "the first argument must be the path to timm's train.py"),
    ("el-prepare-iwslt", ["--release", "missing.tgz", "--corpus", "iwslt14.de-en", "--out", "o"], 2,
     "neither a folder nor a .tgz"),
    ("el-data", ["mnist", "--data-dir", "missing", "--out", "o"], 2, "--data-dir missing: no such folder"),
    ("el-reproduce", ["mnist", "--render", "missing.json"], 2, "--render missing.json: no such file"),
    ("el-average-checkpoints", ["--inputs", "missing.pt", "--output", "avg.pt"], 2, "--inputs missing.pt: no such file"),
])
def test_a_missing_input(tmp_path, name, args, code, message):
    prog = f"{name} mnist" if name == "el-reproduce" else name
    assert_error(run(name, *args, cwd=tmp_path), prog, code, message)
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.e2e
def test_an_input_that_is_not_what_it_should_be_is_a_failure(tmp_path):
    """Exit 1, the message naming the file and what is wrong with it."""
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "other.pt").write_bytes(b"not one either")
    assert_error(run("el-average-checkpoints", "--inputs", "junk.pt", "other.pt", "--output", "avg.pt", cwd=tmp_path),
                 "el-average-checkpoints", 1, "junk.pt: not a readable torch checkpoint")

    (tmp_path / "h.txt").write_text("a b\nc d\n")
    (tmp_path / "r.txt").write_text("a b\n")
    assert_error(run("el-bleu", "score", "--hyp", "h.txt", "--ref", "r.txt", cwd=tmp_path), "el-bleu", 1,
                 "2 hypotheses but 1 references")

    (tmp_path / "release").mkdir()
    assert_error(run("el-prepare-iwslt", "--release", "release", "--corpus", "iwslt14.de-en", "--out", "o",
                     cwd=tmp_path), "el-prepare-iwslt", 1, "has no file matching 'train.tags.de-en.de'")

    (tmp_path / "train.py").write_text("x = 1\n")
    assert_error(run("el-timm-train", "train.py", "--loss", "el", cwd=tmp_path), "el-timm-train", 1,
                 "does not look like timm's train.py")

    (tmp_path / "results.json").write_text("{}\n")
    assert_error(run("el-reproduce", "mnist", "--render", "results.json", cwd=tmp_path), "el-reproduce mnist", 1,
                 "not a results.json of el-reproduce mnist")

    user = tmp_path / "user" / "MNIST" / "raw"
    user.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (user / name).write_bytes(b"not IDX")
    assert_error(run("el-data", "mnist", "--data-dir", "user", "--out", "data", cwd=tmp_path), "el-data", 1,
                 "not an IDX file")
    assert not (tmp_path / "data" / "SOURCES.json").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("experiment", ["mnist", "mnist-table11", "translation"])
def test_el_reproduce_says_one_thing_one_way_in_every_experiment(tmp_path, experiment):
    """Issue 24: every message of an experiment starts with ``el-reproduce <experiment>:``, usage errors and
    failures alike; an --out that is a file is 'is a file, not a folder' in each; an OSError is 'path: reason'."""
    (tmp_path / "a_file").write_text("x")
    assert_error(run("el-reproduce", experiment, "--out", "a_file", cwd=tmp_path), f"el-reproduce {experiment}", 2,
                 "--out a_file: is a file, not a folder")
    if experiment != "translation":  # (translation's --render reads a results.json; a folder is its usage error)
        (tmp_path / "results.json").mkdir()
        proc = run("el-reproduce", experiment, "--render", "results.json", cwd=tmp_path)
        assert proc.returncode in (1, 2) and proc.stderr.strip().splitlines()[-1].startswith(
            f"el-reproduce {experiment}: error: "), proc.stderr
        assert "[Errno" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_oserror_is_path_and_reason():
    assert commands.describe_error(OSError(30, "Read-only file system", "out/x")) == "out/x: read-only file system"
    assert commands.describe_error(OSError(18, "Invalid cross-device link", "a", None, "b")) == \
        "a -> b: invalid cross-device link"
    assert commands.describe_error(ValueError("as it is")) == "as it is"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_commands_module_says_which_command_it_is(name):
    module = importlib.import_module(MODULES[name])
    assert module.__doc__.lstrip().startswith(f"{name}: "), module.__doc__.splitlines()[0]
    source = open(module.__file__, encoding="utf-8").read()
    assert "os.path.dirname(sys.executable)" not in source  # fairseq's programs: commands.fairseq_program


def test_fairseq_program_is_beside_this_python():
    path = commands.fairseq_program("fairseq-generate")
    assert os.path.dirname(path) == BIN and os.path.basename(path) == "fairseq-generate"


def test_the_shared_no_progress_option():
    pytest.importorskip("torchattacks")
    from el_evidence.reproduce import attack_probe
    from el_evidence.reproduce.__main__ import parse_args

    assert parse_args(["mnist"]).progress is True
    assert parse_args(["mnist", "--no-progress"]).progress is False
    assert attack_probe.parse_args(["--out", "x.json", "--no-progress"]).progress is False


@pytest.mark.e2e
def test_run_turns_errors_into_the_convention(capsys):
    def fails():
        raise commands.CommandError("the file is damaged")

    def misused():
        raise commands.UsageError("--x must be >= 1")

    def library_error():
        raise ValueError("bad data")

    assert commands.run("prog", fails) == 1
    assert commands.run("prog", misused) == 2
    assert commands.run("prog", library_error, errors=(ValueError,)) == 1
    assert commands.run("prog", lambda: None) == 0
    assert capsys.readouterr().err.splitlines() == ["prog: error: the file is damaged", "prog: error: --x must be >= 1",
                                                    "prog: error: bad data"]
    with pytest.raises(ValueError):
        commands.run("prog", library_error)

    def interrupted():
        raise KeyboardInterrupt

    assert commands.run("prog", interrupted) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["prog: interrupted"]


def test_setup_logging_one_handler_writing_to_the_stderr_of_the_moment(capsys):
    import logging

    commands.setup_logging("first")
    logging.getLogger("el_plugins.x").info("one")
    assert capsys.readouterr().err == "first: one\n"
    commands.setup_logging("second")  # a second command in the same process
    logging.getLogger("el_plugins.x").info("two")
    assert capsys.readouterr().err == "second: two\n"  # once, with the command running now


def test_failure_cause_is_the_line_that_says_why():
    """A failed child program is reported in one line (issue 18 item 15): its last exception line."""
    traceback = ("2024 | INFO | loading\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                 "    main()\nFileNotFoundError: Dataset not found: tset (bin)\n\n")
    assert commands.failure_cause(traceback) == "FileNotFoundError: Dataset not found: tset (bin)"
    assert commands.failure_cause("Traceback ...\nRuntimeError: Error(s) in loading state_dict for M:\n"
                                  "\tsize mismatch for w: 3 vs 4.\n") == \
        "RuntimeError: Error(s) in loading state_dict for M: size mismatch for w: 3 vs 4."
    assert commands.failure_cause("usage: fairseq-generate ...\nfairseq-generate: error: argument --beam: bad\n") == \
        "fairseq-generate: error: argument --beam: bad"
    assert commands.failure_cause("struct.error: unpack requires a buffer of 4 bytes") == \
        "struct.error: unpack requires a buffer of 4 bytes"
    assert commands.failure_cause("") == "it printed nothing"
    assert len(commands.failure_cause("ValueError: " + "x" * 1000)) == 400


@pytest.mark.e2e
@pytest.mark.parametrize("name,args", [
    ("el-prepare-iwslt", ["--release", "release", "--corpus", "iwslt14.de-en"]),
    ("el-reproduce", ["mnist"]),
    ("el-bleu", ["generate", "bin", "--path", "c.pt"]),
    ("el-demo", []),
])
def test_an_output_folder_below_a_file_is_refused_before_any_work(tmp_path, name, args):
    """Issue 18 item 16, in every command: --out inside a file was found only when the outputs were written."""
    (tmp_path / "release").mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "c.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("a file")
    for out in ("notes.txt", "notes.txt/sub"):
        proc = run(name, *args, "--out", out, cwd=tmp_path)
        assert_error(proc, " ".join([name, *args[:1]]) if name == "el-reproduce" else name, 2, f"--out {out}: ")
        assert "is a file, not a folder" in proc.stderr, proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "a file"
