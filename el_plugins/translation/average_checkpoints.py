"""el-average-checkpoints: average the parameters of the last N checkpoints of a fairseq run.

The behaviour of fairseq's ``scripts/average_checkpoints.py`` (which the fairseq wheels do not
install), for current torch and with safer input/output handling:

* ``--inputs RUN_DIR --num-epoch-checkpoints N``: the N highest epochs among ``checkpoint<E>.pt``;
  ``--num-update-checkpoints N``: the N highest update counts among ``checkpoint_<E>_<U>.pt``;
  ``--checkpoint-upper-bound K`` ignores epochs (updates) above K. Or ``--inputs a.pt b.pt ...``.
* Checkpoints are loaded with ``weights_only=True``, allow-listing only ``argparse.Namespace`` (which
  fairseq stores in every checkpoint), on the CPU (:func:`el_plugins.checkpoints.load_checkpoint`).
* The ``model`` state dict is averaged entry by entry: floating-point tensors are summed in float64 and
  written back in their own dtype (fp16/bf16 lose nothing to accumulation); integer tensors are summed
  in int64 and floor-divided, as fairseq does. Everything else (cfg/args, extra_state,
  optimizer_history, ...) is taken from the newest input (most updates), so fairseq-generate
  ``--path`` reads the result like any checkpoint.
* Inputs whose parameter names, shapes or dtypes differ or that hold NaN or infinite values, too few
  checkpoints, a missing file, an output that is one of the inputs and an output named like a run's own
  checkpoint (``checkpoint5.pt``) among them are refused with ``el-average-checkpoints: error: ...`` (exit 1; bad
  options exit 2), no traceback (el_plugins.commands). The output is written
  atomically (el_plugins.files: ``OUTPUT.el-partial-PID`` beside it, fsync, ``os.replace``); an error,
  Ctrl-C or SIGTERM removes the partial file, and the next run removes one left by a kill -9.

Imports only torch and the standard library (torch lazily, so ``--help`` and usage errors are instant).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from el_plugins import commands
from el_plugins.files import atomic_write

__all__ = ['average_checkpoints', 'AverageCheckpointsError', 'build_parser', 'check_distinct', 'check_output',
           'EPOCH_PATTERN', 'load_checkpoint', 'main', 'PROG', 'RUN_CHECKPOINT_NAMES', 'save_atomic',
           'select_checkpoints', 'UPDATE_PATTERN']

PROG = "el-average-checkpoints"
EPOCH_PATTERN = re.compile(r"checkpoint(\d+)\.pt")
UPDATE_PATTERN = re.compile(r"checkpoint_\d+_(\d+)\.pt")


class AverageCheckpointsError(ValueError):
    """A user error: bad inputs or output. The command prints it without a traceback."""


# ----------------------------------------------------------------------------------------- selection
def select_checkpoints(run_dir: str, num_epoch: Optional[int] = None, num_update: Optional[int] = None,
                       upper_bound: Optional[int] = None, allow_fewer: bool = False) -> List[str]:
    """The paths of the last ``num_epoch`` epoch (or ``num_update`` update) checkpoints in ``run_dir``,
    newest first, ignoring epochs (updates) above ``upper_bound``. Exactly one of the two counts.
    Fewer than asked are an error, unless ``allow_fewer`` (then all there are, at least one)."""
    if (num_epoch is None) == (num_update is None):
        raise AverageCheckpointsError("give exactly one of num_epoch and num_update")
    count, pattern, kind = ((num_epoch, EPOCH_PATTERN, "epoch") if num_epoch is not None
                            else (num_update, UPDATE_PATTERN, "update"))
    if count < 1:
        raise AverageCheckpointsError(f"the number of {kind} checkpoints must be >= 1, got {count}")
    if not os.path.isdir(run_dir):
        raise AverageCheckpointsError(f"{run_dir}: no such directory")
    found, above = [], []
    for name in os.listdir(run_dir):
        match = pattern.fullmatch(name)
        if match:
            number = int(match.group(1))
            (above if upper_bound is not None and number > upper_bound else found).append((number, name))
    found.sort(reverse=True)
    if len(found) < count and not (allow_fewer and found):
        listed = ", ".join(name for _, name in found) or "none"
        msg = f"asked for {count} {kind} checkpoints in {run_dir} but found {len(found)}: {listed}"
        if above:
            msg += f" ({len(above)} more above --checkpoint-upper-bound {upper_bound} ignored)"
        if not found and not above:
            msg += (" (fairseq-train writes checkpoint_<epoch>_<updates>.pt only with --save-interval-updates)"
                    if kind == "update" else " (none of the form checkpoint<epoch>.pt)")
        raise AverageCheckpointsError(msg)
    return [os.path.join(run_dir, name) for _, name in found[:count]]


# ------------------------------------------------------------------------------------------- loading
def load_checkpoint(path: str) -> Dict[str, Any]:
    """A fairseq checkpoint: :func:`el_plugins.checkpoints.load_checkpoint` (on the CPU, weights only,
    argparse.Namespace allow-listed), which must hold a ``model`` state dict."""
    from el_plugins.checkpoints import CheckpointError
    from el_plugins.checkpoints import load_checkpoint as load_file

    try:
        state = load_file(path)
    except CheckpointError as e:
        raise AverageCheckpointsError(str(e)) from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise AverageCheckpointsError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    return state


def check_distinct(paths: Sequence[str]) -> None:
    """Refuse an empty list and a file given twice (the same real path)."""
    if not paths:
        raise AverageCheckpointsError("no checkpoints to average")
    seen = {}
    for path in map(os.fspath, paths):
        real = os.path.realpath(path)
        if real in seen:
            raise AverageCheckpointsError(f"{path} is given twice (also as {seen[real]})")
        seen[real] = path


def _num_updates(state: Dict[str, Any]) -> int:
    try:
        return int(state["optimizer_history"][-1]["num_updates"])
    except (KeyError, IndexError, TypeError, ValueError):
        return -1


# ----------------------------------------------------------------------------------------- averaging
def average_checkpoints(paths: Sequence[str]) -> Dict[str, Any]:
    """Load the checkpoints one at a time and return a checkpoint whose ``model`` is their mean.

    The other entries come from the newest input (the most ``optimizer_history`` updates; on a tie or
    when unknown, the first listed). Raises AverageCheckpointsError on mismatching inputs."""
    import torch

    paths = [os.fspath(p) for p in paths]
    check_distinct(paths)

    sums: Dict[str, Any] = {}
    reference: Optional[Dict[str, tuple]] = None  # name -> (shape, dtype) in the first input
    first_path = paths[0]
    newest, newest_updates, newest_other = None, None, {}
    for path in paths:
        state = load_checkpoint(path)
        model = state["model"]
        if reference is None:
            reference = {k: (tuple(v.shape), v.dtype) if torch.is_tensor(v) else (None, type(v))
                         for k, v in model.items()}
        else:
            missing = [k for k in reference if k not in model]
            extra = [k for k in model if k not in reference]
            if missing or extra:
                parts = []
                if missing:
                    parts.append(f"missing {_names(missing)}")
                if extra:
                    parts.append(f"extra {_names(extra)}")
                raise AverageCheckpointsError(
                    f"{path}: model parameters differ from {first_path}: {'; '.join(parts)}")
        for name, value in model.items():
            shape, dtype = reference[name]
            if not torch.is_tensor(value):
                if shape is not None or type(value) is not dtype:
                    raise AverageCheckpointsError(
                        f"{path}: model entry {name!r} is a {type(value).__name__}, in {first_path} a "
                        f"{getattr(dtype, '__name__', dtype)}")
                continue  # not a tensor: kept from the newest input
            if shape is None or tuple(value.shape) != shape or value.dtype != dtype:
                theirs = f"a {getattr(dtype, '__name__', dtype)}" if shape is None else f"{list(shape)} {dtype}"
                raise AverageCheckpointsError(
                    f"{path}: parameter {name!r} is {list(value.shape)} {value.dtype}, in {first_path} {theirs}")
            if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
                bad = int(value.numel() - torch.isfinite(value).sum())
                raise AverageCheckpointsError(
                    f"{path}: parameter {name!r} has {bad} NaN or infinite value(s) of {value.numel()} (did the run "
                    "diverge?): the average would carry them into the model; leave this checkpoint out")
            acc = _accumulator_dtype(value.dtype)
            if name in sums:
                sums[name].add_(value.to(acc))
            else:
                sums[name] = value.to(acc, copy=True)
        updates = _num_updates(state)
        if newest is None or updates > newest_updates:
            state["model"] = None  # keep only the structure; the tensors are in sums
            newest, newest_updates = state, updates
            newest_other = {k: v for k, v in model.items() if not torch.is_tensor(v)}
        del state, model

    averaged = {}
    n = len(paths)
    for name, (shape, dtype) in reference.items():
        if shape is None:
            continue
        total = sums.pop(name)
        mean = total.div_(n) if total.is_floating_point() or total.is_complex() else total.div_(n, rounding_mode="floor")
        averaged[name] = mean.to(dtype)
    result = dict(newest)
    result["model"] = {k: averaged[k] if k in averaged else newest_other[k] for k in reference}
    return result


def _accumulator_dtype(dtype):
    import torch

    if dtype.is_complex:
        return torch.complex128
    if dtype.is_floating_point:
        return torch.float64
    return torch.int64  # ints and bools: summed exactly, then floor-divided (fairseq's //)


def _names(names, limit=8):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------- writing
def save_atomic(state: Dict[str, Any], path: str) -> None:
    """torch.save ``state`` to ``path`` all-or-nothing (:func:`el_plugins.files.atomic_write`): on any error,
    Ctrl-C or SIGTERM no partial file is left and a previous ``path`` is untouched."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(state, f)


RUN_CHECKPOINT_NAMES = (EPOCH_PATTERN, UPDATE_PATTERN, re.compile(r"checkpoint_(last|best)\.pt"))


def check_output(output: str, inputs: Sequence[str]) -> None:
    """Refuse an output that is (a link to, or a hard link of) one of the inputs, or a directory, or that has
    the name of a run's own checkpoint (checkpoint5.pt, checkpoint_2_500.pt, checkpoint_last.pt) in a folder of
    fairseq checkpoints, where fairseq-train and a later --num-*-checkpoints would take it for one."""
    real = os.path.realpath(output)
    if os.path.isdir(real):
        raise AverageCheckpointsError(f"--output {output} is a directory")
    for path in inputs:
        same = os.path.realpath(path) == real
        if not same and os.path.exists(output) and os.path.exists(path):
            same = os.path.samefile(path, output)
        if same:
            raise AverageCheckpointsError(f"--output {output} is the input {path}; refusing to overwrite it")
    folder, name = os.path.dirname(real), os.path.basename(real)
    if any(p.fullmatch(name) for p in RUN_CHECKPOINT_NAMES):
        others = [n for n in (os.listdir(folder) if os.path.isdir(folder) else ()) if n != name and
                  any(p.fullmatch(n) for p in RUN_CHECKPOINT_NAMES)]
        if others or any(os.path.dirname(os.path.realpath(p)) == folder for p in inputs):
            raise AverageCheckpointsError(
                f"--output {output}: {name} is the name of one of a run's own checkpoints, in a folder of them: "
                "fairseq-train and a later --num-epoch-checkpoints or --num-update-checkpoints would take it for "
                f"one; name it otherwise, e.g. {os.path.join(os.path.dirname(output), 'average.pt')}")


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Average the model parameters of the last N epoch or update checkpoints of a fairseq run "
                    "(or of the given checkpoint files) into one checkpoint that fairseq-generate can load.")
    parser.add_argument("--inputs", nargs="+", required=True, metavar="PATH",
                        help="a fairseq --save-dir (with --num-epoch-checkpoints or --num-update-checkpoints), "
                             "or checkpoint files to average")
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write the averaged checkpoint")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--num-epoch-checkpoints", type=int, metavar="N",
                      help="average the N highest-epoch checkpoint<epoch>.pt files of the --inputs directory")
    mode.add_argument("--num-update-checkpoints", type=int, metavar="N",
                      help="average the N highest-update checkpoint_<epoch>_<updates>.pt files of the --inputs directory")
    parser.add_argument("--checkpoint-upper-bound", type=int, metavar="K",
                        help="with --num-*-checkpoints: ignore checkpoints of epochs (updates) above K")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logger = commands.setup_logging(PROG)
    by_dir = args.num_epoch_checkpoints is not None or args.num_update_checkpoints is not None
    if by_dir:
        count = args.num_epoch_checkpoints if args.num_epoch_checkpoints is not None else args.num_update_checkpoints
        flag = "--num-epoch-checkpoints" if args.num_epoch_checkpoints is not None else "--num-update-checkpoints"
        if count < 1:
            parser.error(f"{flag} must be >= 1, got {count}")
        if len(args.inputs) != 1:
            parser.error(f"{flag} takes one run directory as --inputs, got {len(args.inputs)} paths")
        if not os.path.isdir(args.inputs[0]):
            parser.error(f"with {flag}, --inputs must be a directory: {args.inputs[0]} is not one")
        if args.checkpoint_upper_bound is not None and args.checkpoint_upper_bound < 0:
            parser.error(f"--checkpoint-upper-bound must be >= 0, got {args.checkpoint_upper_bound}")
    else:
        if args.checkpoint_upper_bound is not None:
            parser.error("--checkpoint-upper-bound needs --num-epoch-checkpoints or --num-update-checkpoints")
        dirs = [p for p in args.inputs if os.path.isdir(p)]
        if dirs:
            parser.error(f"{dirs[0]} is a directory: add --num-epoch-checkpoints N or --num-update-checkpoints N")
        missing = [p for p in args.inputs if not os.path.exists(p)]
        if missing:  # as every command: an input named on the command line that is not there is a usage error
            parser.error(f"--inputs {missing[0]}: no such file")

    def average() -> int:
        if by_dir:
            paths = select_checkpoints(args.inputs[0], args.num_epoch_checkpoints, args.num_update_checkpoints,
                                       args.checkpoint_upper_bound)
        else:
            paths = list(args.inputs)
        check_distinct(paths)
        check_output(args.output, paths)
        logger.info("averaging %d checkpoints into %s", len(paths), args.output)
        state = average_checkpoints(paths)
        save_atomic(state, args.output)
        # the result (stdout, once it is written): which checkpoints were averaged, and where to
        print(f"averaging {len(paths)} checkpoints:")
        for path in paths:
            print(f"  {path}")
        print(f"wrote {args.output} ({len(state['model'])} parameters, mean of {len(paths)} checkpoints)")
        return 0

    try:
        return commands.run(PROG, average, errors=(AverageCheckpointsError, OSError))
    except KeyboardInterrupt:
        logger.error("interrupted; %s not written", args.output)
        return 130


if __name__ == "__main__":
    sys.exit(main())
