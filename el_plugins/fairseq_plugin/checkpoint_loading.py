"""Let fairseq load its own checkpoints on torch >= 2.6, where torch.load defaults to weights_only.

fairseq stores its training arguments as an ``argparse.Namespace`` inside every checkpoint, which
the weights-only unpickler refuses, so fairseq-generate and --restore-file fail on current torch.
Rather than turning weights_only off (which would let any pickle run code), we allow-list exactly
that class; everything else in a fairseq checkpoint (tensors, dicts, lists, numbers, strings) is
already allowed. Runs when el-plugins activates in fairseq.
"""
import argparse

import torch

FAIRSEQ_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoint_globals() -> None:
    add = getattr(torch.serialization, "add_safe_globals", None)  # torch >= 2.4
    if add is not None:
        add(FAIRSEQ_CHECKPOINT_GLOBALS)


allow_fairseq_checkpoint_globals()
