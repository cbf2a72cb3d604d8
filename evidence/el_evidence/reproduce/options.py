"""What every el-reproduce experiment shares (mnist, mnist-table11, translation): its options, the usable cores, and
the MNIST data folder it reads (fetched by el-data mnist when empty)."""
import argparse
import importlib.util
import os
from typing import Optional, Sequence

from el_plugins import commands
from el_plugins.devices import add_device_argument
from el_plugins.files import output_folder_problem


def add_run_options(ap: argparse.ArgumentParser, quick_help: str, threads: bool = True) -> None:
    """--device, --threads (when the experiment trains in this process), --note, --quick (``quick_help``),
    --no-progress and --render RESULTS_JSON."""
    add_device_argument(ap)
    if threads:
        ap.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the usable cores, at most 8)")
    ap.add_argument("--note", default="",
                    help="a remark stored in results.json settings (e.g. 'CPU shared with other jobs')")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    commands.add_progress_argument(ap)
    ap.add_argument("--render", metavar="RESULTS_JSON",
                    help="train nothing: write table.md beside an existing results.json from it, and print it")


def parse_run_options(ap: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """``ap.parse_args(argv)``, with the file of --render checked (a usage error when there is none)."""
    args = ap.parse_args(argv)
    if args.render is not None and not os.path.isfile(args.render):
        ap.error(f"--render {args.render}: no such file")
    return args


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_data(folder: str, log):
    """The checked data of ``folder``, fetched there first (el-data mnist) when the folder has none."""
    from el_evidence.data import MANIFEST, DataError, load, prepare

    try:
        return load(folder)
    except DataError:
        if os.path.exists(os.path.join(folder, MANIFEST)):
            raise  # a damaged folder is reported, not silently fetched again
    log(f"{folder} holds no data yet; fetching it (el-data mnist --out {folder})")
    prepare(folder, log=log)
    return load(folder)


def data_info(folder: str, args) -> dict:
    """What of each split of ``folder`` a run uses (``args.train_images``, ``args.test_images``), with its source,
    licence and checksums (for results.json)."""
    import json

    from el_evidence.data import MANIFEST

    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        splits = json.load(f)["splits"]
    used = {"mnist/train": args.train_images, "mnist/test": args.test_images, "fashion_mnist/test": args.test_images}
    return {key.replace("/", "_"): {"images": used[key], "of": s["images"], "source": s["source"], "licence": s["licence"],
                                    "sha256": {k: v["sha256"] for k, v in s["files"].items()}}
            for key, s in splits.items()}


def check_folders_and_attacks(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage errors every MNIST experiment shares: --out and --data must be folders it can write (or make),
    and the attacks need torchattacks."""
    for name in ("out", "data"):
        problem = output_folder_problem(getattr(args, name))
        if problem:
            ap.error(f"--{name} {getattr(args, name)}: {problem}")
    if importlib.util.find_spec("torchattacks") is None:
        ap.error("the attacks need torchattacks: pip install --no-deps torchattacks==3.5.1 (scripts/setup.sh does)")
