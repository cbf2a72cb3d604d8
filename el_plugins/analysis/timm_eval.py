"""el-analyze timm's back end: timm checkpoints over an ImageFolder; and :func:`evaluate`, the one evaluation
loop of image classifiers (el-analyze timm, el-demo's vision part): a model, its batches and a device in, a
:class:`StreamingAnalysis` out. Imports timm and torchvision only when called.
"""
from __future__ import annotations

import ast
import logging
import os
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from el_plugins.checkpoints import CheckpointError, CheckpointRefused, load_checkpoint

from el_plugins.analysis.report import AnalysisError, AnalysisUsageError, batches, check_finite, checked_device
from el_plugins.analysis.streaming import StreamingAnalysis
from el_plugins.devices import move_to_device, prepare_model

__all__ = ['build_transform', 'check_image_folder', 'check_state_dict', 'collate_readable', 'EMA_KEYS', 'evaluate',
           'ImageList', 'IMG_EXTENSIONS', 'list_images', 'load_checkpoint_state_dict', 'parse_model_kwargs',
           'run', 'STATE_DICT_KEYS']

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
STATE_DICT_KEYS = ("state_dict", "model", "module", "net")
EMA_KEYS = ("state_dict_ema", "model_ema")
logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- data
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def list_images(root: str) -> List[str]:
    """Every image file under ``root`` (recursive, sorted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    return found


def check_image_folder(root: str, flag: str, need_classes: bool) -> None:
    """Fail early, with the flag's name, on a missing folder, a folder without images, or (for
    labelled data) images that are not in one sub-folder per class."""
    if not os.path.isdir(root):
        raise AnalysisUsageError(f"{flag} {root}: no such folder")
    if not list_images(root):
        raise AnalysisError(
            f"{flag} {root}: no images found (looked for {', '.join(IMG_EXTENSIONS)} files"
            + (", in one sub-folder per class" if need_classes else "") + ")"
        )
    if need_classes:
        classes = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")]
        if not any(list_images(os.path.join(root, d)) for d in classes):
            raise AnalysisError(
                f"{flag} {root}: images must be in one sub-folder per class (the ImageFolder layout "
                f"root/<class>/<image>), found images but no class folders with images"
            )


class ImageList(torch.utils.data.Dataset):
    """(path, label) samples as (image, label, None); an image that cannot be read (truncated, not an
    image, ...) as (None, label, (path, why)), so that the error leaves a worker process as data."""

    def __init__(self, samples: List[Tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except Exception as exc:  # OSError, PIL.UnidentifiedImageError, DecompressionBombError, ...
            return None, label, (os.path.abspath(path), f"{type(exc).__name__}: {exc}")
        return self.transform(img), label, None


def collate_readable(items):
    """(images, targets, [(path, why) of each unreadable image]); images and targets are None when no
    image of the batch could be read."""
    from torch.utils.data import default_collate

    readable = [(x, y) for x, y, _ in items if x is not None]
    unreadable = [bad for _, _, bad in items if bad is not None]
    if not readable:
        return None, None, unreadable
    images, targets = default_collate(readable)
    return images, targets, unreadable


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint_state_dict(path: str, use_ema: bool = False, trust: bool = False) -> Tuple[Dict[str, torch.Tensor], str]:
    """The model weights of a timm train.py checkpoint (a dict with 'state_dict' / 'state_dict_ema'),
    of a plain state dict, or of a few common wrappers ('model', 'module'). Returns (state dict,
    where it came from). DataParallel's 'module.' and torch.compile's '_orig_mod.' prefixes are removed.

    Reads the file with :func:`el_plugins.checkpoints.load_checkpoint` (weights-only, argparse.Namespace,
    which timm stores as 'args', allowed); ``trust=True`` loads with weights_only=False.
    """
    try:
        obj = load_checkpoint(path, trust=trust)
    except CheckpointRefused as exc:
        raise AnalysisError(f"--checkpoint {exc}; if you trust the file, pass --trust-checkpoint") from None
    except CheckpointError as exc:
        raise AnalysisError(f"--checkpoint {exc}") from None

    if isinstance(obj, torch.nn.Module):
        obj, source = obj.state_dict(), "module"
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        source = "state dict"
        if use_ema:
            logger.warning("%s is a plain state dict, without EMA weights: --use-ema has nothing to use; using it as "
                           "it is", path)
    elif isinstance(obj, dict):
        keys = (EMA_KEYS + STATE_DICT_KEYS) if use_ema else (STATE_DICT_KEYS + EMA_KEYS)
        source = next((k for k in keys if isinstance(obj.get(k), dict)), None)
        if source is None:
            raise AnalysisError(
                f"--checkpoint {path}: no model weights found (a plain state dict, or a dict with one of "
                f"{', '.join(map(repr, STATE_DICT_KEYS + EMA_KEYS))}; its keys are {', '.join(map(repr, list(obj)[:8]))})")
        if use_ema and source not in EMA_KEYS:
            logger.warning("%s has no EMA weights, using %r", path, source)
        obj = obj[source]
    else:
        raise AnalysisError(f"--checkpoint {path}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")

    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, source


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, model_name: str,
                     num_classes: int) -> None:
    """A clear error naming the missing and unexpected keys and the shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def listing(title, items):
        more = f" (and {len(items) - 6} more)" if len(items) > 6 else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:6]) + more

    msg = f"--checkpoint {path} does not match --model {model_name} with {num_classes} classes:"
    if missing:
        msg += listing("missing keys", missing)
    if unexpected:
        msg += listing("unexpected keys", unexpected)
    if shapes:
        msg += listing("shape mismatches", shapes)
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    head_w = state.get(f"{head}.weight") if isinstance(head, str) else None
    if head_w is not None and head_w.dim() >= 1 and head_w.shape[0] != num_classes:
        msg += f"\n  the checkpoint's classifier has {head_w.shape[0]} outputs: pass --num-classes {head_w.shape[0]}?"
    raise AnalysisError(msg)


# --------------------------------------------------------------------------- model and transform
def parse_model_kwargs(items: Optional[List[str]]) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AnalysisUsageError(f"--model-kwargs expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_transform(model, args):
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(model)
    if args.img_size is not None:
        cfg["input_size"] = (3, args.img_size, args.img_size)
    for key in ("crop_pct", "mean", "std", "interpolation"):
        if getattr(args, key) is not None:
            cfg[key] = tuple(getattr(args, key)) if key in ("mean", "std") else getattr(args, key)
    transform = create_transform(input_size=cfg["input_size"], interpolation=cfg["interpolation"], mean=cfg["mean"],
                                 std=cfg["std"], crop_pct=cfg["crop_pct"], crop_mode=cfg.get("crop_mode", "center"),
                                 is_training=False)
    return transform, cfg


def _split_batch(batch, ood: bool):
    """(images, targets, [(path, why) of unreadable images]) of one batch."""
    if isinstance(batch, torch.Tensor) and ood:
        return batch, None, ()
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] or ()) if len(batch) == 3 else ()
    got = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise TypeError(f"{'OOD' if ood else 'in-distribution'} batches must be (images, targets) or (images, targets, "
                    f"unreadable){' or images alone' if ood else ''}, got {got}")


@torch.no_grad()  # not inference_mode: a training loop may call this, and its model must stay trainable
def evaluate(model: torch.nn.Module, loader: Iterable, device, *, log_end: float = 0.75, n_bins: int = 15,
             ood: Optional[Iterable] = None, progress: bool = True, desc: str = "evaluate",
             max_batches: Optional[int] = None, skipped: Optional[Dict[str, Dict[str, str]]] = None
             ) -> StreamingAnalysis:
    """The diagnostics of the image classifier ``model`` over ``loader`` (and ``ood``), computed on ``device``.

    loader: batches of (images, targets), as a torchvision or timm DataLoader gives them, or of (images,
    targets, unreadable) as :func:`collate_readable` makes them (unreadable: [(path, why)] of the images that
    could not be read; images None where none of the batch could). ood: out-of-distribution batches in the
    same form (targets unused) or images alone; None for none.
    The model is moved to ``device`` and run in eval mode without gradients; its train/eval mode is restored
    afterwards, so that a training loop can call this between epochs. ``max_batches`` stops each data set early;
    ``desc`` names the progress bars (stderr; ``progress=False`` for none). ``skipped``, a dict filled with
    the unreadable images as {'data': {path: why}, 'ood_data': {path: why}}: each is logged as a warning the
    first time it is added (give the same dict for several models to warn once).
    """
    analysis = StreamingAnalysis(log_end=log_end, n_bins=n_bins)
    skipped = {} if skipped is None else skipped
    was_training = model.training
    prepare_model(model, device)
    try:
        for which, data in (("data", loader), ("ood_data", ood)):
            if data is None:
                continue
            is_ood, seen = which == "ood_data", skipped.setdefault(which, {})
            for batch in batches(data, desc=f"{desc} OOD" if is_ood else desc, progress=progress,
                                 max_batches=max_batches):
                images, targets, unreadable = _split_batch(batch, is_ood)
                for path, why in unreadable:
                    if path not in seen:
                        seen[path] = why
                        logger.warning("skipped unreadable image %s (%s)", path, why)
                if images is None:
                    continue
                logits = model(move_to_device(images, device))
                if is_ood:
                    analysis.update_ood(logits)
                else:
                    analysis.update(logits, torch.as_tensor(targets, device=logits.device))
    finally:
        model.train(was_training)
    return analysis


def _check_readable(rows: int, skipped: Dict[str, str], flag: str, root: str) -> None:
    """Refuse a folder of which not one image could be read."""
    if rows == 0 and skipped:
        path, why = next(iter(skipped.items()))
        raise AnalysisError(f"{flag} {root}: none of its images could be read ({len(skipped)} tried, "
                            f"e.g. {path}: {why})")


def run(args, names: List[str]):
    """Evaluate every checkpoint; returns ({name: (checkpoint, StreamingAnalysis)}, meta)."""
    check_image_folder(args.data, "--data", need_classes=True)
    if args.ood_data:
        check_image_folder(args.ood_data, "--ood-data", need_classes=False)
    device = checked_device(args.device)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    states = [load_checkpoint_state_dict(p, args.use_ema, args.trust_checkpoint) for p in args.checkpoint]

    import timm
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import find_classes

    try:
        classes = find_classes(args.data)[0]
    except (FileNotFoundError, OSError) as exc:
        raise AnalysisError(f"--data {args.data}: {exc}") from None
    num_classes = args.num_classes if args.num_classes is not None else len(classes)
    if len(classes) > num_classes:
        raise AnalysisUsageError(f"--data {args.data} has {len(classes)} class folders but the model has "
                                 f"{num_classes} classes (--num-classes)")
    if len(classes) != num_classes:
        logger.warning("--data has %d class folders, the model %d classes; folder i (sorted by name) is taken as "
                       "class i", len(classes), num_classes)
    if not timm.is_model(args.model):
        raise AnalysisUsageError(f"--model {args.model}: not a timm model (see timm.list_models())")

    try:
        model = timm.create_model(args.model, pretrained=False, num_classes=num_classes, **model_kwargs)
    except TypeError as exc:
        raise AnalysisUsageError(f"--model {args.model} --model-kwargs: {exc}") from None
    for (state, _), path in zip(states, args.checkpoint):  # every checkpoint is checked before any is run
        check_state_dict(model, state, path, args.model, num_classes)
    transform, data_cfg = build_transform(model, args)
    try:
        data = ImageList(ImageFolder(args.data).samples, transform)
    except (FileNotFoundError, OSError) as exc:
        raise AnalysisError(f"--data {args.data}: {exc}") from None
    ood = ImageList([(p, 0) for p in list_images(args.ood_data)], transform) if args.ood_data else None
    loader_kw = dict(batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                     pin_memory=device.type == "cuda", collate_fn=collate_readable)
    data_loader = torch.utils.data.DataLoader(data, **loader_kw)
    ood_loader = torch.utils.data.DataLoader(ood, **loader_kw) if ood is not None else None

    runs, skipped = {}, {"data": {}, "ood_data": {}}
    for (state, _), path, name in zip(states, args.checkpoint, names):
        model.load_state_dict(state)
        analysis = evaluate(model, data_loader, device, log_end=args.log_end, n_bins=args.bins, ood=ood_loader,
                            progress=args.progress, desc=f"{name} {os.path.basename(os.path.normpath(args.data))}",
                            max_batches=args.max_batches, skipped=skipped)
        check_finite(name, analysis)
        _check_readable(analysis.rows, skipped["data"], "--data", args.data)
        if ood_loader is not None:
            _check_readable(analysis.ood_rows, skipped["ood_data"], "--ood-data", args.ood_data)
        runs[name] = (os.path.abspath(path), analysis)

    meta = {
        "mode": "timm",
        "model": args.model,
        "model_kwargs": model_kwargs,
        "num_classes": num_classes,
        "data": os.path.abspath(args.data),
        "ood_data": os.path.abspath(args.ood_data) if args.ood_data else None,
        "row_unit": "images",
        "weights": {name: source for (_, source), name in zip(states, names)},
        "transform": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()},
        "skipped_images": {"data": len(skipped["data"]), "ood_data": len(skipped["ood_data"]) if ood is not None else None,
                           "files": sorted({**skipped["data"], **skipped["ood_data"]})},
    }
    return runs, meta
