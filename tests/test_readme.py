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
