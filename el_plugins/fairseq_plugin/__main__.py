"""python -m el_plugins.fairseq_plugin: print the directory to pass as ``fairseq-train --user-dir`` (the
fallback to automatic activation). It takes no arguments; anything else is a usage error (exit 2)."""
import argparse
import os
import sys

PROG = "python -m el_plugins.fairseq_plugin"


def main(argv=None) -> int:
    argparse.ArgumentParser(prog=PROG, description=__doc__).parse_args(argv)
    print(os.path.dirname(os.path.abspath(__file__)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
