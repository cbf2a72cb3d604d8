"""The translation tools: BLEU, the recipes' argument handling, IWSLT release reading, the prepare
pipeline with the real fairseq-preprocess, and el-bleu on a real fairseq-generate run."""
import json
import os
import re
import tarfile

import pytest

from el_evidence.testing.programs import run_cli
from el_plugins.demo.toy_corpus import make_splits
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER, train_tiny_model
from el_plugins.translation import bleu, recipe
from el_plugins.translation.prepare import (
    CORPORA, prepare_parallel_corpus, read_iwslt_release, read_train_tags, read_xml_segments)


# --------------------------------------------------------------------------- BLEU
def test_tokenized_bleu_known_values():
    assert bleu.tokenized_bleu(["a b c d e"], ["a b c d e"]).score == pytest.approx(100.0)
    # 4 of 5 unigrams, 3/4 bigrams, 2/3 trigrams, 1/2 fourgrams, same length: BP = 1
    hyp, ref = "the cat sat on mat", "the cat sat on a"
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu.tokenized_bleu([hyp], [ref]).score == pytest.approx(expected, abs=1e-6)
    # tokenized BLEU does not re-tokenize: "cat." is one token
    assert bleu.tokenized_bleu(["the cat."], ["the cat ."]).score < 100
    # unsmoothed, as fairseq's scorer: no matching 4-gram means BLEU 0 (sacreBLEU's default smoothing gives > 0)
    assert bleu.tokenized_bleu(["the cat sat on the mat"], ["the cat sat in the mat"]).score == 0.0


def test_sacrebleu_has_signature_and_tokenizes():
    score, signature = bleu.sacre_bleu(["The cat sat."], ["The cat sat."])
    assert score.score == pytest.approx(100.0)
    assert "tok:13a" in signature and "nrefs:1" in signature


def test_mismatched_lengths_are_an_error_not_a_score():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu.tokenized_bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no hypotheses"):
        bleu.sacre_bleu([], [])


@pytest.mark.e2e
def test_el_bleu_score_command(tmp_path):
    (tmp_path / "h.txt").write_text("the cat sat on mat\nhello world\n")
    (tmp_path / "r.txt").write_text("the cat sat on a\nhello world\n")
    out = run_cli("el-bleu", "score", "--hyp", tmp_path / "h.txt", "--ref", tmp_path / "r.txt").stdout
    want = bleu.tokenized_bleu(["the cat sat on mat", "hello world"], ["the cat sat on a", "hello world"]).score
    assert f"tokenized BLEU-4 = {want:.2f}" in out and "sacreBLEU        =" in out
    (tmp_path / "short.txt").write_text("the cat sat on a\n")
    proc = run_cli("el-bleu", "score", "--hyp", tmp_path / "h.txt", "--ref", tmp_path / "short.txt", check=False)
    assert proc.returncode == 1 and "2 hypotheses but 1 references" in proc.stdout
    proc = run_cli("el-bleu", "score", "--hyp", tmp_path / "missing.txt", "--ref", tmp_path / "r.txt", check=False)
    assert proc.returncode == 2 and "--hyp: no such file" in proc.stdout
    for not_a_file in ("/dev/null", tmp_path):
        proc = run_cli("el-bleu", "score", "--hyp", not_a_file, "--ref", tmp_path / "r.txt", check=False)
        assert proc.returncode == 2, proc.stdout
        assert (proc.stdout.strip().splitlines()[-1] == f"el-bleu: error: --hyp: '{not_a_file}' is not a regular file "
                "(a folder, a device or a pipe); give a file of text lines"), proc.stdout
    proc = run_cli("el-bleu", "score", "--hyp", tmp_path / "h.txt", "--ref", tmp_path / "r.txt", "--lang", "xx",
                   check=False)
    assert proc.returncode == 2
    assert re.search(r"el-bleu: error: --lang 'xx': not a language sacremoses' Moses detokenizer knows; use one of "
                     r"as, bn, .*\bde, el, en, es\b.*\bfr\b", proc.stdout), proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("option", ["--hyp", "--ref", "--raw-ref"])
def test_el_bleu_names_the_file_and_line_of_non_utf8_bytes(tmp_path, option):
    files = {"--hyp": tmp_path / "h.txt", "--ref": tmp_path / "r.txt", "--raw-ref": tmp_path / "raw.txt"}
    for path in files.values():
        path.write_text("the cat sat\nhello world\n")
    files[option].write_bytes(b"the cat sat\nhello w\xf6rld\n")  # Latin-1, not UTF-8
    proc = run_cli("el-bleu", "score", *[x for kv in files.items() for x in kv], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout
    assert f"el-bleu: error: {files[option]}, line 2, column 8: byte 0xf6 is not UTF-8 text" in proc.stdout


@pytest.mark.e2e
def test_el_bleu_refuses_blank_references_and_warns_on_blank_hypotheses(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    (tmp_path / "text.txt").write_text("a b c\nd e f\ng h i\n")
    proc = run_cli("el-bleu", "score", "--hyp", tmp_path / "text.txt", "--ref", tmp_path / "blank.txt", check=False)
    assert proc.returncode == 1 and "all 3 references are blank lines" in proc.stdout
    proc = run_cli("el-bleu", "score", "--hyp", tmp_path / "blank.txt", "--ref", tmp_path / "text.txt")
    assert "warning: all 3 hypotheses are blank lines, so BLEU is 0" in proc.stdout


def test_parse_generate_output_orders_and_checks():
    text = "S-1\tb\nT-1\ty z\nH-1\t-0.5\ty z\nS-0\ta\nT-0\tx\nH-0\t-0.1\tx\nGenerate test with beam=5: BLEU4 = 42.10, ...\n"
    assert bleu.parse_generate_output(text) == (["x", "y z"], ["x", "y z"], 42.10)
    with pytest.raises(ValueError, match="not a contiguous"):
        bleu.parse_generate_output("T-0\tx\nH-0\t-1\tx\nT-2\ty\nH-2\t-1\ty\n")


# --------------------------------------------------------------------------- recipes
# The authors' translation/readme.sh (lancopku/well-classified-examples-are-underestimated), flag for flag: what
# each paper recipe must run. Their fairseq 0.10.2 defaults --clip-norm to 0.0; they pass no --update-freq for Fr-En
# and share no embeddings for De-En ("unshareemb"); both arms smooth with eps / V (their encourage_loss, the
# baseline with the bonus off: --bonus-weight 0 --smoothing-convention paper); checkpoint_best by BLEU.
AUTHORS_BEST_BY_BLEU = ["--eval-bleu", "--eval-bleu-args", '{"beam": 5, "max_len_a": 1.2, "max_len_b": 10}',
                        "--eval-bleu-detok", "moses", "--eval-bleu-remove-bpe", "sentencepiece",
                        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]
AUTHORS_RECIPES = {
    "iwslt14.de-en": dict(arch=["--arch", "transformer_iwslt_de_en"], sharing=[], lr="1e-3", weight_decay="0.0001",
                          dropout="0.4", max_update="20000", update_freq="4"),
    "iwslt17.fr-en": dict(arch=["--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2"],
                          sharing=["--share-all-embeddings"], lr="5e-4", weight_decay="0.001", dropout="0.3",
                          max_update="100000", update_freq="1"),
}


def authors_command(recipe_name, loss, seed=1, save_dir="save"):
    r = AUTHORS_RECIPES[recipe_name]
    criterion = (["--bonus-weight", "0"] if loss == "ce" else ["--log-end", "0.5"]) + ["--smoothing-convention", "paper"]
    return ["bin", *r["arch"], *r["sharing"], "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
            "--lr", r["lr"], "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
            "--weight-decay", r["weight_decay"], "--dropout", r["dropout"], "--max-tokens", "4096",
            "--max-update", r["max_update"], "--label-smoothing", "0.1", "--fp16", *AUTHORS_BEST_BY_BLEU,
            "--criterion", "label_smoothed_encouraging_loss", *criterion, "--update-freq", r["update_freq"],
            "--seed", str(seed), "--save-dir", save_dir, "--keep-last-epochs", "10", "--no-progress-bar",
            "--log-format", "simple", "--log-interval", "20"]


@pytest.mark.parametrize("recipe_name", sorted(AUTHORS_RECIPES))
@pytest.mark.parametrize("loss", ["ce", "el"])
def test_paper_recipes_are_the_authors_flag_for_flag(recipe_name, loss):
    cmd = recipe.train_command(recipe_name, "bin", "save", loss=loss)
    assert os.path.basename(cmd[0]) == "fairseq-train"
    assert cmd[1:] == authors_command(recipe_name, loss)
    assert recipe.RECIPES[recipe_name].smoothing_convention == "paper"
    assert "--share-decoder-input-output-embed" not in cmd


@pytest.mark.e2e
def test_paper_recipes_dry_run_prints_the_same_flags():
    import shlex

    for name in AUTHORS_RECIPES:
        for loss in ("ce", "el"):
            out = run_cli("el-translation-train", "--recipe", name, "--data", "bin", "--loss", loss,
                          "--save-dir", "save", "--dry-run").stdout
            assert shlex.split(out)[1:] == authors_command(name, loss), (name, loss)


@pytest.mark.e2e
def test_smoothing_convention_fairseq_runs_fairseqs_own_baseline():
    ce = recipe.train_command("iwslt14.de-en", "bin", "save", loss="ce", smoothing_convention="fairseq")
    el = recipe.train_command("iwslt14.de-en", "bin", "save", loss="el", smoothing_convention="fairseq")
    assert ce[ce.index("--criterion"):ce.index("--update-freq")] == ["--criterion", "label_smoothed_cross_entropy"]
    assert el[el.index("--criterion"):el.index("--update-freq")] == [
        "--criterion", "label_smoothed_encouraging_loss", "--log-end", "0.5", "--smoothing-convention", "fairseq"]
    # the two arms differ in the criterion's flags alone, whichever convention
    for a, b in ((ce, el), (recipe.train_command("iwslt14.de-en", "bin", "save", loss="ce"),
                            recipe.train_command("iwslt14.de-en", "bin", "save", loss="el"))):
        assert a[:a.index("--criterion")] == b[:b.index("--criterion")]
        assert a[a.index("--update-freq"):] == b[b.index("--update-freq"):]
    out = run_cli("el-translation-train", "--recipe", "iwslt17.fr-en", "--data", "bin", "--loss", "ce",
                  "--smoothing-convention", "fairseq", "--save-dir", "s", "--dry-run").stdout
    assert "--criterion label_smoothed_cross_entropy --update-freq 1" in out
    bad = run_cli("el-translation-train", "--recipe", "iwslt17.fr-en", "--data", "bin", "--loss", "ce",
                  "--smoothing-convention", "timm", "--save-dir", "s", "--dry-run", check=False)
    assert bad.returncode == 2 and "invalid choice: 'timm'" in bad.stdout


def test_recipe_gpus_cpu_and_overrides():
    two = " ".join(recipe.train_command("iwslt14.de-en", "b", "s", loss="el", gpus=2, seed=7))
    assert "--update-freq 2" in two and "--distributed-world-size 2" in two and "--seed 7" in two
    cpu = recipe.train_command("iwslt14.de-en", "b", "s", loss="ce", cpu=True, max_update=10)
    assert "--fp16" not in cpu and "--cpu" in cpu and cpu[cpu.index("--max-update") + 1] == "10"


@pytest.mark.parametrize("kwargs,message", [
    (dict(gpus=3), "--gpus must divide the recipe's update frequency 4"),
    (dict(gpus=0), "--gpus must be an integer >= 1"),
    (dict(log_end=1.5), r"--log-end must be in \(0, 1\]"),
    (dict(loss="focal"), "--loss must be one of 'ce', 'el'"),
    (dict(max_update=0), "--max-update must be >= 1"),
    (dict(loss="ce", log_end=0.3), "--log-end 0.3 applies to --loss el only"),
])
def test_recipe_bad_values(kwargs, message):
    kwargs = dict(dict(loss="el"), **kwargs)
    with pytest.raises(ValueError, match=message):
        recipe.train_command("iwslt14.de-en", "b", "s", **kwargs)


@pytest.mark.e2e
@pytest.mark.parametrize("extra,flag,own", [
    (["--criterion", "cross_entropy"], "--criterion", "--loss"),
    (["--criterion=cross_entropy"], "--criterion", "--loss"),
    (["--log-end", "0.9"], "--log-end", "--log-end"),
    (["--update-freq", "8"], "--update-freq", "--gpus"),
    (["--save-dir", "elsewhere"], "--save-dir", "--save-dir"),
])
def test_recipe_refuses_flags_after_the_separator_that_it_sets_itself(extra, flag, own):
    """Issue 18 item 18: `-- --criterion cross_entropy` silently trained cross-entropy under --loss el."""
    with pytest.raises(ValueError, match=f"{extra[0]} after --: el-translation-train sets {flag} itself, from its own "
                                         f"{own}"):
        recipe.train_command("toy", "b", "s", loss="el", extra=extra)
    proc = run_cli("el-translation-train", "--recipe", "toy", "--data", "b", "--loss", "el", "--save-dir", "s",
                   "--dry-run", "--", *extra, check=False)
    assert proc.returncode == 2 and f"el-translation-train: error: {extra[0]} after --" in proc.stdout, proc.stdout


@pytest.mark.e2e
def test_el_translation_train_cli(tmp_path):
    out = run_cli("el-translation-train", "--recipe", "iwslt17.fr-en", "--data", "bin", "--loss", "el",
                  "--save-dir", "s", "--dry-run", "--", "--patience", "5").stdout
    assert "--share-all-embeddings" in out and out.rstrip().endswith("--patience 5")
    proc = run_cli("el-translation-train", "--recipe", "iwslt14.de-en", "--data", "bin", "--loss", "el",
                   "--save-dir", "s", "--gpus", "3", "--dry-run", check=False)
    assert proc.returncode == 2 and "--gpus must divide" in proc.stdout
    proc = run_cli("el-translation-train", "--recipe", "wmt", "--data", "b", "--loss", "el", "--save-dir", "s", check=False)
    assert proc.returncode == 2 and "invalid choice: 'wmt'" in proc.stdout


@pytest.mark.e2e
def test_recipe_shell_scripts_argument_handling(tmp_path):
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def sh(script, *args):
        return subprocess.run(["bash", os.path.join(repo, script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    dry = sh("scripts/iwslt/run.sh", "--corpus", "iwslt17.fr-en", "--release", "fr-en.tgz", "--seed", "3", "--dry-run")
    assert dry.returncode == 0, dry.stdout
    assert "+ el-translation-train --recipe iwslt17.fr-en" in dry.stdout and "--loss el --seed 3" in dry.stdout
    assert dry.stdout.count("el-average-checkpoints") == 2 and dry.stdout.count("el-bleu generate") == 4
    assert dry.stdout.count("--path runs/iwslt17.fr-en/el-seed3/checkpoint_best.pt") == 1  # as the authors report
    for args, message in ((["--corpus", "wmt14"], "--corpus must be iwslt14.de-en or iwslt17.fr-en"),
                          (["--corpus", "iwslt14.de-en"], "--release is required"),
                          (["--corpus", "iwslt14.de-en", "--release", "x", "--gpus", "0"], "--gpus must be a positive"),
                          (["--corpus", "iwslt14.de-en", "--release", "x", "--losses", "ce focal"], "--losses takes ce")):
        proc = sh("scripts/iwslt/run.sh", *args)
        assert proc.returncode == 2 and message in proc.stdout, (args, proc.stdout)
    eff = sh("scripts/timm/efficientnet_b0_imagenet.sh", "--train-py", "t.py", "--data", "d", "--dry-run")
    assert eff.returncode == 0 and "--loss el --log-end 0.75" in eff.stdout and "--nproc_per_node 2" in eff.stdout
    base = sh("scripts/timm/efficientnet_b0_imagenet.sh", "--train-py", "t.py", "--data", "d", "--baseline", "--dry-run")
    assert "--loss ce" in base.stdout and "--log-end" not in base.stdout
    bad = sh("scripts/timm/efficientnet_b0_imagenet.sh", "--train-py", "t.py", "--data", "d", "--log-end", "0")
    assert bad.returncode == 2 and "--log-end must be in (0, 1]" in bad.stdout


# --------------------------------------------------------------------------- IWSLT release reading
def fake_iwslt14_release(root, n_train=46):
    d = root / "de-en"
    d.mkdir(parents=True)
    meta = "<url>http://x</url>\n<keywords>k</keywords>\n<talkid>1</talkid>\n"
    for lang, word in (("de", "hallo"), ("en", "hello")):
        body = "".join(f"{word} welt {i} .\n" for i in range(n_train))
        (d / f"train.tags.de-en.{lang}").write_text(meta + f"<title>{word} title</title>\n" + body)
        for name in CORPORA["iwslt14.de-en"]["test_sets"]:
            segs = "".join(f'<seg id="{i}"> {word} {name} {i} </seg>\n' for i in range(2))
            (d / f"{name}.de-en.{lang}.xml").write_text(f"<mteval>\n<doc>\n{segs}</doc>\n</mteval>\n")
    return d


def test_read_iwslt_release(tmp_path):
    d = fake_iwslt14_release(tmp_path)
    assert read_train_tags(str(d / "train.tags.de-en.en"))[:2] == ["hello title", "hello welt 0 ."]
    assert read_xml_segments(str(d / "IWSLT14.TED.tst2010.de-en.en.xml")) == ["hello IWSLT14.TED.tst2010 0",
                                                                               "hello IWSLT14.TED.tst2010 1"]
    splits = read_iwslt_release(str(tmp_path), "iwslt14.de-en")
    assert len(splits["valid"][0]) == 3 and splits["valid"][1][0] == "hello title"  # lines 0, 23, 46 of 47
    assert len(splits["train"][0]) == 44 and len(splits["test"][0]) == 10
    from el_plugins.commands import CommandError

    with pytest.raises(CommandError, match="no file matching 'train.tags.fr-en.fr'"):
        read_iwslt_release(str(tmp_path), "iwslt17.fr-en")


@pytest.mark.e2e
def test_el_prepare_iwslt_end_to_end(tmp_path):
    d = fake_iwslt14_release(tmp_path / "rel", n_train=120)
    tgz = tmp_path / "de-en.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(d, arcname="de-en")
    out = tmp_path / "prepared"
    log = run_cli("el-prepare-iwslt", "--release", tgz, "--corpus", "iwslt14.de-en", "--out", out,
                  "--vocab-size", "100", "--workers", "1").stdout
    assert "train: 115 pairs" in log and "valid: 6 pairs" in log and "test: 10 pairs" in log
    assert (out / "data-bin" / "dict.de.txt").exists() and (out / "data-bin" / "test.de-en.en.bin").exists()
    assert (out / "text" / "test.raw.en").read_text().splitlines()[0] == "hello IWSLT14.TED.dev2010 0"
    assert (out / "text" / "test.tok.en").read_text().splitlines()[0] == "hello iwslt14.ted.dev2010 0"  # lower-cased
    assert "▁" in (out / "text" / "train.de").read_text()  # sentencepiece pieces
    proc = run_cli("el-prepare-iwslt", "--release", tmp_path / "nothing.tgz", "--corpus", "iwslt14.de-en",
                   "--out", out, check=False)
    assert proc.returncode != 0 and "neither a folder nor a .tgz" in proc.stdout


# --------------------------------------------------------------------------- the pipeline on a real model
@pytest.mark.e2e
def test_prepare_train_generate_bleu(tmp_path):
    splits = make_splits((("train", 400), ("valid", 40), ("test", 43)))
    data_bin = prepare_parallel_corpus(splits, str(tmp_path / "data"), "src", "en", vocab_size=300, lowercase=False,
                                       joined_dictionary=False, workers=1)
    run_cli("fairseq-train", data_bin, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "2000",
            "--max-update", "25", "--cpu", "--criterion", "label_smoothed_encouraging_loss", "--label-smoothing", "0.1",
            "--save-dir", tmp_path / "ckpt", "--no-progress-bar", "--num-workers", "0")
    out = run_cli("el-bleu", "generate", data_bin, "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--cpu",
                  "--raw-ref", tmp_path / "data" / "text" / "test.raw.en", "--out", tmp_path / "bleu").stdout
    assert sorted(os.listdir(tmp_path / "bleu")) == ["bleu.json", "generate.log", "hyp.tok.txt", "ref.tok.txt"]
    result = json.loads((tmp_path / "bleu" / "bleu.json").read_text())
    assert result["sentences"] == 43  # all of them, not a multiple of 8
    assert result["post_process"] == "sentencepiece" and "el-plugins.json says so" in out  # the data-bin's record
    # our tokenized BLEU is the number fairseq-generate prints itself
    assert result["tokenized_bleu"] == pytest.approx(result["fairseq_generate_bleu4"], abs=0.01)
    assert re.search(r"sacreBLEU += [\d.]+ +\(nrefs:1\|case:mixed\|eff:no\|tok:13a", out)
    assert len((tmp_path / "bleu" / "hyp.tok.txt").read_text().splitlines()) == 43


# --------------------------------------------------------------------------- el-bleu: hostile input (issue 18)
@pytest.mark.e2e
def test_el_bleu_drops_a_byte_order_mark(tmp_path):
    """Item 7: a BOM glued to the first token lowered BLEU (unigram precision 66.7 instead of 83.3)."""
    hyp, ref = "the cat sat on the mat", "the cat sat on a mat"
    (tmp_path / "h.txt").write_text(hyp + "\n")
    for option in ("--hyp", "--ref", "--raw-ref"):
        files = {"--hyp": tmp_path / "h.txt", "--ref": tmp_path / "r.txt", "--raw-ref": tmp_path / "raw.txt"}
        for flag, path in files.items():
            if flag != "--hyp":
                path.write_text(ref + "\n")
        files[option] = tmp_path / f"bom{option}.txt"
        files[option].write_bytes(b"\xef\xbb\xbf" + (hyp if option == "--hyp" else ref).encode() + b"\n")
        out = run_cli("el-bleu", "score", *[x for kv in files.items() for x in kv]).stdout
        want = bleu.tokenized_bleu([hyp], [ref])
        assert f"tokenized BLEU-4 = {want.score:.2f}" in out and "83.3/" in out, (option, out)
        assert f"sacreBLEU        = {bleu.sacre_bleu([hyp], [ref])[0].score:.2f}" in out, (option, out)


@pytest.fixture(scope="module")
def word_level_run(toy_data_bin, tmp_path_factory):
    """A tiny model trained on the word-level toy data-bin (fairseq-preprocess of plain words, no subwords)."""
    return train_tiny_model(toy_data_bin, tmp_path_factory.mktemp("word_level"))


@pytest.mark.e2e
def test_el_bleu_generate_tells_the_data_bins_subwords(toy_data_bin, word_level_run, tmp_path):
    """Item 2: --post-process sentencepiece (the old default) on a word-level data-bin deleted every space."""
    proc = run_cli("el-bleu", "generate", toy_data_bin, "--path", word_level_run, "--cpu", "--out", tmp_path / "b")
    result = json.loads((tmp_path / "b" / "bleu.json").read_text())
    assert result["post_process"] == "none", result
    assert "--post-process auto: none" in proc.stdout and "dict.en.txt" in proc.stdout, proc.stdout[-2000:]
    refs = (tmp_path / "b" / "ref.tok.txt").read_text().splitlines()
    words = [line.split() for line in (toy_data_bin.parent / "raw" / "test.en").read_text().splitlines()]
    assert [r.split() for r in refs] == words  # the references keep their words apart
    bad = run_cli("el-bleu", "generate", toy_data_bin, "--path", word_level_run, "--cpu", "--post-process",
                  "sentencepiece", "--out", tmp_path / "c", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout, bad.stdout[-2000:]
    assert (f"el-bleu: error: --post-process sentencepiece: {toy_data_bin / 'dict.en.txt'} has no sentencepiece "
            "piece") in bad.stdout, bad.stdout[-2000:]
    assert not (tmp_path / "c").exists()


@pytest.mark.e2e
def test_el_bleu_generate_checks_before_any_work(toy_data_bin, word_level_run, tmp_path):
    """Items 15, 16, 18: what can be checked is, before fairseq-generate runs, in one line; --out a file too."""
    def generate(*args, data=toy_data_bin):
        return run_cli("el-bleu", "generate", data, "--path", word_level_run, "--cpu", *args, check=False)

    a_file = tmp_path / "bleu.json"
    a_file.write_text("{}")
    lm = tmp_path / "lm-bin"  # another task's data-bin: a language model's (no language pair)
    lm.mkdir()
    for name in ("dict.txt", "test.bin", "test.idx"):
        (lm / name).write_bytes(b"")
    for args, data, message in (
            (["--out", a_file], toy_data_bin, f"--out {a_file}: is a file, not a folder"),
            (["--out", a_file / "sub"], toy_data_bin, f"--out {a_file / 'sub'}: {a_file} is a file, not a folder"),
            (["--gen-subset", "tset"], toy_data_bin, "--gen-subset tset: DATA_BIN has no such split (it has: test, train, valid)"),
            (["--post-process", "bogus"], toy_data_bin, "argument --post-process: invalid choice: 'bogus'"),
            (["--max-tokens", "0"], toy_data_bin, "--max-tokens must be >= 1, got 0"),
            (["--max-tokens", "-5"], toy_data_bin, "--max-tokens must be >= 1, got -5"),
            (["--lang", "xx"], toy_data_bin, "--lang 'xx': not a language sacremoses' Moses detokenizer knows"),
            ([], lm, f"DATA_BIN {lm} is not a translation data-bin"),
    ):
        proc = generate(*args, data=data)
        assert proc.returncode == 2, (args, proc.stdout[-2000:])
        last = proc.stdout.strip().splitlines()[-1]
        assert last.startswith("el-bleu") and message in last, (args, proc.stdout[-2000:])
        assert "Traceback" not in proc.stdout and "fairseq" not in proc.stdout.split("error:")[0], proc.stdout[-2000:]
    assert a_file.read_text() == "{}"

    junk = tmp_path / "junk.pt"  # what only fairseq-generate finds: one line, the cause and the log
    junk.write_bytes(b"not a checkpoint")
    proc = run_cli("el-bleu", "generate", toy_data_bin, "--path", junk, "--cpu", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line for line in lines if "error" in line] == lines[-1:], lines
    assert lines[-1].startswith("el-bleu: error: fairseq-generate failed (exit 1): _pickle.UnpicklingError: "), lines
    log = re.search(r"its output is in (\S+)\)$", lines[-1]).group(1)
    assert "Traceback" in open(log).read()
    os.unlink(log)


# --------------------------------------------------------------------------- el-prepare-iwslt: reruns (issue 18)
def release_tgz(tmp_path, name, n_train):
    d = fake_iwslt14_release(tmp_path / name, n_train=n_train)
    tgz = tmp_path / f"{name}.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(d, arcname="de-en")
    return tgz


def prepare(release, out, check=True):
    return run_cli("el-prepare-iwslt", "--release", release, "--corpus", "iwslt14.de-en", "--out", out,
                   "--vocab-size", "100", "--workers", "1", check=check)


def files_of(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.e2e
def test_el_prepare_iwslt_twice_into_the_same_out_prepares_the_new_release(tmp_path):
    """Items 3 and 9: the second run failed in fairseq-preprocess (dict.de.txt exists), and it read the
    stale OUT/release of the first run: 97 training lines instead of 221."""
    out = tmp_path / "prepared"
    small, large = release_tgz(tmp_path, "small", 60), release_tgz(tmp_path, "large", 240)
    assert "train: 58 pairs" in prepare(small, out).stdout
    log = prepare(large, out).stdout
    assert "train: 230 pairs" in log, log[-2000:]
    assert len((out / "text" / "train.en").read_text().splitlines()) == 230
    record = json.loads((out / "data-bin" / "el-plugins.json").read_text())
    assert record["post_process"] == "sentencepiece" and record["source_lang"] == "de" and record["target_lang"] == "en"
    assert sorted(os.listdir(out)) == ["data-bin", "preprocess.log", "spm.model", "spm.vocab", "text"]
    again = files_of(out)
    prepare(large, out)  # the same release again: the same files
    assert files_of(out).keys() == again.keys()
    same = lambda files: {k: v for k, v in files.items() if not k.endswith((".log", ".model"))}  # noqa: E731
    assert same(files_of(out)) == same(again)  # (the logs and spm.model name the staging folder)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_el_prepare_iwslt_interrupted_leaves_the_previous_output(tmp_path, signum):
    """Item 9: an interrupted run rewrote text/ and spm.model and left them beside the old data-bin."""
    import signal

    from el_evidence.testing.interrupts import interrupt_when, start_cli

    out = tmp_path / "prepared"
    prepare(release_tgz(tmp_path, "small", 60), out)
    before = files_of(out)
    large = release_tgz(tmp_path, "large", 240)
    proc = start_cli("el-prepare-iwslt", "--release", large, "--corpus", "iwslt14.de-en", "--out", out,
                     "--vocab-size", "100", "--workers", "1")
    staging = out / f".el-partial-{proc.pid}"
    interrupt_when(proc, (staging / "text" / "train.de").exists, getattr(signal, signum))
    assert staging.exists() == (signum == "SIGKILL")  # SIGTERM cleans up; after a kill -9 the next run does
    assert {k: v for k, v in files_of(out).items() if not k.startswith(".el-partial-")} == before
    assert "train: 230 pairs" in prepare(large, out).stdout
    assert sorted(os.listdir(out)) == ["data-bin", "preprocess.log", "spm.model", "spm.vocab", "text"]


@pytest.mark.e2e
def test_el_prepare_iwslt_truncated_or_ambiguous_release(tmp_path):
    """Item 11: a truncated .tgz gave an EOFError traceback and left a partial extraction behind; a release
    folder with two copies of a file silently used the first."""
    tgz = release_tgz(tmp_path, "rel", 60)
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    out = tmp_path / "prepared"
    proc = prepare(cut, out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert f"el-prepare-iwslt: error: --release {cut}: the archive is truncated or damaged" in proc.stdout
    assert os.listdir(out) == []

    two = tmp_path / "two"
    for copy in ("a", "b"):
        fake_iwslt14_release(two / copy)
    proc = prepare(two, out, check=False)
    assert proc.returncode == 1 and "has 2 files matching 'train.tags.de-en.de'" in proc.stdout, proc.stdout[-2000:]
    assert os.listdir(out) == []


def fake_data_bin(folder, symbols, pairs=(("de", "en"),), splits=("train", "valid", "test")):
    """The files fairseq-preprocess writes, with empty data: dict.<lang>.txt and <split>.<src>-<tgt>.<lang>.*"""
    folder.mkdir(parents=True)
    for src, tgt in pairs:
        for lang in (src, tgt):
            (folder / f"dict.{lang}.txt").write_text("".join(f"{s} 1\n" for s in symbols))
            for split in splits:
                for ext in ("bin", "idx"):
                    (folder / f"{split}.{src}-{tgt}.{lang}.{ext}").write_bytes(b"")
    return folder


def test_what_a_data_bin_holds(tmp_path, caplog):
    import logging

    from el_plugins.commands import UsageError
    from el_plugins.translation import data_bin

    pieces = fake_data_bin(tmp_path / "spm", ["\u2581the", "\u2581cat", "s"])
    bpe = fake_data_bin(tmp_path / "bpe", ["the", "ca@@", "t"])
    words = fake_data_bin(tmp_path / "words", ["the", "cat"])
    assert data_bin.language_pair(str(pieces), "test") == ("de", "en")
    assert [data_bin.subword_kind(str(d), "en")[0] for d in (pieces, bpe, words)] == ["sentencepiece", "subword_nmt",
                                                                                      "none"]
    data_bin.write_record(str(words), post_process="sentencepiece")  # the record wins over the dictionary
    assert data_bin.subword_kind(str(words), "en") == ("sentencepiece", f"{words / 'el-plugins.json'} says so")
    os.unlink(words / "el-plugins.json")
    with pytest.raises(UsageError, match=r"--post-process sentencepiece: .*dict.en.txt has no sentencepiece piece"):
        bleu.choose_post_process(str(words), "en", "sentencepiece")
    with caplog.at_level(logging.INFO, logger="el_plugins"):
        assert bleu.choose_post_process(str(bpe), "en", "auto") == "subword_nmt"
        assert bleu.choose_post_process(str(pieces), "en", "none") == "none"
    assert "--post-process auto: subword_nmt" in caplog.text
    assert "warning: --post-process none, but" in caplog.text and "has sentencepiece pieces" in caplog.text
    both = fake_data_bin(tmp_path / "both", ["a"], pairs=(("de", "en"), ("fr", "en")))
    with pytest.raises(UsageError, match=r"holds several language pairs \(de-en, fr-en\)"):
        data_bin.language_pair(str(both), "test")
    half = fake_data_bin(tmp_path / "half", ["a"])
    os.unlink(half / "test.de-en.en.idx")
    with pytest.raises(UsageError, match=r"--gen-subset test: DATA_BIN has no such split \(it has: train, valid\)"):
        data_bin.language_pair(str(half), "test")


@pytest.mark.e2e
def test_paper_recipe_chooses_checkpoint_best_by_valid_bleu(tmp_path):
    """The recipes' checkpoint selection, run for real: fairseq-train's --eval-bleu with moses detokenisation and
    sentencepiece removal, and checkpoint_best.pt the epoch of the highest valid BLEU."""
    import torch

    splits = make_splits((("train", 300), ("valid", 30), ("test", 20)))
    data_bin = prepare_parallel_corpus(splits, str(tmp_path / "data"), "src", "en", vocab_size=300, lowercase=False,
                                       joined_dictionary=True, workers=1)
    log = run_cli("el-translation-train", "--recipe", "iwslt17.fr-en", "--data", data_bin, "--loss", "el", "--cpu",
                  "--max-update", "60", "--save-dir", tmp_path / "ckpt", "--", *TINY_TRANSFORMER, "--max-tokens",
                  "1000", "--warmup-updates", "10", "--lr", "3e-3", "--num-workers", "0").stdout
    valid = [dict(re.findall(r"\| (\w+) ([-\d.]+)", line)) for line in log.splitlines() if "valid on 'valid'" in line]
    assert len(valid) >= 3 and all("bleu" in v for v in valid), log[-3000:]
    assert all("best_bleu" in v for v in valid[1:]), log[-3000:]  # (fairseq logs the best from epoch 2 on)
    bleus = [float(v["bleu"]) for v in valid]
    best = torch.load(tmp_path / "ckpt" / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert best["extra_state"]["best"] == pytest.approx(max(bleus), abs=0.01)
    assert float(valid[-1]["best_bleu"]) == pytest.approx(max(bleus), abs=0.01)
