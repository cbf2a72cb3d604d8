"""Every measured table in the README is what the current code's committed results file gives."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_loss_benchmark_table_is_the_committed_results_file():
    spec = importlib.util.spec_from_file_location("loss_benchmark", os.path.join(REPO, "benchmarks", "loss_benchmark.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with open(os.path.join(REPO, "benchmarks", "results-cpu.json")) as f:
        results = json.load(f)
    table = bench.markdown_table(results["results"])
    assert table in readme()
    dtypes = {row["dtype"] for row in results["results"]}
    assert {"float32", "float16"} <= dtypes and not results["settings"]["quick"]


def _load_benchmark(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fairseq_throughput_table_is_the_committed_results_file():
    bench = _load_benchmark("fairseq_throughput")
    with open(os.path.join(REPO, "benchmarks", "fairseq-throughput-cpu.json")) as f:
        results = json.load(f)
    assert bench.markdown_table(results) in readme()
    assert f"--updates {results['updates']} --repeats {results['repeats']}" in readme()


def test_demo_table_is_the_committed_results_file():
    """The README's demo block is el-demo's own table of results/demo/results.json (a full run: neither
    --quick nor --data), and the wall time it states is that run's."""
    from el_plugins.demo.__main__ import format_table

    with open(os.path.join(REPO, "results", "demo", "results.json")) as f:
        results = json.load(f)
    settings = results["settings"]
    assert not settings["quick"] and not settings["data"] and settings["parts"] == ["translation", "vision"]
    text = readme()
    assert "```\n" + format_table(results) + "\n```" in text
    assert f"{results['seconds']:.0f} s" in text
