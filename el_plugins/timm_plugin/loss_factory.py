"""Register the encouraging loss as ``loss_type='el'`` in timm's classification loss factory.

timm 1.0.31 chooses the training loss with ``timm.loss.create_classification_loss(loss_type=...)``
from the fixed tuple ``timm.loss.LOSS_TYPES`` and has no registry, so this module (run when
``timm.loss`` is imported) appends ``'el'`` to ``LOSS_TYPES`` and ``MULTI_LABEL_LOSS_TYPES`` and
wraps the factory: ``'el'`` is answered here, every other type goes to timm's own function untouched.
Modules that already bound the old names (``from timm.loss import create_classification_loss``) are
re-pointed too, so the import order does not matter.

    create_classification_loss(loss_type='el', smoothing=0.1)                    -> EncouragingLoss
    create_classification_loss(loss_type='el', soft_targets=True)                -> EncouragingLoss (Mixup/CutMix)
    create_classification_loss(loss_type='el', multi_label=True, smoothing=0.1)  -> BinaryEncouragingLoss

log_end and the bonus weight come from ``el_log_end=`` / ``el_bonus_weight=`` keyword arguments, else
from :func:`set_el_defaults` (what ``el-timm-train --log-end`` sets), else 0.75 and 1.0.
"""
import functools
import inspect
import logging
import sys

import timm.loss._loss_factory as timm_loss_factory

from el_plugins import functional as EF
from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss

LOSS_TYPE = 'el'
EL_DEFAULTS = {'log_end': 0.75, 'bonus_weight': 1.0}


def set_el_defaults(log_end=None, bonus_weight=None) -> None:
    """Set the log_end / bonus weight that ``loss_type='el'`` uses when the call does not say."""
    if log_end is not None:
        EL_DEFAULTS['log_end'] = EF.check_log_end(log_end)
    if bonus_weight is not None:
        EL_DEFAULTS['bonus_weight'] = EF.check_bonus_weight(bonus_weight)


def create_encouraging_loss(arguments, el_log_end=None, el_bonus_weight=None):
    """Build EL from create_classification_loss's bound arguments, refusing what EL cannot honour."""
    a = arguments
    if a['class_weight'] is not None or a['pos_weight'] is not None:
        raise ValueError('Class and positive weights are only supported by bce and multi-label asl losses.')
    if a['bce_target_thresh'] is not None or a['bce_sum']:
        raise ValueError('BCE target threshold and sum options only apply to the bce loss.')
    if a['class_counts'] is not None or a['num_samples'] is not None:
        raise ValueError('Class counts are only used by the db loss.')
    if a['jsd_splits']:
        raise ValueError("Loss type 'el' does not combine with JSD augmentation splits (jsd_splits), use loss_type='jsd'.")
    smoothing = 0. if a['soft_targets'] else a['smoothing']
    kwargs = dict(
        log_end=EL_DEFAULTS['log_end'] if el_log_end is None else el_log_end,
        bonus_weight=EL_DEFAULTS['bonus_weight'] if el_bonus_weight is None else el_bonus_weight,
        smoothing=smoothing,
    )
    loss = BinaryEncouragingLoss(**kwargs) if a['multi_label'] else EncouragingLoss(**kwargs)
    logging.getLogger('el_plugins.timm').info(f"loss_type='el' (el-plugins) -> {loss}")
    return loss


def _with_el(factory):
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def create_classification_loss(*args, el_log_end=None, el_bonus_weight=None, **kwargs):
        bound = signature.bind(*args, **kwargs)
        loss_type = bound.arguments.get('loss_type')
        if loss_type != LOSS_TYPE:
            if el_log_end is not None or el_bonus_weight is not None:
                raise ValueError("el_log_end and el_bonus_weight only apply to loss_type='el'.")
            if loss_type and loss_type not in LOSS_TYPES:  # timm's own message, with 'el' among the types
                raise ValueError(f"Unknown loss type '{loss_type}', expected one of {LOSS_TYPES}.")
            return factory(*args, **kwargs)
        bound.apply_defaults()
        return create_encouraging_loss(bound.arguments, el_log_end, el_bonus_weight)

    create_classification_loss.__el_original__ = factory
    create_classification_loss.__doc__ = (factory.__doc__ or '') + (
        "\n    el-plugins: loss_type='el' is the encouraging loss (el_log_end, el_bonus_weight keyword arguments).\n")
    return create_classification_loss


LOSS_TYPES = tuple(timm_loss_factory.LOSS_TYPES) + (LOSS_TYPE,)
MULTI_LABEL_LOSS_TYPES = tuple(timm_loss_factory.MULTI_LABEL_LOSS_TYPES) + (LOSS_TYPE,)


def register() -> None:
    """Add 'el' to timm's factory (idempotent), and re-point every module holding the old objects.

    timm's own function keeps reading its module's own LOSS_TYPES, which stays timm's: a reference to it taken
    before this ran (and not re-pointed, e.g. a local alias) then answers 'el' with timm's "Unknown loss type 'el'"
    instead of running past its checks into another loss's branch."""
    original = timm_loss_factory.create_classification_loss
    if hasattr(original, '__el_original__'):
        return
    wrapped = _with_el(original)
    replacements = {  # name: (old object, new object)
        'create_classification_loss': (original, wrapped),
        'LOSS_TYPES': (timm_loss_factory.LOSS_TYPES, LOSS_TYPES),
        'MULTI_LABEL_LOSS_TYPES': (timm_loss_factory.MULTI_LABEL_LOSS_TYPES, MULTI_LABEL_LOSS_TYPES),
    }
    for module in list(sys.modules.values()):
        namespace = getattr(module, '__dict__', None) or {}
        for name, (old, new) in replacements.items():
            if namespace.get(name) is old and (module is not timm_loss_factory or name == 'create_classification_loss'):
                setattr(module, name, new)


register()
