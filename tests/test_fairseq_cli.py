"""End to end with the real fairseq command-line programs: no --user-dir, resume, generate, validate,
hydra, the --user-dir fallback, and bad options stopping fairseq-train before it trains."""
import os
import re
import subprocess
import sys

import pytest

from el_evidence.testing.programs import run_cli
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER

pytest.importorskip("fairseq")

pytestmark = pytest.mark.e2e  # every test here runs programs (fairseq's commands)

EL_FLAGS = ["--criterion", "label_smoothed_encouraging_loss", "--label-smoothing", "0.1", "--log-end", "0.75"]
TRAIN = [*TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "800", "--cpu", "--seed", "1",
         "--log-interval", "5", "--no-progress-bar", "--num-workers", "0"]


def last_valid(log):
    lines = [line for line in log.splitlines() if "| valid on 'valid' subset |" in line]
    assert lines, log[-3000:]
    return dict(re.findall(r"\| (\w+) ([-\d.]+)", lines[-1]))


def test_train_resume_generate_validate_without_user_dir(toy_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    first = run_cli("fairseq-train", toy_data_bin, *TRAIN, *EL_FLAGS, "--max-update", "30", "--save-dir", save).stdout
    assert "criterion: LabelSmoothedEncouragingLossCriterion" in first
    valid = last_valid(first)
    assert valid["num_updates"] == "30"
    assert float(valid["bonus"]) < 0 and 0 < float(valid["p_target"]) < 1
    assert (save / "checkpoint_last.pt").exists()

    resumed = run_cli("fairseq-train", toy_data_bin, *TRAIN, *EL_FLAGS, "--max-update", "45", "--save-dir", save).stdout
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 30 updates\)", resumed), resumed[-3000:]
    assert last_valid(resumed)["num_updates"] == "45"

    gen = run_cli("fairseq-generate", toy_data_bin, "--path", save / "checkpoint_last.pt", "--beam", "2",
                  "--max-tokens", "800", "--cpu", "--num-workers", "0").stdout
    assert re.search(r"Generate test with beam=2: BLEU4 = [\d.]+", gen), gen[-3000:]
    assert len(re.findall(r"^H-\d+", gen, flags=re.M)) == 40

    val = run_cli("fairseq-validate", toy_data_bin, "--task", "translation", "--path", save / "checkpoint_last.pt", *EL_FLAGS,
                  "--max-tokens", "800", "--cpu", "--num-workers", "0").stdout
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nll_loss [\d.]+ \| bonus -[\d.]+", val), val[-3000:]


def hydra_config(data_bin, tmp_path, criterion="label_smoothing: 0.1, log_end: 0.5"):
    (tmp_path / "el.yaml").write_text(f"""
common: {{cpu: true, log_interval: 5, no_progress_bar: true}}
task: {{_name: translation, data: {data_bin}, source_lang: src, target_lang: en}}
model:
  _name: transformer
  encoder: {{layers: 1, embed_dim: 32, ffn_embed_dim: 64, attention_heads: 2}}
  decoder: {{layers: 1, embed_dim: 32, ffn_embed_dim: 64, attention_heads: 2}}
criterion: {{_name: label_smoothed_encouraging_loss, {criterion}}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{max_update: 6, lr: [0.001]}}
dataset: {{max_tokens: 800, num_workers: 0}}
checkpoint: {{save_dir: {tmp_path / 'ckpt'}}}
""")


def test_hydra_train(toy_data_bin, tmp_path):
    hydra_config(toy_data_bin, tmp_path)
    out = run_cli("fairseq-hydra-train", "--config-dir", tmp_path, "--config-name", "el", cwd=tmp_path).stdout
    assert "'criterion': {'_name': 'label_smoothed_encouraging_loss', 'label_smoothing': 0.1," in out
    assert re.search(r"'criterion': \{[^}]*'log_end': 0\.5", out)
    assert "criterion: LabelSmoothedEncouragingLossCriterion" in out
    assert "num_updates 6" in out


def test_user_dir_fallback_when_automatic_activation_is_off(toy_data_bin, tmp_path):
    off = {"EL_PLUGINS_DISABLE": "1"}
    refused = run_cli("fairseq-train", toy_data_bin, *TRAIN, *EL_FLAGS, "--max-update", "2",
                      "--save-dir", tmp_path / "a", env=off, check=False)
    assert refused.returncode != 0 and "invalid choice: 'label_smoothed_encouraging_loss'" in refused.stdout

    user_dir = subprocess.run([sys.executable, "-m", "el_plugins.fairseq_plugin"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, check=True).stdout.strip()
    assert os.path.isfile(os.path.join(user_dir, "criterion.py"))
    for env in (off, None):  # by hand, and on top of the automatic activation (no double registration)
        out = run_cli("fairseq-train", toy_data_bin, *TRAIN, *EL_FLAGS, "--max-update", "2", "--user-dir", user_dir,
                      "--save-dir", tmp_path / f"b{bool(env)}", "--no-save", env=env).stdout
        assert "criterion: LabelSmoothedEncouragingLossCriterion" in out


def test_user_dir_printer_says_in_one_line_that_fairseq_is_missing(tmp_path):
    """``python -m el_plugins.fairseq_plugin`` where fairseq is not installed (a sitecustomize marks it missing, as
    an uninstalled package is): one line naming what is missing and how to install it, exit 1, no traceback."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['fairseq'] = None  # not installed\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "el_plugins.fairseq_plugin"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "python -m el_plugins.fairseq_plugin: error: fairseq is not installed here: pip install cython numpy && "
        "pip install --no-build-isolation fairseq-fixed (Python >= 3.11), or pip install fairseq (older Pythons)"]
    imported = subprocess.run([sys.executable, "-c", "import el_plugins.fairseq_plugin"], env=env,
                              stderr=subprocess.PIPE, text=True)
    assert imported.returncode == 1
    assert imported.stderr.strip().splitlines()[-1].startswith(
        "ModuleNotFoundError: el_plugins.fairseq_plugin needs fairseq: fairseq is not installed here")


@pytest.mark.parametrize("flag,value,message", [
    ("--log-end", "1.5", r"--log-end must be in \(0, 1\]"),
    ("--log-end", "0", r"--log-end must be in \(0, 1\]"),
    ("--label-smoothing", "1.0", r"--label-smoothing must be in \[0, 1\)"),
    ("--bonus-weight", "-1", r"--bonus-weight must be a finite number >= 0"),
])
def test_out_of_range_option_stops_training_before_it_starts(toy_data_bin, tmp_path, flag, value, message):
    args = [*TRAIN, "--criterion", "label_smoothed_encouraging_loss", flag, value, "--max-update", "5",
            "--save-dir", tmp_path]
    proc = run_cli("fairseq-train", toy_data_bin, *args, check=False)
    assert proc.returncode == 2
    assert re.search(message, proc.stdout.strip().splitlines()[-1]), proc.stdout[-2000:]  # the last line, no traceback
    assert "train_inner" not in proc.stdout and not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("program", ["fairseq-generate", "fairseq-validate"])
def test_out_of_range_option_is_a_usage_error_in_every_command(toy_data_bin, tmp_path, program):
    proc = run_cli(program, toy_data_bin, "--task", "translation", "--path", tmp_path / "none.pt",
                   "--criterion", "label_smoothed_encouraging_loss",
                   "--log-end", "1.5", "--cpu", check=False)
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines()[-1].startswith(f"{program}: error: argument --log-end: --log-end must be "
                                                           f"in (0, 1]"), proc.stdout[-2000:]


@pytest.mark.parametrize("criterion,message", [
    ("label_smoothing: 0.1, log_end: 1.5", "--log-end must be in (0, 1]"),
    ("label_smoothing: 0.1, log_end: true", "--log-end must be in (0, 1], a number (1 = the normal bonus"),
    ('label_smoothing: 0.1, log_end: "abc"', "--log-end must be in (0, 1], a number"),
    ("label_smoothing: true", "--label-smoothing must be in [0, 1), a number, got True"),
    ("bonus_weight: [1, 2]", "--bonus-weight must be a finite number >= 0"),
    ('el_fuse_output_layer: "on"', "--el-fuse-output-layer must be one of 'auto', 'off', got 'on'"),
    ("el_implementation: fast", "--el-implementation must be one of 'auto', 'fused', 'reference', got 'fast'"),
    ("smoothing_convention: timm", "--smoothing-convention must be one of 'auto', 'paper', 'fairseq', got 'timm'"),
], ids=["out-of-range", "bool", "string", "bool-smoothing", "list", "fuse-choice", "implementation-choice",
        "convention-choice"])
def test_bad_value_in_hydra_yaml_stops_with_the_message_last(toy_data_bin, tmp_path, criterion, message):
    """A value out of range, or not a number at all, in a fairseq-hydra-train YAML: the criterion's one-line
    message, last, and no traceback (omegaconf's type validation is not the one that answers)."""
    hydra_config(toy_data_bin, tmp_path, criterion=criterion)
    proc = run_cli("fairseq-hydra-train", "--config-dir", tmp_path, "--config-name", "el", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"label_smoothed_encouraging_loss: error: {message}"), proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout and not (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


def test_bad_smoothing_convention_is_refused_by_the_parser(toy_data_bin, tmp_path):
    proc = run_cli("fairseq-train", toy_data_bin, *TRAIN, "--criterion", "label_smoothed_encouraging_loss",
                   "--smoothing-convention", "timm", "--save-dir", tmp_path, check=False)
    assert proc.returncode != 0 and "invalid choice: 'timm'" in proc.stdout


def test_start_up_imports_nothing_for_programs_that_never_import_fairseq_or_timm():
    code = ("import sys; heavy = [m for m in ('torch', 'fairseq', 'timm', 'el_plugins.functional') if m in sys.modules];"
            "print(heavy, 'el_plugins._activation' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.strip() == "[] True"
