"""What the GPU check (benchmarks/gpu/) and the torch-versions check (scripts/check_torch_versions.py) do that needs
no GPU: parsing, the results file and its table, the time boxes, the wheel set, the loss benchmark's peers and host
synchronisation counting; and run.sh's dry run (e2e), so that a lent machine's one call is not spent on a typo."""
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(REPO, "benchmarks", "gpu")


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = load("gpu_check", os.path.join(GPU, "check.py"))
report = load("gpu_report", os.path.join(GPU, "report.py"))
wheelset = load("gpu_wheelset", os.path.join(GPU, "wheelset.py"))
bench = load("loss_benchmark", os.path.join(REPO, "benchmarks", "loss_benchmark.py"))
versions = load("check_torch_versions", os.path.join(REPO, "scripts", "check_torch_versions.py"))

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_fused" name="test_a" time="0.1"/>
<testcase classname="tests.test_fused" name="test_b" time="0.1"><failure message="AssertionError: off by 1&#10;more">tb
</failure></testcase>
<testcase classname="tests.test_fused" name="test_c" time="0.0"><skipped type="pytest.skip" message="needs CUDA"/>
</testcase>
<testcase classname="tests.test_fused_linear" name="test_d" time="0.0"><skipped message="needs CUDA"/></testcase>
<testcase classname="tests.test_hf" name="" time="0.0"><error message="collection failure">ImportError</error>
</testcase></testsuite></testsuites>"""


# --------------------------------------------------------------------------- host synchronisations
def test_host_syncs_are_the_sync_debug_warnings_and_the_mode_is_restored():
    modes = []

    def fake_mode(mode):
        modes.append(mode)

    def step():
        assert modes[-1] == "warn"
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)
        warnings.warn("something else", UserWarning)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the count must not depend on the caller's filters (PYTHONWARNINGS=ignore)
        assert bench.count_host_syncs(step, set_mode=fake_mode) == 3
    assert modes == ["warn", "default"]

    def failing():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        bench.count_host_syncs(failing, set_mode=fake_mode)
    assert modes[-1] == "default"
    assert bench.count_sync_warnings(["called a synchronizing CUDA operation", "x"]) == 1


def test_timing_worker_runs_on_cpu_and_keeps_a_failing_variant_out():
    """measure_time (what the GPU run's workers call): every variant timed, the loss recorded, a variant that
    cannot be built recorded with its error instead of stopping the others; no host syncs on a CPU."""
    out = bench.measure_time(["fused_el", "torch_ce", "nonexistent"], 32, 50, "float32", "cpu", repeats=2)
    assert set(out["times"]) == {"fused_el", "torch_ce"} and all(len(t) == 2 for t in out["times"].values())
    assert out["errors"] == {"nonexistent": "ValueError: nonexistent"} and out["host_syncs"] == {}
    assert all(v > 0 for v in out["loss"].values())


def test_input_mutating_peer_gets_its_own_restored_copy():
    import torch

    shared = (torch.arange(6.0).reshape(2, 3).requires_grad_(),)
    restoring = bench._Restoring(shared)
    own = restoring.restore()
    with torch.no_grad():
        own[0].mul_(0)  # as Liger's cross-entropy writes its gradient over the logits
    assert torch.equal(restoring.restore()[0], shared[0]) and restoring.own[0] is not shared[0]


# --------------------------------------------------------------------------- the loss benchmark's peers
def test_peers_that_cannot_run_on_a_cpu_are_skipped_with_a_reason():
    assert bench.skip_reason("liger_ce", "cpu") in ("Liger-Kernel's Triton kernels run on CUDA only",
                                                    "liger-kernel is not installed")
    assert "name it in --variants" in bench.skip_reason("compiled_el", "cpu")
    assert bench.skip_reason("compiled_el", "cpu", named=True) is None
    assert bench.skip_reason("compiled_el", "cuda") is None
    assert bench.skip_reason("torch_ce", "cpu") is None
    assert set(bench.VARIANTS) >= {"autograd_el", "fused_el", "fairseq_ls_ce", "torch_ce", "compiled_el", "liger_ce"}
    assert {"cce", "liger_flce", "compiled_linear_el", "torch_ce_features"} <= set(bench.FEATURE_VARIANTS)


def test_markdown_of_a_run_with_skipped_and_failed_rows_names_them_and_keeps_the_table():
    def row(variant, time_s=0.01, **extra):
        return dict(device="cpu", dtype="float32", n=8, v=16, variant=variant, time_s=time_s, peak_mib=1.0, **extra)
    measured = [row("fairseq_ls_ce", time_ratio=1.0, mem_ratio=1.0), row("fused_el", time_ratio=0.5, mem_ratio=0.5)]
    doc = {"results": measured, "produced_by": None}
    plain = bench.markdown_table(doc)
    doc["results"] = measured + [dict(device="cpu", dtype="float32", n=8, v=16, variant="liger_ce",
                                      skipped="Liger-Kernel's Triton kernels run on CUDA only"),
                                 dict(device="cpu", dtype="float32", n=8, v=16, variant="compiled_el",
                                      error="RuntimeError: no compiler")]
    with_notes = bench.markdown_table(doc)
    table = plain.split("\n\n")[0]  # the table itself; goals and provenance follow it
    assert with_notes.startswith(table + "\n\nNot measured: Liger CE (ls 0.1) (Liger-Kernel's Triton kernels run on "
                                         "CUDA only); torch.compile(reference EL) (failed: RuntimeError: no compiler).")
    assert "Not measured" not in plain


def test_gpu_benchmark_commands_take_the_issues_shapes_and_dtypes(tmp_path):
    run = check.Run(str(tmp_path), 100, False, sys.executable, str(tmp_path))
    for features, v in ((False, 32000), (True, 32000), (False, 128000), (True, 128000)):
        argv, out = check.bench_argv(run, features, v)
        shape = argv[argv.index("--shapes") + 1]
        assert bench.parse_shapes(shape, features)[0][-1] == v
        assert argv[argv.index("--dtypes") + 1] == "bfloat16,float16" and argv[argv.index("--device") + 1] == "cuda"
        assert ("--from-features" in argv) == features and out.endswith(".json")


LIGER_UNDER_THE_INTERPRETER = r"""
import importlib.util, sys
import torch, torch.nn.functional as F
spec = importlib.util.spec_from_file_location("lb", sys.argv[1]); lb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lb)
torch.manual_seed(0)
logits, target = lb._make_inputs(16, 100, torch.float32, "cpu")
z = logits.clone().requires_grad_()
loss = lb._loss_fn("liger_ce")(z, target)
assert not torch.equal(z.detach(), logits), "liger_ce no longer writes over its input: drop it from MUTATES_INPUT"
loss.backward()
ref_z = logits.clone().requires_grad_()
ref = F.cross_entropy(ref_z, target, label_smoothing=lb.EPS, ignore_index=lb.PAD)
ref.backward()
torch.testing.assert_close(loss, ref); torch.testing.assert_close(z.grad, ref_z.grad)
(x, w), t = lb._make_features(16, 8, 100, torch.float32, "cpu")
leaves = (x.requires_grad_(), w.requires_grad_())
loss = lb._loss_fn("liger_flce")(*leaves, t); loss.backward()
ref_leaves = (x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_())
ref = lb._loss_fn("torch_ce_features")(*ref_leaves, t); ref.backward()
torch.testing.assert_close(loss, ref)
for a, b in zip(leaves, ref_leaves):
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
print("liger peers agree with torch CE")
"""


@pytest.mark.e2e
def test_liger_peers_compute_torchs_smoothed_cross_entropy_under_the_triton_interpreter():
    """The GPU-only peers as the benchmark calls them (label smoothing 0.1, ignore_index, reductions), run on CPU
    tensors by Triton's interpreter: the same loss and gradients as torch's cross-entropy; Liger's CE writes its
    gradient over the logits, which is why the benchmark gives it a copy of them."""
    pytest.importorskip("liger_kernel")
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", LIGER_UNDER_THE_INTERPRETER,
                           os.path.join(REPO, "benchmarks", "loss_benchmark.py")], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, env=dict(os.environ, TRITON_INTERPRET="1"))
    assert proc.returncode == 0 and "agree" in proc.stdout, proc.stdout[-3000:]


# --------------------------------------------------------------------------- parsing
def test_junit_reports_are_counted(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    got = check.parse_junit(str(path))
    assert got["counts"] == {"tests": 5, "passed": 1, "failed": 1, "errors": 1, "skipped": 2}
    assert got["failures"][0] == {"test": "tests.test_fused::test_b", "message": "AssertionError: off by 1"}
    assert got["skip_reasons"] == {"needs CUDA": 2}
    theirs = versions.parse_junit(str(path))
    assert theirs["counts"] == got["counts"] and theirs["files"]["test_fused"]["failed"] == 1
    assert check.parse_junit(str(tmp_path / "none.xml")) == {}
    assert check.parse_collected("tests/test_x.py::a\n\n12 tests collected in 3.1s") == 12


def test_timm_and_fairseq_logs_are_parsed():
    timm_log = ("Model resnet18 created, param count:11181642\nel-plugins: training loss = encouraging loss "
                "(log_end=0.75)\nClassificationTask: criterion=EncouragingLoss\n/tmp/el-x/out checkpoint\n"
                "Train: 0 [   0/10 (  0%)]  Loss: 2.48 (2.48)  Time: 1.0s\n"
                "Train: 0 [   9/10 (100%)]  Loss: 2.17 (2.21)  Time: 0.5s\n--result\n"
                '[\n {"epoch": 0, "train": {"loss": 2.2},\n'
                '  "validation": {"loss": 2.3, "top1": 10.2, "top5": 60.7}}\n]\n')
    timm = check.parse_timm_log(timm_log)
    assert timm["train_losses"] == [2.48, 2.17] and timm["finite"] and timm["result"]["validation"]["top1"] == 10.2
    assert timm["loss_lines"] == ["el-plugins: training loss = encouraging loss (log_end=0.75)",
                                  "ClassificationTask: criterion=EncouragingLoss"]
    assert timm["criterion"] == "EncouragingLoss"
    assert not check.parse_timm_log("Train: 0 [   0/10 (  0%)]  Loss: nan (nan)")["finite"]
    fairseq_log = ("2026-12-07 | INFO | fairseq_cli.train | criterion: LabelSmoothedEncouragingLossCriterion\n"
                   '2026 | INFO | train_inner | {"epoch": 1, "update": 1, "loss": "9.1", "loss_scale": "128", '
                   '"wps": "1000"}\n2026 | INFO | train_inner | {"epoch": 1, "update": 2, "loss": "8.7", '
                   '"loss_scale": "64", "wps": "1200"}\n')
    fairseq = check.parse_fairseq_log(fairseq_log)
    assert fairseq == {"updates": 2, "losses": [9.1, 8.7], "loss_scales": [128.0, 64.0], "wps": [1000.0, 1200.0],
                       "criterion": "LabelSmoothedEncouragingLossCriterion", "finite": True}


def test_an_interrupted_benchmark_leaves_its_partial_rows(tmp_path):
    out = tmp_path / "loss.json"
    (tmp_path / "loss.json.partial").write_text(json.dumps({"results": [{"variant": "torch_ce"}]}))
    assert check.read_benchmark(str(out))["partial"] is True
    out.write_text(json.dumps({"results": []}))
    assert check.read_benchmark(str(out))["partial"] is False
    assert check.read_benchmark(str(tmp_path / "none.json")) is None
    assert bench.partial_path(str(out)) == str(out) + ".partial"


def test_deselected_tests_exist():
    """pytest ignores a --deselect that names no test: each id the GPU run and the torch check deselect exists."""
    ids = {**check.DESELECT_ALWAYS, **check.DESELECT_WITHOUT_LCE}
    ids.update({test: why for test, _, why in versions.TORCH_API_TESTS})
    assert all(check._deselected_ids_exist(ids).values()), check._deselected_ids_exist(ids)


def test_tree_digest_sees_code_not_caches(tmp_path):
    (tmp_path / "el_plugins" / "__pycache__").mkdir(parents=True)
    (tmp_path / "el_plugins" / "a.py").write_text("x = 1\n")
    (tmp_path / "setup.py").write_text("")
    digest = check.tree_digest(str(tmp_path))
    (tmp_path / "el_plugins" / "__pycache__" / "a.cpython-312.pyc").write_bytes(b"\0")
    (tmp_path / "el_plugins" / "run.json.partial").write_text("{}")
    assert check.tree_digest(str(tmp_path)) == digest
    (tmp_path / "el_plugins" / "a.py").write_text("x = 2\n")
    assert check.tree_digest(str(tmp_path)) != digest


# --------------------------------------------------------------------------- time boxes
@pytest.mark.e2e
@pytest.mark.e2e
def test_steps_are_time_boxed_and_a_failing_step_does_not_stop_the_next(tmp_path):
    run = check.Run(str(tmp_path), 120, False, sys.executable, str(tmp_path))
    started = time.monotonic()
    status, _, seconds = run.command("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], 2)
    assert status == "timeout" and seconds < 15 and time.monotonic() - started < 15
    assert run.command("failing", [sys.executable, "-c", "print('bad'); raise SystemExit(3)"], 20)[0] == "failed"
    assert run.command("fine", [sys.executable, "-c", "print('good')"], 20)[:2] == ("ok", "good\n")
    run.started_utc = "now"
    doc = run.finish()
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [("sleeper", "timeout"), ("failing", "failed"),
                                                               ("fine", "ok")]
    assert doc["steps"][1]["exit"] == 3 and doc["steps"][1]["reason"] == "bad"
    assert json.loads((tmp_path / check.RESULTS).read_text())["steps"] == doc["steps"]
    log = (tmp_path / check.LOGS).read_text()
    assert "===== failing" in log and "bad" in log and "----- sleeper: timeout" in log
    late = check.Run(str(tmp_path), check.MIN_STEP_S, False, sys.executable, str(tmp_path))
    assert late.command("late", [sys.executable, "-c", "pass"], 20)[0] == "skipped"
    assert late.steps[0]["reason"].startswith("no time left")


def test_a_step_that_raises_is_recorded_and_the_others_run(tmp_path, monkeypatch, capsys):
    def broken(run):
        raise KeyError("oops")

    def fine(run):
        run.record("fine", "ok", 1.0, 5)
    monkeypatch.setattr(check, "STEPS", (("broken", 5, broken), ("fine", 5, fine)))
    assert check.main(["--out", str(tmp_path), "--budget", "60"]) == 0
    doc = json.loads((tmp_path / check.RESULTS).read_text())
    assert [(s["name"], s["status"]) for s in doc["steps"]] == [("broken", "failed"), ("fine", "ok")]
    assert "KeyError" in doc["steps"][0]["reason"] and "| fine | ok |" in capsys.readouterr().out


# --------------------------------------------------------------------------- the results file and its table
def _document():
    def row(variant, dtype, time_s, peak, syncs, features=False, **extra):
        r = dict(device="cuda", dtype=dtype, n=8192, v=32000, variant=variant, time_s=time_s, peak_mib=peak,
                 host_syncs=syncs, **extra)
        if features:
            r["d"] = 4096
        return r
    logits = [row("torch_ce", "bfloat16", 0.004, 1500, 0), row("fused_el", "bfloat16", 0.003, 1000, 0),
              row("torch_ce", "float16", 0.004, 1500, 0), row("fused_el", "float16", 0.005, 1600, 1),
              dict(device="cuda", dtype="bfloat16", n=8192, v=32000, variant="liger_ce", error="RuntimeError: x"),
              dict(device="cuda", dtype="float16", n=8192, v=32000, variant="liger_ce", error="RuntimeError: x")]
    features = [row("torch_ce_features", "bfloat16", 0.02, 2000, 0, True),
                row("linear_el", "bfloat16", 0.018, 300, 0, True),
                dict(device="cuda", dtype="bfloat16", n=8192, d=4096, v=32000, variant="cce",
                     skipped="cut-cross-entropy is not installed")]
    return {"schema": 1, "dry_run": False, "started_utc": "2026-12-08T10:00:00+00:00", "wall_seconds": 431.2,
            "code": {"git_commit": "0123456789abcdef", "git_dirty": False},
            "machine": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "python": "3.12.3"},
            "packages": {"versions": {"triton": "3.6.0", "liger-kernel": "0.8.5", "cut-cross-entropy": "25.1.1",
                                      "timm": "1.0.31", "fairseq-fixed": "0.12.3.1"}},
            "steps": [{"name": "tests_cuda", "status": "ok", "seconds": 41.0},
                      {"name": "loss_32000", "status": "ok", "seconds": 50.2, "measured": 4, "skipped_rows": 0,
                       "error_rows": 2, "partial": False},
                      {"name": "timm_amp", "status": "ok", "seconds": 20.0},
                      {"name": "fairseq_fp16", "status": "timeout", "seconds": 60.0, "reason": "| x"}],
            "tests": {"tests_cuda": {"counts": {"tests": 25, "passed": 24, "failed": 1, "errors": 0, "skipped": 0},
                                     "failures": [{"test": "tests.test_fused::test_triton_kernel_cuda[x]"}]}},
            "timm": {"train_losses": [2.5, 2.1], "result": {"validation": {"top1": 40.0}},
                     "criterion": "EncouragingLoss"},
            "benchmarks": {"loss_32000": {"results": logits}, "features_32000": {"results": features}}}


def test_gpu_markdown_from_a_results_file():
    text = report.markdown(_document())
    assert text.startswith("NVIDIA H100 80GB HBM3, torch 2.11.0+cu130, Triton 3.6.0, Python 3.12.3, Liger-Kernel "
                           "0.8.5, Cut Cross-Entropy 25.1.1, timm 1.0.31, fairseq-fixed 0.12.3.1; "
                           "benchmarks/gpu/run.sh in one call of 431 s (started 2026-12-08T10:00:00+00:00), "
                           "el-plugins commit 0123456789ab.")
    lines = text.splitlines()
    assert "| tests_cuda | ok | 41 | 24 passed, 1 failed, 0 errors, 0 skipped; failed: test_triton_kernel_cuda[x] |" \
        in lines
    assert "| loss_32000 | ok | 50 | 4 rows measured, 0 skipped, 2 failed |" in lines
    assert "| timm_amp | ok | 20 | 2 steps, loss 2.50 -> 2.10, validation top-1 40.0%, criterion EncouragingLoss |" \
        in lines
    assert "| fairseq_fp16 | timeout | 60 | \\| x |" in lines
    assert "| bfloat16 | 8192x32000 | **fused EL** | 3.00 | 1000 | 0 | **0.75** | **0.67** |" in lines
    assert "| float16 | 8192x32000 | **fused EL** | 5.00 | 1600 | 1 | **1.25** | **1.07** |" in lines
    assert "| bfloat16 | 8192x4096x32000 | **linear_encouraging_loss** | 18.00 | 300 | 0 | **0.90** | **0.15** |" \
        in lines
    assert "Not measured: Liger CE (ls 0.1) (failed: RuntimeError: x)." in lines
    assert "Not measured: Cut Cross-Entropy (ls 0) (cut-cross-entropy is not installed)." in lines
    assert "- fused EL on float16/bfloat16 logits: time at most torch CE's: missed on 1 of 2 rows: float16 " \
           "8192x32000 1.25x" in lines
    assert "- `linear_encouraging_loss`: time at most matmul + torch CE's: met on all 1 rows" in lines
    assert "- fused EL: no host synchronisation per step: missed: float16 8192x32000 1" in lines
    assert report.markdown(_document()) == text  # the same file gives the same section
    assert "Dry run on a CPU" in report.markdown(dict(_document(), dry_run=True))


def test_report_reads_a_results_file_with_nothing_measured():
    doc = {"steps": [{"name": "install", "status": "failed", "seconds": 3.0, "reason": "no wheels"}]}
    text = report.markdown(doc)
    assert "| install | failed | 3 | no wheels |" in text and "fused EL: no host synchronisation per step: not " \
                                                             "measured" in text


# --------------------------------------------------------------------------- the wheels carried
def _fake_wheel(folder, name, version, requires=()):
    path = os.path.join(folder, f"{name.replace('-', '_')}-{version}-py3-none-any.whl")
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return path


def test_wheel_set_completeness_on_fake_wheels(tmp_path):
    a = _fake_wheel(str(tmp_path), "alpha", "1.0", ["beta>=2", "gamma; python_version < '3.9'", "delta; extra == 'x'",
                                                    "torch>=2.9", "epsilon", "triton>=3.7", "zeta; sys_platform == "
                                                                                             "'linux'"])
    b = _fake_wheel(str(tmp_path), "beta", "1.5")
    machine = {"torch": "2.11.0", "triton": "3.6.0", "zeta": None}
    unmet = wheelset.unmet_requirements([a, b], machine)
    assert [(r, why) for _, r, why in unmet] == [("beta>=2", "1.5 carried"), ("epsilon", "neither carried nor on the "
                                                                                          "machine"),
                                                 ("triton>=3.7", "3.6.0 on the machine")]
    assert wheelset.duplicates([a, b, _fake_wheel(str(tmp_path), "beta", "1.6")]) == {
        "beta": ["beta-1.5-py3-none-any.whl", "beta-1.6-py3-none-any.whl"]}


def test_machine_list_holds_what_the_steps_import_there():
    machine = wheelset.machine_packages()
    assert machine["torch"] == "2.11.0" and machine["triton"] == "3.6.0"
    # pytest and its timeout plugin, the digits (scikit-learn, pillow), fairseq's own needs it does not carry
    assert {"pytest", "pytest-timeout", "scikit-learn", "pillow", "numpy", "pyyaml", "sacrebleu", "regex", "tqdm",
            "torchaudio", "cython", "packaging", "torchvision", "safetensors", "huggingface-hub"} <= set(machine)


def test_carried_wheels_are_complete_and_a_call_stays_under_64_mib():
    """The .whl/ that fetch_wheels.sh filled here (skipped where it was not run: the folder is not committed)."""
    if not os.path.isfile(os.path.join(REPO, ".whl", "manifest.json")):
        pytest.skip("no .whl/manifest.json: bash benchmarks/gpu/fetch_wheels.sh fills .whl/")
    problems, facts = wheelset.check()
    assert problems == [] and facts["travelling_mib"] <= 64
    names = {wheelset.canonical(wheelset.wheel_metadata(w)["Name"]) for w in facts["wheels"]}
    assert {"liger-kernel", "cut-cross-entropy", "el-plugins", "timm", "fairseq-fixed"} <= names
    fairseq = [w for w in facts["wheels"] if "fairseq_fixed" in w]
    assert all("-cp312-" in os.path.basename(w) for w in fairseq)


# --------------------------------------------------------------------------- the torch versions check
def test_torch_versions_check_reads_the_declaration_and_picks_its_checks():
    requirement = versions.declared_torch_requirement()
    assert requirement.startswith("torch>=")
    minimum = versions.declared_minimum(requirement)
    checks = versions.default_checks(requirement, "3.11")
    assert checks[0] == (versions.release(minimum), "3.11") and ("2.11.0", "3.12") in checks
    assert versions.parse_spec("2.11.0@3.12", "3.11") == ("2.11.0", "3.12")
    assert versions.parse_spec("2.9", "3.11") == ("2.9.0", "3.11")
    with pytest.raises(ValueError):
        versions.parse_spec("latest", "3.11")
    assert versions.torch_pins("2.9.0") == ["torch==2.9.0", "numpy<2.4", "pytest"]
    assert versions.torch_pins("2.14.1")[1] == "numpy"
    assert [d["test"] for d in versions.deselected("2.11.0")] == [t for t, _, _ in versions.TORCH_API_TESTS]
    assert versions.deselected("2.14.1") == []


def test_declared_torch_range_is_the_tested_one():
    """results/torch-versions/results.json (scripts/check_torch_versions.py --out ...) is a passing run of the
    declared minimum and of torch 2.11 on Python 3.12, made with setup.py's current declaration."""
    from packaging.specifiers import SpecifierSet

    requirement = versions.declared_torch_requirement()
    specifier = SpecifierSet(requirement[len("torch"):])
    assert "2.11.0" in specifier
    with open(os.path.join(REPO, "results", "torch-versions", "results.json")) as f:
        results = json.load(f)
    assert results["declared"] == requirement and results["passed"] and results["git_commit"]
    ran = {(versions.release(c["versions"]["torch"]), c["versions"]["python"].rsplit(".", 1)[0]): c
           for c in results["checks"]}
    minimum = versions.release(versions.declared_minimum(requirement))
    assert any(v == minimum for v, _ in ran), ran.keys()
    assert ("2.11.0", "3.12") in ran
    for check_ in results["checks"]:
        assert check_["passed"] and check_["counts"]["failed"] == check_["counts"]["errors"] == 0
        assert check_["counts"]["passed"] > 200 and check_["pip_check"]["exit"] == 0
        assert versions.release(check_["versions"]["torch"]) in specifier


def test_torch_versions_check_writes_all_or_nothing(tmp_path):
    path = tmp_path / "r.json"
    versions.write_json_atomically(str(path), {"a": 1})
    with pytest.raises(TypeError):
        versions.write_json_atomically(str(path), {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and sorted(os.listdir(tmp_path)) == ["r.json"]


@pytest.mark.e2e
@pytest.mark.e2e
def test_torch_versions_check_dry_run_changes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "check_torch_versions.py"), "--dry-run",
                           "--venvs", str(tmp_path / "venvs"), "2.9.0", "2.11.0@3.12"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "pip install torch==2.9.0 numpy<2.4 pytest" in proc.stdout and "torch-2.11.0-py3.12" in proc.stdout
    assert "--deselect=tests/test_fused_linear.py::test_bonus_weight_zero_is_torchs_linear_cross_entropy" in \
        proc.stdout
    assert not (tmp_path / "venvs").exists()


# --------------------------------------------------------------------------- run.sh, dry
@pytest.mark.e2e
@pytest.mark.e2e
@pytest.mark.slow
def test_run_sh_dry_run_runs_every_step_and_its_results_make_the_table(tmp_path):
    """Every step of the GPU run on this CPU with tiny shapes (the tests collected only, nothing installed): each
    step recorded, the results file read back into docs/performance.md's section."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(GPU, "run.sh"), "--dry-run", "--out", str(out), "--budget", "900"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:]
    doc = json.loads((out / check.RESULTS).read_text())
    steps = {s["name"]: s for s in doc["steps"]}
    assert set(steps) == {name for name, _, _ in check.STEPS} | {"packages"}
    assert doc["dry_run"] and sorted(os.listdir(out)) == [check.LOGS, check.RESULTS]
    need_wheels = {"install"}
    need_train_py = {"timm_amp"}
    have_wheels = bool(check.carried_wheels())
    for name, step in steps.items():
        if name in need_wheels and not have_wheels or name in need_train_py and not os.path.isfile(check.TIMM_TRAIN_PY):
            continue
        assert step["status"] == "ok", (name, step, (out / check.LOGS).read_text()[-3000:])
    for name in ("tests_cuda", "tests_fused"):
        assert doc["tests"][name]["collected"] > 0 and all(doc["tests"][name]["deselect_ids_exist"].values())
    for name in ("loss_32000", "features_32000", "loss_128000", "features_128000"):
        rows = doc["benchmarks"][name]["results"]
        assert rows and not [r for r in rows if "error" in r], rows
        assert {r["variant"] for r in rows if "skipped" in r} >= {"liger_ce"} if name.startswith("loss") else True
    assert doc["fairseq"]["updates"] == 3 and doc["fairseq"]["finite"]
    text = report.markdown(doc)
    assert text.startswith("Dry run on a CPU") and "| bfloat16 | 64x500 | **fused EL** |" in text
    assert "| loss_32000 | ok |" in text and "Goals (issue 29)" in text


def test_docs_gpu_section_is_the_committed_results_file():
    """docs/performance.md's GPU section is report.py's markdown of benchmarks/results-gpu.json (a GPU run, not a
    dry one); while no such file is committed, it says there are no CUDA figures yet and shows no table."""
    with open(os.path.join(REPO, "docs", "performance.md"), encoding="utf-8") as f:
        section = f.read().split("## GPU: one call of `benchmarks/gpu/run.sh`", 1)[1].split("\n## ", 1)[0]
    path = os.path.join(REPO, "benchmarks", "results-gpu.json")
    if not os.path.isfile(path):
        assert "there are no CUDA figures yet" in section and "| variant |" not in section
        return
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    assert not document.get("dry_run")
    assert report.markdown(document) in section and "no CUDA figures yet" not in section
