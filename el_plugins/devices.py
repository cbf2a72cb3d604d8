"""The one ``--device`` of every el-plugins command: choose it, check it, move models and batches to it.

Torch only (fairseq and timm are never imported here). ``add_device_argument`` gives a parser the
option; a device that cannot be used here is a usage error (``prog: error: --device cuda: ...``, exit 2)
while the arguments are parsed, before any work. ``move_to_device`` and ``prepare_model`` are what the
evaluation and training loops use, so a model and its batches always end up on the same device.
"""
import argparse
import copy
import os

import torch

__all__ = ['add_device_argument', 'DEFAULT_DEVICE', 'DEVICE_HELP', 'move_to_device', 'prepare_model', 'resolve_device',
           'subprocess_env']

DEFAULT_DEVICE = "cpu"
DEVICE_HELP = "where to run: cpu, cuda or cuda:N (default: cpu)"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _allowed() -> str:
    return "cpu, cuda, cuda:N or mps" if _mps_available() else "cpu, cuda or cuda:N"


def resolve_device(name) -> torch.device:
    """``torch.device`` for ``name`` (cpu, cuda, cuda:N, mps where available), or a ValueError
    saying what is wrong with it here and what to use instead."""
    if isinstance(name, torch.device):
        device, name = name, str(name)
    else:
        name = str(name)
        try:
            device = torch.device(name.strip())
        except (RuntimeError, ValueError, TypeError):
            shown = name if name and name.strip() == name else repr(name)
            raise ValueError(f"--device {shown}: not a device name (use {_allowed()})") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: only {count} CUDA device(s) here (use cuda or cuda:0"
                             f"{f' to cuda:{count - 1}' if count > 1 else ''})")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise ValueError(f"--device {name}: MPS is not available here (use --device cpu)")
        return device
    raise ValueError(f"--device {name}: el-plugins does not run on {device.type} (use {_allowed()})")


class _DeviceAction(argparse.Action):
    """Resolve the value while parsing; a device that cannot be used is the parser's usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, resolve_device(values))
        except ValueError as exc:
            parser.error(str(exc))


def add_device_argument(parser, help: str = DEVICE_HELP, default: str = DEFAULT_DEVICE):
    """Add ``--device`` to ``parser`` (or an argument group): its value is a checked ``torch.device``."""
    return parser.add_argument("--device", action=_DeviceAction, default=resolve_device(default), metavar="DEVICE",
                               help=help)


def move_to_device(obj, device):
    """``obj`` on ``device``: a tensor, a module (moved in place and returned), or dicts, lists and tuples
    of them to any depth, such as a fairseq sample (new containers; other values are kept as they are).
    Copies from the CPU to a GPU are non-blocking (the stream orders them before any use there)."""
    device = torch.device(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=obj.device.type == "cpu" and device.type == "cuda")
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if isinstance(obj, dict):
        moved = copy.copy(obj)  # keeps the mapping's type (OrderedDict, defaultdict, ...)
        for k, v in obj.items():
            moved[k] = move_to_device(v, device)
        return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def prepare_model(model: torch.nn.Module, device, dtype=None) -> torch.nn.Module:
    """``model`` for evaluation on ``device``: floating-point weights cast to ``dtype`` (if given),
    moved to ``device``, in eval mode. Returns the same module."""
    if dtype is not None:
        model.to(dtype)
    return move_to_device(model, device).eval()


def subprocess_env(device, env=None) -> dict:
    """The environment for a child program (fairseq-train, fairseq-generate) that uses only the GPU
    ``device`` names: for cuda:N, CUDA_VISIBLE_DEVICES narrowed to it (the child sees it as cuda:0)."""
    env = dict(os.environ if env is None else env)
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[device.index] if device.index < len(visible) else str(device.index)
    return env
