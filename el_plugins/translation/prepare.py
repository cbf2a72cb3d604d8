"""el-prepare-iwslt: parallel text -> fairseq data-bin: Moses tokenization (sacremoses), optional lower-casing,
sentencepiece subwords, fairseq-preprocess. Also reads the IWSLT release files.

    el-prepare-iwslt --release ~/Downloads/de-en.tgz --corpus iwslt14.de-en --out data/iwslt14.de-en

writes ``OUT/text/{train,valid,test}.{src,tgt}`` (subword pieces), ``OUT/text/test.tok.<tgt>`` (the
tokenized reference, for tokenized BLEU), ``OUT/text/test.raw.<tgt>`` (the original reference, for
sacreBLEU), ``OUT/spm.model`` and ``OUT/data-bin`` (what fairseq-train reads; its ``el-plugins.json`` says
how it was made, for el-bleu). They are one output set (el_plugins.files.output_set): a rerun into the same
OUT starts them over and replaces the previous ones only when it succeeds; an interrupted or failed run
leaves them as they were. A release that is not what it should be (a truncated .tgz included), or
fairseq-preprocess failing, is ``el-prepare-iwslt: error: ...`` (exit 1; :class:`PrepareError`).
"""
import argparse
import glob
import logging
import os
import re
import subprocess
import sys
import tarfile
import zlib
from typing import Dict, List, Sequence, Tuple

from el_plugins import commands
from el_plugins.files import output_folder_problem, output_set, read_lines, write_lines
from el_plugins.translation import data_bin as data_bins

__all__ = ['check_splits', 'CORPORA', 'main', 'moses_detokenize', 'moses_languages', 'moses_tokenize', 'OUTPUTS',
           'prepare_parallel_corpus', 'PrepareError', 'PROG', 'read_iwslt_release', 'read_train_tags',
           'read_xml_segments', 'Splits', 'write_parallel_corpus']

PROG = "el-prepare-iwslt"
logger = logging.getLogger(__name__)

Splits = Dict[str, Tuple[List[str], List[str]]]

# The paper's two corpora. IWSLT'14 De-En follows fairseq's prepare-iwslt14.sh (lower-cased, valid =
# every 23rd training pair, test = dev2010 + TEDX.dev2012 + tst2010-2012, 10k subwords, separate
# dictionaries); IWSLT'17 Fr-En: true case, valid = dev2010, test = tst2015, 16k joint subwords and a
# joined dictionary (the recipe shares all embeddings).
CORPORA = {
    "iwslt14.de-en": dict(
        src="de", tgt="en", prefix="IWSLT14", lowercase=True, vocab_size=10000, joined_dictionary=False,
        valid_sets=None, test_sets=["IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                                    "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012"]),
    "iwslt17.fr-en": dict(
        src="fr", tgt="en", prefix="IWSLT17", lowercase=False, vocab_size=16000, joined_dictionary=True,
        valid_sets=["IWSLT17.TED.dev2010"], test_sets=["IWSLT17.TED.tst2015"]),
}
MAX_LEN, MAX_RATIO = 175, 1.5  # training pairs kept (in tokens), as fairseq's prepare scripts do
OUTPUTS = ("text", "spm.model", "spm.vocab", "data-bin", "preprocess.log")  # one output set
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


class PrepareError(commands.CommandError):
    """The release or corpus is not what it should be, or fairseq-preprocess failed (the message says which)."""


# --------------------------------------------------------------------------- IWSLT release files
def _release_dir(release: str, scratch: str) -> str:
    """The folder of the release: ``release`` itself, or the .tgz unpacked into ``scratch`` (a fresh folder)."""
    if os.path.isdir(release):
        return release
    if os.path.isfile(release) and tarfile.is_tarfile(release):
        try:
            with tarfile.open(release) as tar:
                tar.extractall(scratch, filter="data")
        except (EOFError, zlib.error, tarfile.TarError) as exc:
            raise PrepareError(f"--release {release}: the archive is truncated or damaged and cannot be unpacked "
                               f"({type(exc).__name__}: {exc}); download it again") from None
        return scratch
    raise commands.UsageError(f"--release {release!r} is neither a folder nor a .tgz of the IWSLT release")


def _find(root: str, pattern: str) -> str:
    hits = sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
    if not hits:
        raise PrepareError(f"the IWSLT release under {root} has no file matching {pattern!r}; "
                           "is it the right corpus (see --corpus) and complete?")
    if len(hits) > 1:
        raise PrepareError(f"the IWSLT release under {root} has {len(hits)} files matching {pattern!r} "
                           f"({', '.join(hits[:3])}{', ...' if len(hits) > 3 else ''}): give --release the folder "
                           "or .tgz of one release")
    return hits[0]


def read_train_tags(path: str) -> List[str]:
    """Training text of an IWSLT train.tags file: talk metadata lines dropped, title/description text kept."""
    lines = []
    for line in read_lines(path):
        s = line.strip()
        m = re.fullmatch(r"<(title|description)>(.*)</\1>", s)
        if m:
            lines.append(m.group(2).strip())
        elif not s.startswith("<"):
            lines.append(s)
    return lines


def read_xml_segments(path: str) -> List[str]:
    return [m.group(1).strip() for m in map(_SEG.search, read_lines(path)) if m]


def read_iwslt_release(release_dir: str, corpus: str) -> Splits:
    c = CORPORA[corpus]
    src, tgt, pair = c["src"], c["tgt"], f"{c['src']}-{c['tgt']}"
    train = [read_train_tags(_find(release_dir, f"train.tags.{pair}.{lang}")) for lang in (src, tgt)]
    if len(train[0]) != len(train[1]):
        raise PrepareError(f"train.tags.{pair}: {len(train[0])} {src} lines but {len(train[1])} {tgt} lines")

    def xml_sets(names):
        out = ([], [])
        for name in names:
            for i, lang in enumerate((src, tgt)):
                out[i].extend(read_xml_segments(_find(release_dir, f"{name}.{pair}.{lang}.xml")))
        if len(out[0]) != len(out[1]):
            raise PrepareError(f"{names}: {len(out[0])} {src} segments but {len(out[1])} {tgt} segments")
        return out

    splits = {"test": xml_sets(c["test_sets"])}
    if c["valid_sets"]:
        splits["train"], splits["valid"] = train, xml_sets(c["valid_sets"])
    else:  # every 23rd training pair is held out for validation
        splits["valid"] = (train[0][::23], train[1][::23])
        splits["train"] = tuple([x for i, x in enumerate(side) if i % 23] for side in train)
    return splits


# --------------------------------------------------------------------------- tokenize, subwords, binarize
def moses_tokenize(lines: Sequence[str], lang: str, lowercase: bool) -> List[str]:
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang=lang)
    return [tok.tokenize(line.lower() if lowercase else line, escape=False, return_str=True) for line in lines]


def moses_languages() -> List[str]:
    """The language codes sacremoses has Moses data for (what ``--lang`` of the el-* commands takes)."""
    from sacremoses.corpus import NonbreakingPrefixes

    return sorted(set(NonbreakingPrefixes().available_langs.values()))


def moses_detokenize(lines: Sequence[str], lang: str) -> List[str]:
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split()) for line in lines]


def _clean_train(src: List[str], tgt: List[str]) -> Tuple[List[str], List[str]]:
    """Keep the pairs with 1..MAX_LEN tokens a side and a length ratio of at most MAX_RATIO."""
    def kept(s: str, t: str) -> bool:
        ns, nt = len(s.split()), len(t.split())
        return 1 <= min(ns, nt) and max(ns, nt) <= MAX_LEN and max(ns, nt) <= MAX_RATIO * min(ns, nt) + 1e-9

    keep = [(s, t) for s, t in zip(src, tgt) if kept(s, t)]
    return [s for s, _ in keep], [t for _, t in keep]


def prepare_parallel_corpus(splits: Splits, out: str, src: str, tgt: str, *, vocab_size: int, lowercase: bool,
                            joined_dictionary: bool, workers: int = 1) -> str:
    """Tokenize, learn a joint sentencepiece model on train, encode, run fairseq-preprocess, into ``out`` as
    one output set (:data:`OUTPUTS`, replaced together; a failure leaves the previous ones and keeps the
    staging folder for preprocess.log). Returns out/data-bin."""
    check_splits(splits)
    with output_set(out, owns=OUTPUTS, keep_failed=True) as staged:
        write_parallel_corpus(splits, staged.staging, src, tgt, vocab_size=vocab_size, lowercase=lowercase,
                              joined_dictionary=joined_dictionary, workers=workers)
    return os.path.join(out, "data-bin")


def check_splits(splits: Splits) -> None:
    for split in ("train", "valid", "test"):
        if split not in splits or not splits[split][0]:
            raise PrepareError(f"the corpus has no {split} pairs")
        if len(splits[split][0]) != len(splits[split][1]):
            raise PrepareError(f"{split}: {len(splits[split][0])} source but {len(splits[split][1])} target lines")


def write_parallel_corpus(splits: Splits, out: str, src: str, tgt: str, *, vocab_size: int, lowercase: bool,
                          joined_dictionary: bool, workers: int = 1) -> str:
    """The work of :func:`prepare_parallel_corpus`, into ``out``, a fresh folder. Returns out/data-bin."""
    import sentencepiece as spm

    check_splits(splits)
    text = os.path.join(out, "text")
    os.makedirs(text, exist_ok=True)
    tokenized = {split: (moses_tokenize(s, src, lowercase), moses_tokenize(t, tgt, lowercase))
                 for split, (s, t) in splits.items()}
    tokenized["train"] = _clean_train(*tokenized["train"])
    write_lines(os.path.join(text, f"test.tok.{tgt}"), tokenized["test"][1])
    write_lines(os.path.join(text, f"test.raw.{tgt}"), splits["test"][1])
    write_lines(os.path.join(text, f"test.raw.{src}"), splits["test"][0])

    spm_input = os.path.join(text, "spm-train.txt")
    write_lines(spm_input, tokenized["train"][0] + tokenized["train"][1])
    spm.SentencePieceTrainer.train(
        input=spm_input, model_prefix=os.path.join(out, "spm"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, hard_vocab_limit=False, num_threads=max(1, workers),
        minloglevel=2)
    os.remove(spm_input)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "spm.model"))
    for split, (s, t) in tokenized.items():
        for lang, lines in ((src, s), (tgt, t)):
            write_lines(os.path.join(text, f"{split}.{lang}"), [" ".join(p) for p in sp.encode(lines, out_type=str)])

    data_bin = os.path.join(out, "data-bin")
    cmd = [commands.fairseq_program("fairseq-preprocess"), "--source-lang", src,
           "--target-lang", tgt, "--trainpref", os.path.join(text, "train"), "--validpref", os.path.join(text, "valid"),
           "--testpref", os.path.join(text, "test"), "--destdir", data_bin, "--workers", str(workers)]
    if joined_dictionary:
        cmd.append("--joined-dictionary")
    log = os.path.join(out, "preprocess.log")
    with open(log, "w") as f:
        try:
            failed = commands.run_program(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0
        except OSError as exc:  # not installed in this environment
            raise PrepareError(f"cannot run {cmd[0]} ({exc.strerror or exc}); is fairseq installed here?") from None
    if failed:
        with open(log, encoding="utf-8", errors="replace") as f:
            cause = commands.failure_cause(f.read())
        raise PrepareError(f"fairseq-preprocess failed: {cause} (its output is in {log})")
    data_bins.write_record(data_bin, subwords="sentencepiece", post_process="sentencepiece", source_lang=src,
                           target_lang=tgt, lowercase=lowercase, vocab_size=vocab_size,
                           joined_dictionary=joined_dictionary, sentencepiece_model=os.path.join("..", "spm.model"))
    return data_bin


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--release", required=True,
                    help="the IWSLT release you downloaded: de-en.tgz (IWSLT 2014) or fr-en.tgz (IWSLT 2017), or its folder")
    ap.add_argument("--corpus", required=True, choices=sorted(CORPORA))
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--vocab-size", type=int, default=None, help="sentencepiece vocabulary (default: the corpus's)")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args(argv)
    if args.vocab_size is not None and args.vocab_size < 100:
        ap.error(f"--vocab-size must be >= 100, got {args.vocab_size}")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    problem = output_folder_problem(args.out)
    if problem:
        ap.error(f"--out {args.out}: {problem} (give a folder for the prepared corpus)")
    if not os.path.exists(args.release):
        ap.error(f"--release {args.release!r} is neither a folder nor a .tgz of the IWSLT release (no such file)")
    commands.setup_logging(PROG)
    return commands.run(PROG, lambda: _prepare(args), errors=(OSError, tarfile.TarError, ValueError))


def _prepare(args) -> int:
    """The release read (a .tgz unpacked into the staging folder, never reused) and prepared, as one set."""
    c = CORPORA[args.corpus]
    with output_set(args.out, owns=OUTPUTS, keep_failed=True) as staged:
        splits = read_iwslt_release(_release_dir(args.release, staged.scratch("release")), args.corpus)
        logger.info(" ".join(f"{k}: {len(v[0])} pairs" for k, v in splits.items()))
        write_parallel_corpus(splits, staged.staging, c["src"], c["tgt"], vocab_size=args.vocab_size or c["vocab_size"],
                              lowercase=c["lowercase"], joined_dictionary=c["joined_dictionary"], workers=args.workers)
    print(f"wrote {os.path.join(args.out, 'data-bin')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
