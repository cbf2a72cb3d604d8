"""``apply_encouraging_loss(model)``: a Transformers model whose ``model(..., labels=...)`` returns EL as ``.loss``.

Two paths, chosen per call:

- **output layer fused in**: for the architectures of :data:`ARCHITECTURES`, given labels in training mode
  (``model.train()``, as Trainer's training steps run), the model's own forward runs with its ``lm_head`` set
  aside: what would enter ``lm_head`` (the decoder's last hidden states, after anything the model does to them
  first, such as T5's scaling by d_model ** -0.5) goes with ``lm_head.weight`` (and its bias, and the bias some
  models add to the logits, Marian's and BART's ``final_logits_bias``) to
  :func:`el_plugins.functional.linear_encouraging_loss`, which never holds the (tokens x vocabulary) logits.
  The output has no ``.logits``.
- **logits**: otherwise (evaluation mode, ``fuse_output_layer='off'``, a model whose logits the fused loss
  cannot reproduce, an output layer that is not a plain ``torch.nn.Linear``, another architecture) the model
  computes its logits as it always does and EL is computed from them; ``.logits`` is there.

Without labels nothing changes: the model's own forward runs untouched (generation, inference).

Fusion is decided by the model's exact class (a subclass may change what its forward does with the logits and is
not fused) and, per call, its config and output layer, never by the names of its modules. An architecture
outside :data:`ARCHITECTURES` takes the logits path through ``model.loss_function`` (its language-model loss is
replaced by EL, with the same alignment of labels and logits), and the log says so; a labelled call that never
reaches that function (a model that computes its loss inline) raises an error instead of returning its
cross-entropy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import types
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn

from el_plugins.hf.loss import IGNORE_INDEX, ELSettings, lm_targets, rows_loss

__all__ = ["ARCHITECTURES", "Architecture", "FUSE_OUTPUT_LAYER_OPTIONS", "READ_IN", "apply_encouraging_loss",
           "remove_encouraging_loss", "fused_architectures"]

logger = logging.getLogger("el_plugins.hf")

FUSE_OUTPUT_LAYER_OPTIONS = ("auto", "off")
"""``auto``: the output layer fused into EL where :data:`ARCHITECTURES` says it computes exactly the model's logits
(training mode, labels given), the logits elsewhere; ``off``: always the logits."""


def _gemma2_logits(config) -> Optional[str]:
    """Gemma 2 softcaps its logits after lm_head (cap * tanh(logits / cap)) unless final_logit_softcapping is None;
    the fused loss takes the plain projection only."""
    missing = object()
    cap = getattr(config, "final_logit_softcapping", missing)
    if cap is missing:
        return "its config has no final_logit_softcapping, so whether its logits are softcapped is unknown"
    if cap is not None:
        return (f"final_logit_softcapping={cap}: its logits are softcapped after the output layer "
                f"(cap * tanh(logits / cap)), which the fused loss does not compute")
    return None


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model class whose forward el-plugins has read: what it does between its decoder's last hidden states
    and the logits it returns, so that the fused loss computes exactly EL of those logits.

    module, class_name: ``transformers.models.<module>.modeling_<module>.<class_name>``.
    kind: 'causal' (labels shifted inside the loss) or 'seq2seq' (labels aligned with the decoder's positions;
        the decoder's inputs made from them by the model's prepare_decoder_input_ids_from_labels when not given).
    output_bias: the name of a buffer the forward adds to lm_head's output (None: nothing is added).
    labels_disable_cache: the forward sets use_cache=False when it is given labels.
    logits_differ: config -> why the logits are more than the projection (+ output_bias) for this config (the fused
        loss is then refused), or None when they are not.
    """

    module: str
    class_name: str
    kind: str
    output_bias: Optional[str] = None
    labels_disable_cache: bool = False
    logits_differ: Optional[Callable[[object], Optional[str]]] = None

    def model_class(self) -> Optional[type]:
        """The class in the installed Transformers (None when it has no such model)."""
        try:
            module = importlib.import_module(f"transformers.models.{self.module}.modeling_{self.module}")
        except ImportError:
            return None
        return getattr(module, self.class_name, None)


READ_IN = (5,)
"""The major versions of Transformers whose forwards :data:`ARCHITECTURES` describes (read in 5.0 and 5.25); with
another, the output layer is not fused (the logits path, and the log says why)."""


def _unread_transformers() -> Optional[str]:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major in READ_IN:
        return None
    return (f"Transformers {transformers.__version__}: el-plugins read these architectures' forwards in Transformers "
            f"{', '.join(f'{m}.x' for m in READ_IN)}")


ARCHITECTURES: Tuple[Architecture, ...] = (
    Architecture("llama", "LlamaForCausalLM", "causal"),
    Architecture("mistral", "MistralForCausalLM", "causal"),
    Architecture("qwen2", "Qwen2ForCausalLM", "causal"),
    Architecture("qwen3", "Qwen3ForCausalLM", "causal"),
    Architecture("gemma2", "Gemma2ForCausalLM", "causal", logits_differ=_gemma2_logits),
    Architecture("gpt2", "GPT2LMHeadModel", "causal"),
    Architecture("bart", "BartForConditionalGeneration", "seq2seq", output_bias="final_logits_bias",
                 labels_disable_cache=True),
    Architecture("marian", "MarianMTModel", "seq2seq", output_bias="final_logits_bias", labels_disable_cache=True),
    Architecture("t5", "T5ForConditionalGeneration", "seq2seq"),
)
"""The model classes whose output layer is fused into EL (their forward read for Transformers 5.0 and 5.25: the
logits are lm_head(hidden states), plus output_bias, and for Gemma 2 the softcap its config may ask for)."""


def fused_architectures() -> Tuple[str, ...]:
    """The names of the classes of :data:`ARCHITECTURES` the installed Transformers has."""
    return tuple(a.class_name for a in ARCHITECTURES if a.model_class() is not None)


def _architecture(model) -> Optional[Architecture]:
    for arch in ARCHITECTURES:
        if type(model) is arch.model_class():
            return arch
    return None


# --------------------------------------------------------------------------- the state of a patched model
PATCH_ATTRIBUTE = "_el_plugins_hf"


@dataclasses.dataclass
class _Patch:
    settings: ELSettings
    fuse_output_layer: str
    architecture: Optional[Architecture]
    signature: inspect.Signature  # of the class's forward: where the labels are in a call
    previous_forward: Optional[Callable]  # an instance-level forward the model had before (called in its place)
    loss_function: Optional["_LanguageModelLoss"] = None  # the logits path of other architectures
    previous_loss_function: object = None  # the model's own _loss_function attribute, if it had one
    warned: set = dataclasses.field(default_factory=set)


class _LanguageModelLoss:
    """EL in place of a model's own language-model loss (``model.loss_function``), with its alignment: Transformers'
    ForCausalLMLoss shifts the labels, ForMaskedLMLoss does not."""

    def __init__(self, settings: ELSettings, shift: bool, replaces: str):
        self.settings, self.shift, self.replaces = settings, shift, replaces
        self.calls = 0

    def __call__(self, logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=None,
                 shift_labels=None, **kwargs):
        self.calls += 1
        if ignore_index is not None and ignore_index != self.settings.ignore_index:
            raise ValueError(f"the model asked its loss to ignore label {ignore_index}, but EL was set up with "
                             f"ignore_index={self.settings.ignore_index}: pass ignore_index={ignore_index} to "
                             f"apply_encouraging_loss")
        if vocab_size is not None and logits.size(-1) != vocab_size:
            raise ValueError(f"the model's logits have {logits.size(-1)} classes but it gives vocab_size={vocab_size}")
        target = lm_targets(labels, self.shift, self.settings.ignore_index, shift_labels if self.shift else None)
        return rows_loss(self.settings, target, num_items_in_batch, logits=logits)

    def __repr__(self):
        return f"EL in place of {self.replaces} ({self.settings})"


# --------------------------------------------------------------------------- applying and removing
def apply_encouraging_loss(
    model,
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
    fuse_output_layer: str = "auto",
):
    """Make ``model(..., labels=...)`` return EL as ``.loss`` (in place; returns ``model``).

    model: a Transformers ``PreTrainedModel`` language model, or a PEFT model around one (its base model is
        patched). Apply it before Trainer, accelerate or DDP wrap the model. Applying it again replaces the settings.
    log_end, label_smoothing, bonus_weight, bonus, bonus_gamma, bonus_start, bonus_smoothing, ignore_index,
        implementation: see :class:`el_plugins.hf.ELSettings`
        (label_smoothing as Trainer's label_smoothing_factor: eps / V on every class; do not also set Trainer's
        label_smoothing_factor, which takes the labels away from the model and computes its own cross-entropy).
    fuse_output_layer: 'auto' (default): for the classes of :data:`ARCHITECTURES`, given labels in training mode,
        the output layer is fused into EL (no ``.logits`` in the output), when the config's logits are the plain
        projection and ``lm_head`` is a plain torch.nn.Linear; otherwise the model's logits. 'off': the logits.

    The loss is the sum over the tokens divided by the ``num_items_in_batch`` Trainer passes (gradient
    accumulation then gives the loss of one large batch), or the mean over the tokens not ignored. Causal LMs
    shift their labels inside the loss as Transformers does; seq2seq models make their decoder inputs from the
    labels when none are given, as they do themselves. Calls without labels run the model's forward untouched.
    """
    settings = ELSettings(log_end=log_end, label_smoothing=label_smoothing, bonus_weight=bonus_weight, bonus=bonus,
                          bonus_gamma=bonus_gamma, bonus_start=bonus_start, bonus_smoothing=bonus_smoothing,
                          ignore_index=ignore_index, implementation=implementation)
    if not isinstance(fuse_output_layer, str) or fuse_output_layer not in FUSE_OUTPUT_LAYER_OPTIONS:
        raise ValueError(f"fuse_output_layer must be one of {', '.join(map(repr, FUSE_OUTPUT_LAYER_OPTIONS))} ('auto': "
                         f"fused where the architecture allows it exactly, 'off': always the logits), got "
                         f"{fuse_output_layer!r}")
    target = _patch_target(model)
    if PATCH_ATTRIBUTE in vars(target):
        remove_encouraging_loss(target)
    arch = _architecture(target)
    cls_forward = type(target).forward
    patch = _Patch(settings, fuse_output_layer, arch, inspect.signature(cls_forward),
                   previous_forward=vars(target).get("forward"))
    name = type(target).__name__
    if arch is None:
        patch.loss_function, patch.previous_loss_function = _replace_loss_function(target, settings)
        say = logger.warning if fuse_output_layer == "auto" else logger.info
        say("el-plugins: %s is not one of the architectures whose output layer el-plugins fuses into EL (%s): it "
            "takes the logits path (the model computes its full logits and EL replaces its %s)",
            name, ", ".join(fused_architectures()), patch.loss_function.replaces)
    elif fuse_output_layer == "off":
        logger.info("el-plugins: %s: EL from the model's logits (fuse_output_layer='off')", name)
    else:
        differ = _unread_transformers() or (arch.logits_differ(target.config) if arch.logits_differ else None)
        if differ:
            patch.warned.add(differ)
            logger.warning("el-plugins: %s: the output layer is not fused into EL (%s); EL is computed from the "
                           "model's logits", name, differ)
        else:
            logger.info("el-plugins: %s: EL with the output layer fused in when given labels in training mode; "
                        "from the model's logits otherwise", name)

    @functools.wraps(cls_forward)  # the class's signature: Trainer and generate() read it
    def forward(self, *args, **kwargs):
        return _forward(self, args, kwargs)

    forward.el_plugins_hf = True
    setattr(target, PATCH_ATTRIBUTE, patch)
    target.forward = types.MethodType(forward, target)
    return model


def remove_encouraging_loss(model):
    """Undo :func:`apply_encouraging_loss` (in place; returns ``model``): the model's own forward and loss again."""
    target = _patch_target(model)
    patch = vars(target).get(PATCH_ATTRIBUTE)
    if patch is None:
        raise ValueError(f"{type(target).__name__} has no EL from apply_encouraging_loss to remove")
    if not getattr(getattr(vars(target).get("forward"), "__func__", None), "el_plugins_hf", False):
        raise ValueError(f"{type(target).__name__}.forward was wrapped again after apply_encouraging_loss (e.g. by "
                         f"accelerate's mixed precision): EL cannot be removed from under that wrapper")
    del target.__dict__[PATCH_ATTRIBUTE]
    if patch.previous_forward is None:
        del target.__dict__["forward"]
    else:
        target.forward = patch.previous_forward
    if patch.loss_function is not None:
        if patch.previous_loss_function is None:
            del target._loss_function
        else:
            target.loss_function = patch.previous_loss_function
    return model


def _patch_target(model):
    """The PreTrainedModel to patch: ``model`` itself or the base model of a PEFT model."""
    from transformers import PreTrainedModel

    try:
        from peft import PeftModel
    except ImportError:
        PeftModel = ()
    target = model.get_base_model() if PeftModel and isinstance(model, PeftModel) else model
    if not isinstance(target, PreTrainedModel):
        raise ValueError(f"model must be a Transformers PreTrainedModel (or a PEFT model around one), not yet "
                         f"wrapped by Trainer, accelerate or DDP; got {type(model).__name__}")
    return target


def _replace_loss_function(model, settings: ELSettings):
    """Put EL in place of the model's language-model loss; returns (the EL loss, the model's own _loss_function or
    None). Only Transformers' causal-LM and masked-LM losses are replaced: EL does not know another's alignment."""
    from transformers.loss.loss_utils import ForCausalLMLoss, ForMaskedLMLoss

    own = model.loss_function
    if own is ForCausalLMLoss:
        shift = True
    elif own is ForMaskedLMLoss:
        shift = False
    else:
        raise ValueError(
            f"{type(model).__name__} is not one of the architectures whose output layer el-plugins fuses "
            f"({', '.join(fused_architectures())}), and its loss_function is "
            f"{getattr(own, '__name__', type(own).__name__)}, not a language-model loss EL can take the place of "
            f"(ForCausalLMLoss, ForMaskedLMLoss); for a language model whose logits it returns, use "
            f"Trainer(compute_loss_func=el_plugins.hf.encouraging_loss_func(shift_labels=...))")
    previous = vars(model).get("_loss_function")
    loss = _LanguageModelLoss(settings, shift, own.__name__)
    model.loss_function = loss
    return loss, previous


# --------------------------------------------------------------------------- a patched call
def _forward(model, args, kwargs):
    patch: _Patch = vars(model)[PATCH_ATTRIBUTE]
    call = patch.previous_forward or functools.partial(type(model).forward, model)
    arguments = _keyword_arguments(patch.signature, model, args, kwargs)
    labels = arguments.get("labels")
    if labels is None:
        return call(*args, **kwargs)
    if patch.architecture is None:
        before = patch.loss_function.calls
        outputs = call(*args, **kwargs)
        if patch.loss_function.calls == before:
            raise RuntimeError(
                f"{type(model).__name__} was given labels but did not call model.loss_function, so its loss is not "
                f"EL (it computes its loss itself): el-plugins cannot put EL into this model's forward; use "
                f"Trainer(compute_loss_func=el_plugins.hf.encouraging_loss_func(...)) on its logits instead")
        return outputs
    return _known_forward(model, patch, call, arguments, labels)


def _keyword_arguments(signature: inspect.Signature, model, args, kwargs) -> dict:
    """The call's arguments by name (what ``**kwargs`` caught merged in), as the forward would bind them."""
    bound = signature.bind(model, *args, **kwargs)
    arguments = {}
    for name, value in list(bound.arguments.items())[1:]:  # [0]: self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"{type(model).__name__}.forward got extra positional arguments, which el-plugins "
                                 f"cannot name: pass them by keyword")
        else:
            arguments[name] = value
    return arguments


def _known_forward(model, patch: _Patch, call, arguments: dict, labels):
    arch = patch.architecture
    reason = _not_fused(model, patch)
    arguments["labels"] = None  # the model computes no loss of its own; EL is computed here
    if arch.kind == "seq2seq":  # what the forward itself does with labels
        if arguments.get("decoder_input_ids") is None and arguments.get("decoder_inputs_embeds") is None:
            arguments["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        if arch.labels_disable_cache:
            arguments["use_cache"] = False
    return_dict = arguments.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)
    arguments["return_dict"] = True
    causal = arch.kind == "causal"
    target = lm_targets(labels, causal, patch.settings.ignore_index,
                        arguments.get("shift_labels") if causal else None)
    num_items_in_batch = arguments.get("num_items_in_batch")
    if reason is None:
        with _lm_head_input(model, arch) as captured:
            outputs = call(**arguments)
        lm_head, hidden = captured
        bias = _output_layer_bias(model, arch, lm_head)
        mismatch = [f"{name} {t.dtype}" for name, t in (("lm_head.weight", lm_head.weight), ("its bias", bias))
                    if t is not None and t.dtype != hidden.dtype]
        if not mismatch:
            loss = rows_loss(patch.settings, target, num_items_in_batch, hidden=hidden, weight=lm_head.weight,
                             bias=bias)
            outputs = _with(outputs, loss=loss, logits=None)
            return outputs if return_dict else outputs.to_tuple()
        _warn_once(model, patch, f"the output layer's input is {hidden.dtype} but {', '.join(mismatch)}")
        logits = lm_head(hidden)  # what the forward computes from it
        if arch.output_bias:
            logits = logits + getattr(model, arch.output_bias).to(logits.device)
        outputs = _with(outputs, logits=logits)
    else:
        outputs = call(**arguments)
    loss = rows_loss(patch.settings, target, num_items_in_batch, logits=outputs.logits)
    outputs = _with(outputs, loss=loss)
    return outputs if return_dict else outputs.to_tuple()


def _not_fused(model, patch: _Patch) -> Optional[str]:
    """Why this call takes the logits path (None: the output layer is fused in)."""
    if patch.fuse_output_layer == "off":
        return "fuse_output_layer='off'"
    if not model.training:
        return "evaluation mode"
    arch = patch.architecture
    reason = _unread_transformers() or (arch.logits_differ(model.config) if arch.logits_differ else None)
    lm_head = model._modules.get("lm_head")
    if reason is None:
        reason = _plain_linear_problem(lm_head)
    if reason is None and arch.output_bias:
        bias = getattr(model, arch.output_bias, None)
        if not isinstance(bias, torch.Tensor) or bias.shape != (1, lm_head.out_features):
            reason = (f"its {arch.output_bias} is not a (1, {lm_head.out_features}) tensor: "
                      f"{getattr(bias, 'shape', type(bias).__name__)}")
    if reason is not None:
        _warn_once(model, patch, reason)
    return reason


def _plain_linear_problem(lm_head) -> Optional[str]:
    if type(lm_head) is not nn.Linear:
        return (f"its lm_head is a {type(lm_head).__module__}.{type(lm_head).__name__}, not a plain torch.nn.Linear "
                f"(an adapter such as LoRA, or another wrapper, on the output layer)")
    if lm_head._forward_hooks or lm_head._forward_pre_hooks or "forward" in vars(lm_head):
        return "its lm_head has forward hooks or its own forward (e.g. accelerate's device hooks)"
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return "global module forward hooks are registered"
    for name, tensor in (("weight", lm_head.weight), ("bias", lm_head.bias)):
        if tensor is not None and (type(tensor.data) is not torch.Tensor or tensor.device.type == "meta"):
            return (f"its lm_head.{name} is a {type(tensor.data).__name__} on {tensor.device} (sharded, offloaded or "
                    f"not materialized), not a plain tensor")
    return None


def _warn_once(model, patch: _Patch, reason: str) -> None:
    if reason in ("fuse_output_layer='off'", "evaluation mode") or reason in patch.warned:
        return
    patch.warned.add(reason)
    logger.warning("el-plugins: %s: the output layer is not fused into EL (%s); EL is computed from the model's "
                   "logits", type(model).__name__, reason)


class _Captured(nn.Module):
    """Stands in for lm_head during a fused call: keeps its input and returns it (no logits)."""

    def __init__(self):
        super().__init__()
        self.input = None

    def forward(self, hidden):
        self.input = hidden
        return hidden


@contextlib.contextmanager
def _lm_head_input(model, arch: Architecture):
    """Run the forward with lm_head set aside; yields [lm_head, its input] (filled in when the block ends). The
    output bias, if the architecture adds one after lm_head, is a zero for the call (the fused loss adds it)."""
    lm_head = model._modules["lm_head"]
    stand_in = _Captured()
    bias = model._buffers.get(arch.output_bias) if arch.output_bias else None
    captured = [lm_head, None]
    model._modules["lm_head"] = stand_in
    if bias is not None:
        model._buffers[arch.output_bias] = bias.new_zeros(())
    try:
        yield captured
    finally:
        model._modules["lm_head"] = lm_head
        if bias is not None:
            model._buffers[arch.output_bias] = bias
    if stand_in.input is None:
        raise RuntimeError(f"{type(model).__name__}.forward did not call lm_head: el-plugins' reading of this "
                           f"architecture does not hold for the installed Transformers; use fuse_output_layer='off'")
    captured[1] = stand_in.input


def _output_layer_bias(model, arch: Architecture, lm_head) -> Optional[torch.Tensor]:
    """lm_head's bias plus the bias the architecture adds to the logits (None when there is neither)."""
    bias = lm_head.bias
    if arch.output_bias:
        extra = getattr(model, arch.output_bias).reshape(-1)
        bias = extra if bias is None else bias + extra
    return bias


def _with(outputs, **changes):
    """A copy of a ModelOutput with fields changed (None: the field left out)."""
    fields = dict(outputs.items())
    fields.update(changes)
    return type(outputs)(**{name: value for name, value in fields.items() if value is not None})

