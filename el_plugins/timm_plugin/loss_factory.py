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

EL's own settings come from ``el_*`` keyword arguments (``el_log_end``, ``el_bonus_weight``, ``el_bonus``,
``el_bonus_gamma``, ``el_bonus_start``, ``el_bonus_smoothing``, ``el_bonus_schedule``, ``el_bonus_schedule_horizon``,
``el_bonus_defer``, ``el_bonus_schedule_exp_ratio``: the keywords of :class:`el_plugins.loss.EncouragingLoss`
with ``el_`` in front), else from :func:`set_el_defaults` (what el-timm-train's flags set), else the module's
defaults. Every EL loss the factory makes is remembered (weakly), so that el-timm-train can tell them the epoch
(:func:`set_epoch`) for a schedule of the bonus weight.
"""
import functools
import inspect
import logging
import sys
import weakref

import timm.loss._loss_factory as timm_loss_factory

from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss

LOSS_TYPE = 'el'
EL_SETTINGS = ('log_end', 'bonus_weight', 'bonus', 'bonus_gamma', 'bonus_start', 'bonus_smoothing', 'bonus_schedule',
               'bonus_schedule_horizon', 'bonus_defer', 'bonus_schedule_exp_ratio')
"""The EncouragingLoss keywords the factory takes as ``el_<name>``."""
_launcher_settings = {}  # set_el_defaults: the values el-timm-train's flags gave
_made = weakref.WeakSet()  # every EL loss the factory made


def set_el_defaults(**settings) -> None:
    """Set the EL settings that ``loss_type='el'`` uses when the call does not say (el-timm-train's flags): the
    names of EL_SETTINGS; None leaves one as it is. Checked when a loss is made."""
    unknown = sorted(set(settings) - set(EL_SETTINGS))
    if unknown:
        raise ValueError(f"set_el_defaults takes {', '.join(EL_SETTINGS)}, got {', '.join(unknown)}")
    _launcher_settings.update({k: v for k, v in settings.items() if v is not None})


def set_epoch(epoch: int) -> None:
    """Tell every EL loss the factory made the epoch being trained (from 1), for its bonus-weight schedule."""
    for loss in list(_made):
        loss.set_epoch(epoch)


def create_encouraging_loss(arguments, el_settings):
    """Build EL from create_classification_loss's bound arguments and the ``el_*`` settings given, refusing what EL
    cannot honour."""
    a = arguments
    if a['class_weight'] is not None or a['pos_weight'] is not None:
        raise ValueError('Class and positive weights are only supported by bce and multi-label asl losses.')
    if a['bce_target_thresh'] is not None or a['bce_sum']:
        raise ValueError('BCE target threshold and sum options only apply to the bce loss.')
    if a['class_counts'] is not None or a['num_samples'] is not None:
        raise ValueError('Class counts are only used by the db loss.')
    if a['jsd_splits']:
        raise ValueError("Loss type 'el' does not combine with JSD augmentation splits (jsd_splits), use loss_type='jsd'.")
    settings = {**_launcher_settings, **{k: v for k, v in el_settings.items() if v is not None}}
    smoothing = 0. if a['soft_targets'] else a['smoothing']
    loss = (BinaryEncouragingLoss if a['multi_label'] else EncouragingLoss)(smoothing=smoothing, **settings)
    _made.add(loss)
    logging.getLogger('el_plugins.timm').info(f"loss_type='el' (el-plugins) -> {loss}")
    return loss


def _with_el(factory):
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def create_classification_loss(*args, **kwargs):
        el_settings = {name: kwargs.pop(f'el_{name}') for name in EL_SETTINGS if f'el_{name}' in kwargs}
        bound = signature.bind(*args, **kwargs)
        loss_type = bound.arguments.get('loss_type')
        if loss_type != LOSS_TYPE:
            given = [f'el_{name}' for name, value in el_settings.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} (el-plugins' settings of the encouraging loss) only apply to "
                                 f"loss_type='el'.")
            if loss_type and loss_type not in LOSS_TYPES:  # timm's own message, with 'el' among the types
                raise ValueError(f"Unknown loss type '{loss_type}', expected one of {LOSS_TYPES}.")
            return factory(*args, **kwargs)
        bound.apply_defaults()
        return create_encouraging_loss(bound.arguments, el_settings)

    create_classification_loss.__el_original__ = factory
    create_classification_loss.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(),
        *(inspect.Parameter(f'el_{name}', inspect.Parameter.KEYWORD_ONLY, default=None) for name in EL_SETTINGS)])
    create_classification_loss.__doc__ = (factory.__doc__ or '') + (
        "\n    el-plugins: loss_type='el' is the encouraging loss; its settings are the el_* keyword arguments (those "
        "of el_plugins.loss.EncouragingLoss, prefixed el_).\n")
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
