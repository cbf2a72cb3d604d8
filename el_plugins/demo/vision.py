"""The demo's vision part: a small timm model on the bundled 8x8 digits, CE vs ``loss_type='el'``,
trained with timm's own data loader, loss factory and ClassificationTask; evaluated (accuracy, margins, ECE)
with el_plugins.analysis.timm_eval.evaluate, el-analyze timm's evaluation loop."""
import os
import sys
import time

import torch
from tqdm import tqdm

from el_plugins.analysis.timm_eval import evaluate
from el_plugins.devices import move_to_device, resolve_device
from el_plugins.files import atomic_write
from el_plugins.demo.digits import write_digits_image_folder

MODEL = "test_resnet"


def _loader(root, split, training, batch_size):
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=root, split=split, is_training=training)
    return create_loader(dataset, input_size=(3, 32, 32), batch_size=batch_size, is_training=training,
                         use_prefetcher=False, num_workers=0, no_aug=True, mean=(0.5,) * 3, std=(0.5,) * 3)


def make_task(loss_type, device, log_end=0.75):
    """(model, timm ClassificationTask) of one run, both on ``device``: the task's ``device`` argument
    only places its criterion, so the task (model included) is moved, as timm's train.py moves its model."""
    import timm
    from timm.task import ClassificationTask

    device = torch.device(device)
    model = timm.create_model(MODEL, num_classes=10)
    kwargs = dict(loss_type=loss_type, el_log_end=log_end) if loss_type == "el" else dict(loss_type=loss_type)
    task = move_to_device(ClassificationTask(model, criterion_kwargs=kwargs, device=device), device)
    return model, task


def train_digits(loss_type, data_root, out_dir, *, epochs=10, device="cpu", seed=0, log_end=0.75, lr=2e-3,
                 progress=True):
    """Train one model; returns (metrics dict, per-epoch curve, validation margins array). ``progress``: the
    training bar on stderr."""
    from timm.optim import create_optimizer_v2

    torch.manual_seed(seed)
    device = resolve_device(device)
    train_loader = _loader(data_root, "train", True, 64)
    val_loader = _loader(data_root, "validation", False, 256)
    model, task = make_task(loss_type, device, log_end)
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt="adamw", lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train_loader))
    curve, t0 = [], time.time()
    name = loss_type.upper()
    with tqdm(total=epochs * len(train_loader), desc=f"[vision] train {name}", unit="step", file=sys.stderr,
              dynamic_ncols=True, disable=not progress) as bar:
        for epoch in range(1, epochs + 1):
            total, count = 0.0, 0
            for x, y in train_loader:
                x, y = move_to_device((x, y), device)
                loss = task(x, y)["loss"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total, count = total + loss.item() * len(y), count + len(y)
                bar.update(1)
            summary = evaluate(model, val_loader, device, log_end=log_end, progress=False).summary()
            curve.append({"epoch": epoch, "train_loss": total / count, "val_accuracy": summary["accuracy"],
                          "val_nll": summary["nll"]})
            bar.set_postfix(val_acc=f"{summary['accuracy']:.3f}")
    analysis = evaluate(model, val_loader, device, log_end=log_end, progress=False)
    summary = analysis.summary()
    os.makedirs(out_dir, exist_ok=True)
    checkpoint = os.path.join(out_dir, "model.pth")
    with atomic_write(checkpoint, "wb") as f:
        torch.save(model.state_dict(), f)
    metrics = {"model": MODEL, "criterion": type(task.criterion).__name__, "epochs": epochs,
               "test_accuracy": summary["accuracy"], "margin_mean": summary["margin"]["mean"],
               "margin_median": summary["margin"]["median"], "target_prob_mean": summary["target_prob"]["mean"],
               "ece": summary["ece"], "checkpoint": checkpoint, "seconds": round(time.time() - t0, 1)}
    return metrics, curve, analysis.arrays()["id"]["margin"]


def run_vision(out, *, epochs=10, device="cpu", seed=0, log_end=0.75, progress=True):
    data_root = os.path.join(out, "digits")
    counts = write_digits_image_folder(data_root, size=32)
    result = {"data": dict(counts, source="scikit-learn load_digits, 8x8 upscaled to 32x32"), "runs": {}, "curves": {}}
    margins = {}
    for loss_type in ("ce", "el"):
        metrics, curve, m = train_digits(loss_type, data_root, os.path.join(out, loss_type), epochs=epochs,
                                         device=device, seed=seed, log_end=log_end, progress=progress)
        name = loss_type.upper()
        result["runs"][name], result["curves"][name], margins[name] = metrics, curve, m
    return result, margins
