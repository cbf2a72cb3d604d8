"""el-bleu: BLEU the way the paper reports it, and sacreBLEU.

    el-bleu generate DATA_BIN --path checkpoint.pt [--beam 5] [--raw-ref text/test.raw.en] [--out DIR]
    el-bleu score --hyp hyp.tok.txt --ref ref.tok.txt [--raw-ref ref.txt] [--lang en]

* tokenized BLEU-4: corpus BLEU on the Moses-tokenized text (the pipeline's tokenization, subwords
  removed), no further tokenization: what fairseq-generate and multi-bleu.perl report, the paper's metric;
* sacreBLEU: on detokenized hypotheses against the original references (``--raw-ref``), with its
  signature, the number to compare across papers.

``generate`` runs the real fairseq-generate (beam 5 and 128 sentences per batch by default, as the authors'
generate.py) and scores its output. It checks first what it can (DATA_BIN is a translation data-bin with the
split, --out a folder) and undoes DATA_BIN's own subwords (--post-process auto: el_plugins.translation.data_bin).
Results go to stdout; a failure (files that do not pair up, fairseq-generate failing: its cause in one line,
with the log of its output) is ``el-bleu: error: ...``, exit 1.
"""
import argparse
import contextlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

from el_plugins import commands
from el_plugins.files import output_folder_problem, output_set, read_lines, write_json, write_lines
from el_plugins.translation import data_bin as data_bins

__all__ = ['choose_post_process', 'generate', 'GENERATE_BATCH_SIZE', 'main', 'OUTPUTS', 'parse_generate_output',
           'POST_PROCESS', 'PROG', 'sacre_bleu', 'score', 'tokenized_bleu']

PROG = "el-bleu"
logger = logging.getLogger(__name__)
_LINE = re.compile(r"^([STHD])-(\d+)\t(.*)$")
# fairseq-generate's --post-process values (fairseq.data.data_utils.post_process), and 'auto': DATA_BIN's own
POST_PROCESS = ("auto", "none", "sentencepiece", "subword_nmt", "@@ ", "@@", "wordpiece", "letter", "silence", "_EOW")
OUTPUTS = ("hyp.tok.txt", "ref.tok.txt", "bleu.json", "generate.log")  # what generate --out writes, as one set


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str]):
    """Corpus BLEU-4 on already tokenized text (whitespace split only), unsmoothed like fairseq's scorer:
    BLEU = BP * exp(mean_n log p_n), so 0 when some n-gram precision p_n is 0 (sacreBLEU's default 'exp'
    smoothing would give a small positive score there, and the two would no longer be one number)."""
    from sacrebleu.metrics import BLEU

    _check_lengths(hyps, refs)
    return BLEU(tokenize="none", smooth_method="none", force=True).corpus_score(list(hyps), [list(refs)])


def sacre_bleu(hyps: Sequence[str], refs: Sequence[str]):
    """(score, signature) of sacreBLEU with its defaults on detokenized text."""
    from sacrebleu.metrics import BLEU

    _check_lengths(hyps, refs)
    bleu = BLEU()
    return bleu.corpus_score(list(hyps), [list(refs)]), str(bleu.get_signature())


def _check_lengths(hyps, refs):
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references: they must pair up line by line")
    if not hyps:
        raise ValueError("no hypotheses to score")
    if not any(ref.strip() for ref in refs):
        raise ValueError(f"all {len(refs)} references are blank lines: there is nothing to score against "
                         "(wrong file?)")
    if not any(hyp.strip() for hyp in hyps):
        logger.warning("warning: all %d hypotheses are blank lines, so BLEU is 0", len(hyps))


def parse_generate_output(text: str):
    """(hypotheses, references, fairseq's own BLEU4 or None) from fairseq-generate's stdout, in sentence order.

    Uses the H (hypothesis) and T (target) lines, after fairseq's --post-process/--remove-bpe."""
    hyps, refs = {}, {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        kind, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "H":
            hyps[idx] = rest.split("\t", 1)[1] if "\t" in rest else ""
        elif kind == "T":
            refs[idx] = rest
    if set(hyps) != set(refs):
        raise ValueError(f"fairseq-generate printed {len(hyps)} hypotheses but {len(refs)} references")
    order = sorted(hyps)
    if order != list(range(len(order))):
        raise ValueError(f"fairseq-generate translated {len(order)} sentences, not a contiguous 0..N-1 set "
                         "(were some skipped for length? see --max-len-b / --skip-invalid-size-inputs-valid-test)")
    m = re.search(r"BLEU4? = ([\d.]+)", text)
    return [hyps[i] for i in order], [refs[i] for i in order], (float(m.group(1)) if m else None)


def score(hyps_tok: List[str], refs_tok: List[str], lang: str, raw_refs: Optional[List[str]] = None) -> dict:
    """Both scores as a JSON-able dict. Without raw references, detokenized tokenized references stand in."""
    from el_plugins.translation.prepare import moses_detokenize

    tok = tokenized_bleu(hyps_tok, refs_tok)
    detok_hyps = moses_detokenize(hyps_tok, lang)
    refs = raw_refs if raw_refs is not None else moses_detokenize(refs_tok, lang)
    sacre, signature = sacre_bleu(detok_hyps, refs)
    return {"tokenized_bleu": round(tok.score, 2), "tokenized_bleu_detail": str(tok),
            "sacrebleu": round(sacre.score, 2), "sacrebleu_signature": signature, "sentences": len(hyps_tok),
            "references": "raw" if raw_refs is not None else "detokenized"}


def choose_post_process(data_bin: str, target: str, asked: str) -> str:
    """The --post-process to give fairseq-generate: DATA_BIN's own for 'auto' (logged). An explicit
    'sentencepiece' on a data-bin without sentencepiece pieces (it would glue each sentence into one 'word')
    is a :class:`commands.UsageError`; another choice that is not DATA_BIN's is a warning."""
    kind, why = data_bins.subword_kind(data_bin, target)
    if asked == "auto":
        logger.info("--post-process auto: %s (%s)", kind, why)
        return kind
    if asked == "sentencepiece" and not data_bins.has_sentencepiece_pieces(data_bin, target):
        raise commands.UsageError(
            f"--post-process sentencepiece: {os.path.join(data_bin, f'dict.{target}.txt')} has no sentencepiece "
            f"piece (no symbol starts with '{data_bins.SENTENCEPIECE_MARK}'), so it would delete every space of "
            f"every sentence; this data-bin's is {kind!r} ({why}): give --post-process {kind} or auto")
    if asked != kind:
        logger.warning("warning: --post-process %s, but %s (--post-process auto would give %s)", asked, why, kind)
    return asked


GENERATE_BATCH_SIZE = 128  # sentences per batch, as the authors' generate.py runs (--batch-size 128)


def generate(data_bin: str, path: str, *, beam: int = 5, subset: str = "test", post_process: str = "sentencepiece",
             cpu: bool = False, batch_size: Optional[int] = GENERATE_BATCH_SIZE, max_tokens: Optional[int] = None,
             extra: Sequence[str] = (), env=None, log: Optional[str] = None) -> str:
    """Run fairseq-generate (in ``env``, default this process's environment) with ``batch_size`` sentences per
    batch (and/or at most ``max_tokens`` tokens); returns its stdout. Its output
    also goes to ``log`` (default: a temporary file, removed when it succeeds); a failure is a RuntimeError
    with the cause in one line and the log's path."""
    cmd = [commands.fairseq_program("fairseq-generate"), data_bin, "--path", path,
           "--beam", str(beam), "--gen-subset", subset, "--num-workers", "0",
           # fairseq-fixed 0.12.3.1 drops the last len % 8 sentences with the default multiple of 8
           "--required-batch-size-multiple", "1"]
    if batch_size is not None:
        cmd += ["--batch-size", str(batch_size)]
    if max_tokens is not None:
        cmd += ["--max-tokens", str(max_tokens)]
    if post_process != "none":
        cmd += ["--post-process", post_process]
    if cpu:
        cmd.append("--cpu")
    try:
        proc = commands.run_program([*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    except OSError as exc:  # not installed in this environment
        raise RuntimeError(f"cannot run {cmd[0]} ({exc.strerror or exc}); is fairseq installed here?") from None
    if log is not None or proc.returncode != 0:
        if log is None:
            fd, log = tempfile.mkstemp(prefix="el-bleu-fairseq-generate-", suffix=".log")
            os.close(fd)
        with open(log, "w", encoding="utf-8") as f:
            f.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed (exit {proc.returncode}): {commands.failure_cause(proc.stdout)} "
                           f"(its output is in {log})")
    return proc.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="fairseq-generate from a checkpoint, then score")
    g.add_argument("data_bin")
    g.add_argument("--path", required=True, help="checkpoint (e.g. the averaged one)")
    g.add_argument("--beam", type=int, default=5)
    g.add_argument("--gen-subset", default="test")
    g.add_argument("--post-process", default="auto", choices=POST_PROCESS,
                   help="fairseq's --post-process, what undoes the subwords (default: auto, DATA_BIN's own)")
    g.add_argument("--raw-ref", help="the original (detokenized) references for sacreBLEU, one per line")
    g.add_argument("--lang", default="en", help="target language for detokenization, a code sacremoses knows "
                                                "(default: en)")
    g.add_argument("--cpu", action="store_true")
    g.add_argument("--batch-size", type=int, default=GENERATE_BATCH_SIZE,
                   help=f"sentences per batch (default: {GENERATE_BATCH_SIZE}, the authors' generate.py setting)")
    g.add_argument("--max-tokens", type=int, default=None, help="at most this many tokens per batch as well")
    g.add_argument("--out", help="folder for hyp/ref files and bleu.json")
    s = sub.add_parser("score", help="score tokenized hypotheses against tokenized references")
    s.add_argument("--hyp", required=True)
    s.add_argument("--ref", required=True)
    s.add_argument("--raw-ref")
    s.add_argument("--lang", default="en", help="target language for detokenization (default: en)")
    args = ap.parse_args(argv)
    for name in ("path", "hyp", "ref", "raw_ref"):
        value = getattr(args, name, None)
        if value and not os.path.exists(value):
            ap.error(f"--{name.replace('_', '-')}: no such file {value!r}")
        if value and not os.path.isfile(value):
            ap.error(f"--{name.replace('_', '-')}: {value!r} is not a regular file (a folder, a device or a pipe); "
                     "give a file of text lines")
    from el_plugins.translation.prepare import moses_languages

    if args.lang not in moses_languages():
        ap.error(f"--lang {args.lang!r}: not a language sacremoses' Moses detokenizer knows; use one of "
                 f"{', '.join(moses_languages())}")
    if args.command == "generate":
        if not os.path.isdir(args.data_bin):
            ap.error(f"DATA_BIN: no such folder {args.data_bin!r}")
        for name in ("beam", "batch_size", "max_tokens"):
            value = getattr(args, name)
            if value is not None and value < 1:
                ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        problem = args.out and output_folder_problem(args.out)
        if problem:
            ap.error(f"--out {args.out}: {problem} (give a folder for the hypotheses, references and bleu.json)")
    commands.setup_logging(PROG)
    return commands.run(PROG, lambda: _run(args), errors=(ValueError, RuntimeError, OSError))


def _run(args) -> int:
    """The work of main() once the options are checked; prints the scores (stdout) and returns 0."""
    raw = read_lines(args.raw_ref) if args.raw_ref else None
    if args.command == "generate":
        _, target = data_bins.language_pair(args.data_bin, args.gen_subset)
        post_process = choose_post_process(args.data_bin, target, args.post_process)
        with contextlib.ExitStack() as stack:  # with --out, its files and fairseq-generate's log: one set
            staged = stack.enter_context(output_set(args.out, owns=OUTPUTS, keep_failed=True)) if args.out else None
            out = generate(args.data_bin, args.path, beam=args.beam, subset=args.gen_subset,
                           post_process=post_process, cpu=args.cpu, batch_size=args.batch_size,
                           max_tokens=args.max_tokens,
                           log=staged.path("generate.log") if staged else None)
            hyps, refs, fairseq_bleu = parse_generate_output(out)
            result = score(hyps, refs, args.lang, raw)
            result.update(fairseq_generate_bleu4=fairseq_bleu, checkpoint=args.path, beam=args.beam,
                          post_process=post_process)
            if staged:
                for name, lines in (("hyp.tok.txt", hyps), ("ref.tok.txt", refs)):
                    write_lines(staged.path(name), lines)
                write_json(staged.path("bleu.json"), result)
    else:
        result = score(read_lines(args.hyp), read_lines(args.ref), args.lang, raw)
    print(f"tokenized BLEU-4 = {result['tokenized_bleu']:.2f}   ({result['tokenized_bleu_detail']})")
    print(f"sacreBLEU        = {result['sacrebleu']:.2f}   ({result['sacrebleu_signature']}, {result['references']} references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
