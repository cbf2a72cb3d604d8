"""el-demo: label-smoothed CE vs the encouraging loss, end to end, on data that needs no network.

Translation: a deterministic toy parallel corpus (el_plugins/demo/toy_corpus.py; not real language
data) through the IWSLT pipeline's own commands: sentencepiece, fairseq-preprocess, fairseq-train
(LS-CE and EL, same updates), el-average-checkpoints, fairseq-generate beam 5, tokenized BLEU and
sacreBLEU, token-level valid nll / target probability / margins.
Vision: timm's test_resnet on scikit-learn's bundled 8x8 digits, CE vs timm's ``--loss el``:
test accuracy and the mean logit margin z_y - max_{k != y} z_k (the paper: EL gives larger margins).

--device (cpu, cuda, cuda:N) is where both parts train and analyze; fairseq-train and fairseq-generate
get --cpu unless it is a CUDA device (cuda:N: they see only that GPU). --no-progress turns the progress
bars off (the programs it runs show none of their own: their output goes to log files).

Writes OUT/results.json and OUT/plots/*.png beside OUT/translation and OUT/vision (data, logs, checkpoints),
as one output set (el_plugins.files.output_set): a rerun into the same OUT starts over and replaces the
previous run only when it has succeeded; an interrupted or failed run leaves it as it was. Prints the
side-by-side table (stdout; progress and messages go to stderr). About 4 minutes on 2 CPU cores. Errors are
"el-demo: error: ...", exit 2 for a bad option (--data included), exit 1 when a step fails.
"""
import argparse
import json
import logging
import os
import sys
import time
import warnings

from el_plugins import commands
from el_plugins.devices import add_device_argument
from el_plugins.files import atomic_write, output_set, read_lines, write_text
from el_plugins.provenance import describe, provenance

PARTS = ("translation", "vision")
OUTPUTS = ("results.json", "plots", *PARTS)  # one output set: a run replaces all of them


def parse_args(argv):
    from el_plugins.files import output_folder_problem

    ap = argparse.ArgumentParser(prog="el-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    add_device_argument(ap)
    ap.add_argument("--parts", default="translation,vision", help="comma-separated: translation, vision")
    ap.add_argument("--data", help="your own parallel text instead of the toy corpus: a folder with "
                                   "{train,valid,test}.SRC and .TGT, one sentence per line")
    ap.add_argument("--src-lang", default="src", help="source suffix of --data files (default: src)")
    ap.add_argument("--tgt-lang", default="en", help="target suffix of --data files (default: en)")
    ap.add_argument("--updates", type=int, default=400, help="translation training updates per run (default: 400)")
    ap.add_argument("--vocab-size", type=int, default=600, help="sentencepiece vocabulary (default: 600)")
    ap.add_argument("--vision-epochs", type=int, default=10, help="digits training epochs per run (default: 10)")
    ap.add_argument("--quick", action="store_true", help="a shortened run (small corpus, few updates/epochs), for CI")
    commands.add_progress_argument(ap)
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in args.parts if p not in PARTS]
    if bad or not args.parts:
        ap.error(f"--parts takes a comma-separated subset of {', '.join(PARTS)}, got {bad or args.parts}")
    for name in ("updates", "vocab_size", "vision_epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    problem = output_folder_problem(args.out)
    if problem:
        ap.error(f"--out {args.out}: {problem} (give a folder to write the results into)")
    if args.data and not os.path.isdir(args.data):
        ap.error(f"--data: no such folder {args.data!r}")
    if args.quick:
        args.updates, args.vision_epochs = min(args.updates, 60), min(args.vision_epochs, 2)
    return args


def load_parallel_folder(folder, src, tgt):
    """{split: (source lines, target lines)} of ``folder``'s {train,valid,test}.{src,tgt}; a
    :class:`commands.UsageError` (--data is not such a folder) for a missing, unreadable or empty file, or
    sides of different lengths."""
    splits = {}
    for split in ("train", "valid", "test"):
        sides = []
        for lang in (src, tgt):
            path = os.path.join(folder, f"{split}.{lang}")
            if not os.path.isfile(path):
                raise commands.UsageError(
                    f"--data {folder} has no {split}.{lang} (expected {{train,valid,test}}.{{{src},{tgt}}})")
            try:
                sides.append(read_lines(path))
            except (OSError, ValueError) as exc:
                raise commands.UsageError(f"--data {folder}: cannot read {split}.{lang} as UTF-8 text ({exc})") from None
            if not sides[-1]:
                raise commands.UsageError(f"--data {folder}: {split}.{lang} is empty")
        if len(sides[0]) != len(sides[1]):
            raise commands.UsageError(
                f"--data {folder}: {split}.{src} has {len(sides[0])} lines but {split}.{tgt} has {len(sides[1])}")
        splits[split] = tuple(sides)
    return splits


def learning_curves_png(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parts = [p for p in PARTS if p in results]
    fig = Figure(figsize=(6.5 * len(parts), 4.5))
    FigureCanvasAgg(fig)
    for i, part in enumerate(parts):
        ax = fig.add_subplot(1, len(parts), i + 1)
        for name, curve in results[part]["curves"].items():
            if part == "translation":
                ax.plot([c["updates"] for c in curve], [c["valid_nll_bits"] for c in curve], marker="o", ms=3, label=name)
                ax.set(xlabel="updates", ylabel="valid nll (bits/token, log scale)", title="Translation: validation nll",
                       yscale="log")
            else:
                ax.plot([c["epoch"] for c in curve], [100 * c["val_accuracy"] for c in curve], marker="o", ms=3, label=name)
                ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Digits: test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def write_outputs(out, results, margins):
    from el_plugins.analysis.plots import histogram_png

    plots = os.path.join(out, "plots")
    os.makedirs(plots, exist_ok=True)
    files = {}
    fig = learning_curves_png(results)
    files["learning_curves.png"] = fig
    titles = {"vision": ("Digits: logit margins on the test images, CE vs EL", "margin z_y - max_{k != y} z_k"),
              "translation": ("Translation: token margins on valid, LS-CE vs EL", "margin z_y - max_{k != y} z_k")}
    for part, runs in margins.items():
        files[f"margins_{part}.png"] = histogram_png(runs, *titles[part])
    for name, content in files.items():
        with atomic_write(os.path.join(plots, name), "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content.savefig(f, format="png", dpi=120)
    results["plots"] = sorted(os.path.join("plots", n) for n in files)
    path = os.path.join(out, "results.json")
    write_text(path, json.dumps(results, indent=2))
    return path


def format_table(results):
    lines = []
    if "translation" in results:
        runs = results["translation"]["runs"]
        lines += ["Translation (toy corpus unless --data; averaged checkpoints, beam 5)",
                  f"{'':32}" + "".join(f"{n:>12}" for n in runs)]
        for key, label, fmt in (("tokenized_bleu", "tokenized BLEU-4", "{:.2f}"), ("sacrebleu", "sacreBLEU", "{:.2f}"),
                                ("valid_nll_nats_per_token", "valid nll (nats/token)", "{:.4f}"),
                                ("valid_target_prob_mean", "valid mean target probability", "{:.4f}"),
                                ("valid_margin_mean", "valid mean token margin", "{:.3f}")):
            lines.append(f"{label:32}" + "".join(f"{fmt.format(r[key]):>12}" for r in runs.values()))
        lines.append("")
    if "vision" in results:
        runs = results["vision"]["runs"]
        lines += ["Vision (timm test_resnet on the bundled digits, 450 test images)",
                  f"{'':32}" + "".join(f"{n:>12}" for n in runs)]
        for key, label, fmt in (("test_accuracy", "test accuracy (%)", "{:.2f}"), ("margin_mean", "mean logit margin", "{:.3f}"),
                                ("margin_median", "median logit margin", "{:.3f}"), ("ece", "ECE", "{:.4f}")):
            lines.append(f"{label:32}" + "".join(
                f"{fmt.format(r[key] * (100 if key == 'test_accuracy' else 1)):>12}" for r in runs.values()))
        lines.append("")
    lines.append(f"Produced by {describe(results.get('produced_by'))}.")
    return "\n".join(lines)


def quiet_frameworks():
    """Keep the console to progress bars and the table: fairseq's import calls logging.basicConfig(DEBUG)
    unless logging is configured first (matplotlib then logs every font lookup), and torch, fairseq and
    hydra warn about their own deprecations. The subprocesses' full logs are in the output folder."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", module=r"(torch|fairseq|hydra|timm|omegaconf)(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commands.setup_logging("el-demo")
    from el_plugins.translation.average_checkpoints import AverageCheckpointsError

    return commands.run("el-demo", lambda: run_demo(args), errors=(AverageCheckpointsError,))


def run_demo(args):
    """The parts of ``args`` (parsed), the results written and the table printed; returns 0."""
    splits = None
    if "translation" in args.parts and args.data:  # a bad --data is a usage error, found before any work
        splits = load_parallel_folder(args.data, args.src_lang, args.tgt_lang)
    quiet_frameworks()
    with output_set(args.out, owns=OUTPUTS, keep_failed=True) as staged:
        results = _run_parts(args, splits, staged)
    print("\n" + format_table(results))
    print(f"\nwrote {os.path.join(args.out, 'results.json')} and {', '.join(results['plots'])} under {args.out} "
          f"({results['seconds']:.0f} s)")
    return 0


def _final_paths(obj, staged):
    """``obj`` with the paths into the staging folder replaced by where they will be (OUT/...)."""
    if isinstance(obj, dict):
        return {k: _final_paths(v, staged) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_final_paths(v, staged) for v in obj]
    if isinstance(obj, str) and obj.startswith(staged.staging):
        return staged.final(obj)
    return obj


def _run_parts(args, splits, staged):
    """The parts of ``args`` run into the staging folder of ``staged``; the results (with OUT's paths) written
    there and returned."""
    import torch

    t0 = time.time()
    results = {"settings": {k: str(v) if isinstance(v, torch.device) else v for k, v in vars(args).items()},
               "machine": {"torch": torch.__version__, "device": str(args.device), "cpu_threads": torch.get_num_threads()},
               "produced_by": provenance()}
    margins = {}
    if "translation" in args.parts:
        from el_plugins.demo.translation import run_translation
        from el_plugins.demo.toy_corpus import make_splits

        if args.data:
            src, tgt = args.src_lang, args.tgt_lang
            corpus = f"your data: {os.path.abspath(args.data)}"
        else:
            sizes = (("train", 1500), ("valid", 150), ("test", 150)) if args.quick else \
                (("train", 6000), ("valid", 400), ("test", 400))
            splits, src, tgt = make_splits(sizes), "src", "en"
            corpus = "toy corpus generated by el_plugins/demo/toy_corpus.py (invented language, not real data)"
        results["translation"], margins["translation"] = run_translation(
            staged.path("translation"), splits, src, tgt, device=args.device,
            max_update=args.updates, vocab_size=args.vocab_size, progress=args.progress)
        results["translation"]["corpus"] = corpus
    if "vision" in args.parts:
        from el_plugins.demo.vision import run_vision

        results["vision"], margins["vision"] = run_vision(staged.path("vision"), epochs=args.vision_epochs,
                                                          device=args.device, progress=args.progress)
    results["seconds"] = round(time.time() - t0, 1)
    results = _final_paths(results, staged)
    write_outputs(staged.staging, results, margins)
    return results


if __name__ == "__main__":
    sys.exit(main())
