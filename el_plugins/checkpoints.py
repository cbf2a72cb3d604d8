"""Load fairseq's and timm train.py's own checkpoints on torch >= 2.6 (torch.load: weights_only=True).

Both store their training arguments as an ``argparse.Namespace`` inside every checkpoint, which the
weights-only unpickler refuses, so fairseq-generate and --restore-file fail on current torch.
Rather than turning weights_only off (which would let any pickle run code), we allow-list exactly
that class, process-wide. (torch's scoped ``safe_globals`` context removes the class again on exit
even when it was allowed before, which would undo the allow-list fairseq itself relies on.)
Everything else in those checkpoints (tensors, dicts, lists, numbers, strings) is allowed already.
Torch only: used by the fairseq adapter at activation, el-average-checkpoints and el-analyze.
"""
import argparse

import torch

TRAINING_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_training_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch >= 2.4
    if add is not None:
        add(TRAINING_CHECKPOINT_GLOBALS)
