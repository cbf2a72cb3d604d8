"""The fairseq criterion against fairseq's own label_smoothed_cross_entropy, on a real model and batch."""
import math

import pytest
import torch

from el_evidence.testing import spec_example as spec
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER

fairseq = pytest.importorskip("fairseq")
from fairseq import options, tasks  # noqa: E402
from fairseq.criterions import CRITERION_REGISTRY  # noqa: E402
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.logging import metrics  # noqa: E402
from fairseq.models.transformer import TransformerModel  # noqa: E402

from el_plugins.fairseq_plugin.criterion import (  # noqa: E402
    CRITERION_NAME, LabelSmoothedEncouragingLossConfig, LabelSmoothedEncouragingLossCriterion,
    normalizes_with_plain_log_softmax)


@pytest.fixture(scope="module")
def gloo_group(tmp_path_factory):
    """A one-process gloo group, so that DDP wrappers can be built in this process."""
    if not torch.distributed.is_initialized():
        store = tmp_path_factory.mktemp("gloo") / "store"
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield torch.distributed.group.WORLD


def test_registered_by_plain_import_of_fairseq():
    assert CRITERION_REGISTRY[CRITERION_NAME] is LabelSmoothedEncouragingLossCriterion


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_bonus_changes_loss_and_gradient(toy_data_bin):
    task, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1",
                                     "--log-end", "0.5")
    ls = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    el_loss, el_log, el_grads = loss_and_grads(el, model, batches[0])
    ls_loss, _, ls_grads = loss_and_grads(ls, model, batches[0])
    assert el_log["el_bonus"] < 0  # b(p) <= 0 for a fresh model
    torch.testing.assert_close(el_loss, ls_loss + el_log["el_bonus"])
    assert not all(torch.equal(a, b) for a, b in zip(el_grads, ls_grads))


@pytest.mark.e2e
@pytest.mark.parametrize("convention,log_end,rho,expected", spec.SUM_TABLE)
def test_criterion_reproduces_spec_example(toy_data_bin, convention, log_end, rho, expected):
    _, _, el, _ = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", str(spec.LABEL_SMOOTHING),
                        "--log-end", str(log_end), "--bonus-weight", str(rho), "--smoothing-convention", convention)
    assert el.padding_idx == spec.PADDING_INDEX  # the spec's padding index is fairseq's
    z, t = spec.logits_and_targets()
    out = el.compute_terms(torch.log_softmax(z, -1), t)
    assert out.loss.item() == pytest.approx(expected, abs=1e-11)
    assert out.nll_loss.item() == pytest.approx(spec.NLL_LOSS_SUM, abs=1e-11)


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_all_padding_batch_gives_zero_loss(toy_data_bin):
    _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1")
    sample = dict(batches[0])
    sample["target"] = torch.full_like(sample["target"], el.padding_idx)
    loss, _, log = el(model, sample)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert log["p_target"] == 0.0


@pytest.mark.e2e
def test_target_outside_vocabulary_is_a_clear_error(toy_data_bin):
    _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME)
    sample = dict(batches[0])
    sample["target"] = sample["target"].clone()
    vocab = len(el.task.target_dictionary)
    sample["target"][0, 0] = vocab + 5
    with pytest.raises(ValueError, match=rf"target {vocab + 5} is outside the {vocab} classes"):
        el(model, sample)


# --------------------------------------------------------------------------- the output layer fused into the loss
LOGGED_SUMS = ("loss", "nll_loss", "el_bonus", "p_target", "n_past_log_end", "el_tokens", "n_correct", "total",
               "ntokens", "sample_size")


@pytest.mark.e2e
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("flags", [["--label-smoothing", "0.1", "--log-end", "0.5"],
                                   ["--label-smoothing", "0.1", "--ignore-prefix-size", "2", "--sentence-avg"],
                                   ["--bonus-weight", "0", "--log-end", "1.0"]])
def test_fused_output_layer_equals_the_logits_path(toy_data_bin, shared, flags):
    """By default, on fairseq's Transformer (shared embeddings or not), the decoder's features and output
    projection go into the loss; the loss, every logged value and every parameter's gradient equal those of the
    logits path (--el-fuse-output-layer off) to float32 rounding."""
    extra = ["--share-decoder-input-output-embed"] if shared else []
    common = ["--criterion", CRITERION_NAME, "--report-accuracy", *flags, *extra]
    _, model, fused, batches = build(toy_data_bin, *common)
    _, _, logits_path, _ = build(toy_data_bin, *common, "--el-fuse-output-layer", "off")
    assert fused.fused_output_layer(model) is model.decoder.output_projection
    assert logits_path.fused_output_layer(model) is None
    assert (model.decoder.output_projection.weight is model.decoder.embed_tokens.weight) == shared
    for sample in batches[:2]:
        f_loss, f_log, f_grads = loss_and_grads(fused, model, sample)
        l_loss, l_log, l_grads = loss_and_grads(logits_path, model, sample)
        torch.testing.assert_close(f_loss, l_loss, rtol=2e-6, atol=1e-4)
        assert set(f_log) == set(l_log)
        for key in LOGGED_SUMS:
            torch.testing.assert_close(torch.as_tensor(f_log[key]).double(), torch.as_tensor(l_log[key]).double(),
                                       rtol=2e-6, atol=1e-4, msg=lambda m: f"{key}: {m}")
        assert_grads_close(f_grads, l_grads)
    model.zero_grad()
    loss, _, _ = fused(model, batches[0])
    assert type(loss.grad_fn).__name__ == "_FusedLinearEncouragingLossBackward"


@pytest.mark.e2e
def test_fused_output_layer_under_autocast_equals_the_logits_path(toy_data_bin):
    """Inside bfloat16 autocast (what fairseq's --amp runs the loss in): the fused output layer's loss and logged
    values equal the logits path's (--el-fuse-output-layer off) and the reference's, and the gradients agree to
    bfloat16 rounding: the fused path runs the output projection in bfloat16, as the logits path's nn.Linear does."""
    common = ["--criterion", CRITERION_NAME, "--label-smoothing", "0.1", "--report-accuracy"]
    _, model, fused, batches = build(toy_data_bin, *common)
    criteria = [fused] + [build(toy_data_bin, *common, *flags)[2] for flags in (["--el-fuse-output-layer", "off"],
                                                                              ["--el-implementation", "reference"])]
    assert fused.fused_output_layer(model) is not None
    for sample in batches[:2]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results = [loss_and_grads(criterion, model, sample) for criterion in criteria]
        (f_loss, f_log, f_grads) = results[0]
        for loss, log, grads in results[1:]:
            torch.testing.assert_close(f_loss, loss, rtol=1e-6, atol=0)
            for key in LOGGED_SUMS:
                torch.testing.assert_close(torch.as_tensor(f_log[key]).double(), torch.as_tensor(log[key]).double(),
                                           rtol=1e-6, atol=1e-4, msg=lambda m: f"{key}: {m}")
            scale = max(g.abs().max().item() for g in grads)
            for a, b in zip(f_grads, grads):
                torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3 * scale)


@pytest.mark.e2e
def test_fused_output_layer_per_token_loss_with_reduce_false(toy_data_bin):
    _, model, fused, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1")
    _, _, logits_path, _ = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1",
                                 "--el-fuse-output-layer", "off")
    with torch.no_grad():
        f_loss, _, _ = fused(model, batches[0], reduce=False)
        l_loss, _, _ = logits_path(model, batches[0], reduce=False)
    assert f_loss.shape == l_loss.shape == (batches[0]["target"].numel(),)
    torch.testing.assert_close(f_loss, l_loss, rtol=2e-6, atol=1e-5)


class NormalizedOtherwise(TransformerModel):
    """A model whose get_normalized_probs is its own: the fused output layer is not the same computation."""

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return super().get_normalized_probs(net_output, log_probs, sample)


@pytest.mark.e2e
def test_fused_output_layer_falls_back_where_it_is_not_the_same_computation(toy_data_bin, gloo_group):
    flags = ["--criterion", CRITERION_NAME, "--label-smoothing", "0.1"]
    _, model, criterion, batches = build(toy_data_bin, *flags)
    assert criterion.fused_output_layer(model) is not None
    _, _, reference, _ = build(toy_data_bin, *flags, "--el-implementation", "reference")
    assert reference.fused_output_layer(model) is None
    _, adaptive, _, _ = build(toy_data_bin, *flags, "--adaptive-softmax-cutoff", "20,40")
    assert adaptive.decoder.adaptive_softmax is not None and criterion.fused_output_layer(adaptive) is None

    other = NormalizedOtherwise(model.args, model.encoder, model.decoder)
    assert criterion.fused_output_layer(other) is None
    decoder_type = type(model.decoder)
    def own_output_layer(self, features):  # an override (which could do anything): not fused
        return decoder_type.output_layer(self, features)
    model.decoder.__class__ = type("OwnOutputLayer", (decoder_type,), {"output_layer": own_output_layer})
    try:
        assert criterion.fused_output_layer(model) is None
    finally:
        model.decoder.__class__ = decoder_type
    ddp = torch.nn.parallel.DistributedDataParallel(model, process_group=gloo_group, find_unused_parameters=True)
    assert criterion.fused_output_layer(ddp) is None  # DDP would see the projection unused in forward
    assert criterion.fused_output_layer(torch.nn.parallel.DistributedDataParallel(model, process_group=gloo_group))
    # the fallbacks still train with EL, on the logits
    loss, _, log = criterion(other, batches[0])
    assert type(loss.grad_fn).__name__ == "_FusedEncouragingLossBackward" and log["el_bonus"] < 0


@pytest.mark.e2e
def test_ignore_prefix_size_logs_p_target_over_the_scored_tokens(toy_data_bin):
    """p_target and past_log_end are averaged over the tokens the loss scores: not the --ignore-prefix-size
    prefix (nor padding). The average is taken by hand from the model's own log-probabilities."""
    prefix = 3
    for fuse in ("auto", "off"):
        _, model, el, batches = build(toy_data_bin, "--criterion", CRITERION_NAME, "--label-smoothing", "0.1",
                                      "--log-end", "0.5", "--ignore-prefix-size", str(prefix),
                                      "--el-fuse-output-layer", fuse)
        sample = batches[0]
        with torch.no_grad():
            _, _, log = el(model, sample)
            lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)[:, prefix:]
        target = sample["target"][:, prefix:]
        scored = target.ne(el.padding_idx)
        p_target = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).exp()[scored]
        assert int(scored.sum()) < sample["ntokens"]
        with metrics.aggregate() as agg:
            LabelSmoothedEncouragingLossCriterion.reduce_metrics([log])
        values = agg.get_smoothed_values()
        assert values["p_target"] == pytest.approx(round(p_target.mean().item(), 3), abs=1e-3), fuse
        assert values["past_log_end"] == pytest.approx(round((p_target > 0.5).double().mean().item(), 3), abs=1e-3)
