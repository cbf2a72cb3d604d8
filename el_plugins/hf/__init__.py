"""The encouraging loss (EL) in Hugging Face Transformers: two entry points, an adapter as thin as the fairseq and
timm ones (the math is :mod:`el_plugins.functional`).

    from el_plugins.hf import encouraging_loss_func, apply_encouraging_loss

    Trainer(model, args, ..., compute_loss_func=encouraging_loss_func(log_end=0.75, label_smoothing=0.1))
        # EL on the model's logits, in place of Trainer's loss

    apply_encouraging_loss(model, log_end=0.75, label_smoothing=0.1)
        # model(..., labels=...).loss is EL; for the architectures of ARCHITECTURES, in training mode, with the
        # output layer fused in (no (tokens x vocabulary) logits); without labels the model is unchanged

Needs ``transformers`` (``pip install 'el-plugins[hf]'``). docs/hf.md has what is fused and what is not.
"""
try:
    import transformers
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("el_plugins.hf needs Hugging Face Transformers: pip install 'el-plugins[hf]' "
                      f"(or pip install transformers) ({exc})") from exc
if int(transformers.__version__.split(".")[0]) < 5:  # pragma: no cover - an older install
    raise ImportError(f"el_plugins.hf needs Transformers >= 5.0 (its Trainer, loss functions and model forwards), "
                      f"found {transformers.__version__}: pip install 'el-plugins[hf]'")

from el_plugins.hf.loss import (
    IGNORE_INDEX,
    SHIFT_LABELS_OPTIONS,
    ELSettings,
    EncouragingLossFunc,
    encouraging_loss_func,
)
from el_plugins.hf.patch import (
    ARCHITECTURES,
    FUSE_OUTPUT_LAYER_OPTIONS,
    Architecture,
    apply_encouraging_loss,
    fused_architectures,
    remove_encouraging_loss,
)

__all__ = ["encouraging_loss_func", "apply_encouraging_loss", "remove_encouraging_loss", "ELSettings",
           "EncouragingLossFunc", "ARCHITECTURES", "Architecture", "fused_architectures", "FUSE_OUTPUT_LAYER_OPTIONS",
           "SHIFT_LABELS_OPTIONS", "IGNORE_INDEX"]
