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
