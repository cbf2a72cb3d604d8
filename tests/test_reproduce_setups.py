"""The authors' MNIST setups in el-reproduce: their two networks, their training recipes, Table 11's attack as
their torchattacks 3.1.0 built it, and their OOD metrics beside scikit-learn's. Unit tests, no data needed."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from el_plugins.analysis import metrics
from el_evidence.reproduce import mnist, networks, table11
from el_evidence.reproduce.recipes import RECIPES, paper_step_lr


# --------------------------------------------------------------------------- the networks
def _layers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_table11_network_is_the_authors_demo_cnn():
    model = networks.Table11CNN()
    assert networks.parameter_count(model) == 123222
    convs = _layers(model, nn.Conv2d)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (5, 5), (0, 0)), (16, 32, (5, 5), (0, 0)), (32, 64, (5, 5), (0, 0))]
    assert [(l.in_features, l.out_features) for l in _layers(model, nn.Linear)] == [(576, 100), (100, 10)]
    assert len(_layers(model, nn.MaxPool2d)) == 2 and len(_layers(model, nn.ReLU)) == 4
    assert not _layers(model, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d))
    # inputs in [0, 1] unnormalised: the first conv sees the pixels themselves
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model.features[0](x), convs[0](x)) and model(x).shape == (3, 10)


def test_mnistnet_is_the_authors_tables_1_4_13_network():
    model = networks.MNISTNet()
    assert networks.parameter_count(model) == 522125
    convs = _layers(model, nn.Conv2d)
    assert len(convs) == 11 and convs[0].padding == (0, 0) and all(c.padding == (1, 1) for c in convs[1:])
    assert all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    bns = _layers(model, nn.BatchNorm2d)
    assert len(bns) == 12 and bns[0].num_features == 1  # the input BatchNorm, then one after every conv
    assert len(_layers(model, nn.PReLU)) == 11 and len(_layers(model, nn.MaxPool2d)) == 3
    # the max-pools close groups of 3, 4 and 3 padded convs after the first
    kinds = [type(m).__name__ for m in model.features]
    pools = [i for i, k in enumerate(kinds) if k == "MaxPool2d"]
    assert [kinds[:p].count("Conv2d") for p in pools] == [1 + 3, 1 + 3 + 4, 1 + 3 + 4 + 3]
    assert (model.fc[1].in_features, model.fc[1].out_features) == (576, 256) and isinstance(model.fc[2], nn.BatchNorm1d)
    assert model.head.bias is None and model.head.weight.shape == (10, 256)
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)


# --------------------------------------------------------------------------- the recipes
def test_paper_schedule_is_the_authors_adjust_learning_rate():
    lrs = [paper_step_lr(0.1, epoch) for epoch in range(1, 101)]
    assert lrs[:50] == [0.1] * 50  # epochs 1-50
    assert lrs[50:64] == [pytest.approx(0.01)] * 14  # 51-64
    assert lrs[64:] == [pytest.approx(0.001)] * 36  # 65-100
    paper = RECIPES["paper"]
    assert (paper.network, paper.optimizer, paper.momentum, paper.epochs, paper.batch_size, paper.lr) == (
        "MNISTNet", "sgd", 0.9, 100, 256, 0.1)
    assert paper.shuffle and paper.best_test_epoch and paper.schedule == "paper_steps"
    t11 = RECIPES["table11"]
    assert (t11.network, t11.optimizer, t11.schedule, t11.epochs, t11.batch_size, t11.lr, t11.shuffle) == (
        "Table11CNN", "adam", "constant", 5, 128, 1e-3, False)
    s = table11.Settings()  # what el-reproduce mnist-table11 trains with: EL at log_end 1, no smoothing
    assert (s.setup, s.epochs, s.batch_size, s.lr, s.log_end, s.smoothing) == ("table11", 5, 128, 1e-3, 1.0, 0.0)


@pytest.mark.slow  # trains the authors' network for its schedule, about 2 s
def test_paper_recipe_applies_the_schedule_and_reports_the_best_test_epoch():
    """A few steps of the paper setup: 66 epochs of one batch each, the learning rate set per epoch."""
    s = mnist.Settings(setup="paper", epochs=66, batch_size=8, lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.arange(8) % 10
    model, info = mnist.train("el", 0, x, y, s, test=(x[:4], y[:4]))
    assert info["lr_per_epoch"] == [0.1] * 50 + [pytest.approx(0.01)] * 14 + [pytest.approx(0.001)] * 2
    curve = info["test_accuracy_per_epoch"]
    assert len(curve) == 66 and info["accuracy_best_epoch"] == max(curve)
    assert info["best_epoch"] == curve.index(max(curve)) + 1  # the first of equal epochs
    assert not model.training and isinstance(model, networks.MNISTNet)


def _authors_el(logits, target):
    """The authors' adversarial_robustness/demos/el.py EncourageLoss(log_end=1), as they wrote the formula."""
    lprobs = F.log_softmax(logits, 1)
    bonus = torch.log(torch.clamp(1 - lprobs.exp(), min=1e-5))
    return F.nll_loss(lprobs - bonus, target)


@pytest.mark.parametrize("variant", ["ce", "el"])
def test_table11_recipe_trains_as_the_authors_loop(variant):
    """mnist.train with the table11 recipe = attack.py's train(): the seed's initialisation, Adam 1e-3, batches
    of 128 in the stored order; and the EL it trains with is the authors' EncourageLoss(log_end=1)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(300, 1, 28, 28, generator=g), torch.randint(0, 10, (300,), generator=g)
    model, _ = mnist.train(variant, 3, x, y, table11.Settings(epochs=2))

    criterion = mnist.make_loss(variant, 1.0, 0.0)
    torch.manual_seed(3)
    reference = networks.Table11CNN()
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.001)
    for _ in range(2):
        for i in range(0, 300, 128):  # shuffle=False: the stored order, a last batch of 44
            cost = criterion(reference(x[i:i + 128]), y[i:i + 128])
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

    logits = (torch.randn(64, 10, generator=g) * 6).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=g)
    theirs = nn.CrossEntropyLoss()(logits, target) if variant == "ce" else _authors_el(logits, target)
    ours = criterion(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours, logits)[0], torch.autograd.grad(theirs, logits)[0],
                               rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- Table 11's attack
def test_autoattack_is_composed_as_torchattacks_3_1_0_built_it():
    import torchattacks

    model = networks.Table11CNN()
    attack = table11.autoattack_3_1_0(model, eps=0.2, seed=7)
    assert isinstance(attack, torchattacks.MultiAttack)
    apgd, apgdt, fab, square = attack.attacks
    assert [type(a) for a in attack.attacks] == [torchattacks.APGD, torchattacks.APGDT, torchattacks.FAB,
                                                 torchattacks.Square]
    for a in attack.attacks:
        assert a.model is model and a.eps == 0.2 and a.norm == "Linf" and a.seed == 7 and a.n_restarts == 1
        assert a.targeted is False  # the default (untargeted) mode
    assert (apgd.steps, apgd.loss, apgd.eot_iter, apgd.thr_decr) == (100, "ce", 1, 0.75)
    assert (apgdt.steps, apgdt.n_target_classes, apgdt.eot_iter, apgdt.thr_decr) == (100, 9, 1, 0.75)
    # 3.1.0's FAB forces self.targeted = False: the untargeted FAB, not 3.5.1's FAB-T
    assert (fab.steps, fab.multi_targeted, fab.alpha_max, fab.eta, fab.beta) == (100, False, 0.1, 1.05, 0.9)
    assert (square.n_queries, square.p_init, square.loss, square.rescale_schedule) == (5000, 0.8, "margin", True)

    # what torchattacks 3.5.1's own 'standard' AutoAttack builds instead: why it is composed by hand
    own = torchattacks.AutoAttack(model, norm="Linf", eps=0.2, version="standard", n_classes=10, seed=0)
    own_apgd, own_apgdt, own_fab, _ = own._autoattack.attacks
    assert (own_apgd.steps, own_apgdt.steps, own_fab.steps, own_fab.multi_targeted) == (10, 10, 10, True)


def test_robust_after_stages_counts_clean_mistakes_and_stops_when_none_survive():
    """A model that reads the mean pixel (class 0 above 0.5, class 1 below): images of class 0 with a mean just
    above 0.5 fall to APGD-CE at eps 0.1, a clean mistake counts as broken by it; with no survivor left,
    MultiAttack stops and the later stages count 0 (a surviving image would cost the full APGD-T / FAB /
    Square budget: the quick end-to-end run covers that)."""
    class MeanPixel(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([100.0, -100.0] + [0.0] * 8))
            self.b = nn.Parameter(torch.tensor([-50.0, 50.0] + [-1e3] * 8))

        def forward(self, x):
            return x.flatten(1).mean(1, keepdim=True) * self.w + self.b

    x = (torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.1).add_(0.46)
    x[4] -= 0.16  # mean ~0.35: classified as 1, a clean mistake
    y = torch.zeros(5, dtype=torch.long)
    model = MeanPixel()
    assert model(x).argmax(1).tolist() == [0, 0, 0, 0, 1]
    assert table11.robust_after_stages(model, x, y, eps=0.1, seed=0) == [0, 0, 0, 0]


def test_binomial_standard_error():
    assert table11.binomial_se(50.0, 100) == pytest.approx(5.0)
    assert table11.binomial_se(100.0, 7) == 0.0


# --------------------------------------------------------------------------- the authors' OOD metrics
def test_paper_code_metrics_equal_sklearns_without_ties():
    rng = np.random.default_rng(0)
    ind, ood = rng.normal(1.0, 1.0, 700), rng.normal(0.0, 1.0, 500)
    for seed in range(3):
        assert metrics.auroc_paper_code(ind, ood, "higher", seed=seed) == pytest.approx(metrics.auroc(ind, ood, "higher"),
                                                                                          abs=1e-12)
        assert metrics.fpr_at_tpr_paper_code(ind, ood, 0.95, "higher", seed=seed) == metrics.fpr_at_tpr(ind, ood, 0.95, "higher")
    # 'lower' (energies) turns the scores around in both
    assert metrics.auroc_paper_code(-ind, -ood, "lower") == pytest.approx(metrics.auroc(ind, ood, "higher"), abs=1e-12)
    assert metrics.fpr_at_tpr_paper_code(-ind, -ood, 0.95, "lower") == metrics.fpr_at_tpr(ind, ood, 0.95, "higher")


def test_paper_code_metrics_differ_from_sklearns_on_ties():
    """In-distribution [3, 2, 2, 2], OOD [2, 2, 0, 0]: a TPR of 0.95 needs all four in-distribution rows.
    scikit-learn's threshold 2 accepts both tied OOD rows (FPR 0.5); the authors' walk stops at the last tied
    in-distribution row, after 2, 1 or 0 tied OOD rows with probabilities 3/5, 3/10, 1/10 (mean FPR 0.375).
    AUROC: scikit-learn counts the 6 tied pairs 1/2 each (13/16); the authors' random order wins 0-6 of them."""
    ind, ood = [3.0, 2.0, 2.0, 2.0], [2.0, 2.0, 0.0, 0.0]
    assert metrics.fpr_at_tpr(ind, ood, 0.95, "higher") == 0.5
    assert metrics.auroc(ind, ood, "higher") == 13 / 16
    fprs = np.array([metrics.fpr_at_tpr_paper_code(ind, ood, 0.95, "higher", seed=s) for s in range(4000)])
    assert set(np.unique(fprs)) == {0.0, 0.25, 0.5}
    assert [np.mean(fprs == v) for v in (0.0, 0.25, 0.5)] == pytest.approx([0.1, 0.3, 0.6], abs=0.03)
    aurocs = np.array([metrics.auroc_paper_code(ind, ood, "higher", seed=s) for s in range(4000)])
    assert set(np.unique(np.rint(aurocs * 16))) <= set(range(10, 17)) and len(np.unique(aurocs)) > 3
    assert aurocs.mean() == pytest.approx(13 / 16, abs=0.005)
    # one seed is one draw, and the same draw every time
    assert metrics.auroc_paper_code(ind, ood, seed=5) == metrics.auroc_paper_code(ind, ood, seed=5)


def test_paper_code_scores_are_the_authors_float32_ones():
    logits = torch.tensor([[30.0, 0.0, -1.0], [31.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    scores = metrics.paper_code_ood_scores(logits)
    assert torch.equal(scores["min_energy"], logits.max(1).values)
    assert torch.equal(scores["free_energy"], torch.logsumexp(logits, 1))
    assert torch.equal(scores["max_prob"], F.softmax(logits, 1).max(1).values)
    # the two confident rows tie at max p = 1 in float32, where el-plugins' log max p (float64) tells them apart
    assert scores["max_prob"][0] == scores["max_prob"][1] == 1.0
    ours = metrics.log_max_prob(logits)
    assert ours[1] > ours[0]


def test_with_readme_block_replaces_the_block_only():
    from el_evidence.reproduce import report

    text = "intro\n<!-- b -->\nold table\n<!-- e -->\nafter\n"
    new = report.with_readme_block(text, "new table\n", "<!-- b -->", "<!-- e -->")
    assert new == "intro\n<!-- b -->\nnew table\n<!-- e -->\nafter\n"
    assert report.readme_block(new, "<!-- b -->", "<!-- e -->") == "new table\n"
    with pytest.raises(ValueError, match="lacks the markers"):
        report.with_readme_block("no markers", "x\n", "<!-- b -->", "<!-- e -->")


def test_table_shows_the_authors_metrics_only_where_they_differ():
    import copy
    import json
    import os

    from el_evidence.reproduce import report

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = json.load(open(os.path.join(root, "results", "mnist", "results.json")))
    same = copy.deepcopy(results)
    for entry in same["variants"].values():
        for stat in ("mean", "std"):
            for key in mnist.OOD_KEYS:
                entry[stat][f"{key}_paper_code"] = entry[stat][key]
    assert "the authors' metrics.py" not in report.render_tables(same)  # equal everywhere: no extra rows
    differ = copy.deepcopy(same)
    differ["variants"]["el"]["mean"]["fpr95_max_prob_paper_code"] -= 1.0
    table = report.render_tables(differ)
    rows = [line for line in table.splitlines() if "the authors' metrics.py" in line]
    assert len(rows) == 1 and "float32 max. probability" in rows[0] and "FPR95, max. probability" in table
    assert math.isclose(float(rows[0].split(" | ")[6].split(" ± ")[0]),
                        round(results["variants"]["el"]["mean"]["fpr95_max_prob"] - 1.0, 2))
