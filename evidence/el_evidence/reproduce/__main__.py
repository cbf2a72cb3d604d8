"""el-reproduce: rerun the paper's experiments that a CPU can, side by side with the paper.

  el-reproduce mnist                 # ~15 min on 2 CPU cores: CE, CE+LS, EL, EL+LS x 3 seeds
  el-reproduce mnist --quick         # a CI smoke run on small subsets (not a result)
  el-reproduce mnist --setup paper   # the authors' Tables 1/4/13 network and schedule (~4 h a run on 2 CPU cores)
  el-reproduce mnist-table11         # Table 11 the authors' way (el-reproduce mnist-table11 --help)
  el-reproduce translation           # Spanish -> English Bible: LS-CE, EL (log_end 0.5, 1) x 3/3/2 seeds
  el-reproduce translation --quick   # a CI smoke run (not a result); `el-reproduce translation --help`

mnist: real MNIST (train 60,000 / test 10,000) with the Fashion-MNIST test set as out-of-distribution
data (el-data mnist fetches both into --data, offline, on the first run). Each variant trains the same
network with the same schedule per seed (--setup el-plugins: el-plugins' own small CNN, 5 epochs; paper:
the authors' MNISTNet, 100 epochs, the best test epoch); measured: test accuracy, OOD detection (AUROC /
FPR at 95% TPR for the minimum conditional energy, the free energy and the max. probability, by
scikit-learn and as the authors' metrics.py), ECE, the energy on and out of the data, and accuracy under
L-inf attacks (torchattacks: APGD-CE + APGD-DLR, PGD, FGSM) at eps 0.1 and 0.2.
mnist-table11: Table 11 as the authors ran it (their network, training and torchattacks 3.1.0's AutoAttack).
Writes OUT/results.json, OUT/table.md (measured mean +- std beside the paper) and PNG plots; prints the
table (stdout). Progress bars and messages go to stderr (``--no-progress``: no bars); every message of an
experiment starts with its name: a damaged data folder or results.json is ``el-reproduce mnist: error: ...``
(mnist-table11, translation likewise), exit 1; a bad option is the same line with exit 2.
"""
import argparse
import logging
import os
import sys
import time

from el_plugins import commands
from el_plugins.files import output_folder_problem
from el_evidence.reproduce.options import (add_run_options, check_folders_and_attacks, data_info, load_data,
                                           parse_run_options, usable_cores)
from el_evidence.reproduce.paper import PAPER_LOG_END, PAPER_SMOOTHING, VARIANTS
from el_evidence.reproduce.recipes import ATTACK_IMAGES, RECIPES, SETUPS

PROG = "el-reproduce"
EXPERIMENTS = ("mnist", "mnist-table11", "translation")
logger = logging.getLogger(__name__)
QUICK = {"seeds": 2, "epochs": 1, "train_images": 12000, "test_images": 2000, "attack_images": 200, "apgd_steps": 20,
         "pgd_steps": 10}
FULL = {"seeds": 3, "epochs": 5, "train_images": 60000, "test_images": 10000, "attack_images": 500, "apgd_steps": 100,
        "pgd_steps": 20}  # --setup el-plugins' defaults without --quick (_fill_defaults); a value given wins over both
OUTPUTS = ("results.json", "table.md", "roc.png", "margins.png", "reliability.png",
           *(f"energy_{v}.png" for v in VARIANTS))  # one output set (el_plugins.files.output_set)


def parse_experiment(argv) -> str:
    """The experiment argv starts with; ``--help``, a missing or an unknown one end here as argparse ends them."""
    top = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("experiment", choices=EXPERIMENTS,
                     help="mnist: the paper's MNIST tables (1, 4, 11, 13); mnist-table11: Table 11 the authors' way; "
                          "translation: its translation claims on a real corpus (each has its own options: "
                          "el-reproduce mnist --help, el-reproduce mnist-table11 --help, el-reproduce translation "
                          "--help)")
    return top.parse_args(argv[:1]).experiment


MNIST_PROG = f"{PROG} mnist"  # the prefix of every message of el-reproduce mnist, usage errors and failures alike


def parse_args(argv=None):
    """The arguments of ``el-reproduce mnist ...`` (argv starts with ``mnist``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if parse_experiment(argv) != "mnist":
        raise ValueError(f"parse_args parses el-reproduce mnist's arguments, got {argv[:1]}")
    argv = argv[1:]
    ap = argparse.ArgumentParser(prog=MNIST_PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", choices=SETUPS, default="el-plugins",
                    help="el-plugins: el-plugins' own CPU setup (SmallCNN, Adam, 5 epochs; default); paper: the "
                         "authors' Tables 1/4/13 setup (MNISTNet, SGD, 100 epochs, the best test epoch; for a GPU), "
                         "no attacks unless --attack-images")
    ap.add_argument("--out", default="runs/reproduce-mnist", help="output folder (default: runs/reproduce-mnist)")
    ap.add_argument("--data", default="data", help="the data folder; filled by `el-data mnist` when empty (default: data)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 per variant, N >= 2 (default: 3)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per model (default: 5; --setup paper: 100)")
    ap.add_argument("--batch-size", type=int, default=None, help="(default: 128; --setup paper: 256)")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate of the one-cycle schedule (default: 3e-3); --setup paper: the initial "
                         "one (default: 0.1)")
    ap.add_argument("--log-end", type=float, default=PAPER_LOG_END,
                    help=f"EL's log_end in (0, 1] (default: {PAPER_LOG_END}, the paper's for all its MNIST tables)")
    ap.add_argument("--smoothing", type=float, default=PAPER_SMOOTHING,
                    help=f"label smoothing of the +LS variants, in (0, 1) (default: {PAPER_SMOOTHING})")
    ap.add_argument("--train-images", type=int, default=None, help="use the first N training images (default: all 60000)")
    ap.add_argument("--test-images", type=int, default=None,
                    help="use the first N MNIST and Fashion-MNIST test images (default: all 10000)")
    ap.add_argument("--attack-images", type=int, default=None,
                    help="attack the first N test images, 0: no attacks (default: 500; --setup paper: 0)")
    ap.add_argument("--apgd-steps", type=int, default=None, help="iterations of each APGD attack (default: 100)")
    ap.add_argument("--pgd-steps", type=int, default=None, help="PGD iterations (default: 20)")
    add_run_options(ap, "CI smoke run: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                    + " (where not given)")
    args = parse_run_options(ap, argv)
    if args.render is not None:
        return args

    _fill_defaults(args)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        ap.error(f"--variants takes a comma-separated subset of {','.join(VARIANTS)}, got {bad or 'nothing'}")
    if len(set(args.variants)) != len(args.variants):
        ap.error(f"--variants names a variant twice: {','.join(args.variants)}")
    for name, low, high in (("seeds", 2, None), ("epochs", 1, None), ("batch_size", 1, None), ("pgd_steps", 1, None),
                            ("apgd_steps", 1, None),
                            ("train_images", 1, 60000), ("test_images", 1, 10000), ("attack_images", 0, None)):
        value = getattr(args, name)
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            ap.error(f"--{name.replace('_', '-')} must be {allowed}, got {value}")
    if args.attack_images > args.test_images:
        ap.error(f"--attack-images ({args.attack_images}) must be <= --test-images ({args.test_images})")
    if args.threads is None:
        args.threads = min(usable_cores(), 8)
    elif args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not (args.lr > 0 and args.lr < float("inf")):
        ap.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 < args.log_end <= 1:
        ap.error(f"--log-end must be in (0, 1], got {args.log_end}")
    if not 0 < args.smoothing < 1:
        ap.error(f"--smoothing must be in (0, 1), got {args.smoothing}")
    check_folders_and_attacks(ap, args)
    return args


def _fill_defaults(args) -> None:
    """The options not given on the command line: the setup's (--epochs, --batch-size, --lr, --attack-images:
    recipes.RECIPES, ATTACK_IMAGES) or FULL's; with --quick, the smaller of that and QUICK's. A value given is
    used as it is, --quick or not."""
    recipe = RECIPES[args.setup]
    defaults = {**FULL, "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
                "attack_images": ATTACK_IMAGES[args.setup]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, min(value, QUICK[key]) if args.quick and key in QUICK else value)


def render(path: str) -> int:
    """table.md beside results.json ``path``, from it (after a change of the table's layout)."""
    from el_evidence.reproduce import report

    print(report.rerender(path, report.render_table_md, "el-reproduce mnist"))
    return 0


def write_results(out: str, results: dict, arrays: dict):
    """results.json, table.md and the plots written into ``out`` as one set (:data:`OUTPUTS`: an interrupted
    write leaves the previous set; a previous run's plots that this one lacks go with it); their paths."""
    from el_plugins.files import output_set
    from el_evidence.reproduce import report

    with output_set(out, owns=OUTPUTS) as staged:
        written = report.write_outputs(staged.staging, results, arrays)
    return [staged.final(path) for path in written]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["translation"]:
        return translation_main(argv[1:])
    if argv[:1] == ["mnist-table11"]:
        from el_evidence.reproduce import table11
        return table11.main(argv[1:])
    args = parse_args(argv)
    commands.setup_logging(MNIST_PROG, also=("el_evidence",))
    if args.render is not None:
        return commands.run(MNIST_PROG, lambda: render(args.render), errors=(OSError,))
    from el_evidence.data import DataError

    return commands.run(MNIST_PROG, lambda: _reproduce(args, argv), errors=(DataError, OSError))


def _reproduce(args, argv) -> int:
    """The experiment (mnist) with checked arguments: train, measure, write OUT, print the table."""
    import torch

    from el_evidence.reproduce import mnist, report

    log = logger.info
    started = time.time()
    if args.device.type == "cpu":
        torch.set_num_threads(args.threads)
    data = load_data(args.data, log)
    settings = mnist.Settings(
        setup=args.setup, seeds=tuple(range(args.seeds)), variants=tuple(args.variants), epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, log_end=args.log_end, smoothing=args.smoothing, train_images=args.train_images,
        test_images=args.test_images, ood_images=args.test_images, attack_images=args.attack_images,
        apgd_steps=args.apgd_steps, pgd_steps=args.pgd_steps, device=str(args.device), threads=args.threads if args.device.type == "cpu" else 0,
        quick=args.quick, extra={"note": args.note, "command": "el-reproduce " + " ".join(sys.argv[1:] if argv is None else argv),
                                 "why_not_autoattack": mnist.WHY_NOT_AUTOATTACK})
    log(f"mnist ({mnist.RECIPES[args.setup].label}): {len(settings.variants)} variants x {len(settings.seeds)} seeds, "
        f"{settings.epochs} epoch(s) "
        f"on {settings.train_images:,} images, {settings.device}" + (f", {args.threads} thread(s)" if settings.threads else ""))
    results, arrays = mnist.run(settings, data, data_info(args.data, args), progress=args.progress, log=log)
    results["settings"]["wall_seconds_with_data"] = round(time.time() - started, 1)
    written = write_results(args.out, results, arrays)
    print(report.render_table_md(results))
    log(f"wrote {', '.join(written)}")
    return 0


# --------------------------------------------------------------------------- translation
TRANSLATION_QUICK = {"train_pairs": 2000, "valid_pairs": 200, "test_pairs": 200, "vocab_size": 1000, "max_epoch": 2,
                     "average_last": 2}
QUICK_MODEL = ("--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64", "--decoder-embed-dim",
               "64", "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads",
               "2", "--decoder-attention-heads", "2")
QUICK_GENERATION = ("--max-len-a", "1.2", "--max-len-b", "10")  # an untrained model's outputs stay short


def parse_translation_args(argv):
    from el_evidence.reproduce.translation import RECIPE, VARIANTS, Settings

    defaults = Settings()
    ap = argparse.ArgumentParser(
        prog=f"{PROG} translation", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The paper's translation claims (BLEU gain at log_end 0.5, loss at log_end 1, larger margins) on "
                    "the Spanish -> English Bible (el-data bible), through the IWSLT pipeline's own commands. Writes "
                    "OUT/results.json, table.md, plots and hypotheses/ (the detokenised test translations); the "
                    "checkpoints and logs stay in --work. A rerun with the same settings reuses the finished runs.")
    ap.add_argument("--out", default="runs/reproduce-translation", help="output folder (default: runs/reproduce-translation)")
    ap.add_argument("--work", default=None, help="data-bin, checkpoints and logs (default: OUT/work)")
    ap.add_argument("--data", default=os.path.join("data", "bible"),
                    help="the corpus folder; filled by `el-data bible` when empty (default: data/bible)")
    for v in VARIANTS:
        ap.add_argument(f"--{v.replace('_', '-')}-seeds", type=int, default=len(defaults.seeds[v]),
                        help=f"seeds 1..N of {v} (default: {len(defaults.seeds[v])}; 0 leaves the variant out)")
    ap.add_argument("--max-epoch", type=int, default=None, help=f"override the recipe's ({RECIPE}) --max-epoch")
    ap.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                    help=f"joint sentencepiece vocabulary (default: {defaults.vocab_size})")
    ap.add_argument("--average-last", type=int, default=defaults.average_last,
                    help=f"epoch checkpoints averaged (default: {defaults.average_last})")
    add_run_options(ap, "CI smoke run (not a result): " + ", ".join(f"{k.replace('_', '-')} {v}"
                                                                 for k, v in TRANSLATION_QUICK.items())
                    + ", one seed each, a 1+1-layer d=64 model", threads=False)
    args = parse_run_options(ap, argv)
    if args.render is not None:
        return args, None
    seeds = {v: getattr(args, f"{v}_seeds") for v in VARIANTS}
    for v, n in seeds.items():
        if n < 0:
            ap.error(f"--{v.replace('_', '-')}-seeds must be >= 0, got {n}")
    if "ce" not in [v for v, n in seeds.items() if n] or not any(seeds[v] for v in VARIANTS if v != "ce"):
        ap.error("the baseline (--ce-seeds) and at least one EL variant need seeds: the claims compare them")
    for name, low in (("max_epoch", 1), ("vocab_size", 100), ("average_last", 1)):
        value = getattr(args, name)
        if value is not None and value < low:
            ap.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    for name in ("out", "work", "data"):
        problem = getattr(args, name) is not None and output_folder_problem(getattr(args, name))
        if problem:
            ap.error(f"--{name} {getattr(args, name)}: {problem}")
    if args.quick:  # options given explicitly win over --quick's
        explicit = {a.split("=")[0] for a in argv if a.startswith("--")}
        seeds = {v: 1 if f"--{v.replace('_', '-')}-seeds" not in explicit else n for v, n in seeds.items()}
        for key, value in TRANSLATION_QUICK.items():
            if f"--{key.replace('_', '-')}" not in explicit:
                setattr(args, key, value)
    from el_evidence.reproduce.translation import planned_epochs
    from el_plugins.translation.recipe import RECIPES

    epochs = args.max_epoch or planned_epochs(RECIPES[RECIPE].args)
    if args.average_last > min(epochs, 10):
        ap.error(f"--average-last {args.average_last} needs at least as many epochs (training runs {epochs}) and at most "
                 "the 10 epoch checkpoints a run keeps")
    settings = Settings(
        seeds={v: tuple(range(1, n + 1)) for v, n in seeds.items() if n}, vocab_size=args.vocab_size,
        max_epoch=args.max_epoch, average_last=args.average_last, device=str(args.device), quick=args.quick,
        train_overrides=QUICK_MODEL if args.quick else (), generate_overrides=QUICK_GENERATION if args.quick else (),
        train_pairs=getattr(args, "train_pairs", None), valid_pairs=getattr(args, "valid_pairs", None),
        test_pairs=getattr(args, "test_pairs", None),
        extra={"note": args.note, "command": f"{PROG} translation " + " ".join(argv)})
    return args, settings


def translation_main(argv) -> int:
    args, settings = parse_translation_args(argv)
    prog = f"{PROG} translation"
    commands.setup_logging(prog, also=("el_evidence",))
    from el_evidence.data import DataError

    if args.render is not None:
        return commands.run(prog, lambda: _render_translation(args.render))
    return commands.run(prog, lambda: _reproduce_translation(args, settings), errors=(DataError, OSError))


def _render_translation(path: str) -> int:
    """table.md beside results.json ``path``, from it (after a change of the table's layout)."""
    from el_evidence.reproduce import report, translation_report

    print(report.rerender(path, translation_report.render_table_md, "el-reproduce translation"))
    return 0


def _reproduce_translation(args, settings) -> int:
    from el_evidence.data import bible
    from el_evidence.reproduce import translation, translation_report

    log = logger.info
    try:
        bible.verify(args.data)
    except bible.DataError:
        if os.path.exists(os.path.join(args.data, bible.MANIFEST)):
            raise  # a damaged folder is reported, not silently fetched again
        log(f"{args.data} holds no corpus yet; fetching it (el-data bible --out {args.data})")
        bible.prepare(args.data, log=log)
    work = args.work or os.path.join(args.out, "work")
    results, extras = translation.run(settings, args.data, work, progress=args.progress, log=log)
    written = translation_report.write_outputs(args.out, results, extras)
    print(translation_report.render_table_md(results))
    log(f"wrote {len(written)} files into {args.out} (results.json, table.md, plots, hypotheses/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
