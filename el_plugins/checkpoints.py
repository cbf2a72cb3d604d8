"""Load fairseq's and timm train.py's own checkpoints on torch >= 2.6 (torch.load: weights_only=True).

Both store their training arguments as an ``argparse.Namespace`` inside every checkpoint, which the
weights-only unpickler refuses, so fairseq-generate and --restore-file fail on current torch.
Rather than turning weights_only off (which would let any pickle run code), we allow-list exactly
that class, process-wide. (torch's scoped ``safe_globals`` context removes the class again on exit
even when it was allowed before, which would undo the allow-list fairseq itself relies on.)
Everything else in those checkpoints (tensors, dicts, lists, numbers, strings) is allowed already.

:func:`load_checkpoint` is the one way el-plugins commands read a checkpoint file: weights-only with that
allow-list, on the CPU, and a :class:`CheckpointError` naming the file and saying what is wrong with it
(missing, unreadable, not a torch checkpoint, holding objects the weights-only loader refuses) instead
of torch's traceback. Torch only: used by the fairseq adapter at activation, el-average-checkpoints and
el-analyze.
"""
import argparse
import os
import pickle

import torch

TRAINING_CHECKPOINT_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint; the message names the file and says why."""


class CheckpointRefused(CheckpointError):
    """A readable checkpoint holding objects the weights-only loader refuses (``trust=True`` would load it)."""


def allow_training_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch >= 2.4
    if add is not None:
        add(TRAINING_CHECKPOINT_GLOBALS)


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1) ", "(2) ")


def load_checkpoint(path, *, trust: bool = False, map_location="cpu"):
    """``torch.load(path)`` with ``weights_only=True`` and the training-checkpoint globals allowed
    (process-wide, see above), on the CPU unless ``map_location`` says otherwise; returns what the file
    holds. ``trust=True`` loads with ``weights_only=False``: only for files you trust (a pickle can run code).

    A missing file, a folder, an unreadable file, a file that is not a torch checkpoint (or a truncated one)
    and one holding objects the weights-only loader refuses (:class:`CheckpointRefused`) raise
    :class:`CheckpointError`, whose message starts with the path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder, not a checkpoint file")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    allow_training_checkpoint_globals()  # process-wide: the scoped form would undo fairseq's allow-list
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated or foreign files fail inside the unpickler in many ways
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and refused and not trust:
            refused = refused.split("WeightsUnpickler error:", 1)[-1].split(" Please use ", 1)[0].strip()
            raise CheckpointRefused(
                f"{path}: refused by the weights-only loader, which allows tensors, containers and "
                f"argparse.Namespace only: {refused}") from exc
        lines = [line for line in lines if not line.startswith(_BOILERPLATE)] or lines
        detail = lines[0].split("WeightsUnpickler error:", 1)[-1].strip() if lines else ""
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from exc


__all__ = ["CheckpointError", "CheckpointRefused", "TRAINING_CHECKPOINT_GLOBALS", "allow_training_checkpoint_globals", "load_checkpoint"]
