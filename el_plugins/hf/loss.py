"""EL for Hugging Face Transformers on the model's logits: the settings both entry points share, the loss of a
batch of language-model predictions, and :func:`encouraging_loss_func` for ``Trainer(compute_loss_func=...)``.

Transformers' conventions, followed here:

- labels equal to ``ignore_index`` (-100, what Transformers' collators pad with) count nothing;
- a causal LM predicts token t + 1 at position t: the labels are shifted left by one inside the loss, the last
  position gets ``ignore_index`` (as ``transformers.loss.loss_utils.ForCausalLMLoss``); a ``shift_labels``
  tensor, when a collator gives one, is used as it is; seq2seq labels align with the decoder's logits as given;
- the loss is the sum over the tokens divided by ``num_items_in_batch`` when Trainer gives it (the tokens of the
  whole accumulated batch, so gradient accumulation gives the loss of one large batch), else the mean over
  the tokens not ignored (a batch with none gives 0);
- label smoothing is Trainer's ``label_smoothing_factor`` convention: eps / V on every class, the target
  1 - eps + eps / V (el-plugins' ``smoothing_convention='paper'``).

The math is :mod:`el_plugins.functional`; this module only arranges the rows.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Optional, Union

import torch
import torch.nn.functional as F

from el_plugins import checks
from el_plugins import functional as EF

__all__ = ["ELSettings", "EncouragingLossFunc", "encouraging_loss_func", "SHIFT_LABELS_OPTIONS", "IGNORE_INDEX"]

IGNORE_INDEX = -100
"""The label Transformers' data collators pad with, and its losses ignore."""

SHIFT_LABELS_OPTIONS = ("auto", True, False)
""":func:`encouraging_loss_func`'s ``shift_labels``: ``True`` for a causal LM (labels shifted left inside the loss),
``False`` for seq2seq or masked LMs (labels aligned with the logits), ``'auto'``: from the class of the model's
outputs (see :func:`encouraging_loss_func`)."""


@dataclasses.dataclass(frozen=True)
class ELSettings:
    """The EL settings both entry points pass to :mod:`el_plugins.functional`, checked once, in one place.

    log_end: where the log bonus log(1 - p) turns into its tangent, in (0, 1] (1: the normal bonus; None: 0.75 for
        the log bonus; the other members have no tail).
    label_smoothing: eps in [0, 1), spread as Trainer's ``label_smoothing_factor`` (eps / V on every class).
    bonus_weight: rho >= 0 (0: label-smoothed cross-entropy).
    bonus, bonus_gamma, bonus_start, bonus_smoothing: the member of the bonus family ('log', 'power' with gamma > 0,
        'cosine'), its aggressive start, the bonus term's own smoothing (None: eps); see docs/math.md.
    ignore_index: the label value that counts nothing (an int; Transformers uses -100).
    implementation: how el_plugins.functional computes EL: 'auto', 'fused', 'reference'
        (el_plugins.functional.IMPLEMENTATIONS).
    """

    log_end: Optional[float] = None
    label_smoothing: float = 0.0
    bonus_weight: float = 1.0
    bonus: str = "log"
    bonus_gamma: Optional[float] = None
    bonus_start: float = 0.0
    bonus_smoothing: Optional[float] = None
    ignore_index: int = IGNORE_INDEX
    implementation: str = "auto"

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: store the checked (normalized) values
        spec = checks.bonus_spec(self.bonus, self.bonus_gamma, self.bonus_start, self.log_end)
        set_(self, "log_end", spec.log_end)
        set_(self, "bonus_start", spec.start)
        set_(self, "bonus_gamma", spec.gamma if spec.kind == "power" else None)
        set_(self, "label_smoothing", checks.check_label_smoothing(self.label_smoothing))
        set_(self, "bonus_weight", checks.check_bonus_weight(self.bonus_weight))
        if self.bonus_smoothing is not None:
            set_(self, "bonus_smoothing", checks.check_label_smoothing(self.bonus_smoothing, "bonus_smoothing"))
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, numbers.Integral):
            raise ValueError(f"ignore_index must be an int (the label value that counts nothing; Transformers' "
                             f"collators pad labels with -100), got {self.ignore_index!r}")
        set_(self, "ignore_index", int(self.ignore_index))
        checks.check_choice(self.implementation, EF.IMPLEMENTATIONS, "implementation")

    def loss_kwargs(self) -> dict:
        """The keyword arguments of el_plugins.functional's class-index losses for these settings (the paper's
        smoothing, which is Transformers' label_smoothing_factor convention)."""
        return dict(log_end=self.log_end, label_smoothing=self.label_smoothing, bonus_weight=self.bonus_weight,
                    bonus=self.bonus, bonus_gamma=self.bonus_gamma, bonus_start=self.bonus_start,
                    bonus_smoothing=self.bonus_smoothing, ignore_index=self.ignore_index,
                    smoothing_convention="paper", implementation=self.implementation)


def check_num_items_in_batch(num_items_in_batch):
    """None, a number > 0 or a one-element tensor (Trainer's count of the accumulated batch's tokens)."""
    if num_items_in_batch is None:
        return None
    if isinstance(num_items_in_batch, torch.Tensor):
        if num_items_in_batch.numel() != 1 or num_items_in_batch.dtype == torch.bool:
            raise ValueError(f"num_items_in_batch must be a number or a one-element tensor (the tokens of the whole "
                             f"accumulated batch), got a tensor of shape {tuple(num_items_in_batch.shape)} and dtype "
                             f"{num_items_in_batch.dtype}")
        return num_items_in_batch
    value = checks.real_number(num_items_in_batch)
    if value is None or not value > 0:
        raise ValueError(f"num_items_in_batch must be a number > 0 or a one-element tensor (the tokens of the whole "
                         f"accumulated batch), or None, got {num_items_in_batch!r}")
    return num_items_in_batch


def lm_targets(labels: torch.Tensor, shift: bool, ignore_index: int,
               shift_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (N,) targets of a batch's N predicted positions: ``shift_labels`` flattened when given (a causal LM's
    collator made them), else ``labels`` shifted left by one with ``ignore_index`` at the end (``shift``: a causal LM),
    else ``labels`` flattened."""
    if shift_labels is not None:
        return shift_labels.reshape(-1)
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a tensor of token ids (ignore_index={ignore_index} where nothing is "
                         f"predicted), got {type(labels).__name__}")
    if shift:
        labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    return labels.reshape(-1)


def rows_loss(settings: ELSettings, target: torch.Tensor, num_items_in_batch=None, *,
              logits: Optional[torch.Tensor] = None, hidden: Optional[torch.Tensor] = None,
              weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """EL of N predictions against ``target`` (N,): from ``logits`` (..., V), or with the output layer fused in
    from ``hidden`` (..., d), ``weight`` (V, d) and ``bias`` (V,) or None; summed and divided by
    ``num_items_in_batch`` when given, else the mean over the targets not ignored."""
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    rows = (logits if logits is not None else hidden)
    rows = rows.reshape(-1, rows.size(-1))
    if rows.size(0) != target.numel():
        raise ValueError(f"the labels give {target.numel()} targets but the model predicted {rows.size(0)} positions "
                         f"(labels and logits must cover the same tokens; a causal LM's logits_to_keep must keep "
                         f"every position when labels are given)")
    target = target.to(rows.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    if logits is not None:
        loss = EF.encouraging_loss(rows, target, reduction=reduction, **settings.loss_kwargs())
    else:
        loss = EF.linear_encouraging_loss(rows, weight, target, linear_bias=bias, reduction=reduction,
                                          **settings.loss_kwargs())
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _outputs_shift(outputs) -> bool:
    """shift_labels='auto': True for Transformers' causal-LM outputs, False for its seq2seq-LM outputs (by class)."""
    from transformers import modeling_outputs as mo

    if isinstance(outputs, mo.Seq2SeqLMOutput):
        return False
    if isinstance(outputs, (mo.CausalLMOutput, mo.CausalLMOutputWithPast, mo.CausalLMOutputWithCrossAttentions)):
        return True
    raise ValueError(
        f"shift_labels='auto' reads the alignment of labels and logits from the class of the model's outputs: "
        f"CausalLMOutput, CausalLMOutputWithPast, CausalLMOutputWithCrossAttentions (shifted) or Seq2SeqLMOutput (not "
        f"shifted); this model returned {type(outputs).__name__}: pass shift_labels=True (a causal LM: position t "
        f"predicts label t + 1) or shift_labels=False (labels aligned with the logits) to encouraging_loss_func")


class EncouragingLossFunc:
    """EL for ``Trainer(compute_loss_func=...)``: ``loss_func(outputs, labels, num_items_in_batch=None)`` with the
    model's outputs (their ``logits``), the batch's labels (Trainer takes them out of the batch before the
    forward) and Trainer's count of the accumulated batch's tokens. Made by :func:`encouraging_loss_func`."""

    def __init__(self, settings: ELSettings, shift_labels: Union[str, bool] = "auto"):
        if not isinstance(settings, ELSettings):
            raise ValueError(f"settings must be an el_plugins.hf.ELSettings, got {type(settings).__name__}")
        if not (shift_labels is True or shift_labels is False
                or isinstance(shift_labels, str) and shift_labels == "auto"):
            raise ValueError(f"shift_labels must be one of 'auto', True (a causal LM: position t predicts label "
                             f"t + 1), False (labels aligned with the logits: seq2seq, masked LM), "
                             f"got {shift_labels!r}")
        self.settings = settings
        self.shift_labels = shift_labels

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        if labels is None:
            raise ValueError("encouraging_loss_func needs the batch's labels, got None: the batch has no 'labels' "
                             "(Trainer passes them when the dataset or the collator gives them)")
        logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
        if not isinstance(logits, torch.Tensor):
            raise ValueError(
                f"encouraging_loss_func needs the model's logits, and its outputs ({type(outputs).__name__}) have "
                f"none: leave return_dict on, and for a model patched by apply_encouraging_loss note that it computes "
                f"no logits only when it is given labels, which Trainer does not do with compute_loss_func")
        shift = _outputs_shift(outputs) if self.shift_labels == "auto" else self.shift_labels
        target = lm_targets(labels, shift, self.settings.ignore_index)
        return rows_loss(self.settings, target, num_items_in_batch, logits=logits)

    def __repr__(self):
        s = self.settings
        return (f"EncouragingLossFunc(log_end={s.log_end}, label_smoothing={s.label_smoothing}, "
                f"bonus_weight={s.bonus_weight}, ignore_index={s.ignore_index}, implementation={s.implementation!r}, "
                f"shift_labels={self.shift_labels!r})")


def encouraging_loss_func(
    *,
    log_end: Optional[float] = None,
    label_smoothing: float = 0.0,
    bonus_weight: float = 1.0,
    bonus: str = "log",
    bonus_gamma: Optional[float] = None,
    bonus_start: float = 0.0,
    bonus_smoothing: Optional[float] = None,
    ignore_index: int = IGNORE_INDEX,
    implementation: str = "auto",
    shift_labels: Union[str, bool] = "auto",
) -> EncouragingLossFunc:
    """EL as ``Trainer(compute_loss_func=encouraging_loss_func(...))``, for causal and seq2seq language models.

    The returned callable takes ``(outputs, labels, num_items_in_batch=None)`` as Trainer gives them and returns
    the sum of EL over the tokens divided by ``num_items_in_batch`` (Trainer's count of the tokens of the whole
    accumulated batch, so that gradient accumulation gives the loss of one large batch, as Transformers' own
    loss does), or without it the mean over the tokens not ignored.

    log_end, label_smoothing, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, ignore_index,
        implementation: see :class:`ELSettings`
    (label_smoothing is Trainer's label_smoothing_factor convention: eps / V on every class; do not set
    Trainer's label_smoothing_factor as well: with compute_loss_func Trainer ignores it).
    shift_labels: True for a causal LM (position t predicts label t + 1; the labels are shifted inside, as
    Transformers' causal-LM loss does), False when labels align with the logits (seq2seq: BART, Marian, T5),
    'auto' (default): True for outputs of the classes CausalLMOutput, CausalLMOutputWithPast,
    CausalLMOutputWithCrossAttentions, False for Seq2SeqLMOutput, a ValueError for any other class.

    With compute_loss_func Trainer removes the labels from the batch before the forward, so a seq2seq model gets no
    decoder inputs made from them: the batch must carry ``decoder_input_ids`` (DataCollatorForSeq2Seq(tokenizer,
    model=model) adds them), as with Trainer's own label smoothing.
    """
    settings = ELSettings(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight, bonus=bonus,
                          bonus_gamma=bonus_gamma, bonus_start=bonus_start, bonus_smoothing=bonus_smoothing,
                          ignore_index=ignore_index, implementation=implementation)
    return EncouragingLossFunc(settings, shift_labels)
