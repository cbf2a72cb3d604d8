"""Register the encouraging loss as ``loss_type='el'`` in timm's classification loss factory.

timm 1.0.31 chooses the training loss with ``timm.loss.create_classification_loss(loss_type=...)``
from the fixed tuple ``timm.loss.LOSS_TYPES`` and has no registry, so this module (run when
``timm.loss`` is imported) appends ``'el'`` to ``LOSS_TYPES`` and ``MULTI_LABEL_LOSS_TYPES`` and
wraps the factory: ``'el'`` is answered here, every other type goes to timm's own function untouched.
Modules that already bound the old names (``from timm.loss import create_classification_loss``) are
re-pointed too, so the import order does not matter.

``loss_type='el'`` takes the options timm's own losses take for its recipes, and has three forms:

    create_classification_loss(loss_type='el', smoothing=0.1)                    -> EncouragingLoss (softmax)
    create_classification_loss(loss_type='el', soft_targets=True)                -> EncouragingLoss (Mixup/CutMix)
    create_classification_loss(loss_type='el', el_binary=True, smoothing=0.1,    -> BinaryEncouragingLoss
                               bce_target_thresh=0.2, bce_sum=..., pos_weight=..., class_weight=...)
    create_classification_loss(loss_type='el', multi_label=True, smoothing=0.1)  -> BinaryEncouragingLoss
    create_classification_loss(loss_type='el', jsd_splits=3, smoothing=0.1)      -> JsdEncouragingLoss

- the BCE form (sigmoid EL; ``el_binary=True`` on single-label data, as timm's ``loss_type='bce'``, or
  ``multi_label=True``) takes ``bce_target_thresh``, ``bce_sum``, ``pos_weight`` and ``class_weight`` and makes its
  targets as timm's ``BinaryCrossEntropy`` does; at bonus weight 0 it is timm's ``loss_type='bce'``.
- the JSD form (``jsd_splits`` S >= 2, AugMix) is EL on the clean split plus timm's Jensen-Shannon term over the
  splits; at bonus weight 0 it is timm's ``loss_type='jsd'``.
- otherwise softmax EL; at bonus weight 0 it is timm's ``loss_type='ce'``.

An option a form does not use is refused (a ValueError naming it and what to do), as timm refuses them for its
own types. EL's own settings come from ``el_*`` keyword arguments (``el_log_end``, ``el_bonus_weight``,
``el_bonus``, ``el_bonus_gamma``, ``el_bonus_start``, ``el_bonus_smoothing``, ``el_bonus_schedule``,
``el_bonus_schedule_horizon``, ``el_bonus_defer``, ``el_bonus_schedule_exp_ratio``: the keywords of
:class:`el_plugins.loss.EncouragingLoss` with ``el_`` in front), else from :func:`set_el_defaults` (what
el-timm-train's flags set), else the module's defaults. Every EL loss the factory makes is remembered (weakly), so
that el-timm-train can tell them the epoch (:func:`set_epoch`) for a schedule of the bonus weight.
"""
import functools
import inspect
import logging
import numbers
import sys
import weakref

import timm.loss._loss_factory as timm_loss_factory

from el_plugins.checks import check_target_threshold
from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss, JsdEncouragingLoss

__all__ = ['BCE_OPTIONS', 'build_encouraging_loss', 'check_arguments', 'create_encouraging_loss', 'describe',
           'EL_KEYWORDS', 'EL_SETTINGS', 'LOSS_TYPE', 'LOSS_TYPES', 'MULTI_LABEL_LOSS_TYPES', 'register',
           'set_el_defaults', 'set_epoch']

LOSS_TYPE = 'el'
EL_SETTINGS = ('log_end', 'bonus_weight', 'bonus', 'bonus_gamma', 'bonus_start', 'bonus_smoothing', 'bonus_schedule',
               'bonus_schedule_horizon', 'bonus_defer', 'bonus_schedule_exp_ratio')
"""The EncouragingLoss keywords the factory takes as ``el_<name>``."""
EL_KEYWORDS = tuple(f'el_{name}' for name in EL_SETTINGS) + ('el_binary',)
"""Every keyword the factory adds to timm's: the settings, and ``el_binary`` (the BCE form on single-label data)."""
BCE_OPTIONS = ('bce_target_thresh', 'bce_sum', 'pos_weight', 'class_weight')
"""timm's options of its 'bce' loss, which EL's BCE form takes."""
_launcher_settings = {}  # set_el_defaults: the values el-timm-train's flags gave
_made = weakref.WeakSet()  # every EL loss the factory made
_logger = logging.getLogger('el_plugins.timm')


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


def _given_bce_options(a):
    return [name for name in BCE_OPTIONS if (a[name] is not None if name != 'bce_sum' else a[name])]


def build_encouraging_loss(arguments, el_settings, binary=None):
    """EL from create_classification_loss's bound arguments (all of them, defaults applied), the ``el_*`` settings
    given and ``el_binary``, refusing what EL cannot honour; neither remembered nor logged (see
    :func:`create_encouraging_loss`)."""
    a = arguments
    if binary is not None and not isinstance(binary, bool):
        raise ValueError(f"el_binary must be True (sigmoid EL, the BCE form), False or None, got {binary!r}")
    if a['class_counts'] is not None or a['num_samples'] is not None:
        raise ValueError('Class counts are only used by the db loss.')
    splits = a['jsd_splits']
    if isinstance(splits, bool) or not isinstance(splits, numbers.Integral) or splits < 0 or splits == 1:
        raise ValueError(f"jsd_splits must be 0 (no JSD) or an integer >= 2 (the augmentation splits of AugMix: "
                         f"EL on the clean split plus the Jensen-Shannon term), got {splits!r}")
    for name in ('multi_label', 'soft_targets', 'bce_sum'):
        if not isinstance(a[name], bool):
            raise ValueError(f"{name} must be True or False, got {a[name]!r}")
    sigmoid = a['multi_label'] or bool(binary)
    bce_given = _given_bce_options(a)
    if splits:
        if sigmoid:
            raise ValueError(f"jsd_splits={splits} (the JSD form of EL, softmax) does not combine with "
                             f"{'multi_label=True' if a['multi_label'] else 'el_binary=True'} (sigmoid EL): timm's "
                             f"'jsd' loss is single-label softmax too")
        if bce_given:
            raise ValueError(f"{', '.join(bce_given)} appl{'y' if len(bce_given) > 1 else 'ies'} to the BCE form of "
                             f"EL (el_binary=True or multi_label=True), not to the JSD form (jsd_splits={splits})")
        if a['soft_targets']:
            raise ValueError(f"jsd_splits={splits} does not combine with soft_targets=True: the JSD form scores the "
                             f"clean split against class indices (AugMix's splits are not mixed by Mixup/CutMix, and "
                             f"timm's JsdCrossEntropy takes class indices too)")
    elif bce_given and not sigmoid:
        raise ValueError(f"{', '.join(bce_given)} appl{'y' if len(bce_given) > 1 else 'ies'} to the BCE form of EL "
                         f"only (sigmoid EL, as timm's 'bce' loss): pass el_binary=True (el-timm-train: --loss el "
                         f"--bce-loss) or multi_label=True, or leave {'them' if len(bce_given) > 1 else 'it'} out")
    settings = {**_launcher_settings, **{k: v for k, v in el_settings.items() if v is not None}}
    smoothing = 0. if a['soft_targets'] else a['smoothing']
    if splits:  # as timm's 'jsd': the label smoothing of the clean split, whatever soft_targets says
        return JsdEncouragingLoss(num_splits=int(splits), smoothing=a['smoothing'], **settings)
    if sigmoid:
        return BinaryEncouragingLoss(
            smoothing=smoothing, smooth_dense=a['multi_label'],
            target_threshold=check_target_threshold(a['bce_target_thresh'], 'bce_target_thresh'),
            weight=a['class_weight'], pos_weight=a['pos_weight'], sum_classes=a['bce_sum'], **settings)
    return EncouragingLoss(smoothing=smoothing, **settings)


def create_encouraging_loss(arguments, el_settings, binary=None):
    """:func:`build_encouraging_loss`, remembered for :func:`set_epoch` and logged."""
    loss = build_encouraging_loss(arguments, el_settings, binary)
    _made.add(loss)
    _logger.info(f"loss_type='el' (el-plugins) -> {loss}")
    return loss


def describe(loss):
    """(what an EL loss the factory made computes, in words; the timm loss it equals at bonus weight 0)."""
    if isinstance(loss, JsdEncouragingLoss):
        return (f"encouraging loss on the clean split + {loss.alpha:g} x Jensen-Shannon term over {loss.num_splits} "
                f"augmentation splits, the JSD form", "timm's JsdCrossEntropy")
    if isinstance(loss, BinaryEncouragingLoss):
        return "sigmoid encouraging loss, the BCE form", "timm's BinaryCrossEntropy"
    return "encouraging loss", "timm's cross-entropy"


def check_arguments(**kwargs):
    """Build (and so check) the loss ``create_classification_loss(loss_type='el', **kwargs)`` would make, without
    remembering or logging it: el-timm-train's check before anything is built."""
    factory = timm_loss_factory.create_classification_loss
    factory = getattr(factory, '__el_original__', factory)
    el_settings = {name: kwargs.pop(f'el_{name}') for name in EL_SETTINGS if f'el_{name}' in kwargs}
    binary = kwargs.pop('el_binary', None)
    bound = inspect.signature(factory).bind(**{**kwargs, 'loss_type': LOSS_TYPE})
    bound.apply_defaults()
    return build_encouraging_loss(bound.arguments, el_settings, binary)


def _with_el(factory):
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def create_classification_loss(*args, **kwargs):
        el_settings = {name: kwargs.pop(f'el_{name}') for name in EL_SETTINGS if f'el_{name}' in kwargs}
        binary = kwargs.pop('el_binary', None)
        bound = signature.bind(*args, **kwargs)
        loss_type = bound.arguments.get('loss_type')
        if loss_type != LOSS_TYPE:
            given = [f'el_{name}' for name, value in el_settings.items() if value is not None]
            given += ['el_binary'] if binary is not None else []
            if given:
                raise ValueError(f"{', '.join(given)} (el-plugins' settings of the encouraging loss) only apply to "
                                 f"loss_type='el'.")
            if loss_type and loss_type not in LOSS_TYPES:  # timm's own message, with 'el' among the types
                raise ValueError(f"Unknown loss type '{loss_type}', expected one of {LOSS_TYPES}.")
            return factory(*args, **kwargs)
        bound.apply_defaults()
        return create_encouraging_loss(bound.arguments, el_settings, binary)

    create_classification_loss.__el_original__ = factory
    create_classification_loss.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(),
        *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in EL_KEYWORDS)])
    create_classification_loss.__doc__ = (factory.__doc__ or '') + (
        "\n    el-plugins: loss_type='el' is the encouraging loss; its settings are the el_* keyword arguments (those "
        "of el_plugins.loss.EncouragingLoss, prefixed el_); el_binary=True is its BCE form (sigmoid EL) on "
        "single-label targets, jsd_splits its JSD form (AugMix).\n")
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
