"""A real parallel corpus offline: the Spanish and English Bibles, aligned verse by verse.

Sources, both public domain, both in the KJV versification (so verse
slot i of one is slot i of the other):

- Spanish: Debian ``sword-text-sparv``, SWORD module ``spaRV1909eb`` (Reina-Valera 1909);
- English: Debian ``sword-text-kjv``, SWORD module ``engKJV2006eb`` (King James Version, 1769 text).

Each is read from the installed package, else from ``apt-get download`` + ``dpkg-deb -x`` into the cache
(:mod:`el_evidence.data.debian`); no libsword. A SWORD zText module per testament (``ot``, ``nt``) is three
files: ``.bzv`` (10 bytes per verse slot: u32 block, u32 start, u16 size; little-endian), ``.bzs`` (12
bytes per block: u32 offset, u32 compressed size, u32 size) and ``.bzz`` (the zlib blocks of UTF-8 OSIS
markup). Start and size are byte offsets into the decompressed block. A slot's text is cleaned of
``<note>`` and ``<title>`` elements, then of all tags and the pilcrow, spaces squeezed.

Alignment: the slots are labelled (book, chapter, verse) from the module's own book and chapter markers,
checked against the KJV versification's shape (66 books, 1,189 chapters, 31,102 verses). The Spanish text
splits about a dozen chapters differently, which shifts verses by one there: every chapter with a verse that
is empty on one side is dropped, with the chapter after it. Then empty verses and repeated source verses
(the same Spanish text twice, e.g. in parallel passages) are dropped, keeping the first, before the split:
no valid or test source line occurs in train. The split is by whole chapters, drawn with a fixed seed
(a chapter's verses stay together, so the test set is text the model has not seen around it): test, then
valid, get the first chapters of the shuffled order until they hold their number of pairs (the chapter
that crosses the number is cut there; its other verses go to train), train the rest, each in Bible order.

:func:`prepare` writes ``{train,valid,test}.{es,en}`` (raw, detokenised text, one verse per line) and
``SOURCES.json`` (origins, checksums, licences, the counts and the dropped chapters), the manifest last;
:func:`load` reads them back, checked against it.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import random
import re
import struct
import zlib
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from el_evidence.data import debian
from el_evidence.data.idx import DataError
from el_evidence.data.manifest import read_manifest
from el_plugins.files import read_lines, write_json, write_lines

_log = logging.getLogger(__name__).info

MANIFEST = "SOURCES.json"
SRC, TGT = "es", "en"
SPLITS = ("train", "valid", "test")
DEFAULT_SIZES = {"valid": 1500, "test": 1000}
SPLIT_SEED = 20220301
MODULE_DIR = "usr/share/sword/modules/texts/ztext"
TESTAMENTS = ("ot", "nt")
KJV_SHAPE = {"ot": (39, 929, 23145), "nt": (27, 260, 7957)}
"""(books, chapters, verses) of each testament in the KJV versification."""


class Module(NamedTuple):
    package: str
    module: str
    title: str
    licence: str


MODULES = {
    SRC: Module("sword-text-sparv", "spaRV1909eb", "Reina-Valera 1909 (Spanish)", "public domain"),
    TGT: Module("sword-text-kjv", "engKJV2006eb", "King James Version, 1769 text (English)", "public domain"),
}


# --------------------------------------------------------------------------- SWORD zText
def read_ztext(folder: str, testament: str) -> List[str]:
    """The raw OSIS text of every verse slot of one testament ('' for an empty slot)."""
    base = os.path.join(folder, testament)
    try:
        with open(base + ".bzs", "rb") as f:
            bzs = f.read()
        with open(base + ".bzv", "rb") as f:
            bzv = f.read()
        with open(base + ".bzz", "rb") as f:
            bzz = f.read()
    except OSError as exc:
        raise DataError(f"{base}.bz[svz]: cannot read the SWORD module ({exc.strerror or exc})") from None
    if len(bzs) % 12 or len(bzv) % 10:
        raise DataError(f"{base}: .bzs/.bzv sizes {len(bzs)}/{len(bzv)} are not multiples of 12/10 (a damaged module)")
    blocks = []
    for offset, compressed, size in struct.iter_unpack("<III", bzs):
        try:
            block = zlib.decompress(bzz[offset:offset + compressed])
        except zlib.error as exc:
            raise DataError(f"{base}.bzz: block at byte {offset} does not decompress ({exc})") from None
        if len(block) != size:
            raise DataError(f"{base}.bzz: block at byte {offset} has {len(block)} bytes, the index says {size}")
        blocks.append(block)
    slots = []
    for number, (block, start, size) in enumerate(struct.iter_unpack("<IIH", bzv)):
        if size == 0:
            slots.append("")
            continue
        if block >= len(blocks) or start + size > len(blocks[block]):
            raise DataError(f"{base}.bzv: slot {number} points outside its block (a damaged module)")
        try:
            slots.append(blocks[block][start:start + size].decode("utf-8"))  # slice bytes, then decode
        except UnicodeDecodeError:
            raise DataError(f"{base}: slot {number} is not UTF-8 text") from None
    return slots


_DROP_ELEMENTS = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_verse(osis: str) -> str:
    """A slot's OSIS markup as plain text: notes and titles dropped, then every tag and the pilcrow."""
    text = _TAG.sub("", _DROP_ELEMENTS.sub("", osis)).replace("\u00b6", "")
    return _SPACE.sub(" ", text).strip()


_BOOK = re.compile(r'<div\b[^>]*\btype="book"[^>]*>')
_OSIS_ID = re.compile(r'\bosisID="([^"]+)"')
_START_ID = re.compile(r'\bsID="')
_CHAPTER = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"')


def verse_labels(slots: List[str], testament: str, where: str) -> List[Optional[Tuple[str, int]]]:
    """Per slot: (chapter osisID such as 'Gen.1', verse number) for verse slots, None for the module,
    testament, book and chapter headings; checked against the KJV versification's shape."""
    labels: List[Optional[Tuple[str, int]]] = [None] * len(slots)
    books = chapters = verses = 0
    chapter, verse = None, 0
    for i, text in enumerate(slots):
        if i < 2:  # module and testament headings
            continue
        book = _BOOK.search(text)
        if book and _OSIS_ID.search(book.group(0)) and _START_ID.search(book.group(0)):
            books, chapter = books + 1, None
            continue
        started = _CHAPTER.search(text)
        if started and not clean_verse(text):  # a chapter heading slot
            chapters, chapter, verse = chapters + 1, started.group(1), 0
            continue
        if chapter is None:
            raise DataError(f"{where}: slot {i} holds text before any chapter heading (not the KJV versification?)")
        verse += 1
        verses += 1
        labels[i] = (chapter, verse)
    if (books, chapters, verses) != KJV_SHAPE[testament]:
        raise DataError(f"{where}: {books} books, {chapters} chapters, {verses} verse slots; the KJV versification "
                        f"has {KJV_SHAPE[testament]} (another versification, or a damaged module)")
    return labels


# --------------------------------------------------------------------------- alignment and split
class Pair(NamedTuple):
    ref: str  # 'Gen.1.1'
    src: str
    tgt: str


def align(src_slots: Dict[str, List[str]], tgt_slots: Dict[str, List[str]], where: str):
    """(pairs in Bible order, dropped chapter ids, counts) from the two modules' slots of each testament."""
    pairs, dropped = [], []
    counts = {"verse_slots": 0, "nonempty_both": 0}
    for testament in TESTAMENTS:
        src, tgt = src_slots[testament], tgt_slots[testament]
        if len(src) != len(tgt):
            raise DataError(f"{where}: {testament} has {len(src)} slots in {MODULES[SRC].module} but {len(tgt)} in "
                            f"{MODULES[TGT].module}: not the same versification")
        labels = verse_labels(tgt, testament, f"{MODULES[TGT].module} {testament}")
        if verse_labels(src, testament, f"{MODULES[SRC].module} {testament}") != labels:
            raise DataError(f"{where}: the two modules' book and chapter headings differ in {testament}")
        chapters: Dict[str, List[Tuple[int, str, str]]] = {}
        for label, s, t in zip(labels, src, tgt):
            if label is not None:
                chapters.setdefault(label[0], []).append((label[1], clean_verse(s), clean_verse(t)))
        order = list(chapters)
        bad = {c for c in order if any(not s or not t for _, s, t in chapters[c])}
        drop = bad | {order[i + 1] for i, c in enumerate(order[:-1]) if c in bad}
        for chapter in order:
            verses = chapters[chapter]
            counts["verse_slots"] += len(verses)
            counts["nonempty_both"] += sum(1 for _, s, t in verses if s and t)
            if chapter in drop:
                dropped.append(chapter)
                continue
            pairs += [Pair(f"{chapter}.{v}", s, t) for v, s, t in verses]
    return pairs, dropped, counts


def deduplicate(pairs: List[Pair]) -> List[Pair]:
    """The pairs with a non-empty source and target whose source text was not seen before (Bible order)."""
    seen, kept = set(), []
    for pair in pairs:
        if pair.src and pair.tgt and pair.src not in seen:
            seen.add(pair.src)
            kept.append(pair)
    return kept


def chapter_of(pair: Pair) -> str:
    return pair.ref.rsplit(".", 1)[0]


def split_by_chapter(pairs: List[Pair], sizes: Dict[str, int], seed: int = SPLIT_SEED) -> Dict[str, List[Pair]]:
    """{split: pairs}: test, then valid, take whole chapters in a seeded shuffled order until they hold
    ``sizes[split]`` pairs (the crossing chapter is cut; its remaining verses stay in train); Bible order kept."""
    if sum(sizes.values()) >= len(pairs):
        raise ValueError(f"valid + test ({sum(sizes.values())} pairs) must leave pairs for train (there are {len(pairs)})")
    by_chapter: Dict[str, List[int]] = {}
    for i, pair in enumerate(pairs):
        by_chapter.setdefault(chapter_of(pair), []).append(i)
    order = list(by_chapter)
    random.Random(seed).shuffle(order)
    assigned: Dict[int, str] = {}
    chapters = iter(order)
    for split in ("test", "valid"):
        taken = 0
        while taken < sizes[split]:
            for i in by_chapter[next(chapters)][: sizes[split] - taken]:
                assigned[i] = split
                taken += 1
    return {split: [p for i, p in enumerate(pairs) if assigned.get(i, "train") == split] for split in SPLITS}


# --------------------------------------------------------------------------- the data folder
def file_name(split: str, lang: str) -> str:
    return f"{split}.{lang}"


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _sha256_lines(lines: List[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()


def read_modules(cache: str, log: Callable[[str], None] = _log):
    """{lang: {testament: slots}} and {lang: source facts} of the two SWORD modules."""
    slots, sources = {}, {}
    for lang, m in MODULES.items():
        probe = f"{MODULE_DIR}/{m.module}/ot.bzv"
        root, origin = debian.package_root(m.package, probe, cache, log)
        folder = os.path.join(root, MODULE_DIR, m.module)
        slots[lang] = {t: read_ztext(folder, t) for t in TESTAMENTS}
        sources[lang] = {"text": m.title, "package": m.package, "module": m.module, "origin": origin,
                         "folder": folder, "licence": m.licence,
                         "sha256": {f"{t}.{ext}": _sha256_file(os.path.join(folder, f"{t}.{ext}"))
                                    for t in TESTAMENTS for ext in ("bzs", "bzv", "bzz")}}
    return slots, sources


def build(slots, sizes: Dict[str, int] = DEFAULT_SIZES, seed: int = SPLIT_SEED):
    """({split: pairs}, alignment facts) from the modules' slots."""
    pairs, dropped, counts = align(slots[SRC], slots[TGT], "el-data bible")
    unique = deduplicate(pairs)
    splits = split_by_chapter(unique, sizes, seed)
    facts = dict(counts, aligned_pairs=len(pairs), unique_pairs=len(unique), dropped_chapters=dropped,
                 rule="chapters with a verse empty on one side are dropped with the chapter after them; then empty "
                      "verses and repeated source verses (first kept); split by whole chapters "
                      f"(seed {seed}; test then valid take chapters until full, the crossing chapter is cut)",
                 split_seed=seed)
    return splits, facts


def prepare(out: str, *, sizes: Dict[str, int] = DEFAULT_SIZES, cache: Optional[str] = None, force: bool = False,
            log: Callable[[str], None] = _log) -> dict:
    """Fill ``out`` with the aligned corpus (see the module docstring); returns its manifest. A folder that
    already holds it, intact and with the same split sizes, is kept unless ``force``."""
    from el_evidence.data.mnist import default_cache

    for split, size in sizes.items():
        if split not in ("valid", "test") or not (isinstance(size, int) and size >= 1):
            raise ValueError(f"sizes takes valid and test pair counts >= 1, got {sizes!r}")
    if not force:
        with contextlib.suppress(DataError):
            manifest = verify(out)
            if {s: manifest["splits"][s]["pairs"] for s in sizes} == dict(sizes):
                log(f"{out} already holds the checked corpus ({MANIFEST}); --force writes it again")
                return manifest
    slots, sources = read_modules(cache or default_cache(), log)
    splits, facts = build(slots, sizes)
    manifest = {"written_by": "el-data (el-plugins)", "corpus": "bible.es-en",
                "written_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
                "direction": f"{SRC}->{TGT}", "sources": sources, "alignment": facts, "splits": {}}
    with contextlib.suppress(FileNotFoundError):  # the old manifest first: a set being rewritten is never valid
        os.remove(os.path.join(out, MANIFEST))
    for split, pairs in splits.items():
        entry = {"pairs": len(pairs), "files": {}}
        for lang, side in ((SRC, [p.src for p in pairs]), (TGT, [p.tgt for p in pairs])):
            if any(not line or "\n" in line for line in side):
                raise DataError(f"{split}.{lang}: an empty or multi-line verse would be written (a bug)")
            write_lines(os.path.join(out, file_name(split, lang)), side)
            entry["files"][lang] = {"path": file_name(split, lang), "lines": len(side), "sha256": _sha256_lines(side),
                                    "origin": sources[lang]["text"]}
        entry["first_refs"] = [p.ref for p in pairs[:3]]
        manifest["splits"][split] = entry
    write_json(os.path.join(out, MANIFEST), manifest)
    log(f"wrote {out}: " + ", ".join(f"{s} {e['pairs']:,}" for s, e in manifest["splits"].items())
        + f" pairs ({facts['unique_pairs']:,} unique of {facts['aligned_pairs']:,} aligned; "
          f"{len(facts['dropped_chapters'])} chapters dropped)")
    return manifest


def verify(folder: str) -> dict:
    """The manifest of a corpus folder whose every file is there with its recorded line count and checksum."""
    path = os.path.join(folder, MANIFEST)
    manifest = read_manifest(folder, MANIFEST, "el-data bible")
    if manifest.get("corpus") != "bible.es-en" or set(manifest.get("splits", {})) != set(SPLITS):
        raise DataError(f"{path}: not the manifest of el-data bible (run `el-data bible --out {folder} --force`)")
    for split in SPLITS:
        counts = set()
        for lang in (SRC, TGT):
            facts = manifest["splits"][split]["files"][lang]
            file = os.path.join(folder, facts["path"])
            try:
                lines = read_lines(file)
            except (OSError, ValueError) as exc:
                raise DataError(f"{file}: cannot read it ({exc}); run `el-data bible --out {folder} --force`") from None
            if len(lines) != facts["lines"] or _sha256_lines(lines) != facts["sha256"]:
                raise DataError(f"{file}: {len(lines)} lines, SHA-256 {_sha256_lines(lines)[:16]}...; {MANIFEST} "
                                f"records {facts['lines']} lines, {facts['sha256'][:16]}... (a changed or damaged "
                                f"file; run `el-data bible --out {folder} --force`)")
            counts.add(len(lines))
        if len(counts) != 1:
            raise DataError(f"{folder}: {split}.{SRC} and {split}.{TGT} have different line counts {sorted(counts)}")
    return manifest


def load(folder: str) -> Dict[str, Tuple[List[str], List[str]]]:
    """{split: (Spanish lines, English lines)} of a checked corpus folder."""
    verify(folder)
    return {split: tuple(read_lines(os.path.join(folder, file_name(split, lang))) for lang in (SRC, TGT))
            for split in SPLITS}
