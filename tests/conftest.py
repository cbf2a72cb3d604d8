import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)  # the venv's bin: fairseq-train, el-* console scripts


def run_cli(name, *args, cwd=None, env=None, check=True, timeout=600):
    """Run a console script of this environment; returns the CompletedProcess (text, merged output)."""
    cmd = [os.path.join(BIN, name), *map(str, args)]
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """The toy parallel corpus, binarized by the real fairseq-preprocess."""
    from el_plugins.demo.toy_corpus import write_corpus

    root = tmp_path_factory.mktemp("toy")
    write_corpus(str(root / "raw"), sizes=(("train", 600), ("valid", 60), ("test", 40)))
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "en",
            "--trainpref", root / "raw/train", "--validpref", root / "raw/valid", "--testpref", root / "raw/test",
            "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


# --------------------------------------------------------------------------- test tiers
E2E_FIXTURES = {"toy_data_bin", "digits_folder"}  # built by running real programs (fairseq-preprocess, ...)
RUNS_A_PROGRAM = ("run_cli(", "subprocess.", "Popen(", "torchrun")


def _runs_a_program(function, module, depth=2):
    """Whether the function's source, or that of the module's functions it calls (``depth`` levels), runs one."""
    import inspect
    import re

    try:
        source = inspect.getsource(inspect.unwrap(function))
    except (OSError, TypeError):
        return False
    if any(s in source for s in RUNS_A_PROGRAM):
        return True
    called = {getattr(module, name) for name in re.findall(r"\b(\w+)\(", source)
              if inspect.isfunction(getattr(module, name, None)) and getattr(module, name) is not function}
    return depth > 0 and any(_runs_a_program(f, module, depth - 1) for f in called)


def pytest_collection_modifyitems(config, items):
    """The tiers (pytest.ini): ``e2e`` for every test that runs a program (a console script, fairseq's
    commands, a subprocess, torchrun) or needs data built by one; ``cuda`` for tests that need a GPU.
    ``pytest -m "not slow and not e2e"`` is the fast core."""
    for item in items:
        function = getattr(item, "function", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        module_fixtures = {name for name in fixtures if callable(getattr(item.module, name, None))}
        if E2E_FIXTURES & fixtures or function is not None and any(
                _runs_a_program(f, item.module) for f in [function, *(getattr(item.module, n) for n in module_fixtures)]):
            item.add_marker(pytest.mark.e2e)
        if "cuda" in item.name and "needs CUDA" in str(item.keywords.get("skipif", "")) or "_cuda" in item.name:
            item.add_marker(pytest.mark.cuda)
