"""el_plugins.devices: the one --device of every command, and that models and batches go to it together.

No GPU is needed: torch's 'meta' device is a second device on any machine, so "moved" and "not moved"
differ here as they would between the CPU and a GPU.
"""
import argparse
import collections
import os

import pytest
import torch

from el_plugins.devices import (DEVICE_HELP, add_device_argument, move_to_device, prepare_model, resolve_device,
                                subprocess_env)

META = torch.device("meta")
HAS_CUDA = torch.cuda.is_available()


# --------------------------------------------------------------------------- resolve_device
def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu:0") == torch.device("cpu:0")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name, message", [
    ("bogus", "--device bogus: not a device name (use cpu, cuda or cuda:N)"),
    ("gpu", "--device gpu: not a device name (use cpu, cuda or cuda:N)"),
    ("cuda:x", "--device cuda:x: not a device name"),
    ("", "--device '': not a device name"),
    ("meta", "--device meta: el-plugins does not run on meta (use cpu, cuda or cuda:N)"),
])
def test_resolve_device_rejects_what_cannot_run(name, message):
    with pytest.raises(ValueError) as exc:
        resolve_device(name)
    assert str(exc.value).startswith(message), str(exc.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_cuda_without_cuda(name):
    with pytest.raises(ValueError) as exc:
        resolve_device(name)
    assert str(exc.value) == f"--device {name}: CUDA is not available here (use --device cpu)"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_resolve_device_cuda_index_cuda():
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(ValueError, match=rf"--device cuda:{n + 2}: only {n} CUDA device\(s\) here"):
        resolve_device(f"cuda:{n + 2}")


# --------------------------------------------------------------------------- add_device_argument
def _parser():
    ap = argparse.ArgumentParser(prog="tool")
    add_device_argument(ap)
    return ap


def test_device_argument_default_and_value():
    assert _parser().parse_args([]).device == torch.device("cpu")
    assert _parser().parse_args(["--device", "cpu"]).device == torch.device("cpu")
    (action,) = [a for a in _parser()._actions if a.dest == "device"]
    assert action.help == DEVICE_HELP and action.metavar == "DEVICE"


def test_device_argument_bad_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--device", "bogus"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        "tool: error: --device bogus: not a device name (use cpu, cuda or cuda:N)"
    # through an argument group of a parent parser, as el-analyze's sub-commands get it
    common = argparse.ArgumentParser(add_help=False)
    add_device_argument(common.add_argument_group("g"))
    ap = argparse.ArgumentParser(prog="top")
    sub = ap.add_subparsers(dest="mode", required=True).add_parser("x", parents=[common])
    assert ap.parse_args(["x"]).device == torch.device("cpu")
    with pytest.raises(SystemExit):
        ap.parse_args(["x", "--device", "meta"])
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{sub.prog}: error: --device meta: ")


# --------------------------------------------------------------------------- move_to_device, prepare_model
Pair = collections.namedtuple("Pair", "a b")


def _leaves(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _leaves(v)


def test_move_to_device_reaches_every_tensor_of_a_fairseq_sample():
    sample = {
        "id": torch.arange(3), "nsentences": 3, "ntokens": 12,
        "net_input": {"src_tokens": torch.ones(3, 5, dtype=torch.long), "src_lengths": torch.tensor([5, 4, 3]),
                      "prev_output_tokens": torch.ones(3, 4, dtype=torch.long)},
        "target": torch.ones(3, 4, dtype=torch.long),
        "extra": [torch.zeros(2), (torch.zeros(1, dtype=torch.half), "text", None), Pair(torch.zeros(1), 7)],
        "ordered": collections.OrderedDict(x=torch.zeros(1)), "default": collections.defaultdict(list, y=[torch.zeros(1)]),
    }
    moved = move_to_device(sample, META)
    leaves, before = list(_leaves(moved)), list(_leaves(sample))
    assert len(leaves) == len(before) == 10
    assert all(t.device == META for t in leaves)
    assert [(t.dtype, t.shape) for t in leaves] == [(t.dtype, t.shape) for t in before]
    assert all(t.device.type == "cpu" for t in before)  # the input is left as it was
    assert moved["nsentences"] == 3 and moved["extra"][1][1:] == ("text", None) and moved["extra"][2].b == 7
    assert type(moved["extra"]) is list and type(moved["extra"][1]) is tuple and type(moved["extra"][2]) is Pair
    assert type(moved["ordered"]) is collections.OrderedDict and moved["default"].default_factory is list
    assert move_to_device("text", META) == "text" and move_to_device(None, META) is None


def test_move_to_device_and_prepare_model_move_modules():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).double()
    assert move_to_device(model, META) is model
    assert {t.device for t in [*model.parameters(), *model.buffers()]} == {META}

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).half().train()
    assert prepare_model(model, META, dtype=torch.float32) is model and not model.training
    assert {t.device for t in [*model.parameters(), *model.buffers()]} == {META}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model[1].num_batches_tracked.dtype == torch.long  # integer buffers keep their dtype
    kept = torch.nn.Linear(2, 2).double()
    assert prepare_model(kept, "cpu").weight.dtype == torch.float64


def test_subprocess_env_narrows_cuda_visible_devices():
    assert subprocess_env("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,5"})["CUDA_VISIBLE_DEVICES"] == "5"
    assert subprocess_env("cuda:1", {})["CUDA_VISIBLE_DEVICES"] == "1"
    assert subprocess_env("cuda", {"CUDA_VISIBLE_DEVICES": "4,5"}) == {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert subprocess_env("cpu", {"A": "1"}) == {"A": "1"}
    assert subprocess_env("cpu")["PATH"] == os.environ["PATH"]


# --------------------------------------------------------------------------- the demo's model and batches
class _Stop(Exception):
    pass


@pytest.mark.e2e
def test_demo_translation_analysis_moves_the_averaged_model(toy_data_bin, tmp_path):
    """The demo's translation analysis (fairseq_eval.evaluate, el-analyze fairseq's loop too) runs the averaged
    checkpoint on ``device``: the model must go where the batches go (it used to stay on the CPU while the
    batches went to 'cuda')."""
    pytest.importorskip("fairseq")
    from el_plugins.analysis.fairseq_eval import evaluate, load
    from el_evidence.testing.programs import run_cli
    from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER
    from el_plugins.translation.average_checkpoints import average_checkpoints, save_atomic, select_checkpoints

    run_cli("fairseq-train", toy_data_bin, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.002",
            "--max-tokens", "2000", "--cpu", "--seed", "1", "--no-progress-bar", "--num-workers", "0",
            "--max-epoch", "2", "--label-smoothing", "0.1", "--disable-validation",
            "--criterion", "label_smoothed_encouraging_loss", "--save-dir", tmp_path / "ckpt")
    paths = select_checkpoints(str(tmp_path / "ckpt"), num_epoch=2)
    averaged = str(tmp_path / "average.pt")
    save_atomic(average_checkpoints(paths), averaged)

    # On 'meta' the forward cannot finish (fairseq reads values), so stop at the first embedding
    # lookup, after recording where the whole model and that batch are.
    seen = {}

    def hook(module, inputs):
        if getattr(module, "encoder", None) is not None and getattr(module, "decoder", None) is not None:
            seen["model"] = {t.device for t in [*module.parameters(), *module.buffers()]}
            seen["training"] = module.training
        elif isinstance(module, torch.nn.Embedding) and inputs:
            seen["embedding"], seen["tokens"] = module.weight.device, inputs[0].device
            raise _Stop

    model, task = load(averaged, str(toy_data_bin))
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with pytest.raises(_Stop):
            evaluate(model, task, "valid", META, progress=False)
    finally:
        handle.remove()
    assert seen == {"model": {META}, "training": False, "embedding": META, "tokens": META}

    model, task = load(averaged, str(toy_data_bin))  # and on the CPU the same code runs to the end
    model.half()
    skipped = []
    analysis = evaluate(model, task, "valid", "cpu", log_end=0.5, progress=False, skipped=skipped)
    assert {p.device.type for p in model.parameters()} == {"cpu"} and {p.dtype for p in model.parameters()} == {torch.float32}
    assert analysis.rows > 0 and 0 <= analysis.summary()["accuracy"] <= 1 and analysis.log_end == 0.5
    assert skipped == []  # every sentence of the toy corpus fits the model


def test_demo_vision_task_is_on_the_device():
    """timm's ClassificationTask(device=...) places only its criterion; the demo moves the model too."""
    pytest.importorskip("timm")
    from el_plugins.demo.vision import make_task

    for loss_type in ("ce", "el"):
        model, task = make_task(loss_type, META)
        assert task.get_trainable_module() is model and task.device == META
        assert {t.device for t in [*model.parameters(), *model.buffers()]} == {META}


# --------------------------------------------------------------------------- the commands
EXPECTED = ("--device cuda: CUDA is not available here (use --device cpu)" if not HAS_CUDA
            else f"--device cuda:{torch.cuda.device_count()}: only {torch.cuda.device_count()} CUDA device(s) here")


@pytest.mark.e2e
@pytest.mark.parametrize("prog, args", [
    ("el-demo", []),
    ("el-analyze", ["timm", "--model", "resnet18", "--checkpoint", "{ckpt}", "--data", "{tmp}", "--out", "{out}"]),
    ("el-analyze", ["fairseq", "--checkpoint", "{ckpt}", "--data", "{tmp}", "--out", "{out}"]),
])
def test_commands_refuse_unusable_devices_before_any_work(prog, args, tmp_path):
    from el_evidence.testing.programs import run_cli

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    out = tmp_path / "out"
    args = [a.format(ckpt=ckpt, tmp=tmp_path, out=out) for a in args]
    if prog == "el-demo":
        args = ["--out", out]
    cuda = "cuda" if not HAS_CUDA else f"cuda:{torch.cuda.device_count()}"
    sub = f"{prog} {args[0]}" if prog == "el-analyze" else prog
    for device, message in ((cuda, EXPECTED), ("bogus", "--device bogus: not a device name (use cpu, cuda or cuda:N)")):
        proc = run_cli(prog, *args, "--device", device, check=False, timeout=120)
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 2, proc.stdout[-3000:]
        assert lines[-1].startswith(f"{sub}: error: {message}"), proc.stdout[-3000:]
        assert lines[0].startswith("usage:") and "Traceback" not in proc.stdout
        assert not out.exists()  # nothing was started
