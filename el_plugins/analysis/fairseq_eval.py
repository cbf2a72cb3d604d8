"""el-analyze fairseq: token-level diagnostics of fairseq checkpoints, teacher-forced over a
binarized split, padding excluded (imports fairseq only when called)."""
from __future__ import annotations

import os
import sys
from typing import List

import torch

from el_plugins.analysis.report import AnalysisError, checked_device
from el_plugins.analysis.streaming import StreamingAnalysis
from el_plugins.devices import move_to_device, prepare_model


def load(path: str, data: str):
    """(model, task) of one checkpoint, with its task pointed at ``data``."""
    import el_plugins.fairseq_plugin  # noqa: F401  (the criterion, and argparse.Namespace on torch >= 2.6)
    from fairseq import checkpoint_utils

    try:
        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides={"data": data})
    except Exception as exc:
        raise AnalysisError(f"--checkpoint {path}: could not load it as a fairseq checkpoint with --data {data} "
                            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    model = models[0]
    if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
        raise AnalysisError(f"--checkpoint {path}: models with an adaptive softmax are not supported "
                            f"(their outputs are not full-vocabulary logits)")
    return model, task


@torch.inference_mode()
def evaluate(model, task, split: str, analysis: StreamingAnalysis, device, *, max_tokens, batch_size, desc, progress,
             max_batches=None) -> int:
    """Feed the teacher-forced logits of every target token of ``split``; returns skipped sentences."""
    from fairseq import utils
    from tqdm import tqdm

    try:
        task.load_dataset(split)
    except (FileNotFoundError, KeyError) as exc:
        raise AnalysisError(f"--split {split}: not found in --data ({exc})") from None
    dataset = task.dataset(split)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, seed=1, num_workers=0, disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)
    pad = task.target_dictionary.pad()
    seen = 0
    total = len(itr) if max_batches is None else min(len(itr), max_batches)
    for i, sample in enumerate(tqdm(itr, desc=desc, total=total, file=sys.stderr, disable=None if progress else True,
                                    unit="batch", leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        if not sample or "net_input" not in sample:
            continue
        sample = move_to_device(sample, device)
        net_output = model(**sample["net_input"])
        logits = net_output[0]
        target = model.get_targets(sample, net_output)
        analysis.update(logits, target, ignore_index=pad)
        seen += sample["nsentences"] if "nsentences" in sample else target.size(0)
    return len(dataset) - seen if max_batches is None else 0


def run(args, names: List[str]):
    if not os.path.isdir(args.data):
        raise AnalysisError(f"--data {args.data}: no such folder (a fairseq-preprocess output, data-bin)")
    device = checked_device(args.device)
    runs, skipped = {}, {}
    for path, name in zip(args.checkpoint, names):
        model, task = load(path, args.data)
        prepare_model(model, device, dtype=torch.float32)
        analysis = StreamingAnalysis(log_end=args.log_end, n_bins=args.bins)
        skipped[name] = evaluate(model, task, args.split, analysis, device, max_tokens=args.max_tokens,
                                 batch_size=args.batch_size, desc=f"{name} {args.split}", progress=args.progress,
                                 max_batches=args.max_batches)
        if skipped[name]:
            print(f"el-analyze: {name}: {skipped[name]} sentences longer than the model's max positions were skipped",
                  file=sys.stderr)
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
