"""el-reproduce: rerun the paper's experiments that a CPU can, side by side with the paper.

  el-reproduce mnist                 # ~15 min on 2 CPU cores: CE, CE+LS, EL, EL+LS x 3 seeds
  el-reproduce mnist --quick         # a CI smoke run on small subsets (not a result)
  el-reproduce mnist --setup paper   # the authors' Tables 1/4/13 network and schedule (~4 h a run on 2 CPU cores)
  el-reproduce mnist-table11         # Table 11 the authors' way (el-reproduce mnist-table11 --help)

mnist: real MNIST (train 60,000 / test 10,000) with the Fashion-MNIST test set as out-of-distribution
data (el-data mnist fetches both into --data, offline, on the first run). Each variant trains the same
network with the same schedule per seed (--setup el-plugins: el-plugins' own small CNN, 5 epochs; paper:
the authors' MNISTNet, 100 epochs, the best test epoch); measured: test accuracy, OOD detection (AUROC /
FPR at 95% TPR for the minimum conditional energy, the free energy and the max. probability, by
scikit-learn and as the authors' metrics.py), ECE, the energy on and out of the data, and accuracy under
L-inf attacks (torchattacks: APGD-CE + APGD-DLR, PGD, FGSM) at eps 0.1 and 0.2.
mnist-table11: Table 11 as the authors ran it (their network, training and torchattacks 3.1.0's AutoAttack).
Writes OUT/results.json, OUT/table.md (measured mean +- std beside the paper) and PNG plots; prints the
table (stdout). Progress bars and messages go to stderr (``--no-progress``: no bars); a damaged data folder
or results.json is ``el-reproduce: error: ...``, exit 1; a bad option exits 2.
"""
import argparse
import importlib.util
import logging
import os
import sys
import time

from el_plugins import commands
from el_plugins.devices import add_device_argument
from el_plugins.reproduce.paper import PAPER_LOG_END, PAPER_SMOOTHING, VARIANTS
from el_plugins.reproduce.recipes import ATTACK_IMAGES, RECIPES, SETUPS

PROG = "el-reproduce"
logger = logging.getLogger(__name__)
QUICK = {"seeds": 2, "epochs": 1, "train_images": 12000, "test_images": 2000, "attack_images": 200, "apgd_steps": 20,
         "pgd_steps": 10}


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=("mnist", "mnist-table11"),
                    help="mnist: the paper's MNIST tables (1, 4, 11, 13); mnist-table11: Table 11 the authors' way "
                         "(its own options: el-reproduce mnist-table11 --help)")
    ap.add_argument("--setup", choices=SETUPS, default="el-plugins",
                    help="el-plugins: el-plugins' own CPU setup (SmallCNN, Adam, 5 epochs; default); paper: the "
                         "authors' Tables 1/4/13 setup (MNISTNet, SGD, 100 epochs, the best test epoch; for a GPU), "
                         "no attacks unless --attack-images")
    ap.add_argument("--out", default="runs/reproduce-mnist", help="output folder (default: runs/reproduce-mnist)")
    ap.add_argument("--data", default="data", help="the data folder; filled by `el-data mnist` when empty (default: data)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per variant, N >= 2 (default: 3)")
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
    ap.add_argument("--train-images", type=int, default=60000, help="use the first N training images (default: all 60000)")
    ap.add_argument("--test-images", type=int, default=10000,
                    help="use the first N MNIST and Fashion-MNIST test images (default: all 10000)")
    ap.add_argument("--attack-images", type=int, default=None,
                    help="attack the first N test images, 0: no attacks (default: 500; --setup paper: 0)")
    ap.add_argument("--apgd-steps", type=int, default=100, help="iterations of each APGD attack (default: 100)")
    ap.add_argument("--pgd-steps", type=int, default=20, help="PGD iterations (default: 20)")
    add_device_argument(ap)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the usable cores, at most 8)")
    ap.add_argument("--note", default="", help="a remark stored in results.json settings (e.g. 'CPU shared with other jobs')")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    commands.add_progress_argument(ap)
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="train nothing: write table.md beside an existing results.json from it, and print it")
    args = ap.parse_args(argv)
    if args.render is not None:
        if not os.path.isfile(args.render):
            ap.error(f"--render {args.render}: no such file")
        return args

    _setup_defaults(args)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, min(getattr(args, key), value))
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
        args.threads = min(_usable_cores(), 8)
    elif args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not (args.lr > 0 and args.lr < float("inf")):
        ap.error(f"--lr must be a positive number, got {args.lr}")
    if not 0 < args.log_end <= 1:
        ap.error(f"--log-end must be in (0, 1], got {args.log_end}")
    if not 0 < args.smoothing < 1:
        ap.error(f"--smoothing must be in (0, 1), got {args.smoothing}")
    for name in ("out", "data"):
        path = getattr(args, name)
        if os.path.exists(path) and not os.path.isdir(path):
            ap.error(f"--{name} {path}: exists and is not a folder")
    if importlib.util.find_spec("torchattacks") is None:
        ap.error("the attacks need torchattacks: pip install --no-deps torchattacks==3.5.1 (scripts/setup.sh does)")
    return args


def _setup_defaults(args) -> None:
    """--epochs, --batch-size, --lr and --attack-images not given: the chosen setup's."""
    recipe = RECIPES[args.setup]
    defaults = {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
                "attack_images": ATTACK_IMAGES[args.setup]}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def load_data(folder: str, log):
    """The checked data of ``folder``, fetched there first (el-data mnist) when the folder has none."""
    from el_plugins.data import MANIFEST, DataError, load, prepare

    try:
        return load(folder)
    except DataError:
        if os.path.exists(os.path.join(folder, MANIFEST)):
            raise  # a damaged folder is reported, not silently fetched again
    log(f"{folder} holds no data yet; fetching it (el-data mnist --out {folder})")
    prepare(folder, log=log)
    return load(folder)


def data_info(folder: str, args) -> dict:
    import json

    from el_plugins.data import MANIFEST

    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        splits = json.load(f)["splits"]
    used = {"mnist/train": args.train_images, "mnist/test": args.test_images, "fashion_mnist/test": args.test_images}
    return {key.replace("/", "_"): {"images": used[key], "of": s["images"], "source": s["source"], "licence": s["licence"],
                                    "sha256": {k: v["sha256"] for k, v in s["files"].items()}}
            for key, s in splits.items()}


def render(path: str) -> int:
    """table.md beside results.json ``path``, from it (after a change of the table's layout)."""
    from el_plugins.reproduce import report

    print(report.rerender(path, report.render_table_md, "el-reproduce mnist"))
    return 0


def main(argv=None):
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["mnist-table11"]:
        from el_plugins.reproduce import table11
        return table11.main(words[1:])
    args = parse_args(argv)
    commands.setup_logging(PROG)
    if args.render is not None:
        return commands.run(PROG, lambda: render(args.render), errors=(OSError,))
    from el_plugins.data import DataError

    return commands.run(PROG, lambda: _reproduce(args, argv), errors=(DataError, OSError))


def _reproduce(args, argv) -> int:
    """The experiment (mnist) with checked arguments: train, measure, write OUT, print the table."""
    import torch

    from el_plugins.reproduce import mnist, report

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
    written = report.write_outputs(args.out, results, arrays)
    print(report.render_table_md(results))
    log(f"wrote {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
