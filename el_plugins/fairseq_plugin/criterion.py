"""fairseq criterion ``label_smoothed_encouraging_loss``: label-smoothed cross-entropy plus the
encouraging-loss bonus (Zhao et al., AAAI 2022, https://arxiv.org/abs/2110.06537).

    fairseq-train ... --criterion label_smoothed_encouraging_loss --label-smoothing 0.1 --log-end 0.75

Per target token, with q the smoothed target and b the (conservative) bonus:
``loss = sum_k q_k (-log p_k + rho b(p_k))``; ``--bonus-weight 0`` is fairseq's
``label_smoothed_cross_entropy`` (bit for bit with ``--el-implementation reference``). It subclasses
fairseq's LabelSmoothedCrossEntropyCriterion and its config; only ``compute_loss`` differs. The math
lives in :mod:`el_plugins.functional` (the reference) and :mod:`el_plugins.ops` (the fused,
memory-efficient default: it takes the decoder's logits and keeps only their gradient, instead of
fp32 log-probabilities and autograd intermediates).
"""
import argparse
import math
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (LabelSmoothedCrossEntropyCriterion,
                                                             LabelSmoothedCrossEntropyCriterionConfig)
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel
from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.transformer import TransformerModelBase
from fairseq.logging import metrics

from el_plugins import functional as EF

CRITERION_NAME = "label_smoothed_encouraging_loss"


def installed_fairseq_smoothing_convention() -> str:
    """'fairseq' (eps / (V - 1) off the target, fairseq >= 0.12) or 'paper' (eps / V, fairseq 0.10),
    read off the installed fairseq's own label_smoothed_nll_loss on a 3-class example."""
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    lprobs = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64))
    loss, _ = label_smoothed_nll_loss(lprobs, torch.tensor([0]), 0.3, ignore_index=None, reduce=True)
    paper = EF.encouraging_loss(lprobs, torch.tensor([0]), label_smoothing=0.3, bonus_weight=0.0,
                                reduction="sum", smoothing_convention="paper", input_is_log_probs=True,
                                implementation="reference")
    return "paper" if torch.isclose(loss, paper) else "fairseq"


def unwrap_model(model):
    """The fairseq model inside the wrappers fairseq puts around it for distributed training
    (ModuleProxyWrapper, legacy and pytorch DDP, fully sharded data parallel): each keeps it as ``.module``."""
    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def normalizes_with_plain_log_softmax(model) -> bool:
    """True when model.get_normalized_probs(log_probs=True) is log_softmax(net_output[0]): fairseq's own
    model and decoder methods, no adaptive softmax. Then the fused loss may take the logits directly.
    Decided on the model inside fairseq's distributed-training wrappers (see :func:`unwrap_model`)."""
    model = unwrap_model(model)
    decoder = getattr(model, "decoder", None)
    return (isinstance(decoder, FairseqDecoder) and getattr(decoder, "adaptive_softmax", None) is None
            and type(model).get_normalized_probs in (BaseFairseqModel.get_normalized_probs,
                                                     TransformerModelBase.get_normalized_probs)
            and type(model).get_normalized_probs_scriptable is BaseFairseqModel.get_normalized_probs_scriptable
            and type(decoder).get_normalized_probs is FairseqDecoder.get_normalized_probs
            and type(decoder).get_normalized_probs_scriptable is FairseqDecoder.get_normalized_probs_scriptable)


SMOOTHING_CONVENTION_OPTIONS = ("auto", *EF.SMOOTHING_CONVENTIONS)  # auto: the installed fairseq's
SMOOTHING_CONVENTION_CHOICES = ChoiceEnum(list(SMOOTHING_CONVENTION_OPTIONS))
IMPLEMENTATION_CHOICES = ChoiceEnum(list(EF.IMPLEMENTATIONS))


@dataclass
class LabelSmoothedEncouragingLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    """fairseq's label_smoothed_cross_entropy options (--label-smoothing, --report-accuracy,
    --ignore-prefix-size, sentence_avg) and EL's own."""

    log_end: float = field(
        default=0.75,
        metadata={"help": "where the bonus log(1-p) turns into its tangent, in (0, 1]: 1 is the normal "
                          "bonus, < 1 the conservative one (the paper used 0.5 for translation)"},
    )
    bonus_weight: float = field(
        default=1.0, metadata={"help": "weight rho of the bonus, >= 0; 0 gives label_smoothed_cross_entropy"}
    )
    smoothing_convention: SMOOTHING_CONVENTION_CHOICES = field(
        default="auto",
        metadata={"help": "how smoothing spreads epsilon: 'fairseq' = eps/(V-1) off the target (fairseq >= 0.12), "
                          "'paper' = eps/V on every class (fairseq 0.10, timm, the paper's reference code); "
                          "'auto' (default): the installed fairseq's own convention"},
    )
    el_implementation: IMPLEMENTATION_CHOICES = field(
        default="auto",
        metadata={"help": "'fused': loss and gradient in one pass over the decoder's logits, no fp32 (tokens x "
                          "vocab) intermediates (less memory); 'reference': plain autograd on fairseq's "
                          "log-probabilities, with --bonus-weight 0 bit-for-bit label_smoothed_cross_entropy; "
                          "'auto' (default): fused, except for float64 on a GPU"},
    )


CHECKED_OPTIONS = {"label_smoothing": ("--label-smoothing", EF.check_label_smoothing),
                   "log_end": ("--log-end", EF.check_log_end),
                   "bonus_weight": ("--bonus-weight", EF.check_bonus_weight)}


def checked_number(flag, check):
    """An argparse ``type=`` that reads a float and applies el-plugins' range check, so that a bad value is a
    usage error whose message is the last line fairseq-train/-generate/-validate print."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = text
        try:
            return check(value, flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = flag  # argparse names the type in some messages
    return parse


@register_criterion(CRITERION_NAME, dataclass=LabelSmoothedEncouragingLossConfig)
class LabelSmoothedEncouragingLossCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label_smoothed_cross_entropy with EL's loss in ``compute_loss``; ``forward``,
    ``compute_accuracy`` and the metrics are fairseq's, plus EL's own logged terms (bonus, p_target,
    past_log_end, all summable across workers)."""

    def __init__(self, task, sentence_avg, label_smoothing, log_end=0.75, bonus_weight=1.0,
                 smoothing_convention="auto", el_implementation="auto", ignore_prefix_size=0,
                 report_accuracy=False):
        if ignore_prefix_size < 0:
            raise ValueError(f"--ignore-prefix-size must be >= 0, got {ignore_prefix_size}")
        super().__init__(task, sentence_avg, EF.check_label_smoothing(label_smoothing, "--label-smoothing"),
                         ignore_prefix_size=ignore_prefix_size, report_accuracy=report_accuracy)
        self.log_end = EF.check_log_end(log_end, "--log-end")
        self.bonus_weight = EF.check_bonus_weight(bonus_weight, "--bonus-weight")
        convention = EF.check_choice(str(smoothing_convention), SMOOTHING_CONVENTION_OPTIONS, "--smoothing-convention")
        self.smoothing_convention = installed_fairseq_smoothing_convention() if convention == "auto" else convention
        self.implementation = EF.check_choice(str(el_implementation), EF.IMPLEMENTATIONS, "--el-implementation")
        self._el_logging = {}

    @classmethod
    def add_args(cls, parser):
        """fairseq's flags from the config dataclass, with the range checks as their argparse types."""
        super().add_args(parser)
        for action in parser._actions:
            if action.dest in CHECKED_OPTIONS:
                action.type = checked_number(*CHECKED_OPTIONS[action.dest])

    @classmethod
    def build_criterion(cls, cfg, task):
        """A bad value that reached the config without the command line (fairseq-hydra-train's YAML) stops
        the program with its message as the last line, as a bad flag does, not a traceback."""
        try:
            return super().build_criterion(cfg, task)
        except ValueError as exc:
            raise SystemExit(f"{CRITERION_NAME}: error: {exc}") from None

    def forward(self, model, sample, reduce=True):
        """fairseq's (loss, sample_size, logging_output), with EL's terms added to the logging output."""
        loss, sample_size, logging_output = super().forward(model, sample, reduce=reduce)
        logging_output.update(self._el_logging)
        return loss, sample_size, logging_output

    def get_logits_and_target(self, model, net_output, sample):
        """(scores, target, are_log_probs): the decoder's raw logits (unless --el-implementation reference) when its
        normalization is the plain log-softmax (no adaptive softmax, no override), else fairseq's log-probs."""
        if self.implementation != "reference" and normalizes_with_plain_log_softmax(model):
            logits, target = net_output[0], model.get_targets(sample, net_output)
            if self.ignore_prefix_size > 0:
                logits, target = logits[:, self.ignore_prefix_size:, :], target[:, self.ignore_prefix_size:]
            return logits.reshape(-1, logits.size(-1)), target.reshape(-1), False
        lprobs, target = self.get_lprobs_and_target(model, net_output, sample)
        return lprobs, target, True

    def compute_terms(self, scores, target, reduce=True, input_is_log_probs=True) -> EF.EncouragingLossOutput:
        """EL of (tokens, V) scores (logits, or log-probabilities) with this criterion's settings, summed over
        the non-padding tokens (or per token with ``reduce=False``)."""
        return EF.encouraging_loss_with_stats(
            scores, target, log_end=self.log_end, label_smoothing=self.eps, bonus_weight=self.bonus_weight,
            ignore_index=self.padding_idx, reduction="sum" if reduce else "none",
            smoothing_convention=self.smoothing_convention, input_is_log_probs=input_is_log_probs,
            implementation=self.implementation,
        )

    def compute_loss(self, model, net_output, sample, reduce=True):
        """(loss, nll_loss), the interface of fairseq's label_smoothed_cross_entropy; EL's logged terms
        (el_bonus, p_target, n_past_log_end) are kept for :meth:`forward`'s logging output."""
        scores, target, are_log_probs = self.get_logits_and_target(model, net_output, sample)
        out = self.compute_terms(scores, target, reduce=reduce, input_is_log_probs=are_log_probs)
        self._el_logging = {"el_bonus": out.bonus.data, "p_target": out.target_prob.data,
                            "n_past_log_end": out.past_log_end.data}
        return out.loss, out.nll_loss

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's metrics, plus bonus (bits per sample_size unit, like loss), p_target and past_log_end
        (per target token)."""
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, ntokens = total("sample_size"), total("ntokens")
        if sample_size > 0:
            metrics.log_scalar("bonus", total("el_bonus") / sample_size / math.log(2), sample_size, round=3)
        if ntokens > 0:
            metrics.log_scalar("p_target", total("p_target") / ntokens, ntokens, round=3)
            metrics.log_scalar("past_log_end", total("n_past_log_end") / ntokens, ntokens, round=3)
