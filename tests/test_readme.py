"""The README is the door, docs/ is behind it: every measured table on a docs page and every one-line result in
the README is what the current code makes of the committed results file; the README stays short, names every
docs page, and every relative link in the README and docs/ resolves."""
import glob
import importlib.util
import json
import os
import re
import shutil

import pytest

from el_evidence import headlines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
README_MAX_LINES = 250
# the only pages outside the repository a README or docs page links to: public upstream pages
UPSTREAM = ("https://arxiv.org/abs/2110.06537", "https://github.com/facebookresearch/fairseq/",
            "https://github.com/lancopku/well-classified-examples-are-underestimated")


def read(rel):
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def readme():
    return read("README.md")


def _load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the tables on the docs pages
def test_loss_benchmark_table_is_the_committed_results_file():
    bench = _load_benchmark("loss_benchmark")
    with open(os.path.join(REPO, "benchmarks", "results-cpu.json")) as f:
        results = json.load(f)
    table = bench.markdown_table(results)
    assert table in read("docs/performance.md")
    dtypes = {row["dtype"] for row in results["results"]}
    assert {"float32", "float16"} <= dtypes and not results["settings"]["quick"]


NOT_MEASURED = "not measured yet"


def test_features_benchmark_table_is_the_committed_results_file():
    """docs/performance.md shows the table of benchmarks/results-features-cpu.json (a full run); while that file
    is not committed, the page must say the table is not measured yet, and show no figures for it."""
    path = os.path.join(REPO, "benchmarks", "results-features-cpu.json")
    page = read("docs/performance.md")
    section = page.split("## Loss benchmark from the decoder's features", 1)[1].split("\n## ", 1)[0]
    if not os.path.isfile(path):
        assert NOT_MEASURED in section and "| linear_el" not in section and "encouraging_loss` |" not in section
        return
    with open(path) as f:
        results = json.load(f)
    assert results["settings"]["from_features"] and not results["settings"]["quick"]
    assert _load_benchmark("loss_benchmark").markdown_table(results) in section
    assert NOT_MEASURED not in section


def test_fairseq_throughput_table_is_the_committed_results_file():
    bench = _load_benchmark("fairseq_throughput")
    with open(os.path.join(REPO, "benchmarks", "fairseq-throughput-cpu.json")) as f:
        results = json.load(f)
    page = read("docs/performance.md")
    assert bench.markdown_table(results) in page
    assert f"--updates {results['updates']} --repeats {results['repeats']}" in page


def test_demo_table_is_the_committed_results_file():
    """docs/demo.md's block is el-demo's own table of results/demo/results.json (a full run: neither
    --quick nor --data), and the wall time it states is that run's."""
    from el_plugins.demo.__main__ import format_table

    with open(os.path.join(REPO, "results", "demo", "results.json")) as f:
        results = json.load(f)
    settings = results["settings"]
    assert not settings["quick"] and not settings["data"] and settings["parts"] == ["translation", "vision"]
    text = read("docs/demo.md")
    assert "```\n" + format_table(results) + "\n```" in text
    assert f"{results['seconds']:.0f} s" in text


# --------------------------------------------------------------------------- the README's one-line results
NOT_YET_COMMITTED = set()  # results files whose full run is still to be made (docs/performance.md says so)


@pytest.mark.parametrize("key", list(headlines.HEADLINES))
def test_readme_headline_is_the_committed_results_file(key):
    """Each README line is what el_evidence.headlines renders from its committed results file; fails
    while that file is not committed (the runs in progress: then rerun the command below)."""
    rel = headlines.HEADLINES[key].path
    fix = "then `python -m el_evidence.headlines --write README.md`"
    shown = headlines.block(readme(), key)
    if key in NOT_YET_COMMITTED and not os.path.isfile(os.path.join(REPO, rel)):
        assert shown is not None and not shown.strip(), f"README.md shows a {key} line without {rel}"
        return
    assert os.path.isfile(os.path.join(REPO, rel)), f"{rel} is not committed yet: commit its run, {fix}"
    assert shown is not None, f"README.md lacks the markers {headlines.markers(key)}"
    assert shown == headlines.render(key, REPO), f"README.md's {key} line is not what {rel} gives: {fix}"


MNIST = {"variants": {
    "ce": {"seeds": [{}, {}], "mean": {"accuracy": 99.2, "auroc": 99.0, "attack_0.1": 50.0},
           "std": {"accuracy": 0.1, "auroc": 0.2, "attack_0.1": 1.0}},
    "el": {"seeds": [{}, {}], "mean": {"accuracy": 99.5, "auroc": 98.0, "attack_0.1": 51.0},
           "std": {"accuracy": 0.1, "auroc": 0.2, "attack_0.1": 1.0}}},
    "paper": {"variants": {"ce": {"accuracy": 99.42, "auroc": 95.68}, "el": {"accuracy": 99.56, "auroc": 98.04}}}}


def test_mnist_headline():
    assert headlines.mnist(MNIST) == (
        "EL vs CE (2 seeds): test accuracy 99.50 vs 99.20 %, Fashion-MNIST OOD AUROC 98.00 vs 99.00 %, APGD accuracy "
        "at eps 0.1 51.0 vs 50.0 %; 1 of 3 of the paper's claims hold here (1 the opposite, 1 unclear)")


def test_mnist_headline_without_attacks_leaves_them_out():
    no_attack = json.loads(json.dumps(MNIST))
    for v in no_attack["variants"].values():
        del v["mean"]["attack_0.1"], v["std"]["attack_0.1"]
    line = headlines.mnist(no_attack)
    assert "APGD" not in line and line.endswith("1 of 2 of the paper's claims hold here (1 the opposite, 0 unclear)")


def _table11_variant(accuracy, robust01, robust02):
    return {"models": [{}, {}], "attacked": [{}], "mean": {"accuracy": accuracy}, "std": {"accuracy": 0.1},
            "robust": {"clean": 99.0, "autoattack_0.1": robust01, "autoattack_0.1_se": 4.0, "autoattack_0.2": robust02,
                       "autoattack_0.2_se": 1.0, "stages_0.1": {"APGD-CE": 60.0}, "stages_0.2": {"APGD-CE": 5.0},
                       "seconds_per_image_0.1": 3.7, "seconds_per_image_0.2": 1.0}}


TABLE11 = {"variants": {"ce": _table11_variant(98.9, 60.0, 2.5), "el": _table11_variant(99.0, 70.0, 2.5)},
           "paper": {"source": "Table 11", "variants": {
               "ce": {"accuracy": 98.69, "autoattack_0.1": 74.89, "autoattack_0.2": 5.04},
               "el": {"accuracy": 99.04, "autoattack_0.1": 79.31, "autoattack_0.2": 7.59}}},
           "settings": {"epsilons": [0.1, 0.2], "attack": {"images": 40, "models_per_loss": 1, "stages": {"APGD-CE": {}}}},
           "data": {"mnist_test": {"images": 10000}}}


def test_table11_headline():
    assert headlines.table11(TABLE11) == (
        "EL vs CE (the authors' network and attack): clean accuracy 99.00 vs 98.90 %, AutoAttack eps 0.1 70.0 vs "
        "60.0 %, AutoAttack eps 0.2 2.5 vs 2.5 %; 1 of 3 of the paper's claims hold here (0 the opposite, 2 unclear)")


def _translation_variant(name, n, bleu, target_prob):
    keys = {"bleu": bleu, "sacrebleu": bleu, "valid_nll": 2.0, "target_prob": target_prob, "margin_mean": 3.0,
            "margin_median": 3.0, "valid_accuracy": 0.5, "train_seconds": 100.0}
    return {"name": name, "seeds": [{}] * n, "mean": dict(keys), "std": {k: 0.1 for k in keys}}


TRANSLATION = {"variants": {"ce": _translation_variant("LS-CE", 3, 20.0, 0.40),
                            "el": _translation_variant("EL 0.5", 3, 21.0, 0.60),
                            "el_le1": _translation_variant("EL 1", 2, 19.0, 0.50)},
               "settings": {"average_last": 1, "beam": 5, "device": "cpu", "wall_seconds": 4667.2}}


def test_translation_headline():
    assert headlines.translation(TRANSLATION) == (
        "EL (log_end 0.5) vs LS-CE, Spanish -> English Bible: test BLEU 21.00 vs 20.00 (log_end 1: 19.00), valid "
        "target probability 0.600 vs 0.400; 5 of 6 of the paper's claims hold here (0 the opposite, 1 unclear); "
        "the run took 78 min (cpu)")


def test_headlines_give_the_run_time_where_the_results_file_recorded_it():
    with_time = json.loads(json.dumps(MNIST))
    with_time["settings"] = {"device": "cpu", "cpu_count": 2, "wall_seconds": 637.0}
    assert headlines.mnist(with_time) == headlines.mnist(MNIST) + "; the run took 11 min (2 CPU cores)"
    with_time["settings"] = {"device": "cuda", "wall_seconds": 90.0}
    assert headlines.mnist(with_time).endswith("; the run took 2 min (cuda)")
    assert "the run took" not in headlines.table11(TABLE11)


def test_demo_headline_and_its_parts():
    translation = {"runs": {"LS-CE": {"tokenized_bleu": 90.0, "valid_target_prob_mean": 0.9},
                            "EL": {"tokenized_bleu": 91.5, "valid_target_prob_mean": 0.95}}}
    vision = {"runs": {"CE": {"test_accuracy": 0.95, "margin_mean": 4.0}, "EL": {"test_accuracy": 0.96, "margin_mean": 5.5}}}
    assert headlines.demo({"translation": translation, "vision": vision}) == (
        "EL vs the baseline, one seed: toy translation BLEU 91.50 vs 90.00 (LS-CE), valid target probability 0.950 "
        "vs 0.900; digits accuracy 96.00 vs 95.00 %, mean logit margin 5.50 vs 4.00 (CE)")
    assert "digits" not in headlines.demo({"translation": translation})
    with pytest.raises(ValueError, match="neither a 'translation' nor a 'vision' part"):
        headlines.demo({"settings": {}})


def _row(variant, dtype, time_ratio, mem_ratio, **extra):
    return dict(device="cpu", dtype=dtype, n=8, v=16, variant=variant, time_ratio=time_ratio, mem_ratio=mem_ratio,
                **extra)


def test_loss_benchmark_headline_gives_the_ranges_over_shapes():
    results = {"results": [_row("fused_el", "float32", 0.5, 0.42), _row("fused_el", "float16", 0.8, 0.5),
                           _row("autograd_el", "float32", 6.0, 2.75), _row("autograd_el", "float16", 4.0, 2.75),
                           _row("fairseq_ls_ce", "float32", 1.0, 1.0)]}
    assert headlines.loss_benchmark(results) == (
        "fused EL on the logits vs fairseq's LS-CE (CPU, 2 shapes, float32 and float16): time 0.50-0.80x, peak memory "
        "0.42-0.50x (autograd EL: 4.00-6.00x, 2.75x)")


def test_features_benchmark_headline_skips_failed_rows_and_refuses_none():
    results = {"results": [_row("linear_el", "float32", 0.7, 0.3), dict(_row("linear_el", "float16", 0, 0), error="x"),
                           _row("fairseq_ls_ce_features", "float32", 1.0, 1.0)]}
    del results["results"][1]["time_ratio"]
    assert headlines.features_benchmark(results) == (
        "`linear_encouraging_loss` from the decoder's features vs the matrix product + fairseq's LS-CE (CPU, 1 shapes, "
        "float32): time 0.70x, peak memory 0.30x")
    with pytest.raises(ValueError, match="no measured 'linear_el' row"):
        headlines.features_benchmark({"results": results["results"][1:]})


def test_features_benchmark_goals_say_met_or_missed_per_row():
    """The goals under the features table are computed from its rows (issue 19: memory at V >= 32000, time on
    every shape), naming each row that misses one."""
    goals = _load_benchmark("loss_benchmark").features_goals

    def row(dtype, v, mem, torch_mem, time_fused, time):
        return dict(_row("linear_el", dtype, time, mem, mem_ratio_torch_chunked=torch_mem,
                         time_ratio_fused_logits=time_fused), n=2048, d=512, v=v)

    text = goals([row("float32", 10000, 0.3, 1.2, 0.9, 0.5), row("float32", 32000, 0.04, 1.34, 1.12, 0.6),
                  row("bfloat16", 128000, 0.05, 1.6, 1.0, 0.7), dict(row("float32", 32000, 9, 9, 9, 9), variant="x")])
    assert text.splitlines()[2:] == [
        "- extra peak memory at most 0.1x LS-CE's (V >= 32000): met on all 2 rows, 0.04-0.05x",
        "- extra peak memory at most 1.5x torch's chunked linear_cross_entropy without smoothing (V >= 32000): "
        "missed on 1 of 2 rows: bfloat16 2048x512x128000 1.60x",
        "- time at most 1.1x the matmul + fused EL on the logits: missed on 1 of 3 rows: float32 2048x512x32000 1.12x",
        "- time at most LS-CE's: met on all 3 rows, 0.50-0.70x"]


def test_fairseq_throughput_headline():
    results = {"device": "cpu", "repeats": 3, "results": {
        "LS-CE": {"wps_median": 1000.0, "wps_all": [900.0, 1000.0, 1100.0], "ratio_to_ls_ce": 1.0},
        "EL (fused)": {"wps_median": 990.0, "wps_all": [990.0], "ratio_to_ls_ce": 0.99},
        "EL (reference)": {"wps_median": 900.0, "wps_all": [900.0], "ratio_to_ls_ce": 0.9}}}
    assert headlines.fairseq_throughput(results) == (
        "words/s on a toy Transformer, CPU (median of 3 repeats): EL fused 0.99x and `--el-implementation reference` "
        "0.90x LS-CE's 1000 (LS-CE's own repeats: 900-1100)")


def test_headlines_write_rewrites_the_blocks_of_the_files_present(tmp_path, capsys):
    """--write README.md: every block whose results file is there is rewritten (an edited line comes back),
    the others are left as they are and named; the results paths are relative to the README's folder."""
    shutil.copytree(os.path.join(REPO, "results", "demo"), tmp_path / "results" / "demo")
    begin, end = headlines.markers("demo")
    m_begin, m_end = headlines.markers("mnist")
    target = tmp_path / "README.md"
    target.write_text(f"# x\n{begin}\n- hand-edited\n{end}\n{m_begin}\nold\n{m_end}\n", encoding="utf-8")
    assert headlines.main(["--write", str(target)]) == 0
    text = target.read_text(encoding="utf-8")
    assert headlines.block(text, "demo") == headlines.render("demo", REPO) and "hand-edited" not in text
    assert headlines.block(text, "mnist") == "old"
    assert "results/mnist/results.json" in capsys.readouterr().err


def test_headlines_write_refuses_missing_markers_and_bad_files(tmp_path, capsys):
    shutil.copytree(os.path.join(REPO, "results", "demo"), tmp_path / "results" / "demo")
    target = tmp_path / "README.md"
    target.write_text("# no markers\n", encoding="utf-8")
    assert headlines.main(["--write", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{headlines.PROG}: error: ") and headlines.markers("demo")[0] in err
    assert target.read_text(encoding="utf-8") == "# no markers\n"  # nothing written
    (tmp_path / "results" / "demo" / "results.json").write_text('{"settings": {}}', encoding="utf-8")
    assert headlines.main(["--root", str(tmp_path)]) == 1
    assert "results/demo/results.json: not the results file the 'demo' line is rendered from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        headlines.main(["--write", str(tmp_path / "missing.md")])
    assert exc.value.code == 2 and "no such file" in capsys.readouterr().err


# --------------------------------------------------------------------------- the door and its links
def docs_pages():
    return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(DOCS, "*.md")))


def test_readme_is_short_and_names_every_docs_page():
    text = readme()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    assert len(docs_pages()) >= 9
    linked = {target.split("#")[0] for target in _links(text)}
    assert [p for p in docs_pages() if p not in linked] == [], "README.md does not link every docs page"


def _links(text):
    return re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))


def _anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen, anchors = {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_anchors_are_githubs():
    assert _anchors("# A: `b-c` d's\n## A: `b-c` d's\n```\n# not a heading\n```\n") == {"a-b-c-ds", "a-b-c-ds-1"}
    assert _links("[x](a.md#b) `[y](c)` [z](http://e)\n```\n[w](d.md)\n```\n") == ["a.md#b", "c", "http://e"]


@pytest.mark.parametrize("page", ["README.md"] + docs_pages())
def test_every_link_resolves(page):
    """Every relative link (file, folder, and #anchor) of the page resolves in the repository; links outside
    it go only to public upstream pages."""
    text = read(page)
    broken = []
    for target in _links(text):
        if target.startswith(("http://", "https://")):
            if not target.startswith(UPSTREAM):
                broken.append(f"{target} (outside the repository, not an upstream page)")
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else os.path.join(REPO, page)
        if not resolved.startswith(REPO + os.sep) or not os.path.exists(resolved):
            broken.append(f"{target} (no such file)")
        elif anchor and (not resolved.endswith(".md") or anchor not in _anchors(read(os.path.relpath(resolved, REPO)))):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{page}: broken links: {broken}"
