"""The fixes el-plugins applies to fairseq (el_plugins/fairseq_plugin/fixes.py), with the real fairseq
commands on a corpus whose splits are not multiples of --required-batch-size-multiple (8): with the
fix every sentence is trained on, validated and translated; with its off switch fairseq's dropped
last batch is back. Plus direct checks of the patched batch_by_size and of the switches."""
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from el_evidence.testing.programs import run_cli
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER, binarize_toy_corpus, train_inner_logs

pytest.importorskip("fairseq")

from fairseq.data import data_utils  # noqa: E402  (importing fairseq activates el-plugins)

from el_plugins.fairseq_plugin import fixes  # noqa: E402

SIZES = (("train", 203), ("valid", 13), ("test", 13))  # 203 = 12 x 16 + 11; 13 = 8 + 5
BATCH = 16  # --batch-size: 8 divides it, so only the last batch of each split is short
WEIGHTS_ONLY_ON_REST_OFF = {"EL_PLUGINS_FAIRSEQ_FIXES": "0", "EL_PLUGINS_FIX_WEIGHTS_ONLY": "1"}
COMMON = ["--cpu", "--num-workers", "0", "--batch-size", BATCH, "--no-progress-bar"]


def target_counts(path):
    """(sentences, target tokens) of a raw English split as fairseq counts them: words + </s>."""
    lines = path.read_text().splitlines()
    return len(lines), sum(len(line.split()) + 1 for line in lines)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The toy corpus at SIZES, binarized, and one epoch of training on it (with the fixes)."""
    root = tmp_path_factory.mktemp("fixes")
    binarize_toy_corpus(root, sizes=SIZES)
    train_log = train_one_epoch(root / "bin", root / "ckpt")
    return types.SimpleNamespace(raw=root / "raw", bin=root / "bin", ckpt=root / "ckpt/checkpoint_last.pt",
                                 train_log=train_log)


def train_one_epoch(data_bin, save_dir, env=None, save=True):
    return run_cli("fairseq-train", data_bin, *TINY_TRANSFORMER, *COMMON, "--optimizer", "adam", "--lr", "0.001",
                   "--max-epoch", "1", "--seed", "1", "--log-format", "json", "--log-interval", "1",
                   "--disable-validation", "--save-dir", save_dir, *([] if save else ["--no-save"]), env=env).stdout


def epoch_totals(log):
    """(updates, sentences, target tokens) summed over the per-update train_inner json logs."""
    updates = train_inner_logs(log)
    return len(updates), sum(float(u["bsz"]) for u in updates), sum(float(u["wpb"]) for u in updates)


RESTORED = re.compile(r"el_plugins \| el-plugins: fairseq's batch_by_size dropped the last batch \((\d+) of (\d+) items")


@pytest.mark.e2e
def test_training_epoch_sees_every_sentence_and_the_switch_brings_the_drop_back(corpus, tmp_path):
    sentences, tokens = target_counts(corpus.raw / "train.en")
    updates, seen, seen_tokens = epoch_totals(corpus.train_log)
    assert (seen, seen_tokens) == (sentences, tokens) == (203, tokens)
    restored, total = map(int, RESTORED.search(corpus.train_log).groups())  # logged once, with the off switch
    assert total == 203 and 0 < restored < 8 and "EL_PLUGINS_FIX_BATCH_BY_SIZE=0 turns this fix off" in corpus.train_log

    off = train_one_epoch(corpus.bin, tmp_path, env={"EL_PLUGINS_FAIRSEQ_FIXES": "0"}, save=False)
    off_updates, off_seen, off_tokens = epoch_totals(off)  # the longest sentences are never trained on
    assert (off_updates, off_seen) == (updates - 1, 203 - restored) and off_tokens < tokens
    assert not RESTORED.search(off)


@pytest.mark.e2e
def test_generate_translates_every_sentence(corpus):
    def translated(env=None):
        out = run_cli("fairseq-generate", corpus.bin, "--path", corpus.ckpt, "--gen-subset", "test", "--beam", "1",
                      *COMMON, env=env).stdout
        assert re.search(r"Generate test with beam=1: BLEU4 = [\d.]+", out), out[-3000:]
        return sorted(int(i) for i in re.findall(r"^S-(\d+)\t", out, flags=re.M))

    assert translated() == list(range(13))
    assert len(translated({"EL_PLUGINS_FIX_BATCH_BY_SIZE": "0"})) == 8


@pytest.mark.e2e
def test_validate_scores_every_sentence_and_token(corpus):
    def scored(env=None):
        out = run_cli("fairseq-validate", corpus.bin, "--task", "translation", "--path", corpus.ckpt,
                      "--valid-subset", "test", *COMMON, env=env).stdout
        line = [x for x in out.splitlines() if "| valid on 'test' subset |" in x]
        assert line, out[-3000:]
        stats = dict(re.findall(r"\| (\w+) ([-\d.]+)", line[-1]))
        return float(stats["bsz"]), float(stats["wpb"])  # one reduction over all batches: sums

    sentences, tokens = target_counts(corpus.raw / "test.en")
    assert scored() == (sentences, tokens) == (13, tokens)
    off_sentences, off_tokens = scored(WEIGHTS_ONLY_ON_REST_OFF)  # per-fix switch wins over the global one
    assert off_sentences == 8 and off_tokens < tokens


@pytest.mark.e2e
def test_weights_only_switch_and_invalid_switch_values(corpus):
    refused = run_cli("fairseq-generate", corpus.bin, "--path", corpus.ckpt, "--gen-subset", "test", *COMMON,
                      env={"EL_PLUGINS_FIX_WEIGHTS_ONLY": "0"}, check=False)
    assert refused.returncode != 0 and "argparse.Namespace" in refused.stdout, refused.stdout[-3000:]

    bad = run_cli("fairseq-validate", corpus.bin, "--path", corpus.ckpt, *COMMON,
                  env={"EL_PLUGINS_FAIRSEQ_FIXES": "no"}, check=False)
    assert bad.returncode != 0
    assert ("el-plugins: EL_PLUGINS_FAIRSEQ_FIXES='no' is not allowed: use EL_PLUGINS_FAIRSEQ_FIXES=1 (on) or "
            "EL_PLUGINS_FAIRSEQ_FIXES=0 (off)") in bad.stdout, bad.stdout[-3000:]
    assert "valid on" not in bad.stdout


# --- in this process: fairseq was imported above, so el-plugins has patched it -------------------

def one_token(i):
    return 1


@pytest.mark.parametrize("n,kwargs", [
    (13, dict(required_batch_size_multiple=8)),
    (30, dict(required_batch_size_multiple=8, max_tokens=20)),
    (21, dict(required_batch_size_multiple=4, max_sentences=8)),
    (16, dict(required_batch_size_multiple=8)),
    (7, dict(required_batch_size_multiple=1, max_sentences=3)),
])
@pytest.mark.parametrize("vec", [False, True])
def test_patched_batch_by_size_keeps_every_index_and_fairseqs_batches(n, kwargs, vec):
    patched, original = data_utils.batch_by_size, data_utils.batch_by_size.__wrapped__
    assert getattr(patched, fixes.MARK) and not getattr(original, fixes.MARK, False)
    rng = np.random.RandomState(n)
    indices = rng.permutation(n).astype(np.int64)
    sizes = rng.randint(1, 8, size=n).astype(np.int64)
    args = dict(num_tokens_fn=lambda i: int(sizes[i]), num_tokens_vec=sizes[indices] if vec else None, **kwargs)

    batches, theirs = patched(indices, **args), original(indices, **args)
    assert np.array_equal(np.concatenate(batches), indices)  # every index once, in fairseq's order
    assert len(theirs) <= len(batches) <= len(theirs) + 1
    assert all(np.array_equal(a, b) for a, b in zip(batches, theirs))
    if len(batches) > len(theirs):  # what we add is the batch fairseq dropped for not being a multiple
        assert len(batches[-1]) % kwargs["required_batch_size_multiple"] != 0


def test_patched_batch_by_size_on_a_list_an_iterator_and_nothing():
    for given in (list(range(13)), iter(range(13))):
        assert [b.tolist() for b in data_utils.batch_by_size(given, one_token, required_batch_size_multiple=8)] == \
            [list(range(8)), list(range(8, 13))]
    assert data_utils.batch_by_size([], one_token, required_batch_size_multiple=8) == []  # fairseq: IndexError


def test_fixes_are_idempotent_and_leave_a_fixed_fairseq_alone():
    patched = data_utils.batch_by_size
    assert fixes.apply_fixes() == {"batch_by_size": "already applied", "weights_only": "already applied"}
    assert data_utils.batch_by_size is patched

    original = patched.__wrapped__
    module = types.SimpleNamespace(batch_by_size=original)
    assert fixes.fix_batch_by_size(module) == "applied" and module.batch_by_size.__wrapped__ is original
    assert fixes.fix_batch_by_size(module) == "already applied" and module.batch_by_size.__wrapped__ is original

    def upstream_fixed(indices, num_tokens_fn, num_tokens_vec=None, max_tokens=None, max_sentences=None,
                       required_batch_size_multiple=1, fixed_shapes=None):  # a fairseq that keeps every index
        return original(indices, num_tokens_fn, num_tokens_vec, max_tokens, max_sentences, 1, fixed_shapes)

    assert fixes.drops_indices(original) and not fixes.drops_indices(upstream_fixed)
    module = types.SimpleNamespace(batch_by_size=upstream_fixed)
    assert fixes.fix_batch_by_size(module) == "not needed" and module.batch_by_size is upstream_fixed


@pytest.mark.parametrize("env,enabled", [
    ({}, (True, True)),
    ({"EL_PLUGINS_FAIRSEQ_FIXES": "0"}, (False, False)),
    ({"EL_PLUGINS_FAIRSEQ_FIXES": "1", "EL_PLUGINS_FIX_BATCH_BY_SIZE": "0"}, (False, True)),
    ({"EL_PLUGINS_FAIRSEQ_FIXES": "0", "EL_PLUGINS_FIX_WEIGHTS_ONLY": "1"}, (False, True)),
    ({"EL_PLUGINS_FAIRSEQ_FIXES": "", "EL_PLUGINS_FIX_WEIGHTS_ONLY": " 0 "}, (True, False)),
])
def test_switches(monkeypatch, env, enabled):
    for name in (fixes.ALL_FIXES_ENV, fixes.BATCH_BY_SIZE_ENV, fixes.WEIGHTS_ONLY_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (fixes.fix_enabled(fixes.BATCH_BY_SIZE_ENV), fixes.fix_enabled(fixes.WEIGHTS_ONLY_ENV)) == enabled


@pytest.mark.parametrize("name", ["EL_PLUGINS_FAIRSEQ_FIXES", "EL_PLUGINS_FIX_BATCH_BY_SIZE", "EL_PLUGINS_FIX_WEIGHTS_ONLY"])
@pytest.mark.parametrize("value", ["false", "2", "off"])
def test_an_invalid_switch_value_is_an_error_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(fixes.FixSwitchError, match=rf"{name}='{value}' is not allowed: use {name}=1 \(on\) or {name}=0"):
        fixes.apply_fixes()


# --- EL_PLUGINS_DISABLE takes 0/1 like the fix switches (issue 18 item 18) ------------------------

def _import_timm_loss(value):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("EL_PLUGINS_DISABLE", None)
    if value is not None:
        env["EL_PLUGINS_DISABLE"] = value
    return subprocess.run([sys.executable, "-c", "import timm.loss; print('el' in timm.loss.LOSS_TYPES)"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.e2e
@pytest.mark.parametrize("value,active", [(None, True), ("", True), ("0", True), ("1", False)])
def test_disable_switch_values(value, active):
    proc = _import_timm_loss(value)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == str(active), proc.stdout[-2000:]


@pytest.mark.e2e
@pytest.mark.parametrize("value", ["false", "no", "true", "off"])
def test_disable_switch_other_values_stop_the_program_naming_the_variable(value, tmp_path):
    """EL_PLUGINS_DISABLE=false turned activation off, and fairseq then only said 'invalid choice'."""
    message = (f"el-plugins: EL_PLUGINS_DISABLE='{value}' is not allowed: use EL_PLUGINS_DISABLE=1 (el-plugins does "
               "not activate) or EL_PLUGINS_DISABLE=0 (it activates), or leave it unset (it activates)")
    proc = _import_timm_loss(value)
    assert proc.returncode == 1 and proc.stdout.strip().splitlines()[-1] == message, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    empty = subprocess.run([sys.executable, "-c", "print('python starts')"], stdout=subprocess.PIPE, text=True,
                           env=dict(os.environ, EL_PLUGINS_DISABLE=value))
    assert empty.returncode == 0 and empty.stdout == "python starts\n"  # start-up itself never fails
    if value == "false":
        proc = run_cli("fairseq-train", "--help", env={"EL_PLUGINS_DISABLE": value}, check=False)
        assert proc.returncode != 0 and message in proc.stdout and "invalid choice" not in proc.stdout, proc.stdout[-2000:]
