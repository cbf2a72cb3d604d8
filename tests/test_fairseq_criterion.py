"""The fairseq criterion against fairseq's own label_smoothed_cross_entropy, on a real model and batch."""
import math

import pytest
import torch

from el_plugins.testing import spec_example as spec
from el_plugins.testing.toy_fairseq import TINY_TRANSFORMER

fairseq = pytest.importorskip("fairseq")
from fairseq import options, tasks  # noqa: E402
from fairseq.criterions import CRITERION_REGISTRY  # noqa: E402
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.logging import metrics  # noqa: E402

from el_plugins.fairseq_plugin.criterion import (  # noqa: E402
    CRITERION_NAME, LabelSmoothedEncouragingLossConfig, LabelSmoothedEncouragingLossCriterion,
    normalizes_with_plain_log_softmax)


def test_registered_by_plain_import_of_fairseq():
    assert CRITERION_REGISTRY[CRITERION_NAME] is LabelSmoothedEncouragingLossCriterion


def test_default_smoothing_convention_is_installed_fairseqs(toy_data_bin):
    # 'auto', resolved when the criterion is built: fairseq >= 0.12 spreads eps over the V - 1 non-target classes
    assert str(LabelSmoothedEncouragingLossConfig().smoothing_convention) == "auto"
    _, _, el, _ = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1")
    assert el.smoothing_convention == "fairseq"
    assert isinstance(el, LabelSmoothedCrossEntropyCriterion)  # built on fairseq's own criterion


def build(data_bin, *criterion_args, seed=3):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_bin), *TINY_TRANSFORMER, "--cpu", *criterion_args])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    model.eval()  # no dropout: both criteria see the same forward pass
    criterion = task.build_criterion(cfg.criterion)
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=400).next_epoch_itr(shuffle=False)
    return task, model, criterion, list(itr)


def loss_and_grads(criterion, model, sample):
    model.zero_grad()
    loss, sample_size, log = criterion(model, sample)
    loss.backward()
    return loss.detach(), log, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("eps", ["0.1", "0.0"])
def test_bonus_weight_zero_equals_fairseq_label_smoothed_cross_entropy(toy_data_bin, eps):
    """The reference implementation: bit for bit."""
    task, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", eps,
                                     "--bonus-weight", "0", "--report-accuracy", "--el-implementation", "reference")
    ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=float(eps), report_accuracy=True)
    for sample in batches[:2]:
        el_loss, el_log, el_grads = loss_and_grads(el, model, sample)
        ls_loss, ls_log, ls_grads = loss_and_grads(ls, model, sample)
        assert torch.equal(el_loss, ls_loss), (el_loss, ls_loss)
        assert torch.equal(el_log["nll_loss"], ls_log["nll_loss"])
        assert el_log["n_correct"] == ls_log["n_correct"] and el_log["total"] == ls_log["total"]
        for a, b in zip(el_grads, ls_grads):
            assert torch.equal(a, b)


def assert_grads_close(got, want):
    """Equal up to float32 rounding: relative 1e-4, absolute 1e-5 of the largest gradient entry (some
    parameters' gradients are analytically ~0 and only rounding noise remains)."""
    scale = max(w.abs().max().item() for w in want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("eps", ["0.1", "0.0"])
def test_fused_default_with_bonus_weight_zero_matches_label_smoothed_cross_entropy(toy_data_bin, eps):
    """The fused default (on the logits, in one pass): equal up to float32 rounding."""
    task, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", eps,
                                     "--bonus-weight", "0", "--report-accuracy")
    assert el.implementation == "auto" and normalizes_with_plain_log_softmax(model)
    ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=float(eps), report_accuracy=True)
    for sample in batches[:2]:
        el_loss, el_log, el_grads = loss_and_grads(el, model, sample)
        ls_loss, ls_log, ls_grads = loss_and_grads(ls, model, sample)
        torch.testing.assert_close(el_loss, ls_loss, rtol=2e-6, atol=1e-4)
        torch.testing.assert_close(el_log["nll_loss"], ls_log["nll_loss"], rtol=2e-6, atol=1e-4)
        assert el_log["n_correct"] == ls_log["n_correct"]
        assert_grads_close(el_grads, ls_grads)


@pytest.mark.parametrize("log_end", ["1.0", "0.5"])
def test_fused_equals_reference_criterion(toy_data_bin, log_end):
    flags = ["--criterion", CRITERION_NAME, "--label-smoothing", "0.1", "--log-end", log_end]
    _, model, fused, batches = build(toy_data_bin, *flags)
    _, _, reference, _ = build(toy_data_bin, *flags, "--el-implementation", "reference")
    f_loss, f_log, f_grads = loss_and_grads(fused, model, batches[0])
    r_loss, r_log, r_grads = loss_and_grads(reference, model, batches[0])
    torch.testing.assert_close(f_loss, r_loss, rtol=2e-6, atol=1e-4)
    for key in ("nll_loss", "el_bonus", "p_target", "n_past_log_end"):
        torch.testing.assert_close(f_log[key], r_log[key], rtol=2e-6, atol=1e-4)
    assert_grads_close(f_grads, r_grads)


def test_bonus_changes_loss_and_gradient(toy_data_bin):
    task, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1",
                                     "--log-end", "0.5")
    ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    el_loss, el_log, el_grads = loss_and_grads(el, model, batches[0])
    ls_loss, _, ls_grads = loss_and_grads(ls, model, batches[0])
    assert el_log["el_bonus"] < 0  # b(p) <= 0 for a fresh model
    torch.testing.assert_close(el_loss, ls_loss + el_log["el_bonus"])
    assert not all(torch.equal(a, b) for a, b in zip(el_grads, ls_grads))


@pytest.mark.parametrize("convention,log_end,rho,expected", spec.SUM_TABLE)
def test_criterion_reproduces_spec_example(toy_data_bin, convention, log_end, rho, expected):
    _, _, el, _ = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", str(spec.LABEL_SMOOTHING),
                        "--log-end", str(log_end), "--bonus-weight", str(rho), "--smoothing-convention", convention)
    assert el.padding_idx == spec.PADDING_INDEX  # the spec's padding index is fairseq's
    z, t = spec.logits_and_targets()
    out = el.compute_terms(torch.log_softmax(z, -1), t)
    assert out.loss.item() == pytest.approx(expected, abs=1e-11)
    assert out.nll_loss.item() == pytest.approx(spec.NLL_LOSS_SUM, abs=1e-11)


def test_logging_outputs_sum_across_workers(toy_data_bin):
    """fairseq sums logging outputs of all workers before reduce_metrics: the sum must give the same
    metrics as reducing the per-worker list, and match the per-token definitions."""
    _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1",
                                  "--report-accuracy")
    assert el.logging_outputs_can_be_summed()
    logs = []
    with torch.no_grad():
        for sample in batches[:2]:
            logs.append(el(model, sample)[2])
    summed = {k: sum(log[k] for log in logs) for k in logs[0]}

    def reduced(outputs):
        with metrics.aggregate() as agg:
            LabelSmoothedEncouragingLossCriterion.reduce_metrics(outputs)
        return agg.get_smoothed_values()

    a, b = reduced(logs), reduced([summed])
    for key in ("loss", "nll_loss", "bonus", "p_target", "past_log_end", "accuracy", "ppl"):
        assert a[key] == pytest.approx(b[key]), key
    ntok = summed["ntokens"]
    assert b["loss"] == pytest.approx(round(float(summed["loss"]) / summed["sample_size"] / math.log(2), 3))
    assert b["bonus"] == pytest.approx(round(float(summed["el_bonus"]) / summed["sample_size"] / math.log(2), 3))
    assert b["p_target"] == pytest.approx(round(float(summed["p_target"]) / ntok, 3))
    assert 0 < b["p_target"] < 1


def test_all_padding_batch_gives_zero_loss(toy_data_bin):
    _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1")
    sample = dict(batches[0])
    sample["target"] = torch.full_like(sample["target"], el.padding_idx)
    loss, _, log = el(model, sample)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert log["p_target"] == 0.0


def test_target_outside_vocabulary_is_a_clear_error(toy_data_bin):
    _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME)
    sample = dict(batches[0])
    sample["target"] = sample["target"].clone()
    vocab = len(el.task.target_dictionary)
    sample["target"][0, 0] = vocab + 5
    with pytest.raises(ValueError, match=rf"target {vocab + 5} is outside the {vocab} classes"):
        el(model, sample)
