"""el_plugins.hf: EL in Hugging Face Transformers, with tiny models built from configs (no download, no hub).

The patched model's loss is checked against the reference EL on the unpatched model's logits (causal and seq2seq,
smoothing on and off, ignored labels, num_items_in_batch), its gradients against the unpatched path's in float64,
and with bonus_weight 0 against the model's own cross-entropy (which fixes the alignment of labels and logits
independently of this file's reference). Trainer and Seq2SeqTrainer run both routes with gradient accumulation,
bfloat16 autocast, a LoRA model, and two processes under accelerate launch.
"""
import copy
import json
import logging
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from el_plugins import functional as EF  # noqa: E402
from el_plugins import hf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 128
PAD, START = 1, 2  # seq2seq pad and decoder start ids
LOG_END = 0.75

DECODER = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
SEQ2SEQ = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
               pad_token_id=PAD, decoder_start_token_id=START, bos_token_id=0, eos_token_id=START, dropout=0.0,
               attention_dropout=0.0, activation_dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: one intra-op thread (on a busy 2-core machine, a second thread makes each small
    operation wait for the other core, 0.03 s tests take seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t5(**extra):
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
        pad_token_id=PAD, decoder_start_token_id=START, eos_token_id=START, **extra))


BUILDERS = {  # name: (kind, builder); dropout 0 everywhere, so training mode is deterministic
    "llama": ("causal", lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**DECODER))),
    "mistral": ("causal", lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**DECODER))),
    "qwen2-tied": ("causal", lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**DECODER, tie_word_embeddings=True))),
    "qwen3": ("causal", lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**DECODER, head_dim=8))),
    "gemma2-no-softcap": ("causal", lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **DECODER, head_dim=8, final_logit_softcapping=None))),
    "gpt2": ("causal", lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0))),
    "bart": ("seq2seq", lambda: transformers.BartForConditionalGeneration(transformers.BartConfig(**SEQ2SEQ))),
    "marian": ("seq2seq", lambda: transformers.MarianMTModel(transformers.MarianConfig(**SEQ2SEQ))),
    "t5-tied": ("seq2seq", lambda: _t5()),  # lm_head(hidden * d_model ** -0.5)
    "t5-untied": ("seq2seq", lambda: _t5(tie_word_embeddings=False)),
}


def build(name, dtype=torch.float64, seed=0):
    kind, builder = BUILDERS[name]
    torch.manual_seed(seed)
    model = builder().to(dtype)
    bias = getattr(model, "final_logits_bias", None)
    if bias is not None:  # BART, Marian: a bias that matters (it is zeros when built)
        with torch.no_grad():
            bias.normal_(0.0, 1.0)
    return kind, model.train()


def make_batch(kind, batch=3, length=9, seed=1):
    """Input ids, and labels with -100 on a different number of trailing positions per row (padding)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (batch, length), generator=gen)
    labels = input_ids.clone() if kind == "causal" else torch.randint(3, V, (batch, length - 2), generator=gen)
    for row in range(batch):
        labels[row, labels.size(1) - row:] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, labels


def reference_el(model, kind, batch, labels, *, label_smoothing, num_items_in_batch=None, bonus_weight=1.0):
    """The reference EL (autograd, the paper's smoothing) of the unpatched model's logits, and the logits."""
    inputs = dict(batch)
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(**inputs).logits
    target = F.pad(labels, (0, 1), value=-100)[..., 1:] if kind == "causal" else labels
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = EF.encouraging_loss(logits.reshape(-1, logits.size(-1)), target.reshape(-1), log_end=LOG_END,
                               label_smoothing=label_smoothing, bonus_weight=bonus_weight, ignore_index=-100,
                               reduction=reduction, smoothing_convention="paper", implementation="reference")
    return (loss if num_items_in_batch is None else loss / num_items_in_batch), logits


def fused_op_in_graph(loss):
    """Whether el-plugins' fused output layer + EL op is in the loss's autograd graph."""
    todo, seen = [loss.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "FusedLinearEncouragingLoss" in type(node).__name__:
            return True
        todo.extend(next_node for next_node, _ in node.next_functions)
    return False


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(got, want, tol=1e-10):
    assert got.keys() == want.keys() and got
    worst = max((got[k] - want[k]).abs().max().item() for k in got)
    assert worst <= tol, f"largest gradient difference {worst}"


# --------------------------------------------------------------------------- apply_encouraging_loss: the values
@pytest.mark.parametrize("num_items_in_batch", [None, 37])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_fused_loss_and_gradients_are_the_reference_el_of_the_logits(name, label_smoothing, num_items_in_batch):
    kind, model = build(name)
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, log_end=LOG_END, label_smoothing=label_smoothing)
    batch, labels = make_batch(kind)
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    out = model(**batch, labels=labels, **extra)
    assert out.logits is None and "logits" not in out  # the output layer was fused in
    assert fused_op_in_graph(out.loss)
    want, _ = reference_el(unpatched, kind, batch, labels, label_smoothing=label_smoothing,
                           num_items_in_batch=num_items_in_batch)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    want.backward()
    assert_same_grads(grads(model), grads(unpatched))


@pytest.mark.parametrize("member", [dict(bonus="power", bonus_gamma=2.0, bonus_start=0.3, log_end=None),
                                    dict(bonus="cosine", bonus_smoothing=0.0, log_end=None),
                                    dict(bonus="log", log_end=1.0, bonus_start=0.5, bonus_smoothing=0.2)],
                         ids=["power-start", "cosine-unsmoothed", "log-aggressive"])
@pytest.mark.parametrize("name", ["llama", "t5-tied"])
def test_the_bonus_family_passes_through_both_entry_points(name, member):
    """Issue 25: a member other than the default, through apply_encouraging_loss (fused) and encouraging_loss_func
    (logits), equals el_plugins.functional's reference EL with the same settings, loss and gradients."""
    kind, model = build(name)
    unpatched, logits_model = copy.deepcopy(model), copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1, **member)
    batch, labels = make_batch(kind)
    out = model(**batch, labels=labels)
    assert fused_op_in_graph(out.loss)
    inputs = dict(batch)
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = unpatched.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = unpatched(**inputs).logits
    target = F.pad(labels, (0, 1), value=-100)[..., 1:] if kind == "causal" else labels
    want = EF.encouraging_loss(logits.reshape(-1, logits.size(-1)), target.reshape(-1), label_smoothing=0.1,
                               ignore_index=-100, smoothing_convention="paper", implementation="reference", **member)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    want.backward()
    assert_same_grads(grads(model), grads(unpatched))
    func = hf.encouraging_loss_func(label_smoothing=0.1, **member)
    outputs = logits_model(**inputs)
    torch.testing.assert_close(func(outputs, labels), want.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bonus_weight_zero_is_the_models_own_cross_entropy(name):
    """EL with rho = 0 and no smoothing is cross-entropy: the patched loss is then the model's own loss, so the
    labels are shifted (causal) and the decoder inputs made (seq2seq) exactly as the model does."""
    kind, model = build(name)
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, bonus_weight=0.0)
    batch, labels = make_batch(kind)
    out = model(**batch, labels=labels)
    assert out.logits is None
    own = unpatched(**batch, labels=labels).loss  # (causal LMs compute it in float32)
    torch.testing.assert_close(out.loss, own.to(out.loss.dtype), rtol=1e-6, atol=1e-6)
    assert abs(out.loss.item() - hf.apply_encouraging_loss(copy.deepcopy(unpatched))(
        **batch, labels=labels).loss.item()) > 1e-4  # the bonus changes it (this test can tell)


@pytest.mark.parametrize("name", ["llama", "bart", "t5-tied"])
def test_evaluation_mode_and_fuse_off_take_the_logits(name):
    """model.eval() (Trainer's evaluation, compute_metrics) and fuse_output_layer='off' keep .logits, and the loss
    is the same EL."""
    kind, model = build(name)
    unpatched = copy.deepcopy(model)
    batch, labels = make_batch(kind)
    want, logits = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    out = model.eval()(**batch, labels=labels)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    hf.apply_encouraging_loss(model.train(), label_smoothing=0.1, fuse_output_layer="off")
    out = model(**batch, labels=labels)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["llama", "gpt2", "marian", "t5-tied"])
def test_without_labels_the_model_is_unchanged(name):
    """Calls without labels run the model's own forward: the same logits and cache, tuples with return_dict=False,
    and generate() makes the same tokens."""
    kind, model = build(name, dtype=torch.float32)
    unpatched = copy.deepcopy(model).eval()
    hf.apply_encouraging_loss(model.eval(), label_smoothing=0.1)
    batch, labels = make_batch(kind)
    if kind == "seq2seq":
        batch["decoder_input_ids"] = unpatched.prepare_decoder_input_ids_from_labels(labels=labels)
    got, want = model(**batch), unpatched(**batch)
    assert got.keys() == want.keys() and "loss" not in got
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    got_tuple = model(**batch, return_dict=False)
    assert isinstance(got_tuple, tuple)
    torch.testing.assert_close(got_tuple[0], want.logits, rtol=0, atol=0)
    prompt = {"input_ids": batch["input_ids"][:1, :4]}
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=PAD)
    assert torch.equal(model.generate(**prompt, **options), unpatched.generate(**prompt, **options))


def test_return_dict_false_gives_a_tuple_with_the_loss_first():
    kind, model = build("llama")
    hf.apply_encouraging_loss(model)
    batch, labels = make_batch(kind)
    out = model(**batch, labels=labels)
    as_tuple = model(**batch, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss, rtol=0, atol=0)


def test_labels_passed_by_position_are_found():
    kind, model = build("bart")
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, bonus_weight=0.0)
    batch, labels = make_batch(kind)
    # BartForConditionalGeneration.forward(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
    # encoder_outputs, cache, inputs_embeds, decoder_inputs_embeds, labels, ...)
    out = model(batch["input_ids"], batch["attention_mask"], None, None, None, None, None, None, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, unpatched(**batch, labels=labels).loss, rtol=1e-12, atol=1e-12)


def test_causal_shift_labels_from_a_collator_are_used_as_given():
    """A collator's shift_labels (padding-free batches) replace the shifted labels, as in Transformers' own loss."""
    kind, model = build("llama")
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, bonus_weight=0.0)
    batch, labels = make_batch(kind)
    shift_labels = torch.randint(3, V, labels.shape)
    shift_labels[:, -1] = -100
    got = model(**batch, labels=labels, shift_labels=shift_labels).loss
    own = unpatched(**batch, labels=labels, shift_labels=shift_labels).loss
    torch.testing.assert_close(got, own.to(got.dtype), rtol=1e-6, atol=1e-6)
    assert abs(got.item() - model(**batch, labels=labels).loss.item()) > 1e-3


def test_remove_encouraging_loss_restores_the_models_own_loss():
    kind, model = build("llama")
    unpatched = copy.deepcopy(model)
    batch, labels = make_batch(kind)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    assert model(**batch, labels=labels).logits is None
    hf.remove_encouraging_loss(model)
    assert "forward" not in vars(model)
    torch.testing.assert_close(model(**batch, labels=labels).loss, unpatched(**batch, labels=labels).loss,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="no EL from apply_encouraging_loss to remove"):
        hf.remove_encouraging_loss(model)
    hf.apply_encouraging_loss(model)
    model.forward = lambda *args, **kwargs: None  # wrapped again by something else
    with pytest.raises(ValueError, match="wrapped again after apply_encouraging_loss"):
        hf.remove_encouraging_loss(model)


def test_applying_again_replaces_the_settings():
    kind, model = build("llama")
    unpatched = copy.deepcopy(model)
    batch, labels = make_batch(kind)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    hf.apply_encouraging_loss(model, label_smoothing=0.0, bonus_weight=0.0)
    torch.testing.assert_close(model(**batch, labels=labels).loss, unpatched(**batch, labels=labels).loss.double(),
                               rtol=1e-6, atol=1e-6)


def test_a_deep_copy_of_a_patched_model_is_patched_itself():
    kind, model = build("llama")
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
    batch, labels = make_batch(kind)
    assert twin(**batch, labels=labels).logits is None
    assert abs(twin(**batch, labels=labels).loss.item() - model(**batch, labels=labels).loss.item()) > 1e-3


# --------------------------------------------------------------------------- what is not fused
def test_unknown_architecture_takes_the_logits_path_and_says_so(caplog):
    """Cohere (not in ARCHITECTURES; it also scales its logits after the output layer) gets EL through its
    loss_function, from its own (scaled) logits."""
    torch.manual_seed(0)
    model = transformers.CohereForCausalLM(transformers.CohereConfig(**DECODER, logit_scale=0.25)).double().train()
    unpatched = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        hf.apply_encouraging_loss(model, label_smoothing=0.1)
    assert "CohereForCausalLM is not one of the architectures" in caplog.text and "logits path" in caplog.text
    batch, labels = make_batch("causal")
    out = model(**batch, labels=labels, num_items_in_batch=11)
    want, logits = reference_el(unpatched, "causal", batch, labels, label_smoothing=0.1, num_items_in_batch=11)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    want.backward()
    assert_same_grads(grads(model), grads(unpatched))


def test_unknown_architecture_that_computes_its_loss_itself_is_an_error_not_cross_entropy(caplog):
    torch.manual_seed(0)
    model = transformers.PegasusForConditionalGeneration(transformers.PegasusConfig(**SEQ2SEQ)).train()
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        hf.apply_encouraging_loss(model)
    assert "PegasusForConditionalGeneration is not one of the architectures" in caplog.text
    batch, labels = make_batch("seq2seq")
    with pytest.raises(RuntimeError, match="did not call model.loss_function"):
        model(**batch, labels=labels)
    assert model(**batch, decoder_input_ids=labels.clamp(min=0)).loss is None  # without labels: unchanged


def test_a_model_that_is_not_a_language_model_is_refused():
    torch.manual_seed(0)
    model = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**DECODER, num_labels=3))
    with pytest.raises(ValueError, match="not a language-model loss EL can take the place of"):
        hf.apply_encouraging_loss(model)
    assert "forward" not in vars(model)


def test_gemma2_softcap_is_not_fused_and_its_softcapped_logits_are_used(caplog):
    """Gemma 2 with final_logit_softcapping: the fused loss cannot reproduce cap * tanh(z / cap), so the model takes
    the logits path (the log says why) and EL is that of the softcapped logits, which differ from the projection."""
    torch.manual_seed(0)
    config = transformers.Gemma2Config(**DECODER, head_dim=8, final_logit_softcapping=0.5)
    model = transformers.Gemma2ForCausalLM(config).double().train()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # logits of a few units, which the cap squeezes into (-0.5, 0.5)
    unpatched = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        hf.apply_encouraging_loss(model, label_smoothing=0.1)
    assert "final_logit_softcapping=0.5" in caplog.text and "not fused" in caplog.text
    batch, labels = make_batch("causal")
    out = model(**batch, labels=labels)
    want, logits = reference_el(unpatched, "causal", batch, labels, label_smoothing=0.1)
    assert out.logits is not None and logits.abs().max() <= 0.5
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    unpatched.config.final_logit_softcapping = None  # the plain projection's EL is another objective
    plain, _ = reference_el(unpatched, "causal", batch, labels, label_smoothing=0.1)
    assert abs(plain.item() - out.loss.item()) > 0.1
    model.config.final_logit_softcapping = None  # read per call: now the output layer is fused in
    out = model(**batch, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, plain, rtol=1e-12, atol=1e-12)


def test_another_major_version_of_transformers_is_not_fused(caplog, monkeypatch):
    """The forwards of ARCHITECTURES were read in Transformers 5: with another major version the logits path."""
    monkeypatch.setattr(hf.patch, "READ_IN", (4,))
    kind, model = build("t5-tied")
    unpatched = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        hf.apply_encouraging_loss(model, label_smoothing=0.1)
    assert f"Transformers {transformers.__version__}: el-plugins read these architectures' forwards in " \
           f"Transformers 4.x" in caplog.text
    batch, labels = make_batch(kind)
    out = model(**batch, labels=labels)
    want, logits = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


def test_an_output_layer_with_a_hook_is_not_fused(caplog):
    kind, model = build("llama")
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    batch, labels = make_batch(kind)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        out = model(**batch, labels=labels)
    assert seen and out.logits is not None and "forward hooks" in caplog.text
    want, _ = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


def test_hidden_states_of_another_dtype_than_the_output_layer_take_the_logits(caplog):
    """bfloat16 layers with a float32 lm_head under autocast (the forward's lm_head then multiplies in bfloat16): the
    fused op takes one dtype, so the call computes the logits as the forward would, and the log says why."""
    kind, model = build("llama", dtype=torch.bfloat16)
    model.lm_head.float()
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    batch, labels = make_batch(kind)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, labels=labels)
        want, logits = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    assert "input is torch.bfloat16 but lm_head.weight torch.float32" in caplog.text
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("options, message", [
    (dict(fuse_output_layer="on"), "fuse_output_layer must be one of 'auto', 'off'"),
    (dict(label_smoothing=1.5), r"label_smoothing must be in \[0, 1\)"),
    (dict(log_end=0.0), r"log_end must be in \(0, 1\]"),
    (dict(bonus_weight=-1.0), "bonus_weight must be a finite number >= 0"),
    (dict(ignore_index=None), "ignore_index must be an int"),
    (dict(implementation="fast"), "implementation must be one of 'auto', 'fused', 'reference'"),
])
def test_bad_settings_are_refused_before_anything_is_changed(options, message):
    kind, model = build("llama")
    with pytest.raises(ValueError, match=message):
        hf.apply_encouraging_loss(model, **options)
    assert "forward" not in vars(model) and hf.patch.PATCH_ATTRIBUTE not in vars(model)
    func_options = {k: v for k, v in options.items() if k != "fuse_output_layer"}
    if func_options:
        with pytest.raises(ValueError, match=message):
            hf.encouraging_loss_func(**func_options)


def test_bad_models_and_calls_are_refused():
    with pytest.raises(ValueError, match="model must be a Transformers PreTrainedModel"):
        hf.apply_encouraging_loss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="shift_labels must be one of 'auto', True"):
        hf.encouraging_loss_func(shift_labels="yes")
    kind, model = build("llama")
    hf.apply_encouraging_loss(model)
    batch, labels = make_batch(kind)
    with pytest.raises(ValueError, match="num_items_in_batch must be a number > 0"):
        model(**batch, labels=labels, num_items_in_batch=0)
    with pytest.raises(ValueError, match="labels give 27 targets but the model predicted 3 positions"):
        model(**batch, labels=labels, logits_to_keep=1)
    bad = labels.clone()
    bad[0, 0] = V + 5
    with pytest.raises(ValueError, match=f"target {V + 5} is outside the {V} classes"):
        model(**batch, labels=torch.roll(bad, -1, dims=1))


def test_the_settings_of_both_entry_points_are_elsettings_fields():
    """The EL settings are one set (ELSettings, passed to el_plugins.functional in one place): both entry points take
    exactly its fields, with its defaults, so a setting added there must be added to both."""
    import dataclasses
    import inspect

    fields = {f.name: f.default for f in dataclasses.fields(hf.ELSettings)}
    for function, own in ((hf.encouraging_loss_func, {"shift_labels"}),
                          (hf.apply_encouraging_loss, {"model", "fuse_output_layer"})):
        params = inspect.signature(function).parameters
        assert {n: p.default for n, p in params.items() if n not in own} == fields, function.__name__
    assert set(hf.ELSettings().loss_kwargs()) == set(fields) | {"smoothing_convention"}


# --------------------------------------------------------------------------- encouraging_loss_func
@pytest.mark.parametrize("shift_labels", ["auto", "explicit"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "bart", "t5-tied"])
def test_compute_loss_func_is_the_reference_el_of_the_logits(name, shift_labels):
    kind, model = build(name)
    batch, labels = make_batch(kind)
    if kind == "seq2seq":
        batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    shift = "auto" if shift_labels == "auto" else kind == "causal"
    func = hf.encouraging_loss_func(label_smoothing=0.1, shift_labels=shift)
    outputs = model(**batch)
    for n in (None, 23, torch.tensor(23.0)):
        got = func(outputs, labels, num_items_in_batch=n)
        want, _ = reference_el(model, kind, batch, labels, label_smoothing=0.1,
                               num_items_in_batch=None if n is None else 23)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_compute_loss_func_refuses_what_it_cannot_read():
    kind, model = build("llama")
    batch, labels = make_batch(kind)
    outputs = model(**batch)
    func = hf.encouraging_loss_func()
    with pytest.raises(ValueError, match="needs the batch's labels"):
        func(outputs, None)
    with pytest.raises(ValueError, match="needs the model's logits"):
        func(model(**batch, return_dict=False), labels)
    masked = transformers.modeling_outputs.MaskedLMOutput(logits=outputs.logits)
    with pytest.raises(ValueError, match="pass shift_labels=True .* or shift_labels=False"):
        func(masked, labels)
    torch.testing.assert_close(hf.encouraging_loss_func(shift_labels=True)(masked, labels), func(outputs, labels))


# --------------------------------------------------------------------------- PEFT / LoRA
def test_lora_model_fused_loss_and_adapter_gradients():
    peft = pytest.importorskip("peft")
    kind, base = build("llama")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                             init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    batch, labels = make_batch(kind)
    out = model(**batch, labels=labels)
    assert out.logits is None
    want, _ = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    out.loss.backward()
    want.backward()
    got = grads(model)
    assert got and all("lora_" in name for name in got)
    assert_same_grads(got, grads(unpatched))


def test_lora_on_the_output_layer_is_not_fused(caplog):
    peft = pytest.importorskip("peft")
    kind, base = build("llama")
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["lm_head", "q_proj"], lora_dropout=0.0,
                                                      init_lora_weights=False))
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    batch, labels = make_batch(kind)
    with caplog.at_level(logging.WARNING, logger="el_plugins.hf"):
        out = model(**batch, labels=labels)
    assert out.logits is not None and "not a plain torch.nn.Linear" in caplog.text
    want, _ = reference_el(unpatched, kind, batch, labels, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- Trainer
class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def dataset(kind, n=8, length=12, model=None, seed=3):
    """n rows; labels -100 on 0-5 trailing positions (unequal token counts, so a per-batch mean would differ from
    Transformers' sum / num_items_in_batch); seq2seq rows carry decoder_input_ids (compute_loss_func needs them)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        input_ids = torch.randint(3, V, (length,), generator=gen)
        labels = input_ids.clone() if kind == "causal" else torch.randint(3, V, (length - 3,), generator=gen)
        labels[labels.numel() - int(torch.randint(0, 6, (), generator=gen)):] = -100
        row = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
        if kind == "seq2seq":
            row["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels[None])[0]
        rows.append(row)
    return ListDataset(rows)


def train(name, route, tmp_path, *, batch_size=2, accumulation=2, bf16=False, steps=2, settings=None, model=None):
    """Trainer (Seq2SeqTrainer for seq2seq) for `steps` steps of SGD (its update is linear in the gradient, so equal
    gradients give equal parameters; Adam's first steps amplify rounding in tiny gradients); returns (the trained
    model, the logged losses)."""
    settings = dict(label_smoothing=0.1) if settings is None else settings
    kind = BUILDERS[name][0] if name in BUILDERS else "causal"
    if model is None:
        _, model = build(name, dtype=torch.float32)
    data = dataset(kind, model=model)
    if route == "apply":
        hf.apply_encouraging_loss(model, **settings)
    seq2seq = kind == "seq2seq"
    args_class = transformers.Seq2SeqTrainingArguments if seq2seq else transformers.TrainingArguments
    args = args_class(output_dir=str(tmp_path / f"{name}-{route}-{accumulation}"),
                      per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, max_steps=steps, optim="sgd", learning_rate=0.1, seed=0,
                      logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=bf16,
                      dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0)
    trainer_class = transformers.Seq2SeqTrainer if seq2seq else transformers.Trainer
    func = hf.encouraging_loss_func(**settings) if route == "compute_loss_func" else None
    trainer = trainer_class(model=model, args=args, train_dataset=data, compute_loss_func=func)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps and all(torch.isfinite(torch.tensor(losses)))
    return model, losses


def params(model):
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def assert_same_params(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest parameter difference {worst}"


def assert_trained(model, name):
    _, fresh = build(name, dtype=torch.float32)
    before, after = params(fresh), params(model)
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "bart"])
def test_trainer_both_routes_train_the_same_model(name, tmp_path):
    """Two Trainer steps with gradient accumulation (2 x 2 rows): apply_encouraging_loss (fused) and
    compute_loss_func (logits) give the same parameters, and so do 1 x 4 rows without accumulation (the loss is the
    sum over the accumulated batch's tokens / num_items_in_batch, not a mean of per-batch means)."""
    applied, applied_losses = train(name, "apply", tmp_path)
    func, func_losses = train(name, "compute_loss_func", tmp_path)
    assert_trained(applied, name)
    assert_same_params(params(applied), params(func), atol=1e-6)
    torch.testing.assert_close(torch.tensor(applied_losses), torch.tensor(func_losses), rtol=1e-5, atol=1e-5)
    whole, _ = train(name, "apply", tmp_path, batch_size=4, accumulation=1)
    assert_same_params(params(applied), params(whole), atol=1e-6)


@pytest.mark.slow
def test_trainer_with_bonus_weight_zero_trains_as_transformers_own_loss(tmp_path):
    """rho = 0, eps = 0: EL is cross-entropy, and with gradient accumulation Trainer then trains the patched
    Llama exactly as it trains the unpatched one with Transformers' own loss."""
    plain = dict(label_smoothing=0.0, bonus_weight=0.0)
    applied, losses = train("llama", "apply", tmp_path, settings=plain)
    own, own_losses = train("llama", "own", tmp_path, settings=plain)
    assert_same_params(params(applied), params(own), atol=1e-6)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(own_losses), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["apply", "compute_loss_func"])
@pytest.mark.parametrize("name", ["llama", "t5-tied"])
def test_trainer_bf16_autocast_trains(name, route, tmp_path):
    """bf16=True (autocast on the CPU): two steps train, and the first loss is the float32 one to bfloat16's
    precision."""
    model, losses = train(name, route, tmp_path, bf16=True)
    assert_trained(model, name)
    _, float32_losses = train(name, route, tmp_path / "fp32", bf16=False, steps=1)
    assert abs(losses[0] - float32_losses[0]) <= 0.02 * abs(float32_losses[0])


@pytest.mark.slow
def test_trainer_evaluate_gets_the_logits_and_the_el_loss(tmp_path):
    """Trainer.evaluate runs the model in evaluation mode: compute_metrics gets the logits, eval_loss is EL's."""
    kind, model = build("llama", dtype=torch.float32)
    data = dataset(kind, n=4, model=model)
    unpatched = copy.deepcopy(model)
    hf.apply_encouraging_loss(model, label_smoothing=0.1)
    shapes = []

    def metrics(prediction):
        shapes.append(prediction.predictions.shape)
        return {"seen": 1.0}

    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to=[],
                                          use_cpu=True, disable_tqdm=True)
    result = transformers.Trainer(model=model, args=args, eval_dataset=data, compute_metrics=metrics).evaluate()
    assert shapes == [(4, 12, V)] and result["eval_seen"] == 1.0
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    labels = batch.pop("labels")
    with torch.no_grad():
        want, _ = reference_el(unpatched.eval(), kind, batch, labels, label_smoothing=0.1)
    assert abs(result["eval_loss"] - want.item()) < 1e-5


@pytest.mark.slow
def test_trainer_with_a_lora_model(tmp_path):
    peft = pytest.importorskip("peft")
    _, base = build("llama", dtype=torch.float32)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_B" in k}
    model, losses = train("llama", "apply", tmp_path, model=model)
    assert max((model.state_dict()[k] - v).abs().max().item() for k, v in before.items()) > 1e-4


# --------------------------------------------------------------------------- accelerate launch, 2 processes
WORKER = r'''
import json, os, sys
import torch, transformers
from el_plugins import hf

out, batch_size = sys.argv[1], int(sys.argv[2])
paths = []  # which path each training step's loss took: 'hidden' (output layer fused in) or 'logits'
rows_loss = hf.patch.rows_loss
hf.patch.rows_loss = lambda *a, **kw: paths.append("hidden" if "hidden" in kw else "logits") or rows_loss(*a, **kw)
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
model = hf.apply_encouraging_loss(transformers.LlamaForCausalLM(config), label_smoothing=0.1)
gen = torch.Generator().manual_seed(3)
rows = []
for i in range(4):
    ids = torch.randint(3, 96, (12,), generator=gen)
    labels = ids.clone()
    labels[12 - i:] = -100
    rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
args = transformers.TrainingArguments(output_dir=out + ".run", per_device_train_batch_size=batch_size, max_steps=2,
                                      optim="sgd", learning_rate=0.1, seed=0, save_strategy="no", report_to=[], use_cpu=True,
                                      logging_steps=1, disable_tqdm=True, lr_scheduler_type="constant")
trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
trainer.train()
with open(f"{out}.paths{trainer.args.process_index}", "w") as f:
    json.dump(paths, f)
if trainer.is_world_process_zero():
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    with open(out, "w") as f:
        json.dump({"world_size": trainer.args.world_size, "state": state}, f)
'''


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.e2e
def test_accelerate_launch_two_cpu_processes_trains_as_one(tmp_path):
    """accelerate launch, 2 processes (gloo): each step's 4 rows split 2 + 2 give the parameters of one process with
    the 4 rows (every step sees all 4 rows, so the order does not matter): the token counts are summed over the
    ranks (num_items_in_batch) before DDP averages the gradients."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
                          str(script), str(tmp_path / "two.json"), "2"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.json"), "4"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    paths = {name: json.loads((tmp_path / name).read_text()) for name in ("two.json.paths0", "two.json.paths1",
                                                                            "one.json.paths0")}
    assert all(p == ["hidden", "hidden"] for p in paths.values()), paths  # every rank's steps fused, DDP too
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    a = {k: torch.tensor(v) for k, v in two["state"].items()}
    b = {k: torch.tensor(v) for k, v in one["state"].items()}
    assert_same_params(a, b, atol=1e-6)


# --------------------------------------------------------------------------- the benchmark and docs/hf.md
def _benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("transformers_benchmark",
                                                  os.path.join(REPO, "benchmarks", "transformers_benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOT_MEASURED = "not measured yet"


def test_docs_hf_memory_section_is_the_committed_results_file():
    """docs/hf.md's memory section is the benchmark's table of benchmarks/results-transformers-cpu.json (a full
    run); while that file is not committed, it says the figures are not measured yet and shows none."""
    bench = _benchmark()
    with open(os.path.join(REPO, "docs", "hf.md"), encoding="utf-8") as f:
        section = f.read().split("## Memory and time", 1)[1].split("\n## ", 1)[0]
    path = os.path.join(REPO, bench.RESULTS_FILE)
    if not os.path.isfile(path):
        assert NOT_MEASURED in section and "| float32 |" not in section and "| bfloat16 |" not in section
        return
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    assert not results["settings"]["quick"] and results["settings"]["tokens"] == list(bench.FULL_TOKENS)
    assert {r["v"] for r in results["results"]} == set(bench.FULL_VOCABS)
    assert bench.markdown_table(results) in section and NOT_MEASURED not in section


def test_benchmark_goals_say_met_or_missed_per_row():
    bench = _benchmark()

    def row(variant, dtype, v, time_ratio, mem_ratio):
        return dict(device="cpu", dtype=dtype, v=v, tokens=[2, 1024], variant=variant, time_s=0.1, peak_mib=10.0,
                    time_ratio=time_ratio, mem_ratio=mem_ratio)

    rows = [row("el_fused", "float32", 32000, 0.9, 0.19), row("el_fused", "bfloat16", 128000, 1.2, 0.05),
            row("hf_ce", "float32", 32000, 1.0, 1.0)]
    assert bench.goals(rows).splitlines()[2:] == [
        "- extra peak memory at most 0.2x Transformers' own loss: met on all 2 rows, 0.05-0.19x",
        "- time at most Transformers' own loss: missed on 1 of 2 rows: bfloat16 V=128000 1.20x"]
    table = bench.markdown_table({"results": rows, "versions": {"torch": "t", "transformers": "x"}})
    assert "| float32 | 32000 | 2x1024 | **EL, output layer fused in** | 100.0 | 10.0 | **0.90** | **0.19** |" in table


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.e2e
def test_benchmark_quick_run_writes_its_results(tmp_path):
    """The benchmark's smoke run (one V, float32): every variant measured, the fused one without logits, the results
    file written with its versions and commit, and its table rendered."""
    out = tmp_path / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "transformers_benchmark.py"), "--quick",
                           "--vocabs", "1000", "--dtypes", "float32", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["settings"]["quick"] and results["versions"]["transformers"] == transformers.__version__
    assert "git_commit" in results["produced_by"]
    rows = {r["variant"]: r for r in results["results"]}
    assert set(rows) == {"hf_ce", "el_fused", "el_logits"} and not any("error" in r for r in rows.values())
    assert all(r["time_s"] > 0 and r["peak_mib"] is not None for r in rows.values())
    assert rows["hf_ce"]["time_ratio"] == 1.0 and rows["el_fused"]["mem_ratio"] is not None
    # the three variants train the same model: EL (fused or not) is not cross-entropy, and the two EL agree
    assert abs(rows["el_fused"]["loss"] - rows["el_logits"]["loss"]) < 1e-4
    assert abs(rows["el_fused"]["loss"] - rows["hf_ce"]["loss"]) > 1e-3
    assert "**EL, output layer fused in**" in _benchmark().markdown_table(results)
