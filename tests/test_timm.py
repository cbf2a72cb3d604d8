"""'el' in timm's loss factory, the timm-style modules, timm's ClassificationTask, and el-timm-train
driving train.py-shaped scripts (with and without their own --loss) on the bundled digits."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from el_plugins.demo.digits import write_digits_image_folder
from el_evidence.testing.programs import run_cli

timm = pytest.importorskip("timm")
import timm.loss  # noqa: E402
from timm.task import ClassificationTask  # noqa: E402

from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss  # noqa: E402


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_image_folder(str(root), size=32)
    return root


# --------------------------------------------------------------------------- the factory
def test_el_is_a_timm_loss_type():
    assert "el" in timm.loss.LOSS_TYPES and "el" in timm.loss.MULTI_LABEL_LOSS_TYPES
    assert timm.loss._loss_factory.create_classification_loss is timm.loss.create_classification_loss
    # timm's own function reads its module's tuple, which stays timm's (see the next test)
    assert "el" not in timm.loss._loss_factory.LOSS_TYPES


def test_timms_own_factory_taken_before_registration_says_it_does_not_know_el():
    """A reference to timm's factory kept from before el-plugins registered (manual activation with
    EL_PLUGINS_DISABLE=1, a local alias) answers 'el' with timm's "Unknown loss type", not with another loss's
    message (it said "The db loss requires class_counts..." when timm's tuple held 'el')."""
    original = timm.loss.create_classification_loss.__el_original__
    with pytest.raises(ValueError, match=r"Unknown loss type 'el', expected one of \('ce', .*'db'\)"):
        original(loss_type="el")


@pytest.mark.parametrize("kwargs,cls,smoothing", [
    (dict(), EncouragingLoss, 0.0),
    (dict(smoothing=0.1), EncouragingLoss, 0.1),
    (dict(smoothing=0.1, soft_targets=True), EncouragingLoss, 0.0),  # Mixup/CutMix smooth upstream
    (dict(multi_label=True, smoothing=0.1), BinaryEncouragingLoss, 0.1),
    (dict(multi_label=True, smoothing=0.1, soft_targets=True), BinaryEncouragingLoss, 0.0),
])
def test_factory_returns_el(kwargs, cls, smoothing):
    loss = timm.loss.create_classification_loss(loss_type="el", **kwargs)
    assert type(loss) is cls and loss.smoothing == smoothing and loss.log_end == 0.75


def test_factory_el_settings_and_other_types_untouched():
    loss = timm.loss.create_classification_loss("el", el_log_end=0.5, el_bonus_weight=2.0)
    assert (loss.log_end, loss.bonus_weight) == (0.5, 2.0)
    assert type(timm.loss.create_classification_loss(loss_type="ce", smoothing=0.1)).__name__ == "LabelSmoothingCrossEntropy"
    assert type(timm.loss.create_classification_loss(multi_label=True)).__name__ == "BinaryCrossEntropy"


@pytest.mark.parametrize("kwargs,message", [  # the recipes' options: tests/test_timm_recipes.py
    (dict(class_weight=[1.0] * 10), "class_weight applies to the BCE form of EL only"),
    (dict(bce_sum=True), "bce_sum applies to the BCE form of EL only"),
    (dict(class_counts=[1, 2], num_samples=3), "Class counts are only used by the db loss"),
    (dict(jsd_splits=1), r"jsd_splits must be 0 \(no JSD\) or an integer >= 2"),
    (dict(el_log_end=1.5), r"log_end must be in \(0, 1\]"),
    (dict(smoothing=1.0), r"smoothing must be in \[0, 1\)"),
])
def test_factory_refuses_what_el_cannot_honour(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.loss.create_classification_loss(loss_type="el", **kwargs)


def test_factory_errors_for_other_types_still_timms():
    with pytest.raises(ValueError, match=r"Unknown loss type 'nope', expected one of \(.*'el'\)"):
        timm.loss.create_classification_loss(loss_type="nope")
    with pytest.raises(ValueError, match=r"el_log_end \(el-plugins' settings of the encouraging loss\) only apply to "
                                         r"loss_type='el'"):
        timm.loss.create_classification_loss(loss_type="ce", el_log_end=0.5)


def test_classification_task_gets_el_from_criterion_kwargs():
    model = timm.create_model("test_resnet", num_classes=10)
    task = ClassificationTask(model, criterion_kwargs=dict(loss_type="el", smoothing=0.1), device=torch.device("cpu"))
    assert isinstance(task.criterion, EncouragingLoss) and task.criterion.smoothing == 0.1


@pytest.mark.e2e
@pytest.mark.parametrize("order", ["task-first", "plugin-first"])
def test_import_order_does_not_matter(order):
    imports = ["from timm.task import ClassificationTask", "import el_plugins.timm_plugin"]
    if order == "plugin-first":
        imports.reverse()
    code = "\n".join(imports + [
        "import timm, torch",
        "m = timm.create_model('test_resnet', num_classes=3)",
        "t = ClassificationTask(m, criterion_kwargs=dict(loss_type='el'), device=torch.device('cpu'))",
        "print(type(t.criterion).__name__)",
    ])
    env = dict(os.environ, EL_PLUGINS_DISABLE="1", PYTHONWARNINGS="ignore")  # activation by hand only
    out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "EncouragingLoss"


# --------------------------------------------------------------------------- training with timm's machinery
@pytest.mark.e2e
@pytest.mark.parametrize("mixup", [False, True])
def test_classification_task_trains_with_el_on_digits(digits_folder, mixup):
    from timm.data import Mixup, create_dataset, create_loader

    torch.manual_seed(0)
    dataset = create_dataset("", root=str(digits_folder), split="train", is_training=True)
    loader = create_loader(dataset, input_size=(3, 32, 32), batch_size=64, is_training=True, use_prefetcher=False,
                           num_workers=0, no_aug=True)
    mix = Mixup(mixup_alpha=0.4, label_smoothing=0.1, num_classes=10) if mixup else None
    model = timm.create_model("test_resnet", num_classes=10)
    task = ClassificationTask(model, criterion_kwargs=dict(loss_type="el", smoothing=0.1, soft_targets=mixup),
                              device=torch.device("cpu"))
    opt = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=3e-3)
    losses = []
    for step, (x, y) in enumerate(loader):
        if mix is not None:
            x, y = mix(x, y)
            assert y.shape == (x.shape[0], 10)
        loss = task(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 19:
            break
    assert all(not math.isnan(v) and abs(v) < 1e3 for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


# --------------------------------------------------------------------------- train.py-shaped scripts + launcher
TRAIN_PY = textwrap.dedent('''
    """A stand-in for timm's train.py (which no wheel or sdist ships), minimal, shaped like it where el-timm-train
    touches it: module-level config_parser/parser, _parse_args with -c yaml, args.yaml in the output folder, the
    training loss chosen from the recipe flags as train.py 1.0.29 chooses it (--jsd-loss with --aug-splits,
    --bce-loss and its options, Mixup/CutMix, --smoothing) and handed to ClassificationTask, or with --kd-model-name
    to LogitDistillationTask as its task loss; train_one_epoch(epoch, ...) per epoch; validation with plain
    cross-entropy. NEW_STYLE adds --loss and hands the task criterion_kwargs for timm's factory instead (how
    timm 1.0.31's train.py may do it; its source was not available to write this)."""
    import argparse, json, logging, os
    import torch, torch.nn as nn, yaml
    from timm import utils
    from timm.data import AugMixDataset, Mixup, create_dataset, create_loader
    from timm.loss import (LOSS_TYPES, BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy,
                           SoftTargetCrossEntropy)
    from timm.models import create_model
    from timm.task import ClassificationTask, LogitDistillationTask

    _logger = logging.getLogger('train')
    config_parser = parser = argparse.ArgumentParser(description='Training Config', add_help=False)
    parser.add_argument('-c', '--config', default='', type=str)
    parser = argparse.ArgumentParser(description='PyTorch ImageNet Training')
    parser.add_argument('data', nargs='?')
    parser.add_argument('--model', default='test_resnet')
    parser.add_argument('--smoothing', type=float, default=0.1)
    parser.add_argument('--mixup', type=float, default=0.0)
    parser.add_argument('--cutmix', type=float, default=0.0)
    parser.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    parser.add_argument('--aug-splits', type=int, default=0)
    parser.add_argument('--jsd-loss', action='store_true', default=False)
    parser.add_argument('--bce-loss', action='store_true', default=False)
    parser.add_argument('--bce-sum', action='store_true', default=False)
    parser.add_argument('--bce-target-thresh', type=float, default=None)
    parser.add_argument('--bce-pos-weight', type=float, default=None)
    parser.add_argument('--kd-model-name', default=None, type=str)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--steps', type=int, default=6, help='batches per epoch')
    parser.add_argument('--output', default='out')
    if NEW_STYLE:
        parser.add_argument('--loss', default=None, choices=LOSS_TYPES)

    def _parse_args():
        args_config, remaining = config_parser.parse_known_args()
        if args_config.config:
            with open(args_config.config) as f:
                parser.set_defaults(**yaml.safe_load(f))
        args = parser.parse_args(remaining)
        return args, yaml.safe_dump(args.__dict__, default_flow_style=False)

    def training_loss(args, mixup_active, splits):
        """The loss train.py 1.0.29 trains with for these flags."""
        if args.jsd_loss:
            assert splits > 1
            return JsdCrossEntropy(num_splits=splits, smoothing=args.smoothing)
        bce = dict(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
        if mixup_active:  # the targets come smoothed from Mixup/CutMix
            return BinaryCrossEntropy(**bce) if args.bce_loss else SoftTargetCrossEntropy()
        if not args.smoothing:  # (train.py 1.0.29 ignores --bce-loss here)
            return nn.CrossEntropyLoss()
        if args.bce_loss:
            return BinaryCrossEntropy(smoothing=args.smoothing, **bce)
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)

    def criterion_kwargs(args, mixup_active, splits):
        """NEW_STYLE: what the task passes to timm's create_classification_loss."""
        kwargs = dict(loss_type=args.loss or ('jsd' if args.jsd_loss else 'bce' if args.bce_loss else None),
                      smoothing=args.smoothing, soft_targets=mixup_active)
        if args.jsd_loss:
            kwargs['jsd_splits'] = splits
        if args.bce_loss:
            kwargs.update(bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
                          pos_weight=args.bce_pos_weight)
        return kwargs

    def train_one_epoch(epoch, task, loader, optimizer, mix, splits, args, record):
        for step, (x, y) in enumerate(loader):
            if splits > 1:  # the splits one after another, the clean one first; the targets repeated
                x, y = torch.cat(x), y.repeat(splits)
            if mix is not None:
                x, y = mix(x, y)
            loss = task(x, y)['loss']
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            record.append(loss.item())
            if step + 1 == args.steps:
                break

    def main():
        utils.setup_default_logging()
        args, args_text = _parse_args()
        utils.random_seed(0)  # torch, numpy (Mixup) and random (augmentations), as train.py seeds them
        mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
        splits = args.aug_splits
        model = create_model(args.model, num_classes=10)
        loss = dict(criterion_kwargs=criterion_kwargs(args, mixup_active, splits)) if NEW_STYLE else dict(
            criterion=training_loss(args, mixup_active, splits))
        if args.kd_model_name:
            task = LogitDistillationTask(student_model=model, teacher_model=args.kd_model_name,
                                         device=torch.device('cpu'), **loss)
        else:
            task = ClassificationTask(model=model, device=torch.device('cpu'), **loss)
        validate_loss_fn = nn.CrossEntropyLoss()
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, 'args.yaml'), 'w') as f:
            f.write(args_text)
        mix = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                    label_smoothing=args.smoothing, num_classes=10) if mixup_active else None
        dataset = create_dataset('', root=args.data, split='train', is_training=True)
        if splits > 1:
            dataset = AugMixDataset(dataset, num_splits=splits)
        loader = create_loader(dataset, input_size=(3, 32, 32), batch_size=32, is_training=True,
                               use_prefetcher=False, num_workers=0, no_aug=splits < 2, num_aug_splits=splits)
        opt = torch.optim.AdamW(task.get_trainable_module().parameters(), lr=2e-3)
        losses = []
        for epoch in range(args.epochs):
            train_one_epoch(epoch, task, loader, opt, mix, splits, args, losses)
        x, y = next(iter(create_loader(create_dataset('', root=args.data, split='train'), input_size=(3, 32, 32),
                                       batch_size=32, use_prefetcher=False, num_workers=0)))
        with torch.no_grad():
            val_loss = validate_loss_fn(model(x), y).item()
        with open(os.path.join(args.output, 'result.json'), 'w') as f:
            json.dump(dict(criterion=repr(task.criterion), task=type(task).__name__,
                           validate=type(validate_loss_fn).__name__, losses=losses, val_loss=val_loss), f)

    if __name__ == '__main__':
        main()
''')


def write_train_py(tmp_path, new_style):
    path = tmp_path / f"train_{'new' if new_style else 'old'}.py"
    path.write_text(f"NEW_STYLE = {new_style}\n" + TRAIN_PY)
    return path


def read_run(out):
    return json.loads((out / "result.json").read_text()), (out / "args.yaml").read_text()


@pytest.mark.e2e
def test_new_style_train_py_takes_loss_el_without_launcher(tmp_path, digits_folder):
    train_py, out = write_train_py(tmp_path, True), tmp_path / "out"
    proc = subprocess.run([sys.executable, train_py, digits_folder, "--loss", "el", "--output", out],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    result, args_yaml = read_run(out)
    assert result["criterion"] == "EncouragingLoss(log_end=0.75, smoothing=0.1, bonus_weight=1.0, reduction='mean')"
    assert result["validate"] == "CrossEntropyLoss"
    assert "loss_type='el' (el-plugins) -> EncouragingLoss(log_end=0.75" in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("new_style", [True, False])
@pytest.mark.parametrize("mixup", ["0", "0.4"])
def test_launcher_runs_train_py_with_el(tmp_path, digits_folder, new_style, mixup):
    train_py, out = write_train_py(tmp_path, new_style), tmp_path / "out"
    proc = run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--mixup", mixup,
                   "--loss", "el", "--log-end", "0.5")
    result, args_yaml = read_run(out)
    smoothing = "0.0" if mixup != "0" else "0.1"
    assert result["criterion"] == f"EncouragingLoss(log_end=0.5, smoothing={smoothing}, bonus_weight=1.0, reduction='mean')"
    assert result["validate"] == "CrossEntropyLoss"
    assert not any(math.isnan(v) for v in result["losses"])
    assert "loss: el" in args_yaml and "log_end: 0.5" in args_yaml
    targets = "soft (Mixup/CutMix)" if mixup != "0" else "class index"
    assert (f"el-plugins: training loss = encouraging loss (log_end=0.5, bonus_weight=1.0, label smoothing={smoothing}, "
            f"targets={targets}); validation loss = cross-entropy") in proc.stdout


@pytest.mark.e2e
def test_launcher_without_loss_el_leaves_train_py_alone(tmp_path, digits_folder):
    train_py, out = write_train_py(tmp_path, False), tmp_path / "out"
    run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--steps", "1")
    result, args_yaml = read_run(out)
    assert result["criterion"] == "LabelSmoothingCrossEntropy()"
    assert "log_end: null" in args_yaml and "el_bonus_weight: null" in args_yaml  # not used, not recorded as used
    run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--steps", "1", "--loss", "el")  # again
    result, args_yaml = read_run(out)
    assert result["criterion"].startswith("EncouragingLoss(log_end=0.75,") and "log_end: 0.75" in args_yaml


@pytest.mark.e2e
@pytest.mark.parametrize("new_style", [True, False])
def test_launcher_reads_el_options_from_config_yaml(tmp_path, digits_folder, new_style):
    train_py, out = write_train_py(tmp_path, new_style), tmp_path / "out"
    (tmp_path / "cfg.yaml").write_text("loss: el\nlog_end: 0.6\nsmoothing: 0.2\nsteps: 2\n")
    run_cli("el-timm-train", train_py, digits_folder, "-c", tmp_path / "cfg.yaml", "--output", out)
    result, args_yaml = read_run(out)
    assert result["criterion"].startswith("EncouragingLoss(log_end=0.6, smoothing=0.2,")
    assert "log_end: 0.6" in args_yaml and "loss: el" in args_yaml


@pytest.mark.e2e
@pytest.mark.parametrize("args,config,message", [
    (["--loss", "el", "--log-end", "1.5"], None, r"argument --log-end/--log_end: --log-end must be in \(0, 1\]"),
    (["--loss", "el", "--log-end", "abc"], None, r"argument --log-end/--log_end: --log-end must be in \(0, 1\]"),
    (["--loss", "el", "--el-bonus-weight", "-2"], None, r"--el-bonus-weight must be a finite number >= 0"),
    (["--loss", "el", "--jsd-loss"], None, r"--jsd-loss needs --aug-splits N with N >= 2 .* got --aug-splits 0"),
    ([], "loss: el\nlog_end: 0\n", r"--log-end \(log_end\) must be in \(0, 1\]"),
    # issue 18 item 6: EL's options without --loss el were ignored, yet written to args.yaml
    (["--log-end", "0.3"], None, r"--log-end \(log_end: 0.3\) applies to --loss el only, and this run trains with "
                                 r"train.py's own loss: add --loss el"),
    (["--loss", "ce", "--log-end", "0.3"], None, r"--log-end \(log_end: 0.3\) applies to --loss el only, and this "
                                                 r"run trains with --loss ce"),
    (["--loss", "ce", "--el-bonus-weight", "2"], None, r"--el-bonus-weight \(el_bonus_weight: 2\) applies to --loss el"),
    ([], "loss: ce\nlog_end: 0.3\n", r"--log-end \(log_end: 0.3\) applies to --loss el only"),
    # ... and a config key with a dash was ignored (args.yaml then held log-end: 0.3 and log_end: 0.75)
    ([], "loss: el\nlog-end: 0.3\n", r"log-end: \(from the config file\) is not read: .* write log_end:"),
    ([], "loss: el\njsd-loss: true\n", r"jsd-loss: \(from the config file\) is not read: .* write jsd_loss:"),
])
@pytest.mark.parametrize("new_style", [True, False])
def test_launcher_stops_on_bad_el_options_before_training(tmp_path, digits_folder, new_style, args, config, message):
    train_py, out = write_train_py(tmp_path, new_style), tmp_path / "out"
    extra = []
    if config:
        (tmp_path / "cfg.yaml").write_text(config)
        extra = ["-c", tmp_path / "cfg.yaml"]
    proc = run_cli("el-timm-train", train_py, digits_folder, "--output", out, *extra, *args, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:]
    import re
    assert re.search(message, proc.stdout), proc.stdout[-2000:]
    assert not out.exists()


# --------------------------------------------------------------------------- issue 26: each recipe with --loss el
@pytest.fixture(scope="session")
def kd_teacher(tmp_path_factory):
    """A teacher for --kd-model-name that needs no network: train.py's distillation tasks create the teacher with
    pretrained weights, which timm's ``local-dir:`` model source reads from a folder (config.json and the
    weights, written by timm's save_for_hf)."""
    from timm.models import save_for_hf

    folder = tmp_path_factory.mktemp("kd_teacher")
    torch.manual_seed(1)
    save_for_hf(timm.create_model("test_resnet", num_classes=10), str(folder))
    return f"local-dir:{folder}"


BCE_EQUALS, JSD_EQUALS = "at bonus weight 0: timm's BinaryCrossEntropy", "at bonus weight 0: timm's JsdCrossEntropy"
RECIPE_RUNS = {
    # name: (train.py flags, the criterion's class, the log's words for the training loss)
    "bce-rsb": (["--loss", "el", "--bce-loss", "--bce-target-thresh", "0.2", "--bce-sum", "--bce-pos-weight", "2"],
                "BinaryEncouragingLoss", "sigmoid encouraging loss, the BCE form of --bce-loss (log_end=0.75, "
                "bonus_weight=1.0, label smoothing=0.1, targets=class index, target threshold=0.2, summed over "
                f"classes, pos_weight=2; {BCE_EQUALS})"),
    "bce-mixup-cutmix": (["--loss", "el", "--bce-loss", "--mixup", "0.4", "--cutmix", "1.0", "--bce-target-thresh",
                          "0.2"], "BinaryEncouragingLoss",
                         "sigmoid encouraging loss, the BCE form of --bce-loss (log_end=0.75, bonus_weight=1.0, label "
                         f"smoothing=0.0, targets=soft (Mixup/CutMix), target threshold=0.2; {BCE_EQUALS})"),
    "jsd": (["--loss", "el", "--jsd-loss", "--aug-splits", "3"], "JsdEncouragingLoss",
            "encouraging loss on the clean split + 12 x Jensen-Shannon term over 3 augmentation splits, the JSD form "
            f"of --jsd-loss (log_end=0.75, bonus_weight=1.0, label smoothing=0.1, targets=class index; {JSD_EQUALS})"),
    "cutmix": (["--loss", "el", "--cutmix", "1.0"], "EncouragingLoss",
               "encouraging loss (log_end=0.75, bonus_weight=1.0, label smoothing=0.0, targets=soft (Mixup/CutMix))"),
    "no-smoothing": (["--loss", "el", "--smoothing", "0"], "EncouragingLoss",
                     "encouraging loss (log_end=0.75, bonus_weight=1.0, label smoothing=0.0, targets=class index)"),
    "distillation": (["--loss", "el", "--kd-model-name", "TEACHER"], "EncouragingLoss",
                     "encouraging loss (log_end=0.75, bonus_weight=1.0, label smoothing=0.1, targets=class index)"),
    # issue 25: a member of the bonus family other than the default; the authors' EfficientNet flags (imply --loss el)
    "power-bonus": (["--loss", "el", "--el-bonus", "power", "--el-bonus-gamma", "2"], "EncouragingLoss",
                    "encouraging loss (bonus='power', bonus_gamma=2, bonus_weight=1.0, label smoothing=0.1, "
                    "targets=class index)"),
    "authors-flags": (["--bonus_gamma", "-1", "--log_end", "0.75", "--bonus_rho", "1"], "EncouragingLoss",
                      "encouraging loss (log_end=0.75, bonus_weight=1.0, label smoothing=0.1, targets=class index)"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("recipe,new_style", [(r, False) for r in RECIPE_RUNS] + [
    ("bce-rsb", True), ("jsd", True), ("distillation", True)])
def test_launcher_trains_each_recipe_with_el(tmp_path, digits_folder, kd_teacher, recipe, new_style):
    """Issue 26 item 2 (and issue 25's timm runs): each recipe's flags with --loss el train train.py's epoch (2
    batches here) with EL in the form the flags ask for, the log naming it; with --kd-model-name EL is the
    distillation task's task loss."""
    flags, criterion, described = RECIPE_RUNS[recipe]
    flags = [kd_teacher if flag == "TEACHER" else flag for flag in flags]
    train_py, out = write_train_py(tmp_path, new_style), tmp_path / "out"
    proc = run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--steps", "2", *flags)
    result, args_yaml = read_run(out)
    assert result["criterion"].startswith(criterion + "("), result["criterion"]
    assert len(result["losses"]) == 2 and all(math.isfinite(v) for v in result["losses"]), result["losses"]
    assert f"el-plugins: training loss = {described}; validation loss = cross-entropy" in proc.stdout, proc.stdout
    task = "LogitDistillationTask" if recipe == "distillation" else "ClassificationTask"
    role = "the task loss (train.py's distillation loss is added to it)" if recipe == "distillation" else "its loss"
    assert result["task"] == task
    assert f"el-plugins: {task} trains with the encouraging loss ({criterion}) as {role}" in proc.stdout
    assert "loss: el" in args_yaml


@pytest.mark.e2e
@pytest.mark.parametrize("flags", [
    ["--bce-loss", "--mixup", "0.4", "--bce-target-thresh", "0.2", "--bce-sum", "--bce-pos-weight", "2"],
    ["--jsd-loss", "--aug-splits", "3", "--smoothing", "0.2"],
], ids=["bce-mixup", "jsd"])
def test_launcher_recipe_at_bonus_weight_0_trains_as_train_pys_own_loss(tmp_path, digits_folder, flags):
    """--loss el --el-bonus-weight 0 with a recipe's flags trains as train.py's own loss for the same flags
    (BinaryCrossEntropy, JsdCrossEntropy): the same losses step by step, float32 rounding apart."""
    train_py = write_train_py(tmp_path, False)
    run_cli("el-timm-train", train_py, digits_folder, "--output", tmp_path / "own", "--steps", "3", *flags)
    run_cli("el-timm-train", train_py, digits_folder, "--output", tmp_path / "el", "--steps", "3", *flags,
            "--loss", "el", "--el-bonus-weight", "0")
    own, el = read_run(tmp_path / "own")[0], read_run(tmp_path / "el")[0]
    assert own["criterion"].startswith(("BinaryCrossEntropy(", "JsdCrossEntropy("))
    assert el["criterion"].startswith(("BinaryEncouragingLoss(", "JsdEncouragingLoss("))
    assert el["losses"] == pytest.approx(own["losses"], rel=1e-4), (el["losses"], own["losses"])


@pytest.mark.e2e
def test_launcher_schedule_of_the_bonus_weight_over_epochs(tmp_path, digits_folder):
    """Issue 25: --el-bonus-schedule linear over 3 epochs after 1 without the bonus: the launcher tells the loss
    each epoch (train.py never does) and the log shows the weight el_plugins.core.BonusSchedule gives."""
    from el_plugins.core import BonusSchedule

    train_py, out = write_train_py(tmp_path, False), tmp_path / "out"
    proc = run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--steps", "1", "--epochs", "3",
                   "--loss", "el", "--el-bonus-weight", "2", "--el-bonus-schedule", "linear",
                   "--el-bonus-schedule-horizon", "3", "--el-bonus-defer", "1")
    schedule = BonusSchedule("linear", horizon=3, defer=1)
    weights = [2 * schedule.factor(epoch + 1) for epoch in range(3)]
    assert weights == [0.0, 4 / 3, 2.0]
    for epoch, weight in enumerate(weights):
        assert f"el-plugins: epoch {epoch}: bonus_weight {weight:.4g}\n" in proc.stdout, proc.stdout
    assert "schedule=linear/3, defer=1" in read_run(out)[0]["criterion"]


@pytest.mark.e2e
@pytest.mark.parametrize("args,message", [
    (["--jsd-loss", "--aug-splits", "3", "--bce-loss"], r"--bce-loss and --jsd-loss are two forms of the training "
                                                        r"loss: with --loss el give one"),
    (["--jsd-loss", "--aug-splits", "1"], r"--jsd-loss needs --aug-splits N with N >= 2"),
    (["--jsd-loss", "--aug-splits", "3", "--mixup", "0.4"], r"--jsd-loss does not combine with --mixup/--cutmix"),
    (["--bce-target-thresh", "0.2"], r"--bce-target-thresh sets the BCE form \(--bce-loss\), and this run trains "
                                     r"without it: add --bce-loss, or leave it out"),
    (["--bce-sum", "--bce-pos-weight", "2"], r"--bce-sum, --bce-pos-weight set the BCE form \(--bce-loss\)"),
    (["--bce-loss", "--bce-target-thresh", "1.5"], r"--bce-target-thresh must be a number in \[0, 1\] .* got 1.5"),
    (["--bce-loss", "--bce-pos-weight", "-1"], r"--bce-pos-weight must be a finite number >= 0"),
])
def test_launcher_refuses_recipe_flags_el_would_not_use(tmp_path, digits_folder, args, message):
    import re

    train_py, out = write_train_py(tmp_path, False), tmp_path / "out"
    proc = run_cli("el-timm-train", train_py, digits_folder, "--output", out, "--loss", "el", *args, check=False)
    assert proc.returncode == 2 and re.search(message, proc.stdout), proc.stdout[-2000:]
    assert not out.exists()


def test_launcher_gives_every_task_class_the_recipes_el(monkeypatch):
    """In process: el-timm-train's hook on a train.py-shaped module replaces the criterion (or the criterion_kwargs,
    timm 1.0.31's way) of each task class it builds; MultiLabelClassificationTask gets sigmoid EL; what train.py
    put in criterion_kwargs passes through but for what the flags set."""
    import argparse
    import types

    from timm.task import LogitDistillationTask, MultiLabelClassificationTask

    from el_plugins.timm_plugin import launcher, loss_factory

    monkeypatch.setattr(loss_factory, "_launcher_settings", {})  # el-timm-train's defaults, this test's only
    parser = argparse.ArgumentParser()
    for flag in ("--smoothing", "--mixup", "--cutmix"):
        parser.add_argument(flag, type=float, default=0.1 if flag == "--smoothing" else 0.0)
    parser.add_argument("--cutmix-minmax", default=None)
    parser.add_argument("--bce-loss", action="store_true")
    parser.add_argument("--bce-target-thresh", type=float, default=None)
    module = types.SimpleNamespace(parser=parser, main=lambda: None, ClassificationTask=ClassificationTask,
                                   MultiLabelClassificationTask=MultiLabelClassificationTask,
                                   LogitDistillationTask=LogitDistillationTask)
    launcher.install(module)
    module.parser.parse_args(["--loss", "el", "--log-end", "0.5"])
    model = timm.create_model("test_resnet", num_classes=10)
    cpu = torch.device("cpu")
    task = module.ClassificationTask(model, criterion_kwargs=dict(loss_type="el", smoothing=0.3), device=cpu)
    assert type(task.criterion) is EncouragingLoss and (task.criterion.smoothing, task.criterion.log_end) == (0.1, 0.5)
    task = module.MultiLabelClassificationTask(model, criterion=torch.nn.BCEWithLogitsLoss(), device=cpu)
    assert type(task.criterion) is BinaryEncouragingLoss and task.criterion.smooth_dense
    module.parser.parse_args(["--loss", "el", "--bce-loss", "--bce-target-thresh", "0.2"])
    task = module.ClassificationTask(model, criterion=torch.nn.CrossEntropyLoss(), device=cpu)
    assert type(task.criterion) is BinaryEncouragingLoss and task.criterion.target_threshold == 0.2
    assert not task.criterion.smooth_dense and task.criterion.smoothing == 0.1
    with pytest.raises(Exception, match="without criterion=... or criterion_kwargs=..."):
        module.ClassificationTask(model, device=cpu)


@pytest.mark.e2e
def test_rsb_a3_recipe_script():
    """scripts/timm/resnet50_rsb_a3_imagenet.sh: the BCE form's recipe (its flags parse under timm's real train.py:
    the issue 26 report), EL or --baseline (timm's BCE), the batch per GPU keeping the global 2048."""
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "timm", "resnet50_rsb_a3_imagenet.sh")

    def sh(*args):
        return subprocess.run(["bash", script, "--train-py", "t.py", "--data", "d", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)

    el = sh("--dry-run")
    assert el.returncode == 0 and "--nproc_per_node 8" in el.stdout and " -b 256 " in el.stdout, el.stdout
    assert "--bce-loss --bce-target-thresh 0.2" in el.stdout and "--mixup 0.1 --cutmix 1.0" in el.stdout
    assert el.stdout.rstrip().endswith("--experiment rsb_a3-el0.75 --loss el --log-end 0.75")
    base = sh("--dry-run", "--baseline", "--gpus", "4", "--", "--seed", "1")
    assert "--loss" not in base.stdout and " -b 512 " in base.stdout and base.stdout.rstrip().endswith("--seed 1")
    bad = sh("--log-end", "0")
    assert bad.returncode == 2 and "--log-end must be in (0, 1]" in bad.stdout


@pytest.mark.e2e
def test_launcher_usage_errors(tmp_path):
    proc = run_cli("el-timm-train", tmp_path / "missing.py", "--loss", "el", check=False)
    assert proc.returncode == 2 and "the first argument must be the path to timm's train.py" in proc.stdout
    (tmp_path / "notrain.py").write_text("x = 1\n")
    proc = run_cli("el-timm-train", tmp_path / "notrain.py", check=False)
    assert proc.returncode != 0 and "does not look like timm's train.py" in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("config,message", [
    ("loss: EL\n", r"loss: 'EL' \(from the config file\) is not an allowed --loss: choose from .*'el'"),
    ("loss: bogus\n", r"loss: 'bogus' \(from the config file\) is not an allowed --loss"),
    ("loss: el\nlog_end: true\n", r"--log-end \(log_end\) must be in \(0, 1\], a number .* got True"),
    ("loss: ce\nlog_end: 7\n", r"--log-end \(log_end\) must be in \(0, 1\]"),
])
@pytest.mark.parametrize("new_style", [True, False])
def test_launcher_checks_config_yaml_values_as_the_command_line(tmp_path, digits_folder, new_style, config, message):
    """set_defaults (how train.py applies -c config.yaml) bypasses argparse's checks: a wrong-case or unknown
    loss trained with cross-entropy while args.yaml said otherwise."""
    train_py, out = write_train_py(tmp_path, new_style), tmp_path / "out"
    (tmp_path / "cfg.yaml").write_text(config)
    proc = run_cli("el-timm-train", train_py, digits_folder, "-c", tmp_path / "cfg.yaml", "--output", out, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:]
    import re
    assert re.search(message, proc.stdout), proc.stdout[-2000:]
    assert not out.exists()


@pytest.mark.e2e
def test_launcher_runs_nothing_of_a_script_that_is_not_train_py(tmp_path):
    """A data script given by mistake is refused from its source, before any of it executes."""
    marker = tmp_path / "executed"
    (tmp_path / "make_data.py").write_text(f"import argparse\nopen({str(marker)!r}, 'w').write('ran')\n"
                                           "parser = argparse.ArgumentParser()\ndef main():\n    pass\n")
    proc = run_cli("el-timm-train", tmp_path / "make_data.py", "--loss", "el", check=False)
    assert proc.returncode != 0 and not marker.exists()
    assert "does not look like timm's train.py (no import of timm, no --smoothing option" in proc.stdout
    assert "expected timm's train.py" in proc.stdout


@pytest.mark.e2e
def test_launcher_refuses_timms_validate_py_with_a_hint(tmp_path):
    (tmp_path / "validate.py").write_text("import argparse\nimport timm\nparser = argparse.ArgumentParser()\n"
                                          "parser.add_argument('--model')\ndef main():\n    pass\n")
    proc = run_cli("el-timm-train", tmp_path / "validate.py", "--loss", "el", check=False)
    assert proc.returncode != 0 and "AttributeError" not in proc.stdout
    assert "no --smoothing option: not a training script" in proc.stdout
    assert "timm's validate.py evaluates a model: run it directly" in proc.stdout


@pytest.mark.e2e
def test_launcher_as_module_for_torchrun(tmp_path, digits_folder):
    """torchrun ... -m el_plugins.timm_plugin.launcher train.py ...: the same entry through runpy."""
    train_py, out = write_train_py(tmp_path, False), tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "el_plugins.timm_plugin.launcher", train_py, digits_folder,
                           "--output", out, "--loss", "el", "--steps", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert read_run(out)[0]["criterion"].startswith("EncouragingLoss(log_end=0.75")


def test_fused_module_equals_reference_module():
    torch.manual_seed(5)
    z = (torch.randn(33, 10, dtype=torch.float64) * 4).requires_grad_()
    t = torch.randint(0, 10, (33,))
    fused, reference = EncouragingLoss(smoothing=0.1), EncouragingLoss(smoothing=0.1, implementation="reference")
    assert fused.implementation == "auto"
    (g_fused,) = torch.autograd.grad(fused(z, t), z)
    (g_ref,) = torch.autograd.grad(reference(z, t), z)
    torch.testing.assert_close(fused(z, t), reference(z, t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="implementation must be one of 'auto', 'fused', 'reference'"):
        EncouragingLoss(implementation="triton")
