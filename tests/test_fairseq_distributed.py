"""The criterion under fairseq's distributed training: the wrappers fairseq puts around a model, and two real
fairseq-train ranks (gloo, CPU) against one process accumulating the same two batches (--update-freq 2)."""
import os
import subprocess

import pytest
import torch

from el_evidence.testing.programs import BIN, free_port
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER, logged_approx, train_inner_logs

pytest.importorskip("fairseq")
from fairseq.distributed import ModuleProxyWrapper  # noqa: E402
from fairseq.distributed.legacy_distributed_data_parallel import LegacyDistributedDataParallel  # noqa: E402

from el_plugins.fairseq_plugin.criterion import (  # noqa: E402
    CRITERION_NAME, fusable_output_layer, normalizes_with_plain_log_softmax, unwrap_model)
from test_fairseq_criterion import build, gloo_group  # noqa: E402,F401  (a fixture)

pytestmark = pytest.mark.e2e  # every test here runs programs (fairseq-train ranks)

EL_FLAGS = ["--criterion", CRITERION_NAME, "--label-smoothing", "0.1", "--log-end", "0.25"]
LOGGED = ("loss", "nll_loss", "bonus", "p_target", "past_log_end", "ppl")


def wrappers(model, group):
    """Every wrapping fairseq's DistributedFairseqModel builds around a model on these backends."""
    yield "ModuleProxyWrapper(DistributedDataParallel)", ModuleProxyWrapper(
        torch.nn.parallel.DistributedDataParallel(model, process_group=group))
    yield "ModuleProxyWrapper(LegacyDistributedDataParallel)", ModuleProxyWrapper(
        LegacyDistributedDataParallel(model, process_group=group))
    try:
        from fairseq.distributed.fully_sharded_data_parallel import FullyShardedDataParallel
        yield "FullyShardedDataParallel", FullyShardedDataParallel(model, process_group=group)
    except (ImportError, ValueError, RuntimeError, AssertionError):  # needs fairscale (and CUDA)
        pass


def test_fused_path_is_chosen_inside_fairseqs_wrappers(toy_data_bin, gloo_group):
    task, model, criterion, batches = build(toy_data_bin, *EL_FLAGS)
    assert criterion.implementation == "auto" and normalizes_with_plain_log_softmax(model)
    sample = batches[0]
    plain_loss, _, plain_log = criterion(model, sample)
    seen = []
    for name, wrapped in wrappers(model, gloo_group):
        seen.append(name)
        assert unwrap_model(wrapped) is model, name
        assert normalizes_with_plain_log_softmax(wrapped), name
        fused_here = "FullySharded" not in name  # fully sharded parameters are not the module's own: logits path
        assert (fusable_output_layer(wrapped) is model.decoder.output_projection) == fused_here, name
        loss, _, log = criterion(wrapped, sample)
        assert type(loss.grad_fn).__name__ == ("_FusedLinearEncouragingLossBackward" if fused_here
                                               else "_FusedEncouragingLossBackward"), name
        torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=0)
        for key in ("nll_loss", "el_bonus", "p_target", "n_past_log_end"):
            torch.testing.assert_close(log[key], plain_log[key], rtol=1e-6, atol=0)
        loss.backward()
    assert len(seen) >= 2


def train_updates(log, extra=()):
    """The per-update train_inner records of a --log-format json --log-interval 1 run: LOGGED and ``extra``."""
    return {int(r["num_updates"]): {k: float(r[k]) for k in (*LOGGED, *extra)} for r in train_inner_logs(log)}


def fairseq_train(data_bin, save_dir, *extra):
    return [os.path.join(BIN, "fairseq-train"), str(data_bin), *TINY_TRANSFORMER, *EL_FLAGS,
            "--dropout", "0", "--optimizer", "adam", "--lr", "0.01", "--max-tokens", "400", "--cpu",
            "--seed", "1", "--max-update", "12", "--log-format", "json", "--log-interval", "1", "--no-progress-bar",
            "--num-workers", "0", "--save-dir", str(save_dir), "--no-save", "--disable-validation", *extra]


def run_train(args, env):
    proc = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


@pytest.mark.parametrize("shared", [False, True], ids=["own-projection", "shared-embeddings-update-freq-2"])
def test_fused_output_layer_trains_as_the_logits_path(toy_data_bin, tmp_path, shared):
    """fairseq-train, 12 updates, --dropout 0: the default (the decoder's output layer fused into the loss) logs,
    update by update, the loss, nll_loss, bonus, p_target, past_log_end and accuracy of the logits path
    (--el-fuse-output-layer off); with shared embeddings also accumulating 2 batches per update."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    extra = ["--report-accuracy", *(["--share-decoder-input-output-embed", "--update-freq", "2"] if shared else [])]
    fused, logits = (train_updates(run_train(fairseq_train(toy_data_bin, tmp_path / fuse, "--el-fuse-output-layer",
                                                           fuse, *extra), env), ("accuracy",))
                     for fuse in ("auto", "off"))
    assert sorted(fused) == sorted(logits) == list(range(1, 13))
    for update, want in logits.items():
        for key, value in want.items():
            assert fused[update][key] == logged_approx(key, value), (update, key, fused[update], want)


def test_two_ranks_equal_one_process_with_update_freq_2(toy_data_bin, tmp_path):
    """fairseq's own distributed training, default implementation (the output layer fused into the loss): rank r
    trains on batches r, r+2, ..., one process with --update-freq 2 accumulates the same pairs on the logits path
    (--el-fuse-output-layer off); the per-update logs must agree."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    port = free_port()
    ranks = [subprocess.Popen(
        fairseq_train(toy_data_bin, tmp_path / f"rank{r}", "--distributed-world-size", "2", "--distributed-rank", str(r),
                      "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                      "--distributed-init-method", f"tcp://127.0.0.1:{port}"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in ranks]
    for r, (p, out) in enumerate(zip(ranks, outs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{out[-6000:]}"
    assert "distributed init (rank 1)" in outs[0] + outs[1], outs[0][-3000:]
    single = run_train(fairseq_train(toy_data_bin, tmp_path / "single", "--update-freq", "2",
                                     "--el-fuse-output-layer", "off"), env)

    distributed, accumulated = train_updates(outs[0]), train_updates(single)
    assert sorted(distributed) == sorted(accumulated) == list(range(1, 13))
    for update, want in accumulated.items():
        got = distributed[update]
        for key in LOGGED:  # fairseq rounds the logged values to 3 decimals
            assert got[key] == logged_approx(key, want[key]), (update, key, got, want)
    # the logs are the summed values: the bonus is negative, p_target a mean probability, past_log_end a fraction
    assert all(r["bonus"] < 0 and 0 < r["p_target"] < 1 and 0 <= r["past_log_end"] <= 1 for r in distributed.values())
