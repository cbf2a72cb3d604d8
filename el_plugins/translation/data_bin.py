"""What a fairseq translation data-bin holds, read from its files before fairseq loads it: its language pair
and splits (what fairseq-preprocess writes: ``dict.<lang>.txt``, ``<split>.<src>-<tgt>.<lang>.{bin,idx}``)
and how its text was split into subwords (the record el-prepare-iwslt leaves, :data:`RECORD`, else the
target dictionary's symbols). Standard library only."""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Set, Tuple

from el_plugins.commands import UsageError
from el_plugins.files import read_lines, write_json

__all__ = ['has_sentencepiece_pieces', 'language_pair', 'read_record', 'RECORD', 'SENTENCEPIECE_MARK', 'splits_by_pair',
           'subword_kind', 'write_record']

RECORD = "el-plugins.json"  # written into the data-bin by el_plugins.translation.prepare
SENTENCEPIECE_MARK = "\u2581"  # '▁': sentencepiece's word-start mark
_SPLIT_FILE = re.compile(r"(.+)\.([^.-]+)-([^.-]+)\.([^.]+)\.idx")


def write_record(data_bin: str, **facts) -> None:
    """Record how ``data_bin`` was made (subwords, languages, ...) in it, for the tools that read it later."""
    write_json(os.path.join(data_bin, RECORD), {"made_by": "el-plugins (el_plugins.translation.prepare)", **facts})


def read_record(data_bin: str) -> Dict:
    """The record of :func:`write_record` ({} where there is none)."""
    path = os.path.join(data_bin, RECORD)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    return record if isinstance(record, dict) else {}


def splits_by_pair(data_bin: str) -> Dict[Tuple[str, str], Set[str]]:
    """{(src, tgt): splits} of the splits in ``data_bin`` binarized on both sides (.bin and .idx), whose two
    dictionaries are there."""
    names = set(os.listdir(data_bin))
    sides: Dict[Tuple[Tuple[str, str], str], Set[str]] = {}  # (pair, split) -> languages present
    for name in names:
        m = _SPLIT_FILE.fullmatch(name)
        if m and m.group(4) in m.group(2, 3) and f"{name[:-len('.idx')]}.bin" in names:
            sides.setdefault((m.group(2, 3), m.group(1)), set()).add(m.group(4))
    found: Dict[Tuple[str, str], Set[str]] = {}
    for (pair, split), langs in sides.items():
        if langs == set(pair) and all(f"dict.{lang}.txt" in names for lang in pair):
            found.setdefault(pair, set()).add(split)
    return found


def language_pair(data_bin: str, split: str, flag: str = "--gen-subset") -> Tuple[str, str]:
    """(source, target) of the translation data-bin ``data_bin``, checked to hold ``split`` (both sides);
    a :class:`el_plugins.commands.UsageError` saying what is missing otherwise."""
    found = splits_by_pair(data_bin)
    if not found:
        raise UsageError(f"DATA_BIN {data_bin} is not a translation data-bin: it has no dict.<lang>.txt with "
                         "<split>.<src>-<tgt>.<lang>.bin/.idx files (what fairseq-preprocess --source-lang/"
                         "--target-lang writes)")
    if len({tuple(sorted(pair)) for pair in found}) > 1:
        raise UsageError(f"DATA_BIN {data_bin} holds several language pairs "
                         f"({', '.join(sorted('-'.join(p) for p in found))}): give a data-bin of one")
    for pair, splits in found.items():
        if split in splits:
            return pair
    have = sorted(set().union(*found.values()))
    raise UsageError(f"{flag} {split}: DATA_BIN has no such split (it has: {', '.join(have)})")


def subword_kind(data_bin: str, target: str) -> Tuple[str, str]:
    """(fairseq's --post-process that undoes ``data_bin``'s subwords, why): what el-prepare-iwslt recorded
    there, else what the target dictionary holds: sentencepiece pieces (a word starts with '▁'),
    subword-nmt BPE (a piece goes on with '@@') or whole words ('none')."""
    recorded = read_record(data_bin).get("post_process")
    if isinstance(recorded, str):
        return recorded, f"{os.path.join(data_bin, RECORD)} says so"
    dictionary = os.path.join(data_bin, f"dict.{target}.txt")
    symbols = [line.split(" ", 1)[0] for line in read_lines(dictionary)]
    if any(s.startswith(SENTENCEPIECE_MARK) for s in symbols):
        return "sentencepiece", f"{dictionary} has sentencepiece pieces"
    if any(s.endswith("@@") for s in symbols):
        return "subword_nmt", f"{dictionary} has subword-nmt pieces (@@)"
    return "none", f"{dictionary} has whole words, no sentencepiece or @@ pieces"


def has_sentencepiece_pieces(data_bin: str, target: str) -> bool:
    """Whether the target dictionary has a sentencepiece piece (a symbol starting with '▁')."""
    return any(line.startswith(SENTENCEPIECE_MARK) for line in read_lines(os.path.join(data_bin, f"dict.{target}.txt")))
