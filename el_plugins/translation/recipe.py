"""el-translation-train: the paper's translation training recipes as fairseq-train commands: LS-CE baseline or EL.

    el-translation-train --recipe iwslt14.de-en --data data/iwslt14.de-en/data-bin --loss el \\
        --save-dir runs/iwslt14/el-seed1 [--seed 1] [--gpus 1] [--log-end 0.5] [--dry-run] [-- more fairseq flags]

Baseline and EL differ only in the criterion flags: with the paper's recipes, both are
label_smoothed_encouraging_loss with the authors' smoothing (eps / V), the baseline with --bonus-weight 0
(``--smoothing-convention fairseq``: fairseq's own label_smoothed_cross_entropy as the baseline). ``--gpus N`` > 1
uses fairseq's own distributed training (one process per GPU, ``--distributed-world-size N``); the effective
batch stays the paper's only if ``--update-freq`` is divided accordingly, which this does. ``--cpu`` drops
``--fp16``. The paper's recipes choose checkpoint_best.pt by BLEU on valid (beam 5), as the authors did; the
last 10 epoch checkpoints are kept, for el-average-checkpoints (the authors report both). ``--dry-run`` prints the
command (stdout); otherwise it is logged and run, and fairseq-train failing is ``el-translation-train: error:
...``, exit 1.
"""
import argparse
import logging
import os
import shlex
import subprocess
import sys
from typing import List, NamedTuple, Optional, Sequence

from el_plugins import commands
from el_plugins import checks
from el_plugins import functional as EF
from el_plugins.core import DEFAULT_LOG_END

__all__ = ['ADAM', 'criterion_args', 'EL_CRITERION', 'EL_DEFAULTS', 'LOSSES', 'main', 'OWN_FLAGS', 'PAPER_BEST_CHECKPOINT',
           'PROG', 'Recipe', 'RECIPES', 'resume_problem', 'train_command']

PROG = "el-translation-train"
logger = logging.getLogger(__name__)

# The paper's recipes as its authors ran them: translation/readme.sh of
# github.com/lancopku/well-classified-examples-are-underestimated (fairseq 0.10.2, criterion encourage_loss),
# flag for flag. Where fairseq 0.10.2 and fairseq-fixed 0.12 differ, the value is the authors' (--clip-norm 0.0 is
# 0.10.2's default, written out). Two adaptations to el-plugins' data: the subwords are sentencepiece
# (el-prepare-iwslt), so BLEU during training removes them with "sentencepiece" (the authors' De-En data was
# subword-nmt BPE, removed with their flag's default "@@ "); and the smoothing is the criterion's
# --smoothing-convention paper, which is what their encourage_loss does (eps / V on every class, for the NLL and,
# with --el_lb 0.1, for the bonus alike; their baseline is the same criterion with the bonus off).
PAPER_BEST_CHECKPOINT = [  # checkpoint_best.pt chosen by BLEU on valid during training, as the authors did
    "--eval-bleu", "--eval-bleu-args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}', "--eval-bleu-detok", "moses",
    "--eval-bleu-remove-bpe", "sentencepiece", "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
ADAM = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0"]


class Recipe(NamedTuple):
    args: List[str]  # fairseq-train's options, but the criterion's, --update-freq, --seed and the run's folders
    update_freq: int  # the effective batch's multiple of --max-tokens (divided among --gpus)
    log_end: float  # EL's
    smoothing_convention: str  # both arms': 'paper' (eps / V, the authors') or 'fairseq' (eps / (V - 1))
    follows: str  # where the values come from


RECIPES = {
    "iwslt14.de-en": Recipe(
        ["--arch", "transformer_iwslt_de_en", *ADAM, "--lr", "1e-3", "--lr-scheduler", "inverse_sqrt",
         "--warmup-updates", "4000", "--weight-decay", "0.0001", "--dropout", "0.4", "--max-tokens", "4096",
         "--max-update", "20000", "--label-smoothing", "0.1", "--fp16", *PAPER_BEST_CHECKPOINT],
        update_freq=4, log_end=0.5, smoothing_convention="paper",
        follows="the authors' translation/readme.sh, De-En (no shared embeddings: their runs are 'unshareemb')"),
    "iwslt17.fr-en": Recipe(
        ["--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2",
         "--share-all-embeddings", *ADAM, "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
         "--weight-decay", "0.001", "--dropout", "0.3", "--max-tokens", "4096", "--max-update", "100000",
         "--label-smoothing", "0.1", "--fp16", *PAPER_BEST_CHECKPOINT],
        update_freq=1, log_end=0.5, smoothing_convention="paper",
        follows="the authors' translation/readme.sh, Fr-En (no --update-freq: 1)"),
    # el-reproduce translation's: the Spanish -> English Bible (el-data bible) on 2 CPU cores. Model and schedule
    # tuned for the baseline on valid (results/translation/tuning.json), then used unchanged for EL, as the paper did.
    "bible.es-en": Recipe(
        ["--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2",
         "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "512",
         "--decoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
         "--share-all-embeddings", *ADAM, "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "400",
         "--weight-decay", "0.0001", "--dropout", "0.1", "--max-tokens", "2048", "--max-epoch", "3",
         "--label-smoothing", "0.1"],
        update_freq=1, log_end=0.5, smoothing_convention="paper",
        follows="el-plugins' own, for 2 CPU cores (the paper's IWSLT recipes need a GPU); tuned for the baseline"),
    # The demo's: a small Transformer for the toy corpus, minutes on a CPU.
    "toy": Recipe(
        ["--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2",
         "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "256",
         "--decoder-ffn-embed-dim", "256", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
         "--share-decoder-input-output-embed", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
         "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--dropout", "0.1",
         "--max-tokens", "2048", "--max-update", "400", "--label-smoothing", "0.1"],
        update_freq=1, log_end=0.5, smoothing_convention="fairseq",  # LS-CE is fairseq's own, as a user's run has it
        follows="el-demo's toy corpus (el-plugins' own)"),
}
LOSSES = ("ce", "el")
# fairseq-train flags this command sets from its own options: after -- they would silently override them
OWN_FLAGS = {"--criterion": "--loss", "--log-end": "--log-end", "--save-dir": "--save-dir", "--seed": "--seed",
             "--update-freq": "--gpus", "--distributed-world-size": "--gpus", "--max-update": "--max-update",
             "--cpu": "--cpu", "--smoothing-convention": "--smoothing-convention"}


def criterion_args(loss: str, log_end: float, smoothing_convention: str = "paper") -> List[str]:
    """The criterion's flags of the baseline (``ce``) or EL, for a smoothing convention (see RECIPES).

    paper: both arms are label_smoothed_encouraging_loss with eps / V (the authors' setup; the baseline has
    --bonus-weight 0), so they differ in the bonus alone; fairseq: the baseline is fairseq's own
    label_smoothed_cross_entropy (eps / (V - 1) off the target), and EL follows that convention."""
    checks.check_choice(smoothing_convention, EF.SMOOTHING_CONVENTIONS, "--smoothing-convention")
    if loss == "ce" and smoothing_convention == "fairseq":
        return ["--criterion", "label_smoothed_cross_entropy"]
    el = ["--criterion", "label_smoothed_encouraging_loss"]
    bonus = ["--bonus-weight", "0"] if loss == "ce" else ["--log-end", str(log_end)]
    return el + bonus + ["--smoothing-convention", smoothing_convention]


def train_command(recipe: str, data_bin: str, save_dir: str, *, loss: str, seed: int = 1, gpus: int = 1,
                  log_end: float = None, cpu: bool = False, max_update: int = None,
                  smoothing_convention: Optional[str] = None, extra: Sequence[str] = ()) -> List[str]:
    """The fairseq-train argv of a recipe (validated: bad values raise ValueError naming the option);
    ``smoothing_convention`` defaults to the recipe's."""
    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(sorted(RECIPES))}, got {recipe!r}")
    checks.check_choice(loss, LOSSES, "--loss")
    if loss == "ce" and log_end is not None:
        raise ValueError(f"--log-end {log_end} applies to --loss el only; --loss ce is the baseline, which has "
                         "no bonus")
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag in OWN_FLAGS:
            raise ValueError(f"{arg} after --: el-translation-train sets {flag} itself, from its own {OWN_FLAGS[flag]} "
                             "(fairseq-train would take the later one, silently); give that instead")
    r = RECIPES[recipe]
    log_end = checks.check_log_end(r.log_end if log_end is None else log_end, "--log-end")
    convention = r.smoothing_convention if smoothing_convention is None else smoothing_convention
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"--gpus must be an integer >= 1, got {gpus!r}")
    if r.update_freq % gpus:
        raise ValueError(f"--gpus must divide the recipe's update frequency {r.update_freq} "
                         f"(to keep the paper's batch), got {gpus}")
    args = list(r.args)
    if cpu:
        args = [a for a in args if a != "--fp16"] + ["--cpu"]
    if max_update is not None:
        if max_update < 1:
            raise ValueError(f"--max-update must be >= 1, got {max_update}")
        if "--max-update" in args:
            args[args.index("--max-update") + 1] = str(max_update)
        else:  # a recipe that trains whole epochs (--max-epoch): the update count stops it first
            args += ["--max-update", str(max_update)]
    cmd = [commands.fairseq_program("fairseq-train"), data_bin, *args,
           *criterion_args(loss, log_end, convention), "--update-freq", str(r.update_freq // gpus), "--seed", str(seed),
           "--save-dir", save_dir, "--keep-last-epochs", "10", "--no-progress-bar", "--log-format", "simple",
           "--log-interval", "20"]
    if gpus > 1:
        cmd += ["--distributed-world-size", str(gpus)]
    return cmd + list(extra)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    ap.add_argument("--data", required=True, help="fairseq data-bin (from el-prepare-iwslt)")
    ap.add_argument("--loss", required=True, choices=LOSSES, help="ce: the label-smoothed CE baseline; el: EL")
    ap.add_argument("--smoothing-convention", choices=EF.SMOOTHING_CONVENTIONS, default=None,
                    help="paper (default for the paper's recipes): both arms are label_smoothed_encouraging_loss with "
                         "eps/V, the baseline with --bonus-weight 0 (the authors' setup); fairseq: the baseline is "
                         "fairseq's own label_smoothed_cross_entropy (eps/(V-1)) and EL follows that convention")
    ap.add_argument("--save-dir", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--log-end", type=float, default=None, help="EL's log_end (default: the recipe's, 0.5)")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU (drops --fp16)")
    ap.add_argument("--max-update", type=int, default=None, help="override the recipe's --max-update")
    ap.add_argument("--dry-run", action="store_true", help="print the fairseq-train command and exit")
    args = ap.parse_args(argv)
    try:
        cmd = train_command(args.recipe, args.data, args.save_dir, loss=args.loss, seed=args.seed, gpus=args.gpus,
                            log_end=args.log_end, cpu=args.cpu, max_update=args.max_update,
                            smoothing_convention=args.smoothing_convention, extra=extra)
    except ValueError as exc:
        ap.error(str(exc))
    if args.dry_run:
        print(shlex.join(cmd), flush=True)
        return 0
    if not os.path.isdir(args.data):
        ap.error(f"--data: no such folder {args.data!r}")
    problem = resume_problem(args.save_dir, cmd)
    if problem:
        ap.error(problem)
    commands.setup_logging(PROG)
    return commands.run(PROG, lambda: _train(cmd))


EL_CRITERION = "label_smoothed_encouraging_loss"
EL_DEFAULTS = {"bonus_weight": 1.0, "log_end": DEFAULT_LOG_END, "smoothing_convention": "auto", "bonus": "log",
               "bonus_gamma": None, "bonus_start": 0.0, "bonus_smoothing": None}
"""The criterion's defaults of the settings that make two runs different (its config's; log_end: core's)."""


def _run_key(criterion: str, options: dict) -> tuple:
    """What makes two runs the same for resuming: the criterion and, for EL's, its bonus weight, log_end, smoothing
    convention and bonus family (``options``: the saved config's or the command's; missing ones: the defaults)."""
    if criterion != EL_CRITERION:
        return (criterion,)
    values = {k: options.get(k) if options.get(k) is not None else v for k, v in EL_DEFAULTS.items()}
    bonus_weight = float(values["bonus_weight"])
    bonus = values["bonus"] if bonus_weight else "log"  # the baseline (no bonus) has no shape of bonus
    log_end = float(values["log_end"]) if bonus_weight and bonus == "log" else None
    family = tuple(None if values[k] is None or not bonus_weight else float(values[k])
                   for k in ("bonus_gamma", "bonus_start", "bonus_smoothing"))
    return (criterion, bonus_weight, log_end, values["smoothing_convention"], bonus, family)


def _run_of(key: tuple, other: tuple) -> str:
    """How this command's options would say the run of ``key`` (its smoothing convention where ``other``'s differs)."""
    if key[0] == "label_smoothed_cross_entropy":
        return "--loss ce"
    if key[0] != EL_CRITERION:
        return f"--criterion {key[0]}"
    _, bonus_weight, log_end, convention, bonus, family = key
    text = "--loss ce" if bonus_weight == 0 else "--loss el" + (f" --log-end {log_end:g}" if log_end else "") + (
        f" --bonus-weight {bonus_weight:g}" if bonus_weight != 1 else "") + (
        f" --bonus {bonus}" if bonus != "log" else "") + "".join(
        f" {flag} {value:g}" for flag, value in zip(("--bonus-gamma", "--bonus-start", "--bonus-smoothing"), family)
        if value)
    return text + (f" --smoothing-convention {convention}" if len(other) > 3 and other[3] != convention else "")


def _command_options(cmd: Sequence[str]) -> dict:
    flags = {"--bonus-weight": "bonus_weight", "--log-end": "log_end", "--smoothing-convention": "smoothing_convention",
             "--bonus": "bonus", "--bonus-gamma": "bonus_gamma", "--bonus-start": "bonus_start",
             "--bonus-smoothing": "bonus_smoothing"}
    return {flags[a]: cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in flags}


def resume_problem(save_dir: str, cmd: Sequence[str]):
    """Why fairseq-train must not resume ``save_dir``'s checkpoint_last.pt with ``cmd`` (it would go on
    training another run, of another loss or log_end, without a word), or None. A rerun of the same command
    resumes it, as fairseq-train does."""
    last = os.path.join(save_dir, "checkpoint_last.pt")
    if not os.path.isfile(last):
        return None
    from el_plugins.checkpoints import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(last)
    except CheckpointError as exc:
        return f"--save-dir {save_dir}: fairseq-train would resume from {exc}; remove it to start over"
    saved = (state.get("cfg") or {}).get("criterion") if isinstance(state, dict) else None
    if not saved and isinstance(state, dict) and state.get("args") is not None:  # fairseq < 0.10 checkpoints
        saved = dict(vars(state["args"]), _name=getattr(state["args"], "criterion", None))
    if not (saved or {}).get("_name"):
        return None
    old = _run_key(saved["_name"], saved)
    new = _run_key(cmd[cmd.index("--criterion") + 1], _command_options(cmd))
    if old == new:
        return None
    return (f"--save-dir {save_dir} holds a run of {_run_of(old, new)} (its {os.path.basename(last)}) but this "
            f"is {_run_of(new, old)}: fairseq-train would go on training it with the other loss; give "
            "another --save-dir, or remove that one to start over")


def _train(cmd: List[str]) -> int:
    """Run fairseq-train (its output goes straight to the terminal); a failure is a CommandError."""
    logger.info(shlex.join(cmd))
    try:
        code = subprocess.call(cmd)
    except OSError as exc:  # not installed in this environment
        raise commands.CommandError(f"cannot run {cmd[0]} ({exc.strerror or exc}); is fairseq installed here?") from None
    if code == commands.USAGE_EXIT:  # its own argparse refused an option (e.g. one given after --)
        raise commands.UsageError(f"fairseq-train refused its options (exit {code}); its message is above")
    if code != 0:
        raise commands.CommandError(f"fairseq-train failed (exit {code}); its messages are above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
