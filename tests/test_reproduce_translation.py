"""el-reproduce translation: the quick run end to end on the real corpus (a smoke run, not a result), its rerun,
its options, and docs/reproductions.md's table tied to the committed results/translation/results.json."""
import json
import os

import pytest

import el_plugins
from el_evidence.reproduce import translation, translation_report
from el_evidence.testing.programs import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "results", "translation", "results.json")
SEED_KEYS = {"seed", "bleu", "sacrebleu", "sacrebleu_signature", "valid_nll", "target_prob", "margin_mean",
             "hypotheses"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The Bible corpus (el-data bible) with small valid/test sets; skipped where it cannot be had."""
    import shutil

    from el_evidence.data import bible

    installed = all(os.path.exists(os.path.join("/", bible.MODULE_DIR, m.module, "ot.bzv")) for m in bible.MODULES.values())
    if not installed and not shutil.which("apt-get"):
        pytest.skip("needs Debian's sword-text-kjv and sword-text-sparv, or apt-get to fetch them")
    folder = tmp_path_factory.mktemp("bible")
    run_cli("el-data", "bible", "--out", folder, "--valid", "300", "--test", "300")
    return folder


@pytest.mark.e2e
def test_quick_run_end_to_end_and_rerun(corpus, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = run_cli("el-reproduce", "translation", "--quick", "--no-progress", "--data", corpus, "--out", out,
                   "--work", work, timeout=900)
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"data", "variants", "paper", "settings", "produced_by"}
    assert results["produced_by"]["el_plugins_version"] == el_plugins.__version__
    assert results["settings"]["quick"] is True and results["settings"]["reused_runs"] == 0
    assert {s: results["data"][s]["pairs"] for s in ("train", "valid", "test")} == {"train": 2000, "valid": 200,
                                                                                    "test": 200}
    assert set(results["variants"]) == {"ce", "el", "el_le1"}
    for v, entry in results["variants"].items():
        assert entry["log_end"] == {"ce": None, "el": 0.5, "el_le1": 1.0}[v]
        (seed,) = entry["seeds"]
        assert SEED_KEYS <= set(seed), v
        assert "tok:13a" in seed["sacrebleu_signature"] and seed["bleu"] >= 0
        assert seed["bleu"] == pytest.approx(seed["fairseq_generate_bleu4"], abs=0.01)  # the number fairseq prints
        hyps = (out / seed["hypotheses"]).read_text(encoding="utf-8").split("\n")
        assert len(hyps) == 201 and hyps[-1] == ""  # one line per test sentence, in test order
        assert entry["std"]["bleu"] is None  # one seed: no spread, and the claims say so
        criterion = seed["criterion"]
        assert criterion[:2] == ["--criterion", "label_smoothed_encouraging_loss"] and "paper" in criterion
    assert results["variants"]["ce"]["seeds"][0]["criterion"][2:4] == ["--bonus-weight", "0"]
    table = (out / "table.md").read_text()
    assert table == translation_report.render_table_md(results) and "unclear: one seed, no spread" in table
    assert table in done.stdout
    for plot in ("margins.png", "learning_curves.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun with the same settings reuses every finished run and writes the same results
    again = run_cli("el-reproduce", "translation", "--quick", "--no-progress", "--data", corpus, "--out", out,
                    "--work", work, timeout=900)
    assert again.stdout.count("finished before, reused") == 3 and "reusing" in again.stdout  # (stderr merged)
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["settings"]["reused_runs"] == 3
    assert rerun["variants"]["el"]["seeds"] == results["variants"]["el"]["seeds"]


@pytest.mark.e2e
@pytest.mark.parametrize("args,message", [
    (["--ce-seeds", "0"], "the baseline (--ce-seeds) and at least one EL variant need seeds"),
    (["--el-seeds", "0", "--el-le1-seeds", "0"], "at least one EL variant need seeds"),
    (["--el-seeds", "-1"], "--el-seeds must be >= 0, got -1"),
    (["--max-epoch", "0"], "--max-epoch must be >= 1, got 0"),
    (["--average-last", "5", "--max-epoch", "3"], "--average-last 5 needs at least as many epochs (training runs 3)"),
    (["--vocab-size", "20"], "--vocab-size must be >= 100, got 20"),
])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    done = run_cli("el-reproduce", "translation", "--out", tmp_path / "o", *args, check=False)
    assert done.returncode == 2 and message in done.stdout, done.stdout
    assert not (tmp_path / "o").exists()


def test_runs_interleave_seeds_so_a_partial_run_has_every_variant():
    s = translation.Settings(seeds={"ce": (1, 2, 3), "el": (1, 2, 3), "el_le1": (1, 2)})
    assert translation.run_names(s) == [("ce", 1), ("el", 1), ("el_le1", 1), ("ce", 2), ("el", 2), ("el_le1", 2),
                                        ("ce", 3), ("el", 3)]
    assert s.key() == translation.Settings(seeds={"ce": (1,)}).key()  # seeds and device do not change a run
    assert s.key() != translation.Settings(vocab_size=4000).key()


# --------------------------------------------------------------------------- the committed run and docs/reproductions.md
@pytest.fixture(scope="module")
def committed():
    with open(COMMITTED, encoding="utf-8") as f:
        return json.load(f)


def test_committed_results_are_a_full_run(committed):
    s = committed["settings"]
    assert not s["quick"] and s["reused_runs"] == 0 and s["device"] == "cpu"
    produced = committed["produced_by"]
    assert produced["git_commit"] and produced["git_dirty"] is False  # a committed state of the code
    assert {v: len(e["seeds"]) for v, e in committed["variants"].items()} == {"ce": 3, "el": 3, "el_le1": 2}
    assert s["wall_seconds"] <= 90 * 60  # the budget on 2 CPU cores
    out = os.path.dirname(COMMITTED)
    for entry in committed["variants"].values():
        for seed in entry["seeds"]:
            with open(os.path.join(out, seed["hypotheses"]), encoding="utf-8") as f:
                assert sum(1 for _ in f) == committed["data"]["test"]["pairs"]
    assert committed["variants"]["ce"]["mean"]["sacrebleu"] >= 10  # a baseline that translates
    with open(os.path.join(out, "table.md"), encoding="utf-8") as f:
        assert f.read() == translation_report.render_table_md(committed)


def test_readme_table_is_the_committed_results(committed):
    with open(os.path.join(REPO, "docs", "reproductions.md"), encoding="utf-8") as f:
        page = f.read()  # the table lives there; the README links to it
    assert translation_report.readme_block(page) == translation_report.render_tables(committed)
    minutes = committed["settings"]["wall_seconds"] / 60
    assert f"{committed['settings']['wall_seconds']:.0f} s ({minutes:.1f} min)" in page


@pytest.mark.e2e
@pytest.mark.cuda
def test_device_cuda_trains_on_the_gpu_and_cpu_on_the_cpu():
    """No GPU needed: the commands a run would start, for each device (the analysis moves the averaged model to
    the device as el-demo's does, tested in tests/test_devices.py)."""
    import torch

    from el_plugins.devices import subprocess_env

    s = translation.Settings()
    cpu = translation.training_command("el", 2, "bin", "run", s, torch.device("cpu"))
    gpu = translation.training_command("el", 2, "bin", "run", s, torch.device("cuda", 1))
    assert "--cpu" in cpu and "--cpu" not in gpu
    assert [a for a in cpu if a != "--cpu"] == gpu
    assert gpu[gpu.index("--criterion"):gpu.index("--update-freq")] == [
        "--criterion", "label_smoothed_encouraging_loss", "--log-end", "0.5", "--smoothing-convention", "paper"]
    assert "--seed" in gpu and gpu[gpu.index("--seed") + 1] == "2"
    assert subprocess_env(torch.device("cuda", 1), {})["CUDA_VISIBLE_DEVICES"] == "1"
    done = run_cli("el-reproduce", "translation", "--device", "bogus", check=False)
    assert done.returncode == 2 and "--device bogus: not a device name" in done.stdout


@pytest.mark.slow  # reruns the report per interruption point
@pytest.mark.parametrize("n", [1, 3])
def test_outputs_are_swapped_in_as_one_set(committed, tmp_path, monkeypatch, n):
    """A SIGTERM while the outputs are put in place leaves the previous set or the new one whole, never a mix;
    a rerun without a variant takes that variant's hypotheses away with it."""
    import numpy as np

    from el_evidence.testing.interrupts import sigterm_at_rename, staging_folders

    def extras(results):
        return {v: {"hypotheses": {s["seed"]: [f"{v} {s['seed']} {i}" for i in range(3)] for s in e["seeds"]},
                    "margins": np.linspace(-1, 1, 20)} for v, e in results["variants"].items()}

    def files_of(folder):
        return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
                for d, dirs, files in os.walk(folder) if ".el-partial-" not in d for f in files}

    out = tmp_path / "out"
    translation_report.write_outputs(str(out), committed, extras(committed))
    old = files_of(out)
    assert {"results.json", "table.md", "margins.png", "learning_curves.png"} <= set(old)
    smaller = dict(committed, variants={v: committed["variants"][v] for v in ("ce", "el")})
    sigterm_at_rename(out, set(translation_report.OUTPUTS), n, monkeypatch)
    with pytest.raises(SystemExit):
        translation_report.write_outputs(str(out), smaller, extras(smaller))
    monkeypatch.undo()
    new = files_of(out)
    assert not staging_folders(out)
    assert json.loads(new["results.json"])["variants"].keys() == {"ce", "el"}  # the signal waited for the swap
    assert not [p for p in new if "el_le1" in p] and [p for p in old if "el_le1" in p]
    assert new["table.md"].decode() == translation_report.render_table_md(smaller)


@pytest.mark.e2e
def test_render_rewrites_table_md_from_results_json(committed, tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(committed))
    done = run_cli("el-reproduce", "translation", "--render", tmp_path / "results.json")
    assert (tmp_path / "table.md").read_text() == translation_report.render_table_md(committed)
    assert translation_report.render_tables(committed) in done.stdout
    (tmp_path / "empty.json").write_text(json.dumps(dict(committed, variants={})))
    bad = run_cli("el-reproduce", "translation", "--render", tmp_path / "empty.json", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout
    assert "not a results.json of el-reproduce translation (ValueError: it has no measured variants" in bad.stdout
