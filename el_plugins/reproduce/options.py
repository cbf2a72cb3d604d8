"""The options every el-reproduce experiment takes (mnist, mnist-table11, translation), in one place."""
import argparse
import os
from typing import Optional, Sequence

from el_plugins import commands
from el_plugins.devices import add_device_argument


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
