"""Issue 18 items 9, 10, 12, 14, 18: every console command run twice into the same output gives a correct
result, and an interrupted run (SIGTERM, SIGKILL) leaves the previous output as it was; what a rerun does is
el_plugins.files' rule: start the output over and swap it in whole when it is complete (el-data and fairseq's
--save-dir resume instead, from what they can check is complete and valid)."""
import json
import os

import numpy as np
import pytest
import torch

from el_evidence.testing.interrupts import interrupt_when, sigterm_at_rename, staging_folders, start_cli
from el_evidence.testing.programs import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_of(folder, skip=(".el-partial-",)):
    """{relative path: bytes} of every file under ``folder`` (staging folders left out)."""
    found = {}
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(skip)]
        for f in files:
            found[os.path.relpath(os.path.join(d, f), folder)] = open(os.path.join(d, f), "rb").read()
    return found


# --------------------------------------------------------------------------- el-reproduce
def test_el_reproduce_quick_keeps_the_values_given():
    """Item 18: --quick silently capped an explicit --seeds 5 to 2 (and --epochs, --train-images, ...)."""
    pytest.importorskip("torchattacks")
    from el_evidence.reproduce.__main__ import FULL, QUICK, parse_args

    given = parse_args(["mnist", "--quick", "--seeds", "5", "--epochs", "3", "--train-images", "30000"])
    assert (given.seeds, given.epochs, given.train_images) == (5, 3, 30000)
    assert (given.test_images, given.attack_images) == (QUICK["test_images"], QUICK["attack_images"])
    quick, full = parse_args(["mnist", "--quick"]), parse_args(["mnist"])
    assert {k: getattr(quick, k) for k in QUICK} == QUICK and {k: getattr(full, k) for k in FULL} == FULL


@pytest.mark.e2e
def test_el_reproduce_render_of_results_without_variants(tmp_path):
    """Item 14: --render on a results.json with "variants": {} was a StopIteration traceback."""
    results = json.load(open(os.path.join(ROOT, "results", "mnist", "results.json")))
    results["variants"] = {}
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = run_cli("el-reproduce", "mnist", "--render", tmp_path / "results.json", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == (
        f"el-reproduce mnist: error: --render {tmp_path / 'results.json'}: not a results.json of el-reproduce mnist "
        "(ValueError: it has no measured variants ('variants' is missing or empty))")
    assert not (tmp_path / "table.md").exists()


def fake_arrays(variants, n=50):
    from el_plugins.analysis.metrics import OOD_SCORES

    g = np.random.default_rng(0)
    ind = {k: g.normal(size=n).astype(np.float32) for k in ("margin", *OOD_SCORES)}
    ind.update(confidence=g.uniform(0.1, 1, n).astype(np.float32), correct=(g.uniform(size=n) > 0.1).astype(np.float32))
    return {v: {"id": ind, "ood": {k: g.normal(size=n).astype(np.float32) for k in OOD_SCORES}} for v in variants}


@pytest.mark.slow  # trains the reproduction's networks per interruption point, about 2.5 s each
@pytest.mark.parametrize("n", [1, 2, 5])
def test_el_reproduce_outputs_are_swapped_in_as_one_set(tmp_path, monkeypatch, n):
    """Item 10: a SIGTERM while el-reproduce wrote its outputs left a lone energy_ce.png and no results.json
    (from an empty folder), or new plots beside the old results.json."""
    from el_evidence.reproduce.__main__ import OUTPUTS, write_results

    results = json.load(open(os.path.join(ROOT, "results", "mnist", "results.json")))
    out = tmp_path / "out"
    write_results(str(out), results, fake_arrays(results["variants"]))
    old = files_of(out)
    assert sorted(old) == sorted(OUTPUTS)
    smaller = dict(results, variants={v: results["variants"][v] for v in ("ce", "el")})
    sigterm_at_rename(out, set(OUTPUTS), n, monkeypatch)
    with pytest.raises(SystemExit):
        write_results(str(out), smaller, fake_arrays(smaller["variants"]))
    monkeypatch.undo()
    new = files_of(out)
    assert not staging_folders(out)
    assert sorted(new) == ["energy_ce.png", "energy_el.png", "margins.png", "reliability.png", "results.json",
                           "roc.png", "table.md"], sorted(new)  # the signal waited for the swap; ce_ls, el_ls gone
    assert json.loads(new["results.json"])["variants"].keys() == {"ce", "el"}

    empty = tmp_path / "empty"
    sigterm_at_rename(empty, set(OUTPUTS), n, monkeypatch)
    with pytest.raises(SystemExit):
        write_results(str(empty), smaller, fake_arrays(smaller["variants"]))
    monkeypatch.undo()
    assert sorted(files_of(empty)) == sorted(new) and not staging_folders(empty)


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
    """el-data mnist, run twice into the same folder: the second run keeps what the first wrote."""
    folder = tmp_path_factory.mktemp("el-data") / "data"
    run_cli("el-data", "mnist", "--out", folder)
    first = {k: len(v) for k, v in files_of(folder).items()}
    again = run_cli("el-data", "mnist", "--out", folder).stdout
    assert "already holds the checked data" in again and {k: len(v) for k, v in files_of(folder).items()} == first
    return folder


TINY_REPRODUCE = ["--seeds", "2", "--epochs", "1", "--train-images", "600", "--test-images", "200",
                  "--attack-images", "10", "--apgd-steps", "1", "--pgd-steps", "1", "--no-progress", "--threads", "1"]


@pytest.mark.e2e
def test_el_reproduce_twice_into_the_same_out(mnist_folder, tmp_path):
    pytest.importorskip("torchattacks")
    out = tmp_path / "out"
    run_cli("el-reproduce", "mnist", "--data", mnist_folder, "--out", out, *TINY_REPRODUCE, "--variants", "ce,el")
    assert {"energy_ce.png", "energy_el.png", "results.json"} <= set(os.listdir(out))
    run_cli("el-reproduce", "mnist", "--data", mnist_folder, "--out", out, *TINY_REPRODUCE, "--variants", "ce,ce_ls")
    results = json.loads((out / "results.json").read_text())
    assert set(results["variants"]) == {"ce", "ce_ls"} and not staging_folders(out)
    assert sorted(os.listdir(out)) == ["energy_ce.png", "energy_ce_ls.png", "margins.png", "reliability.png",
                                       "results.json", "roc.png", "table.md"]  # energy_el.png went with its run
    assert (out / "table.md").read_text().count("CE+LS measured") == 1


# --------------------------------------------------------------------------- the translation commands
@pytest.fixture(scope="module")
def toy_run(toy_data_bin, tmp_path_factory):
    """A tiny model trained on the toy data-bin, with two epoch checkpoints."""
    from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER

    save = tmp_path_factory.mktemp("toy_run")
    run_cli("fairseq-train", toy_data_bin, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.003",
            "--max-tokens", "1000", "--max-epoch", "2", "--cpu", "--criterion", "label_smoothed_cross_entropy",
            "--save-dir", save, "--no-progress-bar", "--num-workers", "0", "--disable-validation")
    return save


@pytest.mark.e2e
def test_el_average_checkpoints_twice_into_the_same_output(toy_run, tmp_path):
    out = tmp_path / "avg2.pt"
    args = ["--inputs", toy_run, "--num-epoch-checkpoints", "2", "--output", out]
    run_cli("el-average-checkpoints", *args)
    first = torch.load(out, weights_only=False)["model"]
    run_cli("el-average-checkpoints", *args)
    second = torch.load(out, weights_only=False)["model"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert os.listdir(tmp_path) == ["avg2.pt"]


@pytest.mark.e2e
def test_el_bleu_generate_twice_and_interrupted(toy_data_bin, toy_run, tmp_path):
    out = tmp_path / "bleu"
    args = ["generate", toy_data_bin, "--path", toy_run / "checkpoint_last.pt", "--cpu", "--out", out]
    run_cli("el-bleu", *args)
    first = files_of(out)
    assert sorted(first) == ["bleu.json", "generate.log", "hyp.tok.txt", "ref.tok.txt"]
    run_cli("el-bleu", *args)
    assert {k: v for k, v in files_of(out).items() if k != "generate.log"} == \
        {k: v for k, v in first.items() if k != "generate.log"}
    before = files_of(out)
    proc = start_cli("el-bleu", *args)
    assert interrupt_when(proc, lambda: bool(staging_folders(out))) != 0
    assert files_of(out) == before and not staging_folders(out)


@pytest.mark.e2e
def test_el_translation_train_twice_resumes_the_same_run_and_refuses_another(toy_data_bin, tmp_path):
    """fairseq-train resumes --save-dir's checkpoint_last.pt: right for the same run, silently wrong for another
    loss (the CE run went on as EL, or the reverse)."""
    save = tmp_path / "el"
    args = ["--recipe", "toy", "--data", toy_data_bin, "--save-dir", save, "--cpu", "--max-update", "3",
            "--", "--max-tokens", "500", "--disable-validation", "--no-epoch-checkpoints"]
    run_cli("el-translation-train", "--loss", "el", *args)
    again = run_cli("el-translation-train", "--loss", "el", *args).stdout
    assert "Loaded checkpoint" in again and "(epoch 1 @ 3 updates)" in again, again[-3000:]  # resumed
    for loss, extra, message in (
            ("ce", [], "holds a run of --loss el --log-end 0.5 (its checkpoint_last.pt) but this is --loss ce"),
            ("el", ["--log-end", "0.75"], "holds a run of --loss el --log-end 0.5 (its checkpoint_last.pt) but "
                                          "this is --loss el --log-end 0.75"),
            ("el", ["--smoothing-convention", "paper"],  # the same criterion and log_end: resumed silently before
             "holds a run of --loss el --log-end 0.5 --smoothing-convention fairseq (its checkpoint_last.pt) but this "
             "is --loss el --log-end 0.5 --smoothing-convention paper")):
        proc = run_cli("el-translation-train", "--loss", loss, *extra, *args, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
        assert message in proc.stdout.strip().splitlines()[-1], proc.stdout[-2000:]


# --------------------------------------------------------------------------- el-demo
@pytest.mark.e2e
@pytest.mark.slow
def test_el_demo_twice_and_interrupted(tmp_path):
    """Item 9: the README's first command failed when run a second time (fairseq-preprocess: dict.src.txt
    exists), and after an interrupted run; item 12: --updates too few for the 5 averaged epochs failed after
    training. The SIGTERM lands as fairseq-train starts: Python dropped it there (in subprocess's at-fork
    hook), and el-demo went on to swap its new set in (files.raise_if_terminated)."""
    from el_plugins.demo.toy_corpus import write_corpus

    corpus = tmp_path / "corpus"  # small: the demo's own corpus takes minutes per run on a busy machine
    write_corpus(str(corpus), sizes=(("train", 240), ("valid", 30), ("test", 30)), seed=1)
    out = tmp_path / "demo"
    args = ["--data", corpus, "--parts", "translation", "--updates", "6", "--vocab-size", "120", "--no-progress",
            "--out", out]
    first = run_cli("el-demo", *args, timeout=1800).stdout
    assert "epoch checkpoint(s), fewer than the 5 to average: averaging th" in first, first[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert 1 <= len(results["translation"]["runs"]["EL"]["averaged_checkpoints"]) < 5
    assert results["translation"]["data_bin"] == str(out / "translation" / "data" / "data-bin")
    assert (out / "translation" / "el" / "generate.log").is_file() and (out / "translation" / "el" / "train.log").is_file()
    before = files_of(out)
    proc = start_cli("el-demo", *args)
    staging = out / f".el-partial-{proc.pid}"
    assert interrupt_when(proc, (staging / "translation" / "ce" / "train.log").exists, timeout=1200) == 143
    assert files_of(out) == before and not staging_folders(out)
    run_cli("el-demo", *args, timeout=1800)
    assert sorted(os.listdir(out)) == ["plots", "results.json", "translation"] and not staging_folders(out)
    assert json.loads((out / "results.json").read_text())["translation"]["runs"].keys() == {"LS-CE", "EL"}
