"""The toy corpus as fairseq data (binarized by the real fairseq-preprocess), the tiny transformer the tests
train on it, and the per-update records of a fairseq-train log."""
import json
import math
import pathlib
import re

import pytest

from el_evidence.testing.programs import run_cli
from el_plugins.demo.toy_corpus import write_corpus

TINY_TRANSFORMER = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]


def binarize_toy_corpus(root, sizes, seed=1):
    """The toy corpus at ``sizes`` (((split, pairs), ...), train, valid and test) as text in root/raw, and
    binarized by fairseq-preprocess (src -> en, one worker) into root/bin; returns root/bin (a Path)."""
    root = pathlib.Path(root)
    write_corpus(str(root / "raw"), sizes=sizes, seed=seed)
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "en",
            "--trainpref", root / "raw/train", "--validpref", root / "raw/valid", "--testpref", root / "raw/test",
            "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


def train_tiny_model(data_bin, save_dir, updates=8, criterion="label_smoothed_cross_entropy"):
    """fairseq-train the tiny transformer on ``data_bin`` for ``updates`` updates on the CPU (no validation, no
    epoch checkpoints); returns save_dir/checkpoint_last.pt (a Path)."""
    save_dir = pathlib.Path(save_dir)
    run_cli("fairseq-train", data_bin, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.003",
            "--max-tokens", "2000", "--max-update", str(updates), "--cpu", "--criterion", criterion,
            "--save-dir", save_dir, "--no-progress-bar", "--num-workers", "0", "--no-epoch-checkpoints",
            "--disable-validation")
    return save_dir / "checkpoint_last.pt"


def train_inner_logs(log):
    """The per-update ``train_inner`` records (dicts) of a fairseq-train log written with --log-format json
    --log-interval 1; AssertionError, with the log's end, where there are none."""
    records = [json.loads(m) for m in re.findall(r"\| train_inner \| (\{.*\})", log)]
    if not records:
        raise AssertionError(f"no train_inner records in the log:\n{log[-4000:]}")
    return records


def logged_approx(key, value):
    """The tolerance of one fairseq-train log's value against another run's: fairseq rounds the losses to 3
    decimals (2e-3 absolute), and ppl = 2 ** nll_loss, rounded to 2 decimals, moves by ln 2 * ppl per unit of
    nll_loss (about 0.04 at ppl 61 per 0.001 of nll_loss), so it is compared relatively."""
    if key == "ppl":
        return pytest.approx(value, rel=2e-3 * math.log(2) * 1.5, abs=0.01)
    return pytest.approx(value, abs=2e-3)
