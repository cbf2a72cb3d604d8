"""The README's main job, shortened: el-demo --quick runs both parts and writes its JSON and plots."""
import pytest
import json
import math

from el_evidence.testing.programs import run_cli


@pytest.mark.e2e
def test_demo_quick_writes_results_and_plots(tmp_path):
    out = tmp_path / "demo"
    stdout = run_cli("el-demo", "--quick", "--no-progress", "--out", out, timeout=1200).stdout
    results = json.loads((out / "results.json").read_text())
    tr, vi = results["translation"], results["vision"]
    assert set(tr["runs"]) == {"LS-CE", "EL"} and set(vi["runs"]) == {"CE", "EL"}
    assert tr["runs"]["LS-CE"]["criterion"] == "label_smoothed_cross_entropy"
    assert tr["runs"]["EL"]["criterion"] == "label_smoothed_encouraging_loss"
    for run in tr["runs"].values():
        assert 0 <= run["tokenized_bleu"] <= 100 and 0 <= run["sacrebleu"] <= 100
        assert run["sacrebleu_signature"].startswith("nrefs:1")
        assert run["valid_nll_nats_per_token"] > 0 and 0 < run["valid_target_prob_mean"] < 1
        assert len(run["averaged_checkpoints"]) >= 1
    for name, curve in tr["curves"].items():
        assert curve and curve[-1]["updates"] == tr["runs"][name]["updates"]
    for run in vi["runs"].values():
        assert 0 <= run["test_accuracy"] <= 1 and not math.isnan(run["margin_mean"])
    assert vi["runs"]["EL"]["criterion"] == "EncouragingLoss" and vi["runs"]["CE"]["criterion"] != "EncouragingLoss"
    assert vi["data"]["validation"] == 450
    for plot in results["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.split("/")[-1] for p in results["plots"]} == {"learning_curves.png", "margins_translation.png",
                                                           "margins_vision.png"}
    assert "tokenized BLEU-4" in stdout and "mean logit margin" in stdout
    assert "el-demo: [translation] preparing 1500 training pairs" in stdout  # messages through logging
    assert results["settings"]["progress"] is False and "[vision] train" not in stdout and "upd/s" not in stdout
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.el-partial-*"))


@pytest.mark.e2e
def test_demo_rejects_bad_options(tmp_path):
    proc = run_cli("el-demo", "--parts", "audio", "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "--parts takes a comma-separated subset of translation, vision" in proc.stdout
    proc = run_cli("el-demo", "--updates", "0", "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "--updates must be >= 1" in proc.stdout
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    for out in (a_file, a_file / "sub"):  # refused while parsing, before any work
        proc = run_cli("el-demo", "--out", out, check=False)
        assert proc.returncode == 2 and f"el-demo: error: --out {out}: " in proc.stdout, proc.stdout
        assert "is a file, not a folder" in proc.stdout
        assert "Traceback" not in proc.stdout and a_file.read_text() == "{}"
    proc = run_cli("el-demo", "--data", tmp_path / "nope", "--out", tmp_path, check=False)
    assert proc.returncode == 2 and "--data: no such folder" in proc.stdout
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "train.src").write_text("a\n")
    proc = run_cli("el-demo", "--data", tmp_path / "own", "--parts", "translation", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and f"el-demo: error: --data {tmp_path / 'own'} has no train.en" in proc.stdout
    for split in ("train", "valid", "test"):
        (tmp_path / "own" / f"{split}.src").write_text("a\nb\n")
        (tmp_path / "own" / f"{split}.en").write_text("a\nb\n")
    (tmp_path / "own" / "valid.en").write_text("a\n")
    proc = run_cli("el-demo", "--data", tmp_path / "own", "--parts", "translation", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "error: --data" in proc.stdout and "valid.src has 2 lines but valid.en has 1" in proc.stdout
    assert "Traceback" not in proc.stdout and not (tmp_path / "o").exists()  # refused before any work


def test_demo_averages_what_training_left(tmp_path, caplog):
    """--updates too few for 5 epochs: the epoch checkpoints there are; too few for one epoch: the last
    checkpoint as it is (el-demo --updates 4 failed after training, "asked for 5 epoch checkpoints ... found 0").
    Each case is said in the log."""
    from el_plugins.demo.translation import checkpoints_to_average

    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert checkpoints_to_average(str(tmp_path), 5, "EL", 4) == [str(tmp_path / "checkpoint_last.pt")]
    assert "EL: no epoch finished within 4 updates" in caplog.text and "checkpoint_last.pt" in caplog.text
    caplog.clear()
    for epoch in (1, 2):
        (tmp_path / f"checkpoint{epoch}.pt").write_bytes(b"")
    with caplog.at_level("WARNING"):
        assert checkpoints_to_average(str(tmp_path), 5, "EL", 40) == [str(tmp_path / f"checkpoint{e}.pt") for e in (2, 1)]
    assert "40 updates made 2 epoch checkpoint(s), fewer than the 5 to average: averaging those" in caplog.text
