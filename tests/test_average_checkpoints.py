"""el-average-checkpoints: the mean, dtypes, selection, refusals, atomic output, and a real fairseq run."""
import argparse
import os
import subprocess
import sys

import pytest
import torch

from el_evidence.testing.programs import run_cli, run_module
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER
from el_plugins.translation import average_checkpoints as ac


def run_avg(*args, cwd=None):
    """The command as its own process (the installed el-plugins; stdout and stderr apart)."""
    return run_module("el_plugins.translation.average_checkpoints", *args, cwd=cwd, timeout=120)


def fake_checkpoint(path, model, updates=0, epoch=1):
    """A checkpoint shaped like fairseq's (args Namespace, cfg dict, extra_state, optimizer_history)."""
    torch.save({
        "args": argparse.Namespace(arch="transformer", lr=[0.001], epoch=epoch),
        "cfg": {"model": {"_name": "transformer"}, "task": {"_name": "translation"}},
        "model": model,
        "optimizer_history": [{"criterion_name": "LabelSmoothedEncouragingLossCriterion",
                               "optimizer_name": "Adam", "num_updates": updates}],
        "extra_state": {"train_iterator": {"epoch": epoch}, "marker": f"epoch{epoch}"},
        "last_optimizer_state": None,
    }, path)
    return path


def model_of(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {"enc.weight": torch.randn(3, 4, generator=g).to(dtype), "enc.bias": torch.randn(4, generator=g).to(dtype),
            "enc.version": torch.tensor([3.0]), "steps": torch.tensor(seed * 10, dtype=torch.int64)}


def load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def make_run(d, epochs=(1, 2, 3, 4), updates_per_epoch=10):
    d.mkdir(exist_ok=True)
    for e in epochs:
        fake_checkpoint(d / f"checkpoint{e}.pt", model_of(e), updates=e * updates_per_epoch, epoch=e)
        fake_checkpoint(d / f"checkpoint_{e}_{e * updates_per_epoch}.pt", model_of(100 + e),
                        updates=e * updates_per_epoch, epoch=e)
    fake_checkpoint(d / "checkpoint_last.pt", model_of(99), updates=999)
    fake_checkpoint(d / "checkpoint_best.pt", model_of(98), updates=998)
    return d


@pytest.mark.e2e
def test_mean_equals_hand_computed_and_structure_comes_from_newest(tmp_path):
    models = [model_of(s) for s in (1, 2, 3)]
    paths = [fake_checkpoint(tmp_path / f"c{i}.pt", m, updates=u, epoch=i)
             for i, (m, u) in enumerate(zip(models, (10, 30, 20)))]
    out = run_avg("--inputs", *paths, "--output", tmp_path / "avg.pt")
    assert out.returncode == 0, out.stderr
    assert all(str(p) in out.stdout for p in paths) and "averaging 3 checkpoints" in out.stdout
    avg = load(tmp_path / "avg.pt")
    w = (models[0]["enc.weight"] + models[1]["enc.weight"] + models[2]["enc.weight"]) / 3
    assert torch.allclose(avg["model"]["enc.weight"], w, atol=1e-7)
    assert torch.allclose(avg["model"]["enc.bias"], sum(m["enc.bias"] for m in models) / 3, atol=1e-7)
    assert avg["model"]["enc.version"].item() == 3.0
    assert avg["model"]["steps"].dtype == torch.int64 and avg["model"]["steps"].item() == 20  # (10+20+30)//3
    assert avg["extra_state"]["marker"] == "epoch1"  # most updates (30)
    assert avg["optimizer_history"][-1]["num_updates"] == 30
    assert isinstance(avg["args"], argparse.Namespace) and avg["cfg"]["task"]["_name"] == "translation"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mean_without_accumulation_error(tmp_path, dtype):
    # summed in the half dtype itself, 2048 + 7 + 7 + 7 rounds at every step, and 4 x 60000 overflows fp16
    models = [{"w": torch.tensor([2048.0 if k == 0 else 7.0, 60000.0, 0.1 * k]).to(dtype)} for k in range(4)]
    paths = [fake_checkpoint(tmp_path / f"c{k}.pt", m, updates=k) for k, m in enumerate(models)]
    state = ac.average_checkpoints(paths)
    got = state["model"]["w"]
    exact = (sum(m["w"].double() for m in models) / len(models)).to(dtype)
    assert got.dtype == dtype and torch.equal(got, exact)
    naive = models[0]["w"].clone()
    for m in models[1:]:
        naive += m["w"]
    assert not torch.equal(naive / 4, exact)


@pytest.mark.e2e
def test_epoch_and_update_selection_and_upper_bound(tmp_path):
    run = make_run(tmp_path / "run")
    names = lambda paths: [os.path.basename(p) for p in paths]  # noqa: E731
    assert names(ac.select_checkpoints(run, num_epoch=2)) == ["checkpoint4.pt", "checkpoint3.pt"]
    assert names(ac.select_checkpoints(run, num_epoch=2, upper_bound=3)) == ["checkpoint3.pt", "checkpoint2.pt"]
    assert names(ac.select_checkpoints(run, num_update=3)) == ["checkpoint_4_40.pt", "checkpoint_3_30.pt",
                                                               "checkpoint_2_20.pt"]
    assert names(ac.select_checkpoints(run, num_update=2, upper_bound=25)) == ["checkpoint_2_20.pt",
                                                                               "checkpoint_1_10.pt"]
    # numeric, not lexicographic, order
    fake_checkpoint(run / "checkpoint10.pt", model_of(10), updates=100, epoch=10)
    assert names(ac.select_checkpoints(run, num_epoch=2)) == ["checkpoint10.pt", "checkpoint4.pt"]

    out = run_avg("--inputs", run, "--num-update-checkpoints", "2", "--checkpoint-upper-bound", "30",
                  "--output", tmp_path / "avg.pt")
    assert out.returncode == 0, out.stderr
    assert "checkpoint_3_30.pt" in out.stdout and "checkpoint_2_20.pt" in out.stdout
    avg = load(tmp_path / "avg.pt")
    w = (model_of(103)["enc.weight"] + model_of(102)["enc.weight"]) / 2
    assert torch.allclose(avg["model"]["enc.weight"], w, atol=1e-7)
    assert avg["extra_state"]["marker"] == "epoch3"


@pytest.mark.e2e
def test_too_few_checkpoints(tmp_path):
    run = make_run(tmp_path / "run", epochs=(1, 2))
    out = run_avg("--inputs", run, "--num-epoch-checkpoints", "3", "--output", tmp_path / "avg.pt")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "asked for 3 epoch checkpoints" in out.stderr and "found 2: checkpoint2.pt, checkpoint1.pt" in out.stderr
    out = run_avg("--inputs", run, "--num-epoch-checkpoints", "2", "--checkpoint-upper-bound", "1",
                  "--output", tmp_path / "avg.pt")
    assert out.returncode == 1 and "found 1: checkpoint1.pt" in out.stderr and "upper-bound 1 ignored" in out.stderr
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.e2e
def test_parameter_names_differ(tmp_path):
    a = fake_checkpoint(tmp_path / "a.pt", model_of(1))
    m = model_of(2)
    m["dec.extra"] = m.pop("enc.bias")
    b = fake_checkpoint(tmp_path / "b.pt", m)
    out = run_avg("--inputs", a, b, "--output", tmp_path / "avg.pt")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(b) in out.stderr and "missing 'enc.bias'" in out.stderr and "extra 'dec.extra'" in out.stderr
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.e2e
def test_parameter_shapes_or_dtypes_differ(tmp_path):
    a = fake_checkpoint(tmp_path / "a.pt", model_of(1))
    m = model_of(2)
    m["enc.weight"] = torch.zeros(3, 5)
    b = fake_checkpoint(tmp_path / "b.pt", m)
    out = run_avg("--inputs", a, b, "--output", tmp_path / "avg.pt")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'enc.weight'" in out.stderr and "[3, 5]" in out.stderr and "[3, 4]" in out.stderr
    c = fake_checkpoint(tmp_path / "c.pt", model_of(3, dtype=torch.float16))
    with pytest.raises(ac.AverageCheckpointsError, match=r"'enc.weight' is \[3, 4\] torch.float16.*torch.float32"):
        ac.average_checkpoints([a, c])


@pytest.mark.e2e
def test_missing_file_and_bad_usage(tmp_path):
    a = fake_checkpoint(tmp_path / "a.pt", model_of(1))
    out = run_avg("--inputs", a, tmp_path / "nope.pt", "--output", tmp_path / "avg.pt")
    assert out.returncode == 2 and "nope.pt: no such file" in out.stderr and "Traceback" not in out.stderr
    usage = [
        (["--inputs", tmp_path, "--num-epoch-checkpoints", "2", "--num-update-checkpoints", "2"], "not allowed with"),
        (["--inputs", tmp_path], "is a directory: add --num-epoch-checkpoints"),
        (["--inputs", a, "--checkpoint-upper-bound", "3"], "--checkpoint-upper-bound needs"),
        (["--inputs", a, "--num-epoch-checkpoints", "2"], "--inputs must be a directory"),
        (["--inputs", tmp_path, "--num-epoch-checkpoints", "0"], "must be >= 1"),
    ]
    for args, message in usage:
        out = run_avg(*args, "--output", tmp_path / "avg.pt")
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
    with pytest.raises(ac.AverageCheckpointsError, match="no such file"):
        ac.average_checkpoints([tmp_path / "nope.pt"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ac.AverageCheckpointsError, match="junk.pt: not a readable torch checkpoint"):
        ac.average_checkpoints([a, tmp_path / "junk.pt"])
    torch.save({"model": {}, "hook": os.system}, tmp_path / "unsafe.pt")  # never unpickled: weights-only refuses it
    with pytest.raises(ac.AverageCheckpointsError, match="unsafe.pt: refused by the weights-only loader.*system"):
        ac.average_checkpoints([tmp_path / "unsafe.pt"])
    with pytest.raises(ac.AverageCheckpointsError, match="given twice"):
        ac.average_checkpoints([a, tmp_path / "." / "a.pt"])


@pytest.mark.e2e
def test_output_equal_to_an_input_is_refused(tmp_path):
    run = make_run(tmp_path / "run", epochs=(1, 2))
    before = (run / "checkpoint2.pt").read_bytes()
    os.symlink(run / "checkpoint2.pt", tmp_path / "link.pt")
    for output in (run / "checkpoint2.pt", tmp_path / "link.pt", "run/./checkpoint2.pt"):
        out = run_avg("--inputs", run, "--num-epoch-checkpoints", "2", "--output", output, cwd=tmp_path)
        assert out.returncode == 1 and "refusing to overwrite" in out.stderr, out.stderr
    assert (run / "checkpoint2.pt").read_bytes() == before


def test_interrupted_write_leaves_nothing_partial(tmp_path, monkeypatch):
    paths = [fake_checkpoint(tmp_path / f"c{k}.pt", model_of(k), updates=k) for k in range(2)]
    state = ac.average_checkpoints(paths)
    out = tmp_path / "out" / "avg.pt"
    out.parent.mkdir()
    out.write_bytes(b"previous output")
    real_save = torch.save

    def partial_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(KeyboardInterrupt):
        ac.save_atomic(state, out)
    assert os.listdir(out.parent) == ["avg.pt"] and out.read_bytes() == b"previous output"

    out.unlink()
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        ac.save_atomic(state, out)
    assert os.listdir(out.parent) == []

    monkeypatch.setattr(torch, "save", real_save)
    ac.save_atomic(state, out)
    assert os.listdir(out.parent) == ["avg.pt"]
    assert torch.equal(load(out)["model"]["enc.weight"], state["model"]["enc.weight"])


@pytest.mark.e2e
def test_import_is_light():
    code = ("import sys; import el_plugins.translation.average_checkpoints;"
            "print([m for m in ('torch', 'fairseq') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.e2e
def test_real_fairseq_run_average_and_generate(toy_data_bin, tmp_path):
    pytest.importorskip("fairseq")
    save = tmp_path / "ckpt"
    run_cli("fairseq-train", toy_data_bin, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.002",
            "--max-tokens", "4000", "--cpu", "--seed", "1", "--no-progress-bar", "--num-workers", "0",
            "--criterion", "label_smoothed_encouraging_loss", "--label-smoothing", "0.1",
            "--max-epoch", "3", "--save-dir", save, "--no-last-checkpoints")
    assert {f"checkpoint{e}.pt" for e in (1, 2, 3)} <= set(os.listdir(save))
    avg_path = tmp_path / "avg.pt"
    out = run_avg("--inputs", save, "--num-epoch-checkpoints", "2", "--output", avg_path)
    assert out.returncode == 0, out.stderr
    assert "checkpoint3.pt" in out.stdout and "checkpoint2.pt" in out.stdout and "checkpoint1.pt" not in out.stdout

    c2, c3, avg = load(save / "checkpoint2.pt"), load(save / "checkpoint3.pt"), load(avg_path)
    assert avg["model"].keys() == c3["model"].keys()
    for name, value in avg["model"].items():
        expected = (c2["model"][name].double() + c3["model"][name].double()) / 2
        assert value.dtype == c3["model"][name].dtype
        assert torch.allclose(value.double(), expected, rtol=0, atol=1e-6), name
    assert avg["cfg"] == c3["cfg"] and avg["optimizer_history"] == c3["optimizer_history"]

    gen = run_cli("fairseq-generate", toy_data_bin, "--path", avg_path, "--beam", "2", "--max-tokens", "800",
                  "--cpu", "--num-workers", "0").stdout
    assert "Generate test with beam=2: BLEU4 =" in gen, gen[-3000:]
    assert len([line for line in gen.splitlines() if line.startswith("H-")]) == 40


def test_loading_keeps_the_process_wide_allow_list(tmp_path):
    """Averaging inside a process that also loads checkpoints (the demo, el-analyze) must not undo the
    allow-list fairseq relies on (torch's scoped safe_globals removes the class on exit)."""
    import argparse as _argparse

    import torch as _torch

    from el_plugins.checkpoints import allow_training_checkpoint_globals
    from el_plugins.translation.average_checkpoints import average_checkpoints as _average

    paths = []
    for i in range(2):
        path = tmp_path / f"c{i}.pt"
        _torch.save({"model": {"w": _torch.full((2,), float(i))}, "args": _argparse.Namespace(arch="x")}, path)
        paths.append(str(path))
    allow_training_checkpoint_globals()
    assert _average(paths)["model"]["w"].tolist() == [0.5, 0.5]
    assert _torch.load(paths[0], weights_only=True)["args"].arch == "x"


# --------------------------------------------------------------------------- hostile input (issue 18 item 18)
@pytest.mark.e2e
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_checkpoints_with_nan_or_infinite_parameters_are_refused(tmp_path, bad):
    """They were averaged without a word, carrying NaN into every averaged parameter."""
    good = fake_checkpoint(tmp_path / "c1.pt", model_of(1), updates=10)
    model = model_of(2)
    model["enc.weight"][1, 2] = bad
    diverged = fake_checkpoint(tmp_path / "c2.pt", model, updates=20)
    out = run_avg("--inputs", good, diverged, "--output", tmp_path / "avg.pt")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"el-average-checkpoints: error: {diverged}: parameter 'enc.weight' has 1 NaN or infinite value(s) of 12 "
        "(did the run diverge?): the average would carry them into the model; leave this checkpoint out")
    assert not (tmp_path / "avg.pt").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["checkpoint5.pt", "checkpoint_9_90.pt", "checkpoint_last.pt"])
def test_output_named_like_a_run_checkpoint_among_them_is_refused(tmp_path, name):
    """--output checkpoint5.pt inside the run folder was written, and a later --num-epoch-checkpoints took it for
    epoch 5."""
    run = make_run(tmp_path / "run", epochs=(1, 2, 3))
    if name == "checkpoint_last.pt":
        os.unlink(run / name)
    out = run_avg("--inputs", run, "--num-epoch-checkpoints", "2", "--output", run / name)
    assert out.returncode == 1, out.stderr
    assert (f"el-average-checkpoints: error: --output {run / name}: {name} is the name of one of a run's own "
            "checkpoints, in a folder of them") in out.stderr, out.stderr
    assert not (run / name).exists() or name != "checkpoint5.pt"
    elsewhere = tmp_path / "averages"
    elsewhere.mkdir()
    assert run_avg("--inputs", run, "--num-epoch-checkpoints", "2", "--output", elsewhere / name).returncode == 0
    assert run_avg("--inputs", run, "--num-epoch-checkpoints", "2", "--output", run / "average2.pt").returncode == 0
