"""Fixes el-plugins applies to fairseq when it activates there (automatically, or with --user-dir).

Each fix patches one documented fairseq behaviour that the installed fairseq(-fixed) breaks, is
idempotent (applying twice changes nothing), leaves fairseq alone when it is not broken, and has
an environment switch. Switches take ``1`` (on) or ``0`` (off); unset or empty means on. A fix's own
switch wins over ``EL_PLUGINS_FAIRSEQ_FIXES``, which sets the default for all of them, so
``EL_PLUGINS_FAIRSEQ_FIXES=0 EL_PLUGINS_FIX_WEIGHTS_ONLY=1`` keeps only that one. Any other value
is an error naming the variable, never silently ignored.

- ``batch_by_size`` (``EL_PLUGINS_FIX_BATCH_BY_SIZE``): fairseq's ``data_utils.batch_by_size``
  drops the whole last batch when its size is not a multiple of ``--required-batch-size-multiple``
  (default 8; fairseq issue #5036), so every training epoch skips up to 7 of the longest sentences
  and validation, fairseq-validate and fairseq-generate silently score fewer sentences. We put the
  dropped indices back as a final, smaller batch, as its docstring promises.
- ``weights_only`` (``EL_PLUGINS_FIX_WEIGHTS_ONLY``): torch >= 2.6 loads with ``weights_only=True``
  and refuses the ``argparse.Namespace`` in every fairseq checkpoint; we allow-list exactly that
  class (see :mod:`el_plugins.checkpoints`).
"""
import functools
import inspect
import logging
from typing import Dict

import numpy as np

from el_plugins._activation import SwitchError, read_switch

__all__ = ['ALL_FIXES_ENV', 'apply_fixes', 'BATCH_BY_SIZE_ENV', 'drops_indices', 'fix_batch_by_size', 'fix_enabled',
           'fix_weights_only', 'FIXES', 'FixSwitchError', 'keep_last_batch', 'MARK', 'WEIGHTS_ONLY_ENV']

logger = logging.getLogger("el_plugins")

ALL_FIXES_ENV = "EL_PLUGINS_FAIRSEQ_FIXES"
BATCH_BY_SIZE_ENV = "EL_PLUGINS_FIX_BATCH_BY_SIZE"
WEIGHTS_ONLY_ENV = "EL_PLUGINS_FIX_WEIGHTS_ONLY"
MARK = "__el_plugins_fix__"  # set on our wrapper, so a second activation does not wrap it again
FixSwitchError = SwitchError  # an el-plugins fix switch has a value other than 0 or 1


def fix_enabled(env: str) -> bool:
    """Whether the fix switched by ``env`` is on; both switches are checked, so a typo always stops."""
    every, own = read_switch(ALL_FIXES_ENV), read_switch(env)
    return own if own is not None else every is not False


# --- batch_by_size: keep the last batch ----------------------------------------------------------

_restored_logged = False


def drops_indices(batch_by_size) -> bool:
    """Whether this batch_by_size loses indices: 9 one-token items, required multiple 8, no limits
    (fairseq-fixed returns the batch of 8 and drops the 9th), through both its token-count paths."""
    indices = np.arange(9, dtype=np.int64)
    for num_tokens_vec in (np.ones(9, dtype=np.int64), None):
        batches = batch_by_size(indices, lambda i: 1, num_tokens_vec=num_tokens_vec, required_batch_size_multiple=8)
        if sum(len(b) for b in batches) != len(indices):
            return True
    return False


def _left_out(indices: np.ndarray, batches, kept: int) -> np.ndarray:
    """The indices no batch holds, in their order. fairseq's batches are consecutive slices of
    ``indices``, so they are its tail; anything else is found by membership."""
    flat = np.concatenate([np.asarray(b, dtype=indices.dtype) for b in batches]) if len(batches) else indices[:0]
    if np.array_equal(flat, indices[:kept]):
        return indices[kept:]
    return indices[~np.isin(indices, flat)]


def _log_restored(original, restored: int, total: int, args, kwargs) -> None:
    global _restored_logged
    if _restored_logged:
        return
    _restored_logged = True
    try:
        multiple = inspect.signature(original).bind(None, *args, **kwargs).arguments.get(
            "required_batch_size_multiple", 1)
    except TypeError:
        multiple = "?"
    logger.info(f"el-plugins: fairseq's batch_by_size dropped the last batch ({restored} of {total} items: "
                f"its size is not a multiple of --required-batch-size-multiple {multiple}, fairseq issue #5036); "
                f"kept as a final, smaller batch. {BATCH_BY_SIZE_ENV}=0 turns this fix off.")


def keep_last_batch(original):
    """Wrap fairseq's ``batch_by_size``: call it, and if its batches miss some indices (the dropped
    last batch), append those as one final batch. Every other batch is fairseq's own."""

    @functools.wraps(original)
    def batch_by_size(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):  # it may be a one-shot iterator: read it once
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        if len(indices) == 0:  # fairseq's own fails on an empty list (IndexError) when multiple > 1
            return []
        batches = original(indices, *args, **kwargs)
        kept = sum(len(b) for b in batches)
        if kept == len(indices):
            return batches
        rest = _left_out(indices, batches, kept)
        if len(rest) == 0:
            return batches
        _log_restored(original, len(rest), len(indices), args, kwargs)
        return [*batches, rest]

    setattr(batch_by_size, MARK, True)
    return batch_by_size


def fix_batch_by_size(data_utils=None) -> str:
    """Patch ``fairseq.data.data_utils.batch_by_size`` (its one caller, FairseqDataset.batch_by_size,
    looks it up on the module at call time). Returns 'applied', 'already applied' or 'not needed'."""
    if data_utils is None:
        from fairseq.data import data_utils
    current = data_utils.batch_by_size
    if getattr(current, MARK, False):
        return "already applied"
    try:
        broken = drops_indices(current)
    except Exception as exc:  # unknown signature or Cython part not built: leave fairseq as it is
        logger.debug(f"el-plugins: not patching batch_by_size, its check failed: {exc!r}")
        return "not needed"
    if not broken:
        return "not needed"
    data_utils.batch_by_size = keep_last_batch(current)
    return "applied"


# --- weights_only: load fairseq's own checkpoints on torch >= 2.6 --------------------------------

def fix_weights_only() -> str:
    """Allow-list ``argparse.Namespace`` for torch's weights-only loading (el_plugins.checkpoints)."""
    import torch

    from el_plugins.checkpoints import TRAINING_CHECKPOINT_GLOBALS, allow_training_checkpoint_globals

    if not hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4: nothing is refused
        return "not needed"
    get = getattr(torch.serialization, "get_safe_globals", None)
    if get is not None and all(g in get() for g in TRAINING_CHECKPOINT_GLOBALS):
        return "already applied"
    allow_training_checkpoint_globals()
    return "applied"


FIXES = {"batch_by_size": (BATCH_BY_SIZE_ENV, fix_batch_by_size),
         "weights_only": (WEIGHTS_ONLY_ENV, fix_weights_only)}


def apply_fixes() -> Dict[str, str]:
    """Apply every fix whose switch is on; returns {fix: 'applied' | 'already applied' | 'not needed' | 'off'}.
    Raises FixSwitchError (a ValueError) for a switch set to anything but 0 or 1, before changing anything."""
    enabled = {name: fix_enabled(env) for name, (env, _) in FIXES.items()}
    return {name: fix() if enabled[name] else "off" for name, (_, fix) in FIXES.items()}
