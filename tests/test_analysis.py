"""el_plugins.analysis: the metrics against hand-computed values, streaming vs one-shot, and el-analyze
end to end on tiny timm models (CE vs EL) trained here on scikit-learn's digits, and on a tiny fairseq model."""
import argparse
import json
import logging
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch

from el_plugins import analysis as A
from el_plugins.analysis.cli import main as cli_main
from el_plugins.demo.digits import load_upscaled_digits
from el_evidence.testing.programs import run_cli, run_module
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def el_analyze(*args, timeout=300):
    """Run el-analyze as its own process (the installed el-plugins; stdout and stderr apart)."""
    return run_module("el_plugins.analysis.cli", *args, env={"OMP_NUM_THREADS": "1"}, timeout=timeout)


# --------------------------------------------------------------------------- metrics by hand
Z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]])
T = torch.tensor([0, 2, 1])


def lse(row):
    return math.log(sum(math.exp(v) for v in row))


def test_per_row_values_by_hand():
    assert A.margins(Z, T).tolist() == [1.0, -2.0, 0.0]  # 2-1, 1-3, tie 1-1
    assert A.data_energy(Z, T).tolist() == [-2.0, -1.0, -1.0]
    assert A.min_energy(Z).tolist() == [-2.0, -3.0, -1.0]
    rows = Z.tolist()
    assert A.free_energy(Z).tolist() == pytest.approx([-lse(r) for r in rows], abs=1e-6)
    assert A.max_prob(Z).tolist() == pytest.approx([math.exp(max(r) - lse(r)) for r in rows], abs=1e-6)
    p_y = [math.exp(r[y] - lse(r)) for r, y in zip(rows, T.tolist())]
    assert A.target_probs(Z, T).tolist() == pytest.approx(p_y, abs=1e-6)
    assert A.accuracy(Z, T) == pytest.approx(1 / 3)  # row 2 is a tie: argmax picks class 0, target 1
    assert A.well_classified_fraction(Z, T, log_end=0.6) == pytest.approx(1 / 3)  # p = 0.665, 0.114, 0.422
    v = A.row_values(Z, T)
    assert v["correct"].tolist() == [1.0, 0.0, 0.0]
    assert v["nll"].tolist() == pytest.approx([-math.log(p) for p in p_y], abs=1e-6)
    assert v["confidence"].tolist() == pytest.approx(A.max_prob(Z).tolist())


def test_ignore_index_drops_rows_and_leading_dims_are_flattened():
    z3 = torch.stack([Z, Z.flip(0)])  # (2, 3, 3), like fairseq's (B, T, V)
    t3 = torch.tensor([[0, -100, 1], [-100, 2, 0]])
    m = A.margins(z3, t3, ignore_index=-100)
    assert m.tolist() == [1.0, 0.0, -2.0, 1.0]
    with pytest.raises(ValueError, match="outside the 3 classes"):
        A.margins(Z, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="shape"):
        A.margins(Z, torch.tensor([0, 1]))


def test_half_precision_logits_are_computed_in_float32():
    m = A.margins(Z.half(), T)
    assert m.dtype == torch.float32 and m.tolist() == [1.0, -2.0, 0.0]


def test_ece_and_reliability_table_by_hand():
    conf = [0.2, 0.4, 0.5, 0.9, 1.0]  # 0.5 sits on an edge: bins are (lo, hi], so it is in the first bin
    corr = [0, 1, 1, 0, 1]
    ece, table = A.expected_calibration_error(conf, corr, n_bins=2)
    assert [r["count"] for r in table] == [3, 2]
    assert table[0]["accuracy"] == pytest.approx(2 / 3) and table[0]["confidence"] == pytest.approx(1.1 / 3)
    assert table[1]["accuracy"] == pytest.approx(0.5) and table[1]["confidence"] == pytest.approx(0.95)
    assert ece == pytest.approx(3 / 5 * abs(2 / 3 - 1.1 / 3) + 2 / 5 * abs(0.5 - 0.95))

    ece3, table3 = A.expected_calibration_error([0.0, 0.5, 0.7], [1, 0, 1], n_bins=3)
    assert [r["count"] for r in table3] == [1, 1, 1]  # 0 joins the first bin
    assert table3[0]["lower"] == 0.0 and table3[2]["upper"] == 1.0
    assert ece3 == pytest.approx((1.0 + 0.5 + 0.3) / 3)

    _, sparse = A.expected_calibration_error([0.9], [1], n_bins=3)
    assert sparse[0] == {"lower": 0.0, "upper": pytest.approx(1 / 3), "count": 0, "accuracy": None, "confidence": None}


def test_auroc_by_hand_with_both_sign_conventions():
    assert A.auroc([0.9, 0.8, 0.4], [0.5, 0.3], id_is="higher") == pytest.approx(5 / 6)
    assert A.auroc([0.5], [0.5]) == 0.5  # a tie counts one half
    # energies: in-distribution is LOWER; -5 and -4 vs -4.5 and -1 -> 3 of 4 pairs ordered right
    assert A.auroc([-5.0, -4.0], [-4.5, -1.0], id_is="lower") == pytest.approx(3 / 4)
    assert A.auroc([-5.0, -4.0], [-4.5, -1.0], id_is="higher") == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="id_is"):
        A.auroc([1.0], [0.0], id_is="up")


def test_auroc_matches_scikit_learn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 20, 300).astype(float), rng.integers(-5, 15, 200).astype(float)
    expected = metrics.roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[a, b])
    assert A.auroc(a, b) == pytest.approx(expected, abs=1e-12)
    fpr, tpr = A.roc_curve(a, b)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, abs=1e-12)


def test_fpr_at_95_tpr_by_hand():
    ind = np.arange(1, 21, dtype=float)  # threshold: the ceil(0.95 * 20) = 19th highest = 2
    ood = [0.0, 1.5, 2.0, 3.0, 10.0]  # 2.0, 3.0, 10.0 are accepted
    assert A.fpr_at_tpr(ind, ood, 0.95, id_is="higher") == pytest.approx(3 / 5)
    assert A.fpr_at_tpr(-ind, [-v for v in ood], 0.95, id_is="lower") == pytest.approx(3 / 5)
    assert A.fpr_at_tpr([1.0, 2.0], [0.0], 0.95) == 0.0  # ceil(1.9) = 2: threshold 1.0
    assert A.fpr_at_tpr([3.0, 2.0, 1.0], [1.0, 1.0, 0.5], 0.5) == 0.0  # ceil(1.5) = 2: threshold 2.0


def test_roc_curve_by_hand():
    fpr, tpr = A.roc_curve([3.0, 1.0], [2.0])
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0] and tpr.tolist() == [0.0, 0.5, 0.5, 1.0]


def test_describe():
    d = A.describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d["mean"] == 3.0 and d["median"] == 3.0 and d["min"] == 1.0 and d["max"] == 5.0
    assert d["q25"] == 2.0 and d["q95"] == pytest.approx(4.8)
    assert A.describe([]) is None


# --------------------------------------------------------------------------- streaming
def test_streaming_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 9, 12, generator=g) * 3
    t = torch.randint(0, 12, (7, 9), generator=g)
    t[0, :4] = -1  # padding
    ood = torch.randn(20, 12, generator=g)

    one = A.StreamingAnalysis(log_end=0.5, n_bins=4)
    one.update(z, t, ignore_index=-1)
    one.update_ood(ood)
    many = A.StreamingAnalysis(log_end=0.5, n_bins=4)
    for lo, hi in ((0, 2), (2, 3), (3, 7)):
        many.update(z[lo:hi], t[lo:hi], ignore_index=-1)
    many.update_ood(ood[:5])
    many.update_ood(ood[5:])
    s1, s2 = one.summary(), many.summary()
    assert s1 == s2
    json.dumps(s1, allow_nan=False)

    keep = t.ne(-1)
    zf, tf = z[keep], t[keep]
    assert s1["rows"] == 59 and s1["ood"]["rows"] == 20
    assert s1["accuracy"] == pytest.approx(A.accuracy(zf, tf))
    assert s1["margin"]["mean"] == pytest.approx(A.margins(zf, tf).mean().item(), abs=1e-5)
    assert s1["well_classified_fraction"] == pytest.approx(A.well_classified_fraction(zf, tf, 0.5))
    p = torch.softmax(zf, 1)
    ece, _ = A.expected_calibration_error(p.max(1).values, p.argmax(1).eq(tf), 4)
    assert s1["ece"] == pytest.approx(ece, abs=1e-6)
    det = s1["ood"]["detection"]
    assert det["min_energy"]["in_distribution_is"] == "lower" and det["max_prob"]["in_distribution_is"] == "higher"
    assert det["min_energy"]["auroc"] == pytest.approx(
        A.auroc(-zf.max(1).values, -ood.max(1).values, id_is="lower"), abs=1e-6)
    assert det["free_energy"]["fpr95"] == pytest.approx(
        A.fpr_at_tpr(-torch.logsumexp(zf, 1), -torch.logsumexp(ood, 1), 0.95, id_is="lower"), abs=1e-6)


def test_streaming_without_rows_or_ood():
    s = A.StreamingAnalysis().summary()
    assert s["rows"] == 0 and s["accuracy"] is None and s["ece"] is None and s["margin"] is None and s["ood"] is None
    json.dumps(s, allow_nan=False)
    with pytest.raises(ValueError, match="log_end"):
        A.StreamingAnalysis(log_end=1.5)


# --------------------------------------------------------------------------- timm_eval.evaluate, the library function
def _tiny_timm_model():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10).train()


def test_timm_evaluate_is_the_streaming_analysis_of_the_model_in_eval_mode():
    """timm_eval.evaluate (el-analyze timm's and the demo's loop) gives what feeding StreamingAnalysis the
    eval-mode logits of the same batches gives, and leaves the model as it was (training mode, weights, stats)."""
    from el_plugins.analysis.timm_eval import evaluate

    model = _tiny_timm_model()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g)
    ood = torch.randn(12, 3, 32, 32, generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [(x[:8], y[:8]), (x[8:], y[8:].tolist())]  # targets as a tensor or as a list
    got = evaluate(model, data, "cpu", log_end=0.5, n_bins=4, ood=[ood[:5], (ood[5:], torch.zeros(7))],
                   progress=False)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())

    expected = A.StreamingAnalysis(log_end=0.5, n_bins=4)
    model.eval()
    with torch.no_grad():
        for images, targets in ((x[:8], y[:8]), (x[8:], y[8:])):
            expected.update(model(images), targets)
        for images in (ood[:5], ood[5:]):
            expected.update_ood(model(images))
    summary = got.summary()
    assert summary == expected.summary()
    assert summary["rows"] == 20 and summary["ood"]["rows"] == 12 and summary["n_bins"] == 4

    first = evaluate(model, data, "cpu", max_batches=1, progress=False)
    assert first.rows == 8 and first.ood_rows == 0 and not model.training  # the mode it was called in


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_timm_evaluate_skips_unreadable_images_once():
    from el_plugins.analysis.timm_eval import evaluate

    model = _tiny_timm_model()
    x, y = torch.zeros(4, 3, 32, 32), torch.arange(4)
    batches = [(x[:2], y[:2], [("a.png", "OSError: truncated")]),
               (None, None, [("b.png", "UnidentifiedImageError: not an image"), ("a.png", "OSError: truncated")]),
               (x[2:], y[2:], [])]
    skipped, log = {}, _Messages()
    logger = logging.getLogger("el_plugins.analysis.timm_eval")
    logger.addHandler(log)
    try:
        first = evaluate(model, batches, "cpu", ood=[(None, None, [("c.png", "OSError: x")])], skipped=skipped,
                         progress=False)
        again = evaluate(model, batches, "cpu", skipped=skipped, progress=False)  # a second model, same data
    finally:
        logger.removeHandler(log)
    assert first.rows == again.rows == 4 and first.ood_rows == 0
    assert skipped == {"data": {"a.png": "OSError: truncated", "b.png": "UnidentifiedImageError: not an image"},
                       "ood_data": {"c.png": "OSError: x"}}
    assert log.messages == ["skipped unreadable image a.png (OSError: truncated)",
                      "skipped unreadable image b.png (UnidentifiedImageError: not an image)",
                      "skipped unreadable image c.png (OSError: x)"]


def test_timm_evaluate_refuses_bad_batches():
    from el_plugins.analysis.timm_eval import evaluate

    model = _tiny_timm_model()
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(TypeError, match=r"^in-distribution batches must be \(images, targets\) or \(images, targets, "
                                        r"unreadable\), got Tensor$"):
        evaluate(model, [x], "cpu", progress=False)
    with pytest.raises(TypeError, match=r"OOD batches must be .* or images alone, got a tuple of 4$"):
        evaluate(model, [], "cpu", ood=[(x, None, [], 0)], progress=False)
    with pytest.raises(ValueError, match="log_end"):
        evaluate(model, [], "cpu", log_end=1.5)
    with pytest.raises(ValueError, match="max_batches must be None or an integer >= 1, got 0"):
        evaluate(model, [(x, torch.zeros(2, dtype=torch.long))], "cpu", max_batches=0)
    assert model.training  # restored after a failure too
    assert evaluate(model, [], "cpu", progress=False).rows == 0


# --------------------------------------------------------------------------- el-analyze timm, end to end
MODEL, SIZE, N_TRAIN = "test_convnext", 32, 1200


def _write_png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _train(x, y, loss_name, steps=60):
    import timm

    from el_plugins.functional import encouraging_loss

    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        out = model(x[idx])
        if loss_name == "ce":
            loss = torch.nn.functional.cross_entropy(out, y[idx])
        else:
            loss = encouraging_loss(out, y[idx], log_end=0.75)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Two tiny timm models (CE, EL) on digits, their checkpoints, and ImageFolders to analyze."""
    pytest.importorskip("timm")
    pytest.importorskip("sklearn")
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_upscaled_digits(SIZE)
    val = root / "val"
    for i in range(N_TRAIN, len(labels)):
        _write_png(str(val / f"digit{labels[i]}" / f"{i:04d}.png"), images[i])
    rng = np.random.default_rng(0)
    ood = root / "shuffled"  # OOD: digits with their pixels shuffled (flat folder, no classes)
    for i in range(150):
        flat = images[N_TRAIN + i].reshape(-1).copy()
        rng.shuffle(flat)
        _write_png(str(ood / f"{i:04d}.png"), flat.reshape(SIZE, SIZE))

    x = torch.tensor(images[:N_TRAIN], dtype=torch.float32).div(255).sub(0.5).div(0.5)  # test_convnext: mean=std=0.5
    x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(labels[:N_TRAIN])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, and much faster on a busy machine
    try:
        ce, el = _train(x, y, "ce"), _train(x, y, "el")
    finally:
        torch.set_num_threads(threads)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    # CE as timm train.py saves it (with its argparse.Namespace), EL as a plain state dict
    torch.save({"epoch": 1, "arch": MODEL, "state_dict": ce.state_dict(), "args": argparse.Namespace(model=MODEL)},
               ckpt / "ce.pth.tar")
    torch.save(el.state_dict(), ckpt / "el.pth")
    return {"root": root, "val": val, "ood": ood, "ce": ckpt / "ce.pth.tar", "el": ckpt / "el.pth", "el_model": el,
            "n_val": len(labels) - N_TRAIN}


TIMM_ARGS = ["--model", MODEL, "--img-size", SIZE, "--crop-pct", "1.0", "--workers", "0", "--batch-size", "200"]


@pytest.mark.e2e
def test_el_analyze_timm_ce_vs_el(digits_runs, tmp_path):
    d = digits_runs
    out = tmp_path / "report"
    proc = el_analyze("timm", *TIMM_ARGS, "--checkpoint", d["ce"], "--checkpoint", d["el"], "--names", "CE", "EL",
                      "--data", d["val"], "--ood-data", d["ood"], "--out", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    header = proc.stdout.splitlines()[0].split()
    assert header == ["CE", "EL"]
    assert "OOD AUROC % (min energy)" in proc.stdout and "margin mean" in proc.stdout

    report = json.loads((out / "report.json").read_text())
    assert list(report["runs"]) == ["CE", "EL"]
    assert report["mode"] == "timm" and report["weights"] == {"CE": "state_dict", "EL": "state dict"}
    for run in report["runs"].values():
        assert run["rows"] == d["n_val"] and run["accuracy"] > 0.7
        assert 0 <= run["ece"] <= 1 and len(run["reliability"]) == 15
        assert set(run["margin"]) >= {"mean", "median", "q05", "q95"}
        assert run["ood"]["rows"] == 150
        for score in ("min_energy", "free_energy", "max_prob"):
            det = run["ood"]["detection"][score]
            assert 0 <= det["auroc"] <= 1 and 0 <= det["fpr95"] <= 1
    ce, el = report["runs"]["CE"], report["runs"]["EL"]
    # what the paper shows (Fig. 5, 6): EL enlarges margins and lowers the energy on the data
    assert el["margin"]["median"] > ce["margin"]["median"]
    assert el["data_energy"]["mean"] < ce["data_energy"]["mean"]

    # the command's numbers are the model's: recompute EL's logits on the same PNGs in-process
    from torchvision.datasets import ImageFolder
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    data = ImageFolder(str(d["val"]), transform=tf)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor(data.targets)
    with torch.no_grad():
        logits = d["el_model"](x)
    assert el["accuracy"] == pytest.approx(A.accuracy(logits, y), abs=1e-9)
    assert el["margin"]["mean"] == pytest.approx(A.margins(logits, y).mean().item(), abs=1e-3)

    for name in ("margins.png", "energy.png", "target_prob.png", "reliability.png", "ood_energy.png", "roc.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert sorted(report["plots"]) == sorted(p.name for p in out.glob("*.png"))
    assert (out / "table.md").read_text().startswith("| | CE | EL |")
    assert not [p for p in out.iterdir() if p.name.startswith(".") or ".el-partial-" in p.name]  # no temporaries left

    # run again into the same --out, without OOD data: the new set replaces the old one whole
    again = el_analyze("timm", *TIMM_ARGS, "--checkpoint", d["el"], "--names", "EL", "--data", d["val"], "--out", out)
    assert again.returncode == 0, again.stderr[-4000:]
    assert sorted(os.listdir(out)) == ["energy.png", "margins.png", "reliability.png", "report.json", "table.md",
                                       "target_prob.png"]  # ood_energy.png and roc.png went with the old report
    assert list(json.loads((out / "report.json").read_text())["runs"]) == ["EL"]


def _expect_error(capsys, argv, *patterns, code=2):
    """el-analyze in-process: exit ``code`` (2 a usage error, 1 input it cannot analyze) with
    ``el-analyze MODE: error: ...`` naming every pattern."""
    try:
        got = cli_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        got = exc.code
    err = capsys.readouterr().err
    assert got == code, err
    assert f"el-analyze {argv[0]}: error: " in err, err
    for pattern in patterns:
        assert pattern in err, err
    return err


@pytest.mark.slow  # digits_runs trains two timm models first, about 3 s
def test_el_analyze_timm_clear_errors(digits_runs, tmp_path, capsys):
    import timm

    d = digits_runs
    out = tmp_path / "report"
    base = ["timm", *TIMM_ARGS, "--out", out]

    wrong_head = tmp_path / "five_classes.pth"
    torch.save({"state_dict": timm.create_model(MODEL, num_classes=5).state_dict()}, wrong_head)
    _expect_error(capsys, [*base, "--checkpoint", d["ce"], wrong_head, "--data", d["val"]],
                  f"--checkpoint {wrong_head} does not match --model {MODEL} with 10 classes",
                  "shape mismatches (2): head.fc.weight: checkpoint (5, ", "pass --num-classes 5?", code=1)

    other_arch = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=10).state_dict(), other_arch)
    _expect_error(capsys, [*base, "--checkpoint", other_arch, "--data", d["val"]],
                  "missing keys (", "unexpected keys (", "cls_token", code=1)

    empty = tmp_path / "empty"
    (empty / "some_class").mkdir(parents=True)
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", empty], f"--data {empty}: no images found",
                  code=1)
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", d["val"], "--ood-data", empty],
                  f"--ood-data {empty}: no images found", code=1)
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", d["ood"]], "one sub-folder per class", code=1)
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", tmp_path / "nowhere"],
                  f"--data {tmp_path / 'nowhere'}: no such folder")
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", d["val"], "--model", "no_such_model"],
                  "--model no_such_model: not a timm model")

    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a checkpoint")
    _expect_error(capsys, [*base, "--checkpoint", not_torch, "--data", d["val"]], "not a readable torch checkpoint",
                  code=1)
    _expect_error(capsys, [*base, "--checkpoint", d["ce"], d["el"], "--names", "CE", "--data", d["val"]],
                  "--names gives 1 name(s) for 2 checkpoint(s)")
    _expect_error(capsys, [*base, "--checkpoint", tmp_path / "missing.pth", "--data", d["val"]], "no such file")
    _expect_error(capsys, [*base, "--checkpoint", d["el"], "--data", d["val"], "--log-end", "1.5"],
                  "--log-end: must be a number in (0, 1], got 1.5")
    assert not out.exists()  # nothing half-written


def _small_copy(src, dst, per_class=4):
    """``per_class`` images of every class folder of ``src``, copied to ``dst``."""
    for cls in sorted(os.listdir(src)):
        (dst / cls).mkdir(parents=True)
        for name in sorted(os.listdir(src / cls))[:per_class]:
            shutil.copy(src / cls / name, dst / cls / name)


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.e2e
def test_el_analyze_timm_skips_unreadable_images(digits_runs, tmp_path, capsys):
    from PIL import Image

    d = digits_runs
    data, ood, out = tmp_path / "data", tmp_path / "ood", tmp_path / "report"
    _small_copy(d["val"], data)
    ood.mkdir()
    for i in range(6):
        shutil.copy(d["ood"] / f"{i:04d}.png", ood / f"{i:04d}.png")
    bad_png = sorted((data / "digit3").iterdir())[0]
    bad_jpeg = data / "digit5" / "cut.jpg"
    Image.open(sorted((data / "digit5").iterdir())[0]).convert("RGB").save(bad_jpeg)
    bad_ood = ood / "0002.png"
    for path in (bad_png, bad_jpeg, bad_ood):
        _cut_in_half(path)
    n_good = len(list(data.rglob("*.png"))) - 1

    # a worker process reads the images: the skipped files must come back from it
    proc = el_analyze("timm", *TIMM_ARGS, "--workers", "1", "--checkpoint", d["ce"], d["el"], "--names", "CE", "EL",
                      "--data", data, "--ood-data", ood, "--out", out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for path in (bad_png, bad_jpeg, bad_ood):
        assert proc.stderr.count(f"skipped unreadable image {path}") == 1, proc.stderr[-4000:]  # once, not per run
    assert "truncated" in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_images"] == {"data": 2, "ood_data": 1,
                                        "files": sorted(map(os.path.abspath, (bad_png, bad_jpeg, bad_ood)))}
    for run in report["runs"].values():
        assert run["rows"] == n_good and run["ood"]["rows"] == 5
    table = {line.rsplit(None, 2)[0]: line.split()[-2:] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert table["unreadable images skipped"] == ["2", "2"], proc.stdout
    assert table["OOD unreadable images skipped"] == ["1", "1"], proc.stdout

    # every image of a folder unreadable: refused, naming the folder and a file
    for path in ood.iterdir():
        _cut_in_half(path)
    base = ["timm", *TIMM_ARGS, "--checkpoint", d["el"], "--out", out / "again"]
    _expect_error(capsys, [*base, "--data", data, "--ood-data", ood],
                  f"--ood-data {ood}: none of its images could be read (6 tried, e.g. {ood / '0000.png'}: OSError",
                  code=1)
    for path in data.rglob("*.*"):
        _cut_in_half(path)
    first = sorted((data / "digit0").iterdir())[0]
    _expect_error(capsys, [*base, "--data", data], f"--data {data}: none of its images could be read", f"e.g. {first}: ",
                  code=1)
    assert not (out / "again").exists()


def test_el_analyze_usage_errors_before_any_work(tmp_path, capsys):
    ckpt, data, ood = tmp_path / "model.pth", tmp_path / "val", tmp_path / "other"
    ckpt.write_bytes(b"never loaded")
    for folder in (data / "a", ood):
        folder.mkdir(parents=True)
    base = ["timm", "--model", MODEL, "--checkpoint", ckpt]
    a_file = tmp_path / "report.json"
    a_file.write_text("{}")
    for out in (a_file, a_file / "sub"):
        _expect_error(capsys, [*base, "--data", data, "--out", out], f"--out {out}: ", "is a file, not a folder")
        _expect_error(capsys, ["fairseq", "--checkpoint", ckpt, "--data", data, "--out", out], "is a file, not a folder")

    (tmp_path / "link").symlink_to(data)
    for same in (data, f"{data}/", tmp_path / "link", tmp_path / "val" / ".." / "val"):
        _expect_error(capsys, [*base, "--data", data, "--ood-data", same, "--out", tmp_path / "r"],
                      f"--ood-data {same} is the same folder as --data {data}",
                      "in-distribution and out-of-distribution data must differ")
    _expect_error(capsys, [*base, "--data", data, "--ood-data", data / "a", "--out", tmp_path / "r"],
                  f"--ood-data {data / 'a'} is inside --data {data}")
    _expect_error(capsys, [*base, "--data", data / "a", "--ood-data", data, "--out", tmp_path / "r"],
                  f"--data {data / 'a'} is inside --ood-data {data}")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- el-analyze fairseq
@pytest.mark.e2e
def test_el_analyze_fairseq(toy_data_bin, tmp_path):
    pytest.importorskip("fairseq")
    train = [*TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "800", "--cpu", "--seed", "1",
             "--no-progress-bar", "--num-workers", "0", "--max-update", "15", "--no-epoch-checkpoints",
             "--label-smoothing", "0.1", "--disable-validation"]
    run_cli("fairseq-train", toy_data_bin, *train, "--criterion", "label_smoothed_encouraging_loss", "--log-end", "0.5",
            "--save-dir", tmp_path / "el")
    out = tmp_path / "report"
    proc = el_analyze("fairseq", "--checkpoint", tmp_path / "el" / "checkpoint_last.pt", "--names", "EL",
                      "--data", toy_data_bin, "--split", "valid", "--out", out, "--log-end", "0.5")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    run = report["runs"]["EL"]
    assert report["mode"] == "fairseq" and report["split"] == "valid" and report["row_unit"] == "tokens"

    from fairseq.data import data_utils

    tgt = data_utils.load_indexed_dataset(str(toy_data_bin / "valid.src-en.en"), None)
    assert run["rows"] == int(sum(tgt.sizes))  # every target token (with </s>), no padding
    assert 0 < run["accuracy"] < 1 and run["ood"] is None and run["log_end"] == 0.5
    assert (out / "margins.png").read_bytes()[:8] == PNG_MAGIC and not (out / "roc.png").exists()

    bad = el_analyze("fairseq", "--checkpoint", tmp_path / "el" / "checkpoint_last.pt", "--data", toy_data_bin,
                     "--split", "nosuchsplit", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "el-analyze fairseq: error: --split nosuchsplit: not found" in bad.stderr, \
        bad.stderr[-3000:]
    assert not (tmp_path / "bad").exists()

    # the library function el-analyze fairseq runs gives the same numbers in-process; the sentences fairseq
    # leaves out (longer than the task's max positions) are named
    from el_plugins.analysis.fairseq_eval import evaluate, load

    model, task = load(str(tmp_path / "el" / "checkpoint_last.pt"), str(toy_data_bin))
    skipped = []
    analysis = evaluate(model, task, "valid", "cpu", log_end=0.5, progress=False, skipped=skipped)
    assert skipped == [] and analysis.summary() == {k: v for k, v in run.items() if k != "checkpoint"}
    data = task.dataset("valid")
    task.cfg.max_source_positions = task.cfg.max_target_positions = 8
    long = [i for i in range(len(data)) if data.src_sizes[i] > 8 or data.tgt_sizes[i] > 8]
    short = evaluate(model, task, "valid", "cpu", progress=False, skipped=skipped)
    assert 0 < len(long) < len(data) and skipped == long
    assert short.rows == sum(int(data.tgt_sizes[i]) for i in range(len(data)) if i not in long)


# --------------------------------------------------------------------------- checkpoint formats (timm)
class NotAllowed:
    pass


def test_checkpoint_formats(tmp_path):
    from el_plugins.analysis.report import AnalysisError
    from el_plugins.analysis.timm_eval import load_checkpoint_state_dict

    w, e = {"fc.weight": torch.zeros(2, 3)}, {"fc.weight": torch.ones(2, 3)}
    cases = {
        "plain.pth": (w, False, "state dict", 0.0),
        "timm.pth.tar": ({"epoch": 3, "state_dict": w, "state_dict_ema": e, "args": argparse.Namespace(lr=0.1)},
                         False, "state_dict", 0.0),
        "timm_ema.pth.tar": ({"state_dict": w, "state_dict_ema": e}, True, "state_dict_ema", 1.0),
        "ddp.pth": ({"model": {"module.fc.weight": torch.zeros(2, 3)}}, False, "model", 0.0),
    }
    for name, (obj, use_ema, source, value) in cases.items():
        torch.save(obj, tmp_path / name)
        state, got = load_checkpoint_state_dict(str(tmp_path / name), use_ema=use_ema)
        assert got == source and list(state) == ["fc.weight"] and state["fc.weight"].eq(value).all(), name

    torch.save({"state_dict": w, "extra": NotAllowed()}, tmp_path / "pickled.pth")
    with pytest.raises(AnalysisError, match="refused by the weights-only loader.*NotAllowed.*pass --trust-checkpoint"):
        load_checkpoint_state_dict(str(tmp_path / "pickled.pth"))
    state, _ = load_checkpoint_state_dict(str(tmp_path / "pickled.pth"), trust=True)
    assert list(state) == ["fc.weight"]
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "no_weights.pth")
    with pytest.raises(AnalysisError, match="no model weights found"):
        load_checkpoint_state_dict(str(tmp_path / "no_weights.pth"))


# --------------------------------------------------------------------------- the report, all-or-nothing
@pytest.mark.parametrize("n", [1, 2, 3])
def test_report_files_are_swapped_in_as_one_set(tmp_path, monkeypatch, n):
    """Issue 18 item 10: a SIGTERM while el-analyze puts its outputs in place left a new table.md beside the
    old report.json; now the folder holds the old set or the new one, whole."""
    from el_plugins.analysis.report import PLOT_FILES, write_outputs
    from el_evidence.testing.interrupts import sigterm_at_rename

    out = tmp_path / "report"
    old = {"report.json": b"old", "table.md": b"old", "margins.png": b"old", "roc.png": b"old"}
    write_outputs(str(out), old, remove_stale=list(PLOT_FILES))
    new = {"report.json": b"new", "table.md": b"new", "margins.png": b"new"}
    sigterm_at_rename(out, set(old), n, monkeypatch)
    with pytest.raises(SystemExit):
        write_outputs(str(out), new, remove_stale=list(PLOT_FILES))
    monkeypatch.undo()
    got = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert got in (old, new), got


# --------------------------------------------------------------------------- hostile input (issue 18)
def test_streaming_counts_and_leaves_out_rows_with_non_finite_logits():
    """Item 4: NaN rows were counted as misclassified, and a diverged model's summary read as 'not applicable'."""
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(10, 5, generator=g), torch.randint(0, 5, (10,), generator=g)
    bad = z.clone()
    bad[2, 1], bad[5, 0], bad[7, 3] = float("nan"), float("inf"), float("-inf")
    keep = torch.ones(10, dtype=torch.bool)
    keep[[2, 5, 7]] = False
    a = A.StreamingAnalysis()
    a.update(bad, t)
    a.update_ood(torch.cat([z, torch.full((1, 5), float("nan"))]))
    with pytest.warns(A.streaming.NonFiniteLogitsWarning, match="3 of 10 in-distribution rows have NaN or infinite "
                                                                 "logits; 1 of 11 OOD rows"):
        s = a.summary()
    clean = A.StreamingAnalysis()
    clean.update(z[keep], t[keep])
    clean.update_ood(z)
    want = clean.summary()
    assert s["rows"] == 7 and s["non_finite_rows"] == 3 and s["ood"]["non_finite_rows"] == 1
    assert s["accuracy"] == want["accuracy"] and s["margin"] == want["margin"] and s["ood"]["rows"] == 10
    json.dumps(s, allow_nan=False)

    diverged = A.StreamingAnalysis()
    diverged.update(torch.full((4, 5), float("nan")), t[:4])
    with pytest.raises(ValueError, match=r"4 of 4 in-distribution rows have NaN or infinite logits \(all of them"):
        diverged.summary()


def test_streaming_refuses_batches_with_another_number_of_classes():
    """Item 18: batches of different V were accepted into one summary."""
    a = A.StreamingAnalysis()
    a.update(torch.randn(4, 5), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"these logits have 7 classes \(shape \(4, 7\)\) but the earlier batches had 5"):
        a.update(torch.randn(4, 7), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="these OOD logits have 3 classes"):
        a.update_ood(torch.randn(2, 3))
    assert a.rows == 4 and a.ood_rows == 0


def test_report_and_table_say_how_many_rows_were_left_out(caplog):
    from el_plugins.analysis import report as rep

    z, t = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    z[0, 0] = float("nan")
    a = A.StreamingAnalysis()
    a.update(z, t)
    with caplog.at_level(logging.WARNING, logger="el_plugins"):
        rep.check_finite("EL", a)
    assert "EL: 1 of 6 in-distribution rows have NaN or infinite logits; they are left out" in caplog.text
    report = rep.build_report({"row_unit": "images"}, {"EL": ("el.pth", a)})
    assert report["runs"]["EL"]["non_finite_rows"] == 1 and report["runs"]["EL"]["rows"] == 5
    assert "| images with NaN/inf logits, left out | 1 |" in rep.format_markdown(report)
    nan = A.StreamingAnalysis()
    nan.update(torch.full((3, 4), float("nan")), t[:3])
    with pytest.raises(rep.AnalysisError, match="EL: 3 of 3 in-distribution rows .* nothing to analyze"):
        rep.check_finite("EL", nan)


@pytest.mark.e2e
def test_el_analyze_refuses_a_diverged_model(digits_runs, tmp_path):
    d = digits_runs
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in torch.load(d["el"], weights_only=True).items()}
    torch.save(state, tmp_path / "nan.pth")
    out = tmp_path / "report"
    proc = el_analyze("timm", *TIMM_ARGS, "--checkpoint", tmp_path / "nan.pth", "--names", "NaN", "--data", d["val"],
                      "--out", out)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"el-analyze timm: error: NaN: {d['n_val']} of {d['n_val']} in-distribution rows have NaN or "
                    "infinite logits (all of them: the model diverged?): there is nothing to analyze"), last
    assert not out.exists() or not os.listdir(out)


def test_use_ema_on_a_plain_state_dict_warns(tmp_path, caplog):
    """Item 18: --use-ema on a plain state dict (no EMA weights in it) used it without a word."""
    from el_plugins.analysis.timm_eval import load_checkpoint_state_dict

    torch.save({"fc.weight": torch.zeros(2, 3)}, tmp_path / "plain.pth")
    with caplog.at_level(logging.WARNING, logger="el_plugins"):
        _, source = load_checkpoint_state_dict(str(tmp_path / "plain.pth"), use_ema=True)
    assert source == "state dict" and "plain.pth is a plain state dict, without EMA weights" in caplog.text


@pytest.fixture(scope="module")
def toy_checkpoint(toy_data_bin, tmp_path_factory):
    from el_evidence.testing.toy_fairseq import train_tiny_model

    return train_tiny_model(toy_data_bin, tmp_path_factory.mktemp("toy_model"), updates=2)


@pytest.mark.e2e
def test_el_analyze_fairseq_says_why_the_checkpoint_does_not_fit_the_data(toy_checkpoint, tmp_path):
    """Item 17: a data-bin whose dictionaries differ from the checkpoint's; the message stopped before the reason."""
    from el_evidence.testing.toy_fairseq import binarize_toy_corpus

    other = binarize_toy_corpus(tmp_path / "other", sizes=(("train", 30), ("valid", 10), ("test", 10)))
    proc = el_analyze("fairseq", "--checkpoint", toy_checkpoint, "--data", other, "--out", tmp_path / "report")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"could not load it as a fairseq checkpoint with --data \S+ \(RuntimeError: "
                     r"encoder\.embed_tokens\.weight is \[\d+, 32\] in the checkpoint but \[\d+, 32\] for --data.*: "
                     r"--data's dictionaries are not the ones the checkpoint was trained with", last), last
