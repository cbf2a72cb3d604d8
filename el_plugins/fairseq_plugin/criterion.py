"""fairseq criterion ``label_smoothed_encouraging_loss``: label-smoothed cross-entropy plus the
encouraging-loss bonus (Zhao et al., AAAI 2022, https://arxiv.org/abs/2110.06537).

    fairseq-train ... --criterion label_smoothed_encouraging_loss --label-smoothing 0.1 --log-end 0.75

Per target token, with q the smoothed target, q' the bonus's (``--bonus-smoothing``, by default the label
smoothing) and b a member of the bonus family (``--bonus log|power|cosine``, ``--bonus-gamma``, ``--bonus-start``;
the log bonus turns into its tangent past ``--log-end``): ``loss = sum_k q_k (-log p_k) + rho sum_k q'_k b(p_k)``;
``--bonus-weight 0`` is fairseq's ``label_smoothed_cross_entropy`` (bit for bit with ``--el-implementation
reference``). rho may follow a schedule over epochs or updates (``--bonus-schedule``, ``--bonus-defer``): fairseq's
task hooks (``begin_epoch``, ``train_step``'s update number) call the criterion's ``set_epoch`` and
``set_num_updates``, so it continues across a resume and is the same on every rank; it is logged as
``bonus_weight``. It subclasses fairseq's LabelSmoothedCrossEntropyCriterion and its config; ``compute_loss`` is
EL's, and ``forward`` is its own: on fairseq's Transformer the decoder's output layer is fused into the loss
(``--el-fuse-output-layer auto``, the default): the model runs with ``features_only=True`` and
:func:`el_plugins.functional.linear_encouraging_loss_with_stats` takes the features and the output projection's
weight, so the (tokens x vocabulary) logits and their gradient never exist whole. Elsewhere (other models,
adaptive softmax, overridden output layers or normalization, ``--el-implementation reference``,
``--el-fuse-output-layer off``) it takes the decoder's logits or log-probabilities. The math lives in
:mod:`el_plugins.functional` and the fused ops it dispatches to.
"""
import argparse
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (LabelSmoothedCrossEntropyCriterion,
                                                             LabelSmoothedCrossEntropyCriterionConfig)
from fairseq.models import BaseFairseqModel
from fairseq.models.fairseq_decoder import FairseqDecoder
from fairseq.models.transformer import TransformerDecoderBase, TransformerModelBase
from fairseq.logging import metrics

from el_plugins import checks
from el_plugins import functional as EF
from el_plugins.core import BONUSES, SCHEDULE_UNITS, SCHEDULES

__all__ = ['checked_number', 'CHECKED_OPTIONS', 'CHOICE_OPTIONS', 'CRITERION_NAME', 'FLAGS', 'follow_training_time',
           'fusable_output_layer', 'FUSE_OUTPUT_LAYER_OPTIONS', 'installed_fairseq_smoothing_convention',
           'LabelSmoothedEncouragingLossConfig', 'LabelSmoothedEncouragingLossCriterion', 'model_wrappers',
           'normalizes_with_plain_log_softmax', 'SMOOTHING_CONVENTION_OPTIONS', 'unwrap_model']

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


def model_wrappers(model):
    """The wrappers fairseq puts around a model for distributed training (ModuleProxyWrapper, legacy and pytorch
    DDP, fully sharded data parallel), outermost first: each keeps the next as ``.module``."""
    while not isinstance(model, BaseFairseqModel) and isinstance(getattr(model, "module", None), torch.nn.Module):
        yield model
        model = model.module


def unwrap_model(model):
    """The fairseq model inside the wrappers of :func:`model_wrappers`."""
    for wrapper in model_wrappers(model):
        model = wrapper.module
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


def fusable_output_layer(model):
    """The decoder's output projection (an nn.Linear) when the fused output layer computes exactly what the
    logits path would, else None: fairseq's Transformer (an encoder-decoder TransformerModelBase whose forward
    and get_targets are fairseq's) whose decoder is fairseq's TransformerDecoder(Base) with fairseq's forward and
    output_layer, a plain nn.Linear projection (shared embeddings included), no adaptive softmax, the plain
    log-softmax normalization (:func:`normalizes_with_plain_log_softmax`); and no wrapper that hides
    parameters (fully sharded data parallel) or checks their use in forward (DDP's find_unused_parameters)."""
    for wrapper in model_wrappers(model):
        if "FullySharded" in type(wrapper).__name__ or getattr(wrapper, "find_unused_parameters", False):
            return None
    inner = unwrap_model(model)
    decoder = getattr(inner, "decoder", None)
    projection = getattr(decoder, "output_projection", None)
    if not (isinstance(inner, TransformerModelBase) and type(inner).forward is TransformerModelBase.forward
            and type(inner).get_targets is BaseFairseqModel.get_targets
            and isinstance(decoder, TransformerDecoderBase)
            and type(decoder).forward is TransformerDecoderBase.forward
            and type(decoder).output_layer is TransformerDecoderBase.output_layer
            and type(projection) is torch.nn.Linear and normalizes_with_plain_log_softmax(inner)):
        return None
    return projection


SMOOTHING_CONVENTION_OPTIONS = ("auto", *EF.SMOOTHING_CONVENTIONS)  # auto: the installed fairseq's
FUSE_OUTPUT_LAYER_OPTIONS = ("auto", "off")


@dataclass
class LabelSmoothedEncouragingLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    """fairseq's label_smoothed_cross_entropy options (--label-smoothing, --report-accuracy,
    --ignore-prefix-size, sentence_avg) and EL's own.

    EL's numbers and choices are typed ``Any`` for omegaconf: a fairseq-hydra-train YAML value that is not a
    number (``log_end: true``, ``"abc"``) or not one of the choices (``el_fuse_output_layer: on``) then reaches the
    criterion's own check and stops the run with its one-line message, as a value out of range does, instead of
    omegaconf's validation traceback. On the command line :meth:`LabelSmoothedEncouragingLossCriterion.add_args`
    gives them their checked number types and their choices."""

    label_smoothing: Any = field(
        default=0.0, metadata={"help": "epsilon for label smoothing, in [0, 1); 0 means no label smoothing"},
    )
    log_end: Any = field(
        default=None,
        metadata={"help": "where the log bonus log(1-p) turns into its tangent, in (0, 1]: 1 is the normal "
                          "bonus, < 1 the conservative one (default 0.75; the paper used 0.5 for translation); "
                          "the other bonuses have no tail"},
    )
    bonus_weight: Any = field(
        default=1.0, metadata={"help": "weight rho of the bonus, >= 0; 0 gives label_smoothed_cross_entropy"}
    )
    bonus: Any = field(
        default="log", metadata={"help": "the bonus b(p): log (log(1-p), the paper's), power (-p^gamma), cosine "
                                         "(cos(pi p) - 1)"},
    )
    bonus_gamma: Any = field(default=None, metadata={"help": "the exponent gamma > 0 of --bonus power"})
    bonus_start: Any = field(
        default=0.0, metadata={"help": "the aggressive bonus (log, power): 0 below this p in [0, 1), b(p) - b(s) "
                                       "from it; 0: none"},
    )
    bonus_smoothing: Any = field(
        default=None, metadata={"help": "label smoothing of the bonus term, in [0, 1) (the authors' el_lb); "
                                        "default: --label-smoothing"},
    )
    bonus_schedule: Any = field(
        default="constant", metadata={"help": "warm-up of the bonus weight: constant, linear, exp, cos (the "
                                              "authors' el_schedule), over --bonus-schedule-horizon units"},
    )
    bonus_schedule_horizon: Any = field(
        default=None, metadata={"help": "epochs (or updates) over which the weight warms up to rho"})
    bonus_schedule_unit: Any = field(default="epoch", metadata={"help": "epoch (from 1) or update (from 0)"})
    bonus_schedule_exp_ratio: Any = field(
        default=None, metadata={"help": "r of --bonus-schedule exp, not 0 (default 5): exp((t/T - 1) r), or "
                                        "1 - exp(t/T r) for r < 0"})
    bonus_defer: Any = field(
        default=0, metadata={"help": "the first N epochs (or updates) train with the bonus off (the authors' "
                                     "defer_start)"})
    smoothing_convention: Any = field(
        default="auto",
        metadata={"help": "how smoothing spreads epsilon: 'fairseq' = eps/(V-1) off the target (fairseq >= 0.12), "
                          "'paper' = eps/V on every class (fairseq 0.10, timm, the paper's reference code); "
                          "'auto' (default): the installed fairseq's own convention"},
    )
    el_implementation: Any = field(
        default="auto",
        metadata={"help": "'fused': loss and gradient in one pass over the decoder's logits, no fp32 (tokens x "
                          "vocab) intermediates (less memory); 'reference': plain autograd on fairseq's "
                          "log-probabilities, with --bonus-weight 0 bit-for-bit label_smoothed_cross_entropy; "
                          "'auto' (default): fused, except for float64 on a GPU"},
    )
    el_fuse_output_layer: Any = field(
        default="auto",
        metadata={"help": "'auto' (default): on fairseq's Transformer the decoder's output layer is fused into the "
                          "loss (features and the output projection in, no whole (tokens x vocab) logits or "
                          "gradient), unless --el-implementation reference; other models, adaptive softmax and "
                          "overridden output layers take the logits; 'off': always the decoder's logits"},
    )


FLAGS = {"label_smoothing": "--label-smoothing", "log_end": "--log-end", "bonus_weight": "--bonus-weight",
         "bonus": "--bonus", "bonus_gamma": "--bonus-gamma", "bonus_start": "--bonus-start",
         "bonus_smoothing": "--bonus-smoothing", "schedule": "--bonus-schedule", "horizon": "--bonus-schedule-horizon",
         "unit": "--bonus-schedule-unit", "exp_ratio": "--bonus-schedule-exp-ratio", "defer": "--bonus-defer"}
"""The flag of each setting, for the checks' messages."""


_integer_from_0 = functools.partial(checks.check_integer, low=0)
_integer_from_1 = functools.partial(checks.check_integer, low=1)
CHECKED_OPTIONS = {"label_smoothing": ("--label-smoothing", checks.check_label_smoothing),
                   "log_end": ("--log-end", checks.check_log_end),
                   "bonus_weight": ("--bonus-weight", checks.check_bonus_weight),
                   "bonus_gamma": ("--bonus-gamma", checks.check_positive),
                   "bonus_start": ("--bonus-start", checks.check_bonus_start),
                   "bonus_smoothing": ("--bonus-smoothing", checks.check_label_smoothing),
                   "bonus_schedule_horizon": ("--bonus-schedule-horizon", _integer_from_1),
                   "bonus_schedule_exp_ratio": ("--bonus-schedule-exp-ratio", checks.check_nonzero),
                   "bonus_defer": ("--bonus-defer", _integer_from_0)}
CHOICE_OPTIONS = {"smoothing_convention": ("--smoothing-convention", SMOOTHING_CONVENTION_OPTIONS),
                  "el_implementation": ("--el-implementation", EF.IMPLEMENTATIONS),
                  "el_fuse_output_layer": ("--el-fuse-output-layer", FUSE_OUTPUT_LAYER_OPTIONS),
                  "bonus": ("--bonus", BONUSES), "bonus_schedule": ("--bonus-schedule", SCHEDULES),
                  "bonus_schedule_unit": ("--bonus-schedule-unit", SCHEDULE_UNITS)}


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


def follow_training_time(task, criterion) -> None:
    """Have fairseq's own per-epoch and per-update hooks of ``task`` tell ``criterion`` the training time: the
    trainer calls ``task.begin_epoch(epoch, model)`` at each epoch's start (and with the resumed epoch after a
    resume) and ``task.train_step(..., update_num)`` with the updates done so far (restored from a checkpoint too);
    fairseq calls no hook of a criterion itself. Wraps those two methods of this task object only, once."""
    begin_epoch, train_step = task.begin_epoch, task.train_step
    begin_epoch_signature, train_step_signature = inspect.signature(begin_epoch), inspect.signature(train_step)

    @functools.wraps(begin_epoch)
    def begin_epoch_and_tell(*args, **kwargs):
        criterion.set_epoch(begin_epoch_signature.bind(*args, **kwargs).arguments["epoch"])
        return begin_epoch(*args, **kwargs)

    @functools.wraps(train_step)
    def train_step_and_tell(*args, **kwargs):
        criterion.set_num_updates(train_step_signature.bind(*args, **kwargs).arguments["update_num"])
        return train_step(*args, **kwargs)

    task.begin_epoch, task.train_step = begin_epoch_and_tell, train_step_and_tell


@register_criterion(CRITERION_NAME, dataclass=LabelSmoothedEncouragingLossConfig)
class LabelSmoothedEncouragingLossCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label_smoothed_cross_entropy with EL's loss in ``compute_loss``, its own ``forward`` (the output
    layer fused into the loss where it computes the same, see the module docstring) and EL's logged terms (bonus,
    bonus_weight, p_target, past_log_end, all summable across workers); ``compute_accuracy`` and fairseq's
    metrics are fairseq's."""

    FLAG_NAMES = FLAGS  # how the checks' messages name each setting (a subclass with other flags has its own)

    def __init__(self, task, sentence_avg, label_smoothing, log_end=None, bonus_weight=1.0, bonus="log",
                 bonus_gamma=None, bonus_start=0.0, bonus_smoothing=None, bonus_schedule="constant",
                 bonus_schedule_horizon=None, bonus_schedule_unit="epoch", bonus_schedule_exp_ratio=None,
                 bonus_defer=0, smoothing_convention="auto", el_implementation="auto", el_fuse_output_layer="auto",
                 ignore_prefix_size=0, report_accuracy=False):
        if ignore_prefix_size < 0:
            raise ValueError(f"--ignore-prefix-size must be >= 0, got {ignore_prefix_size}")
        super().__init__(task, sentence_avg, checks.check_label_smoothing(label_smoothing, "--label-smoothing"),
                         ignore_prefix_size=ignore_prefix_size, report_accuracy=report_accuracy)
        convention, self.implementation, self.fuse_output_layer = (
            checks.check_choice(value, CHOICE_OPTIONS[dest][1], CHOICE_OPTIONS[dest][0]) for dest, value in (
                ("smoothing_convention", smoothing_convention), ("el_implementation", el_implementation),
                ("el_fuse_output_layer", el_fuse_output_layer)))
        self.smoothing_convention = installed_fairseq_smoothing_convention() if convention == "auto" else convention
        names = self.FLAG_NAMES
        self.bonus = checks.bonus_spec(bonus, bonus_gamma, bonus_start, log_end, names=names)
        self.log_end = self.bonus.log_end
        self.bonus_weight = checks.check_bonus_weight(bonus_weight, names["bonus_weight"])
        self.bonus_smoothing = checks.check_bonus_smoothing(bonus_smoothing, self.eps, names["bonus_smoothing"])
        self.schedule = checks.schedule_spec(bonus_schedule, bonus_schedule_horizon, bonus_defer,
                                             bonus_schedule_exp_ratio, bonus_schedule_unit, names=names)
        self.schedule_time = {"epoch": 1, "update": 0}  # fairseq numbers epochs from 1
        if not self.schedule.is_constant:
            follow_training_time(task, self)

    def set_epoch(self, epoch: int) -> None:
        """The epoch being trained (from 1), for the bonus weight's schedule (fairseq's task.begin_epoch)."""
        self.schedule_time["epoch"] = epoch

    def set_num_updates(self, num_updates: int) -> None:
        """The updates done so far, for the bonus weight's schedule (the update number of task.train_step)."""
        self.schedule_time["update"] = num_updates

    def current_bonus_weight(self) -> float:
        """rho times the schedule's factor now: at the epoch being trained (from 1), or the update being made (the
        updates done so far + 1)."""
        t = self.schedule_time["epoch"] if self.schedule.unit == "epoch" else self.schedule_time["update"] + 1
        return self.bonus_weight * self.schedule.factor(t)

    @classmethod
    def add_args(cls, parser):
        """fairseq's flags from the config dataclass, with the range checks as their argparse types."""
        super().add_args(parser)
        for action in parser._actions:
            if action.dest in CHECKED_OPTIONS:
                action.type = checked_number(*CHECKED_OPTIONS[action.dest])
            elif action.dest in CHOICE_OPTIONS:
                action.type, action.choices = str, CHOICE_OPTIONS[action.dest][1]

    @classmethod
    def build_criterion(cls, cfg, task):
        """A bad value or combination stops the program with its message as the last line, as a bad flag does,
        not a traceback: one that reached the config without the command line (fairseq-hydra-train's YAML), or a
        combination of flags (``--bonus-start`` with ``--log-end`` < 1)."""
        try:
            return super().build_criterion(cfg, task)
        except ValueError as exc:
            raise SystemExit(f"{cls.criterion_name()}: error: {exc}") from None

    @classmethod
    def criterion_name(cls) -> str:
        return CRITERION_NAME

    def fused_output_layer(self, model):
        """The output projection the loss takes in (:func:`fusable_output_layer`) when the output layer is
        fused into it for this model, else None (the logits path)."""
        if self.fuse_output_layer == "off" or self.implementation == "reference":
            return None
        return fusable_output_layer(model)

    def forward(self, model, sample, reduce=True):
        """fairseq's (loss, sample_size, logging_output), with EL's terms added to the logging output; with the
        output layer fused in (:meth:`fused_output_layer`), the same values from the decoder's features."""
        output_layer = self.fused_output_layer(model)
        if output_layer is None:
            net_output = model(**sample["net_input"])
            scores, target, are_log_probs = self.get_logits_and_target(model, net_output, sample)
            out = self.compute_terms(scores, target, reduce=reduce, input_is_log_probs=are_log_probs)
        else:
            features, extra = model(**sample["net_input"], features_only=True)
            target = model.get_targets(sample, (features, extra))
            if self.ignore_prefix_size > 0:
                features, target = features[:, self.ignore_prefix_size:, :], target[:, self.ignore_prefix_size:]
            target = target.reshape(-1)
            out = EF.linear_encouraging_loss_with_stats(
                features.reshape(-1, features.size(-1)), output_layer.weight, target, linear_bias=output_layer.bias,
                **self.loss_settings(), reduction="sum" if reduce else "none", implementation=self.implementation)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {"loss": out.loss.data, "nll_loss": out.nll_loss.data, "ntokens": sample["ntokens"],
                          "nsentences": sample["target"].size(0), "sample_size": sample_size,
                          **self.el_logging(out, target)}
        if self.report_accuracy:
            if output_layer is None:
                n_correct, total = self.compute_accuracy(model, net_output, sample)
            else:
                n_correct, total = out.correct.sum(), target.ne(self.padding_idx).sum()
            logging_output["n_correct"] = utils.item(n_correct.data)
            logging_output["total"] = utils.item(total.data)
        return out.loss, sample_size, logging_output

    def el_logging(self, out, target):
        """EL's own logging outputs (sums): the bonus, p_target, the tokens past log_end, the tokens scored
        (those p_target and past_log_end are averaged over: not the --ignore-prefix-size prefix, not padding), and
        the bonus weight in use (summed with a count of one, so its mean over workers and steps is logged)."""
        return {"el_bonus": out.bonus.data, "p_target": out.target_prob.data, "n_past_log_end": out.past_log_end.data,
                "el_tokens": target.ne(self.padding_idx).sum().data, "el_bonus_weight": self.current_bonus_weight(),
                "el_steps": 1}

    def loss_settings(self):
        """This criterion's EL settings now (the bonus weight as the schedule has it), as the keyword arguments of
        el_plugins.functional's losses."""
        return dict(log_end=self.bonus.log_end, label_smoothing=self.eps, bonus_weight=self.current_bonus_weight(),
                    bonus=self.bonus.kind, bonus_gamma=self.bonus.gamma if self.bonus.kind == "power" else None,
                    bonus_start=self.bonus.start, bonus_smoothing=self.bonus_smoothing, ignore_index=self.padding_idx,
                    smoothing_convention=self.smoothing_convention)

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
            scores, target, **self.loss_settings(), reduction="sum" if reduce else "none",
            input_is_log_probs=input_is_log_probs, implementation=self.implementation)

    def compute_loss(self, model, net_output, sample, reduce=True):
        """(loss, nll_loss) of a decoder's output, the interface of fairseq's label_smoothed_cross_entropy (for
        callers of it; :meth:`forward` takes EL's logged terms from :meth:`compute_terms` itself)."""
        scores, target, are_log_probs = self.get_logits_and_target(model, net_output, sample)
        out = self.compute_terms(scores, target, reduce=reduce, input_is_log_probs=are_log_probs)
        return out.loss, out.nll_loss

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """fairseq's metrics, plus bonus (bits per sample_size unit, like loss), bonus_weight (the schedule's rho)
        and p_target and past_log_end (per scored target token: padding and an --ignore-prefix-size prefix
        excluded)."""
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size, scored, steps = total("sample_size"), total("el_tokens"), total("el_steps")
        if sample_size > 0:
            metrics.log_scalar("bonus", total("el_bonus") / sample_size / math.log(2), sample_size, round=3)
        if steps > 0:
            metrics.log_scalar("bonus_weight", total("el_bonus_weight") / steps, steps, round=4)
        if scored > 0:
            metrics.log_scalar("p_target", total("p_target") / scored, scored, round=3)
            metrics.log_scalar("past_log_end", total("n_past_log_end") / scored, scored, round=3)
