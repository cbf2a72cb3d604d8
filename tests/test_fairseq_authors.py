"""Issue 25 in fairseq-train: the authors' command lines (translation/readme.sh, criterion encourage_loss), both arms,
log what label_smoothed_encouraging_loss logs with the same settings; the bonus weight's schedule over 2 gloo ranks
and across a resume; the authors' flags that are refused."""
import os
import subprocess

import pytest

from el_plugins.core import BonusSchedule
from el_evidence.testing.programs import BIN, free_port, run_cli
from el_plugins.demo.toy_corpus import write_corpus
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER, logged_approx, train_inner_logs

pytest.importorskip("fairseq")

pytestmark = pytest.mark.e2e  # every test here runs programs (fairseq-train, fairseq-preprocess)

ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
LOGGED = ("loss", "nll_loss", "bonus", "p_target", "ppl")

# translation/readme.sh's train.py flags, word for word, but the data path, --save-dir, --tensorboard-logdir and
# --fp16 (CUDA only), both arms differing only in --bonus_gamma (0: the baseline, -1: EL)
README_DE_EN = [
    "--arch", "transformer_iwslt_de_en", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
    "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--weight-decay", "0.0001",
    "--criterion", "encourage_loss", "--label-smoothing", "0.1", "--max-tokens", "4096",
    "--eval-bleu", "--eval-bleu-args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}', "--eval-bleu-detok", "moses",
    "--eval-bleu-remove-bpe", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
    "--update-freq", "4", "--max-update", "20000", "--dropout", "0.4", "--lr", "1e-3", "--seed", "1",
    "--el_lb", "0.1", "--el_mask_pad", "1", "--log_end", "0.5", "--bonus_gamma", "{bonus_gamma}", "--bonus_rho", "1",
    "--keep-interval-updates", "10", "--log-format", "json"]
README_FR_EN = [
    "--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
    "--weight-decay", "0.001", "--criterion", "encourage_loss", "--label-smoothing", "0.1", "--share-all-embeddings",
    "--max-tokens", "4096", "--eval-bleu", "--eval-bleu-args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}',
    "--eval-bleu-detok", "moses", "--eval-bleu-remove-bpe", "--best-checkpoint-metric", "bleu",
    "--maximize-best-checkpoint-metric", "--max-update", "100000", "--dropout", "0.3", "--lr", "0.0005", "--seed", "1",
    "--el_lb", "0.1", "--el_mask_pad", "1", "--log_end", "0.5", "--bonus_gamma", "{bonus_gamma}", "--bonus_rho", "1",
    "--keep-interval-updates", "10", "--log-format", "json", "--log-interval", "1000"]
# the test's own additions, after theirs (argparse's last value wins): few updates of a small model, logged each
SHORT_AND_SMALL = ["--max-update", "3", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
                   "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
                   "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
                   "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
# label_smoothed_encouraging_loss with the same settings: the paper's smoothing convention (eps / V), the bonus's
# smoothing 0.1 (their --el_lb), log_end 0.5; the baseline arm has no bonus
NATIVE = {"-1": ["--criterion", "label_smoothed_encouraging_loss", "--smoothing-convention", "paper",
                 "--label-smoothing", "0.1", "--bonus-smoothing", "0.1", "--log-end", "0.5", "--bonus-weight", "1"],
          "0": ["--criterion", "label_smoothed_encouraging_loss", "--smoothing-convention", "paper",
                "--label-smoothing", "0.1", "--log-end", "0.5", "--bonus-weight", "0"]}


@pytest.fixture(scope="module")
def joined_data_bin(tmp_path_factory):
    """The toy corpus binarized with one dictionary for both sides (what --share-all-embeddings needs)."""
    root = tmp_path_factory.mktemp("joined")
    write_corpus(str(root / "raw"), sizes=(("train", 300), ("valid", 20), ("test", 20)), seed=2)
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "en", "--joined-dictionary",
            "--trainpref", root / "raw/train", "--validpref", root / "raw/valid", "--testpref", root / "raw/test",
            "--destdir", root / "bin", "--workers", "1")
    return root / "bin"


def run_train(args, cwd=None):
    proc = subprocess.run([os.path.join(BIN, "fairseq-train"), *map(str, args)], env=ENV, cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def per_update(log, keys=LOGGED):
    return {int(r["num_updates"]): {k: float(r[k]) for k in keys} for r in train_inner_logs(log)}


def replaced(flags, criterion):
    """``flags`` with the authors' criterion and its flags swapped for ``criterion``'s flags."""
    theirs = {"--criterion", "--label-smoothing", "--el_lb", "--el_mask_pad", "--log_end", "--bonus_gamma",
              "--bonus_rho"}
    out, skip = [], False
    for flag in flags:
        if skip:
            skip = False
        elif flag in theirs:
            skip = True
        else:
            out.append(flag)
    return out + criterion


@pytest.mark.parametrize("pair", ["de-en", "fr-en"])
@pytest.mark.parametrize("bonus_gamma", ["0", "-1"], ids=["baseline", "el"])
def test_readme_commands_log_what_the_native_criterion_logs(toy_data_bin, joined_data_bin, tmp_path, pair,
                                                            bonus_gamma):
    """The authors' readme.sh command, their criterion and flags as they wrote them, runs on stock fairseq-train; its
    per-update loss, nll_loss, bonus, p_target and ppl equal label_smoothed_encouraging_loss's with the paper
    convention and the same settings. (Test additions: 3 updates of a 1-layer, 32-dim model, logged each update.)"""
    data = toy_data_bin if pair == "de-en" else joined_data_bin
    flags = [bonus_gamma if f == "{bonus_gamma}" else f for f in (README_DE_EN if pair == "de-en" else README_FR_EN)]
    theirs = run_train([data, *flags, "--save-dir", tmp_path / "theirs", "--tensorboard-logdir", tmp_path / "tb",
                        *SHORT_AND_SMALL], cwd=tmp_path)
    assert "criterion: AuthorsEncourageLossCriterion" in theirs
    ours = run_train([data, *replaced(flags, NATIVE[bonus_gamma]), "--save-dir", tmp_path / "ours",
                      *SHORT_AND_SMALL], cwd=tmp_path)
    theirs, ours = per_update(theirs), per_update(ours)
    assert sorted(theirs) == sorted(ours) == [1, 2, 3]
    for update, want in ours.items():
        assert theirs[update] == want, (update, theirs[update], want)  # the same values, to fairseq's 3 decimals
        assert (want["bonus"] < 0) == (bonus_gamma == "-1")


@pytest.mark.parametrize("flags,message", [
    (["--el_mask_pad", "0"], "--el_mask_pad must be 1, got 0: 0 gives padding tokens the bonus"),
    (["--sub_data_rho", "0.5"], "--sub_data_rho 0.5: no paper table uses it, and el-plugins does not implement it"),
    (["--bonus_abrupt", "0.75"], "--bonus_abrupt 0.75: no paper table uses it"),
    (["--all_dynamic_rho", "1"], "--all_dynamic_rho 1.0: no paper table uses it"),
    (["--el_linear_schedule_start", "3"], "--el_linear_schedule_start 3.0: the authors' code reads it nowhere"),
    (["--bonus_gamma", "-3"], "--bonus_gamma must be 0 (no bonus), -1 (the log bonus), -2 (the cosine bonus)"),
    (["--bonus_gamma", "-1", "--bonus_start", "0.5", "--log_end", "0.5"],
     "--bonus_start > 0 with --log_end < 1 is refused: the authors' formula"),
    (["--bonus_gamma", "2", "--log_end", "0.5"], "--log_end 0.5 has no effect with --bonus_gamma 2 in the authors' "
                                                 "code"),
    (["--bonus_gamma", "-1", "--el_schedule", "linear"], "--el_schedule 'linear' needs its horizon: "
                                                         "--el_schedule_max_epoch"),
])
def test_refused_authors_flags_stop_before_training(toy_data_bin, tmp_path, flags, message):
    proc = subprocess.run([os.path.join(BIN, "fairseq-train"), str(toy_data_bin), *TINY_TRANSFORMER, "--cpu",
                           "--criterion", "encourage_loss", "--label-smoothing", "0.1", *flags,
                           "--save-dir", str(tmp_path), "--max-update", "2", "--max-tokens", "400"], env=ENV,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("encourage_loss: error: ") and message in last, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout and "train_inner" not in proc.stdout


# --------------------------------------------------------------------------- the schedule
SCHEDULE = ["--criterion", "label_smoothed_encouraging_loss", "--label-smoothing", "0.1", "--log-end", "0.5",
            "--bonus-schedule", "linear", "--bonus-schedule-horizon", "6", "--bonus-schedule-unit", "update",
            "--bonus-defer", "2"]
EXPECTED = BonusSchedule("linear", 6, 2, 5.0, "update")


def scheduled_train(data_bin, save_dir, *extra, updates=10):
    return [data_bin, *TINY_TRANSFORMER, *SCHEDULE, "--dropout", "0", "--optimizer", "adam", "--lr", "0.01",
            "--max-tokens", "400", "--cpu", "--seed", "1", "--max-update", str(updates), "--log-format", "json",
            "--log-interval", "1", "--no-progress-bar", "--num-workers", "0", "--save-dir", save_dir,
            "--disable-validation", *extra]


def test_schedule_is_the_same_on_both_ranks_and_logged(toy_data_bin, tmp_path):
    """2 gloo ranks: every update's logged bonus_weight is the schedule's value (the mean over both ranks' steps, so a
    rank with another weight would show), and the losses equal one process accumulating the same batches."""
    port = free_port()
    ranks = [subprocess.Popen(
        [os.path.join(BIN, "fairseq-train"), *map(str, scheduled_train(
            toy_data_bin, tmp_path / f"rank{r}", "--no-save", "--distributed-world-size", "2", "--distributed-rank",
            str(r), "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}"))],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=900)[0] for p in ranks]
    for r, (p, out) in enumerate(zip(ranks, outs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{out[-6000:]}"
    single = run_train(scheduled_train(toy_data_bin, tmp_path / "single", "--no-save", "--update-freq", "2"))
    distributed, accumulated = per_update(outs[0], (*LOGGED, "bonus_weight")), per_update(single, (*LOGGED,
                                                                                                    "bonus_weight"))
    assert sorted(distributed) == sorted(accumulated) == list(range(1, 11))
    for update in range(1, 11):
        assert distributed[update]["bonus_weight"] == pytest.approx(EXPECTED.factor(update), abs=1e-4), update
        for key in (*LOGGED, "bonus_weight"):
            assert distributed[update][key] == logged_approx(key, accumulated[update][key]), (update, key)
    assert distributed[1]["bonus"] == 0 and distributed[10]["bonus"] < 0  # deferred, then on


def test_schedule_continues_across_a_resume(toy_data_bin, tmp_path):
    """5 updates, stop, resume from checkpoint_last.pt to 10: updates 6-10 log the schedule's values and the losses
    of an uninterrupted 10-update run (the schedule continues; it does not restart)."""
    whole = per_update(run_train(scheduled_train(toy_data_bin, tmp_path / "whole", "--no-epoch-checkpoints")),
                       (*LOGGED, "bonus_weight"))
    run_train(scheduled_train(toy_data_bin, tmp_path / "resumed", "--no-epoch-checkpoints", updates=5))
    resumed = per_update(run_train(scheduled_train(toy_data_bin, tmp_path / "resumed", "--no-epoch-checkpoints")),
                         (*LOGGED, "bonus_weight"))
    assert sorted(resumed) == list(range(6, 11))
    for update in range(6, 11):
        assert resumed[update]["bonus_weight"] == pytest.approx(EXPECTED.factor(update), abs=1e-4)
        for key in LOGGED:
            assert resumed[update][key] == logged_approx(key, whole[update][key]), (update, key)


def test_epoch_schedule_follows_fairseqs_epochs(toy_data_bin, tmp_path):
    """--el_schedule linear over 2 epochs with the authors' criterion (which in their own fairseq never took effect):
    epoch 1 trains with half the bonus weight, epoch 2 on with all of it; --defer_start 1 would have none first."""
    log = run_train([toy_data_bin, *TINY_TRANSFORMER, "--criterion", "encourage_loss", "--label-smoothing", "0.1",
                     "--bonus_gamma", "-1", "--el_schedule", "linear", "--el_schedule_max_epoch", "2",
                     "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "2000", "--cpu", "--max-epoch", "3",
                     "--log-format", "json", "--log-interval", "1", "--no-progress-bar", "--num-workers", "0",
                     "--save-dir", tmp_path, "--no-save", "--disable-validation"])
    records = train_inner_logs(log)
    by_epoch = {}
    for record in records:
        by_epoch.setdefault(int(record["epoch"]), set()).add(float(record["bonus_weight"]))
    assert by_epoch == {1: {0.5}, 2: {1.0}, 3: {1.0}}, by_epoch

