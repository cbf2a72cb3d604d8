"""el-analyze fairseq's back end, and the one evaluation loop of fairseq translation models (el-analyze
fairseq, el-demo's translation part): :func:`evaluate` runs a model teacher-forced over a binarized split
on a device and returns a :class:`StreamingAnalysis` of its target tokens, padding excluded. Imports
fairseq only when called.
"""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional

import torch

from el_plugins.analysis.report import AnalysisError, AnalysisUsageError, batches, check_finite, checked_device
from el_plugins.analysis.streaming import StreamingAnalysis
from el_plugins.devices import move_to_device, prepare_model

__all__ = ['evaluate', 'load', 'run']

logger = logging.getLogger(__name__)


def load(path: str, data: str):
    """(model, task) of one checkpoint, with its task pointed at ``data``."""
    import el_plugins.fairseq_plugin  # noqa: F401  (the criterion, and argparse.Namespace on torch >= 2.6)
    from fairseq import checkpoint_utils

    try:
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    except Exception as exc:
        raise AnalysisError(f"--checkpoint {path}: could not load it as a fairseq checkpoint with --data {data} "
                            f"({_why(exc)})") from None
    model = models[0]
    if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
        raise AnalysisError(f"--checkpoint {path}: models with an adaptive softmax are not supported "
                            f"(their outputs are not full-vocabulary logits)")
    return model, task


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) "
                            r"from checkpoint, the shape in current model is torch\.Size\(\[([^\]]*)\]\)")


def _why(exc: Exception) -> str:
    """Why loading failed, in one line: for parameters of other shapes (the data-bin's dictionaries are not the
    checkpoint's), which ones and how; else the exception's first line and what follows a trailing ':'."""
    text = str(exc).strip()
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        shown = "; ".join(f"{name} is [{theirs}] in the checkpoint but [{ours}] for --data" for name, theirs, ours in
                          mismatches[:3]) + (f"; and {len(mismatches) - 3} more" if len(mismatches) > 3 else "")
        hint = (": --data's dictionaries are not the ones the checkpoint was trained with (another data-bin, or "
                "another fairseq-preprocess run?)" if any("embed" in m[0] or "output_projection" in m[0]
                                                          for m in mismatches) else "")
        return f"{type(exc).__name__}: {shown}{hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:
        first += " " + lines[1]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@torch.inference_mode()
def evaluate(model, task, split: str, device, *, log_end: float = 0.75, n_bins: int = 15, max_tokens: int = 4000,
             batch_size: Optional[int] = None, max_batches: Optional[int] = None, progress: bool = True,
             desc: Optional[str] = None, skipped: Optional[List[int]] = None) -> StreamingAnalysis:
    """The diagnostics of the teacher-forced logits of every target token of ``task``'s ``split``, padding
    excluded, computed on ``device`` (``model, task`` as :func:`load` gives them).

    The model is cast to float32, moved to ``device`` and put in eval mode, in place. Batches of at most
    ``max_tokens`` tokens and ``batch_size`` sentences (None: no limit), in fairseq's order; ``max_batches``
    stops early; ``desc`` names the progress bar (stderr; ``progress=False`` for none). ``skipped``, a list,
    is extended with the ids of the sentences fairseq left out as longer than the model's max positions
    (left as it is when ``max_batches`` stops early).
    """
    from fairseq import utils

    analysis = StreamingAnalysis(log_end=log_end, n_bins=n_bins)
    try:
        task.load_dataset(split)
    except (FileNotFoundError, KeyError) as exc:
        raise AnalysisUsageError(f"--split {split}: not found in --data ({exc})") from None
    dataset = task.dataset(split)
    prepare_model(model, device, dtype=torch.float32)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, seed=1, num_workers=0, disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    seen = set()
    for sample in batches(itr, desc=desc, progress=progress, max_batches=max_batches):
        if not sample or "net_input" not in sample:
            continue
        seen.update(sample["id"].tolist())
        sample = move_to_device(sample, device)
        net_output = model(**sample["net_input"])
        target = model.get_targets(sample, net_output)
        analysis.update(net_output[0], target, ignore_index=pad)
    if skipped is not None and max_batches is None:
        skipped.extend(i for i in range(len(dataset)) if i not in seen)
    return analysis


def run(args, names: List[str]):
    """el-analyze fairseq: every checkpoint over --split of --data; returns ({name: (checkpoint,
    StreamingAnalysis)}, meta)."""
    if not os.path.isdir(args.data):
        raise AnalysisUsageError(f"--data {args.data}: no such folder (a fairseq-preprocess output, data-bin)")
    device = checked_device(args.device)
    runs, skipped = {}, {}
    for path, name in zip(args.checkpoint, names):
        model, task = load(path, args.data)
        left_out: List[int] = []
        analysis = evaluate(model, task, args.split, device, log_end=args.log_end, n_bins=args.bins,
                            max_tokens=args.max_tokens, batch_size=args.batch_size, max_batches=args.max_batches,
                            progress=args.progress, desc=f"{name} {args.split}", skipped=left_out)
        skipped[name] = len(left_out)
        if left_out:
            logger.warning("%s: %d sentences longer than the model's max positions were skipped", name, len(left_out))
        check_finite(name, analysis)
        if not analysis.rows:
            raise AnalysisError(f"--split {args.split}: no target tokens to analyze")
        runs[name] = (os.path.abspath(path), analysis)
        del model
    meta = {
        "mode": "fairseq",
        "data": os.path.abspath(args.data),
        "split": args.split,
        "ood_data": None,
        "row_unit": "tokens",
        "skipped_sentences": skipped,
    }
    return runs, meta
