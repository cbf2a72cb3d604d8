"""The demo's translation part: the IWSLT pipeline's own commands on a small corpus.

prepare (sentencepiece) -> fairseq-preprocess -> fairseq-train LS-CE and EL (el-translation-train's
command, recipe 'toy') -> el-average-checkpoints -> fairseq-generate beam 5 + el-bleu scoring ->
token-level valid nll / target probability / margins with el_plugins.analysis.fairseq_eval.evaluate
(el-analyze fairseq's evaluation loop).

One ``device`` for all of it: fairseq-train and fairseq-generate get ``--cpu`` unless it is a CUDA
device (for cuda:N they see only that GPU); the analysis moves the averaged model and its batches to it.
Failures of the programs it runs are :class:`el_plugins.commands.CommandError`.
"""
import logging
import os
import time

from el_plugins.analysis.fairseq_eval import evaluate, load
from el_plugins.commands import CommandError
from el_plugins.devices import resolve_device, subprocess_env
from el_plugins.translation import bleu, recipe
from el_plugins.translation.average_checkpoints import (EPOCH_PATTERN, average_checkpoints, save_atomic,
                                                       select_checkpoints)
from el_plugins.files import read_lines
from el_plugins.translation.prepare import prepare_parallel_corpus
from el_plugins.translation.training import train_with_progress

LOSS_NAMES = {"ce": "LS-CE", "el": "EL"}
logger = logging.getLogger(__name__)


def checkpoints_to_average(folder, average_last, name, max_update):
    """The last ``average_last`` epoch checkpoints of a run, or those there are (said in the log); when no epoch
    finished within ``max_update`` updates, the last checkpoint alone (said too)."""
    if not any(EPOCH_PATTERN.fullmatch(f) for f in os.listdir(folder)):
        last = os.path.join(folder, "checkpoint_last.pt")
        if os.path.isfile(last):
            logger.warning("[translation] %s: no epoch finished within %d updates, so there is no epoch checkpoint "
                           "to average: using the last checkpoint (checkpoint_last.pt) as it is", name, max_update)
            return [last]
    paths = select_checkpoints(folder, num_epoch=average_last, allow_fewer=True)
    if len(paths) < average_last:
        logger.warning("[translation] %s: %d updates made %d epoch checkpoint(s), fewer than the %d to average: "
                       "averaging %s", name, max_update, len(paths), average_last,
                       "those" if len(paths) > 1 else "that one")
    return paths


def run_translation(out, splits, src, tgt, *, device="cpu", max_update=400, vocab_size=600, average_last=5, seed=1,
                    log_end=0.5, eval_max_tokens=4000, progress=True):
    """Returns ({'data_bin': ..., 'runs': {name: metrics}, 'curves': {name: [...]}}, {name: valid margins array}).
    ``progress``: the bars of training and analysis on stderr."""
    device = resolve_device(device)
    cpu, env = device.type != "cuda", subprocess_env(device)
    t0 = time.time()
    logger.info("[translation] preparing %d training pairs (sentencepiece %d, fairseq-preprocess)",
                len(splits["train"][0]), vocab_size)
    data_bin = prepare_parallel_corpus(splits, os.path.join(out, "data"), src, tgt, vocab_size=vocab_size,
                                       lowercase=False, joined_dictionary=False, workers=2)
    raw_refs = os.path.join(out, "data", "text", f"test.raw.{tgt}")
    result = {"data_bin": data_bin, "prepare_seconds": round(time.time() - t0, 1), "runs": {}, "curves": {}}
    margins = {}
    for loss in ("ce", "el"):
        name, t0 = LOSS_NAMES[loss], time.time()
        run_dir = os.path.join(out, loss)
        os.makedirs(run_dir, exist_ok=True)
        cmd = recipe.train_command("toy", data_bin, os.path.join(run_dir, "checkpoints"), loss=loss, seed=seed,
                                   cpu=cpu, max_update=max_update, log_end=log_end if loss == "el" else None)
        curve = train_with_progress(cmd, os.path.join(run_dir, "train.log"), max_update, f"[translation] train {name}",
                                    env=env, progress=progress)
        paths = checkpoints_to_average(os.path.join(run_dir, "checkpoints"), average_last, name, max_update)
        averaged = os.path.join(run_dir, f"average_last{len(paths)}.pt")
        save_atomic(average_checkpoints(paths), averaged)
        try:
            gen = bleu.generate(data_bin, averaged, beam=5, cpu=cpu, env=env, log=os.path.join(run_dir, "generate.log"))
        except RuntimeError as exc:  # fairseq-generate failed; the message has its cause and the log's path
            raise CommandError(str(exc)) from None
        hyps, refs, fairseq_bleu = bleu.parse_generate_output(gen)
        scores = bleu.score(hyps, refs, tgt, read_lines(raw_refs))
        model, task = load(averaged, data_bin)
        analysis = evaluate(model, task, "valid", device, log_end=log_end, max_tokens=eval_max_tokens,
                            desc=f"[translation] analyze {name}", progress=progress)
        del model
        summary = analysis.summary()
        margins[name] = analysis.arrays()["id"]["margin"]
        result["curves"][name] = curve
        result["runs"][name] = {
            "criterion": cmd[cmd.index("--criterion") + 1], "updates": max_update,
            "averaged_checkpoints": [os.path.basename(p) for p in paths],
            "tokenized_bleu": scores["tokenized_bleu"], "sacrebleu": scores["sacrebleu"],
            "sacrebleu_signature": scores["sacrebleu_signature"], "fairseq_generate_bleu4": fairseq_bleu,
            "valid_nll_nats_per_token": summary["nll"], "valid_target_prob_mean": summary["target_prob"]["mean"],
            "valid_token_accuracy": summary["accuracy"], "valid_margin_mean": summary["margin"]["mean"],
            "seconds": round(time.time() - t0, 1),
        }
    return result, margins
