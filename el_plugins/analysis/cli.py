"""el-analyze: what EL changed vs a cross-entropy baseline, for timm or fairseq checkpoints.

  el-analyze timm --model resnet18 --checkpoint ce.pth el.pth --names CE EL \\
      --data imagenet/val [--ood-data other/images] --out report_dir
  el-analyze fairseq --checkpoint ce/checkpoint_best.pt el/checkpoint_best.pt --names CE EL \\
      --data data-bin --split valid --out report_dir

Writes report_dir/report.json (one entry per run), table.md and PNG plots (margins, energy on the
data, p_y, reliability diagram; with OOD data the min. energy histograms and ROC curves), and
prints a side-by-side table. Nothing is written unless every run succeeds. An image that cannot be
read (truncated, not an image) is skipped with a warning naming it, and counted in the report; a
folder of which no image can be read is refused.

Errors are "el-analyze MODE: error: ...": exit 2 for a bad option (also one found while running, such
as no such --split), exit 1 for input that cannot be analyzed (a checkpoint that does not fit --model, a
folder without readable images, ...).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from el_plugins import commands
from el_plugins.analysis.report import PLOT_FILES, AnalysisError
from el_plugins.files import output_folder_problem
from el_plugins.devices import add_device_argument

__all__ = ['analyze', 'build_parser', 'data_overlap', 'main', 'run_names']

logger = logging.getLogger(__name__)


def _typed(convert, valid, allowed):
    """An argparse type: ``convert`` the text, accept it if ``valid``, else say what is ``allowed``."""
    def parse(value: str):
        try:
            x = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value!r}") from None
        if not valid(x):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return x
    return parse


_log_end = _typed(float, lambda x: 0.0 < x <= 1.0, "a number in (0, 1]")
_crop_pct = _typed(float, lambda x: 0.0 < x <= 1.0, "a number in (0, 1]")
_positive_int = _typed(int, lambda x: x >= 1, "a positive integer")
_nonneg_int = _typed(int, lambda x: x >= 0, "an integer >= 0")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("runs and output")
    g.add_argument("--checkpoint", action="extend", nargs="+", required=True, metavar="PATH",
                   help="checkpoint(s) to compare; repeat the flag or list several (baseline first)")
    g.add_argument("--names", nargs="+", metavar="NAME",
                   help="one name per checkpoint, e.g. CE EL (default: the file names)")
    g.add_argument("--out", required=True, metavar="DIR", help="report folder (created; files in it are replaced)")
    g.add_argument("--log-end", type=_log_end, default=0.75, metavar="P",
                   help="rows with p_y > P count as well-classified (default: 0.75)")
    g.add_argument("--bins", type=_positive_int, default=15, metavar="N", help="ECE confidence bins (default: 15)")
    add_device_argument(g)
    g.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="images per batch (timm, default 64) / max sentences per batch (fairseq)")
    g.add_argument("--max-batches", type=_positive_int, default=None, metavar="N",
                   help="stop after N batches per data set (a quick look)")
    commands.add_progress_argument(g)
    g.add_argument("--title", default=None, help="what the plots call the data (default: the data folder's name)")

    ap = argparse.ArgumentParser(
        prog="el-analyze", description="Margins, energies, calibration and OOD detection of EL vs CE checkpoints.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="mode", metavar="{timm,fairseq}", required=True)

    t = sub.add_parser("timm", parents=[common], help="timm image classifiers over an ImageFolder",
                       description="timm image classifiers over an ImageFolder (one sub-folder per class).")
    g = t.add_argument_group("timm")
    g.add_argument("--model", required=True, help="timm architecture, e.g. resnet18 (as given to timm.create_model)")
    g.add_argument("--data", required=True, metavar="DIR", help="labelled ImageFolder: DIR/<class>/<image>")
    g.add_argument("--ood-data", metavar="DIR", help="out-of-distribution images (any layout, labels unused)")
    g.add_argument("--ood-name", default=None, help="what the plots call the OOD data (default: its folder name)")
    g.add_argument("--num-classes", type=_positive_int, default=None, metavar="N",
                   help="classes of the model (default: the number of class folders in --data)")
    g.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="extra timm.create_model arguments")
    g.add_argument("--img-size", type=_positive_int, default=None, metavar="N",
                   help="input size (default: the model's pretrained config)")
    g.add_argument("--crop-pct", type=_crop_pct, default=None, metavar="F",
                   help="resize to size/F then centre-crop (default: the model's config; 1 = no crop)")
    g.add_argument("--interpolation", default=None, choices=("bilinear", "bicubic", "nearest"))
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    g.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"))
    g.add_argument("--use-ema", action="store_true", help="use 'state_dict_ema' of timm train.py checkpoints")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="load with torch.load(weights_only=False): only for files you trust")
    g.add_argument("--workers", type=_nonneg_int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="data loader processes")

    f = sub.add_parser("fairseq", parents=[common], help="fairseq models, token level, teacher-forced",
                       description="fairseq models over a binarized split, token level with teacher forcing, "
                                   "padding excluded.")
    g = f.add_argument_group("fairseq")
    g.add_argument("--data", required=True, metavar="DIR", help="fairseq-preprocess output (data-bin)")
    g.add_argument("--split", default="valid", help="split to analyze (default: valid)")
    g.add_argument("--max-tokens", type=_positive_int, default=4000, metavar="N", help="tokens per batch (default: 4000)")
    ap.set_defaults(_subparsers={"timm": t, "fairseq": f})
    return ap


def run_names(checkpoints: List[str], names: Optional[List[str]], parser) -> List[str]:
    if names is not None:
        if len(names) != len(checkpoints):
            parser.error(f"--names gives {len(names)} name(s) for {len(checkpoints)} checkpoint(s)")
        if len(set(names)) != len(names):
            parser.error(f"--names must be distinct, got {' '.join(names)}")
        return names
    base = [os.path.splitext(os.path.basename(p))[0] for p in checkpoints]
    if len(set(base)) == len(base):
        return base
    parent = [f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}/{b}" for p, b in zip(checkpoints, base)]
    if len(set(parent)) == len(parent):
        return parent
    return [f"{i + 1}:{b}" for i, b in enumerate(base)]


def data_overlap(data: str, ood: str) -> Optional[str]:
    """How the --ood-data folder overlaps --data (the same folder by any path, or one inside the other), or None."""
    try:
        if os.path.samefile(data, ood):
            return f"--ood-data {ood} is the same folder as --data {data}"
    except OSError:  # one of them is missing: the back end says so
        pass
    real_data, real_ood = os.path.realpath(data), os.path.realpath(ood)
    if real_data == real_ood:
        return f"--ood-data {ood} is the same folder as --data {data}"
    common = os.path.commonpath([real_data, real_ood])
    if common == real_data:
        return f"--ood-data {ood} is inside --data {data}"
    if common == real_ood:
        return f"--data {data} is inside --ood-data {ood}"
    return None


def analyze(args, names: List[str]) -> int:
    """Run the back end of ``args.mode``, write the report all-or-nothing, print the table (stdout)."""
    if args.mode == "timm":
        from el_plugins.analysis import timm_eval as backend
    else:
        from el_plugins.analysis import fairseq_eval as backend
    try:
        runs, meta = backend.run(args, names)

        from el_plugins.analysis import report as rep

        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging set-up lets its DEBUG through

        what = args.title or (os.path.basename(os.path.normpath(args.data)) +
                              (f" ({args.split})" if args.mode == "fairseq" else ""))
        ood_label = getattr(args, "ood_name", None) or (
            os.path.basename(os.path.normpath(args.ood_data)) if getattr(args, "ood_data", None) else "OOD")
        report = rep.build_report(dict(meta, names=names, log_end=args.log_end, bins=args.bins,
                                       ood_name=ood_label if meta.get("ood_data") else None), runs)
        plots = rep.render_plots(runs, what, ood_label)
        files = rep.report_files(report, plots)
        try:
            rep.write_outputs(args.out, files, remove_stale=list(PLOT_FILES))
        except OSError as exc:
            raise AnalysisError(f"--out {args.out}: cannot write the report ({exc})") from None
    except KeyboardInterrupt:
        logger.error("interrupted, nothing written")
        return 130

    print(rep.format_table(dict(report)))
    print(f"\nwrote {os.path.join(args.out, 'report.json')}, table.md and {', '.join(sorted(plots))}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args._subparsers[args.mode]  # errors show the sub-command's usage
    names = run_names(args.checkpoint, args.names, sub)
    for path in args.checkpoint:
        if not os.path.isfile(path):
            sub.error(f"--checkpoint {path}: no such file")
    problem = output_folder_problem(args.out)
    if problem:
        sub.error(f"--out {args.out}: {problem} (give a folder to write the report into)")
    if getattr(args, "ood_data", None):
        overlap = data_overlap(args.data, args.ood_data)
        if overlap:
            sub.error(f"{overlap}: in-distribution and out-of-distribution data must differ")
    if args.batch_size is None and args.mode == "timm":
        args.batch_size = 64
    commands.setup_logging("el-analyze")
    return commands.run(sub.prog, lambda: analyze(args, names))


if __name__ == "__main__":
    sys.exit(main())
