"""el-timm-train: run timm's own train.py with the encouraging loss.

    el-timm-train path/to/train.py <train.py options> --loss el [--log-end 0.5] [--el-bonus-weight 1]
    torchrun --nproc_per_node 2 -m el_plugins.timm_plugin.launcher path/to/train.py ... --loss el

timm 1.0.31's train.py already takes ``--loss el`` once el-plugins is installed; this launcher adds
what it lacks: EL's own options (``--log-end``, ``--el-bonus-weight``, the bonus family ``--el-bonus``,
``--el-bonus-gamma``, ``--el-bonus-start``, ``--el-bonus-smoothing``, and a schedule of the bonus weight over
epochs, ``--el-bonus-schedule``, ``--el-bonus-schedule-horizon``, ``--el-bonus-defer``,
``--el-bonus-schedule-exp-ratio``), the authors' EfficientNet flags (``--bonus_gamma -1 --log_end 0.75
--bonus_rho 1``..., see AUTHORS_FLAGS; they imply ``--loss el``), and ``--loss`` itself for train.py
1.0.23-1.0.30. It loads the given train.py as a module, adds its options to train.py's argparse parser (so a
``-c config.yaml`` with ``loss: el`` and ``log_end: 0.5`` works and both land in the run's args.yaml),
checks them before anything is built, then calls train.py's ``main()``.

With ``--loss el`` every task train.py builds (ClassificationTask, and the distillation tasks of
``--kd-model-name``, where EL is the task loss) gets EL as its criterion, in the form train.py's recipe flags ask
for: sigmoid EL with timm's BCE targets for ``--bce-loss`` (``--bce-target-thresh``, ``--bce-sum``,
``--bce-pos-weight``; also with ``--smoothing 0``, where train.py 1.0.29 itself falls back to cross-entropy), EL on
the clean split plus the Jensen-Shannon term for ``--jsd-loss --aug-splits N``, softmax EL otherwise; Mixup/CutMix
targets as they come. Validation keeps train.py's plain cross-entropy, and the log names the loss.
train.py never tells its loss the epoch: with a schedule the launcher wraps train.py's ``train_one_epoch(epoch,
...)`` to tell every EL loss the epoch (from 1) and log the weight.

Errors as every el-* command (el_plugins.commands): a bad option is ``el-timm-train: error: ...``, exit 2
(train.py's own parser included); a script that is not timm's train.py is ``el-timm-train: error: ...``,
exit 1, before a line of it runs. Messages during training go through train.py's own logging.
"""
import argparse
import functools
import importlib.util
import logging
import math
import os
import sys

from el_plugins import checks, commands
from el_plugins.core import BONUSES, SCHEDULES

__all__ = ['AUTHORS_FLAGS', 'AUTHORS_REFUSED', 'authors_settings', 'check_and_apply', 'check_train_script_source',
           'describe_training_loss', 'EL_OPTIONS', 'install', 'INTEGER_OPTIONS', 'load_train_script', 'main',
           'NOT_TRAIN_PY', 'PROG', 'recipe_kwargs', 'TASK_CLASSES', 'USAGE']

PROG = "el-timm-train"
USAGE = ("usage: el-timm-train path/to/train.py [train.py options] --loss el [--log-end LE] [--el-bonus-weight RHO]\n"
         "       [--el-bonus {log,power,cosine}] [--el-bonus-gamma G] [--el-bonus-start S] [--el-bonus-smoothing L]\n"
         "       [--el-bonus-schedule {constant,linear,exp,cos}] [--el-bonus-schedule-horizon T] [--el-bonus-defer D]\n"
         "       (train.py's --bce-loss, --jsd-loss --aug-splits N, --mixup/--cutmix, --kd-model-name: EL's form)\n"
         "       (torchrun ... -m el_plugins.timm_plugin.launcher path/to/train.py ...)")
TASK_CLASSES = ("ClassificationTask", "MultiLabelClassificationTask", "LogitDistillationTask",
                "FeatureDistillationTask", "TokenDistillationTask")
_logger = logging.getLogger("el_plugins.timm")


def _number_or_text(text):
    if isinstance(text, bool):  # YAML's true/false: not a number here
        return text
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # the check below then says what is allowed


def _integer_or_text(text):
    value = _number_or_text(text)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _checked(check, flag, convert=_number_or_text):
    """An argparse ``type=`` applying el-plugins' check, so that a bad value is the parser's usage error."""
    def parse(text):
        try:
            return check(convert(text), flag)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = flag
    return parse


def _choice(allowed):
    def check(value, name):
        return checks.check_choice(value, allowed, name)
    return check


_integer_from_0 = functools.partial(checks.check_integer, low=0)
_integer_from_1 = functools.partial(checks.check_integer, low=1)
_integer_from_minus_2 = functools.partial(checks.check_integer, low=-2)
# dest: (flag, check, EncouragingLoss keyword, help)
EL_OPTIONS = {
    "log_end": ("--log-end", checks.check_log_end, "log_end",
                "EL: where the log bonus log(1-p) turns into its tangent, in (0, 1]; 1 = normal bonus (default 0.75; "
                "--log_end is the same option)"),
    "el_bonus_weight": ("--el-bonus-weight", checks.check_bonus_weight, "bonus_weight",
                        "EL: weight rho of the bonus, >= 0; 0 = cross-entropy (default 1)"),
    "el_bonus": ("--el-bonus", _choice(BONUSES), "bonus", "EL: the bonus: log (default), power (-p^gamma), cosine"),
    "el_bonus_gamma": ("--el-bonus-gamma", checks.check_positive, "bonus_gamma",
                       "EL: gamma > 0 of --el-bonus power"),
    "el_bonus_start": ("--el-bonus-start", checks.check_bonus_start, "bonus_start",
                       "EL: the aggressive bonus (log, power): none below this p in [0, 1)"),
    "el_bonus_smoothing": ("--el-bonus-smoothing", checks.check_label_smoothing, "bonus_smoothing",
                           "EL: label smoothing of the bonus term, in [0, 1) (default: --smoothing)"),
    "el_bonus_schedule": ("--el-bonus-schedule", _choice(SCHEDULES), "bonus_schedule",
                          "EL: warm-up of the bonus weight over epochs: constant (default), linear, exp, cos"),
    "el_bonus_schedule_horizon": ("--el-bonus-schedule-horizon", _integer_from_1, "bonus_schedule_horizon",
                                  "EL: epochs over which the bonus weight warms up"),
    "el_bonus_defer": ("--el-bonus-defer", _integer_from_0, "bonus_defer",
                       "EL: the first N epochs without the bonus"),
    "el_bonus_schedule_exp_ratio": ("--el-bonus-schedule-exp-ratio", checks.check_nonzero,
                                    "bonus_schedule_exp_ratio",
                                    "EL: r of --el-bonus-schedule exp, not 0 (default 5)"),
}
INTEGER_OPTIONS = ("el_bonus_schedule_horizon", "el_bonus_defer", "authors_defer_start", "authors_el_schedule_max_epoch",
                   "authors_bonus_gamma")

# the authors' EfficientNet flags (imagenet-efficientnetb0/train_el.py): dest: (flag, check, help)
AUTHORS_FLAGS = {
    "authors_bonus_gamma": ("--bonus_gamma", _integer_from_minus_2,
                            "the authors' bonus: 0 none, -1 log, -2 cosine, > 0 power"),
    "authors_bonus_rho": ("--bonus_rho", checks.check_bonus_weight, "the authors' bonus weight (default 1)"),
    "authors_bonus_start": ("--bonus_start", checks.check_bonus_start, "the authors' aggressive bonus start"),
    "authors_defer_start": ("--defer_start", _integer_from_0, "the authors' epochs without the bonus"),
    "authors_el_schedule": ("--el_schedule", _choice(("linear", "exp", "cos")), "the authors' warm-up"),
    "authors_el_schedule_max_epoch": ("--el_schedule_max_epoch", _integer_from_1, "the authors' warm-up epochs"),
    "authors_el_exp_schedule_ratio": ("--el_exp_schedule_ratio", checks.check_nonzero,
                                      "the authors' exp ratio (default 5)"),
}
AUTHORS_REFUSED = {"--base_loss": "ce", "--sigmoid_ce": "0", "--bonus_abrupt": "-1", "--el_linear_schedule_start": "0",
                   "--el_linear_schedule_end": None}
"""The authors' train_el.py flags el-plugins does not take (other losses than EL, unused or never read), with the
value at which each changes nothing in their code."""


def authors_settings(values: dict) -> dict:
    """EncouragingLoss keywords from the authors' EfficientNet flags given (their el.py: --bonus_rho weights the
    whole bonus, smoothed by timm's --smoothing; --log_end shapes the log bonus; default log_end 1)."""
    gamma = values.get("authors_bonus_gamma", 0)
    if gamma not in (0, -1, -2) and gamma < 0:
        raise ValueError(f"--bonus_gamma must be 0 (no bonus), -1 (log), -2 (cosine) or > 0 (power), got {gamma}")
    kind = {0: "log", -1: "log", -2: "cosine"}.get(gamma, "power")
    settings = {"bonus": kind, "bonus_weight": 0.0 if gamma == 0 else values.get("authors_bonus_rho", 1.0),
                "log_end": values.get("log_end", 1.0) if kind == "log" else values.get("log_end"),
                "bonus_start": values.get("authors_bonus_start", 0.0) if gamma else 0.0,
                "bonus_defer": values.get("authors_defer_start", 0)}
    if kind == "power":
        settings["bonus_gamma"] = gamma
    if "authors_el_schedule" in values:
        settings.update(bonus_schedule=values["authors_el_schedule"],
                        bonus_schedule_horizon=values.get("authors_el_schedule_max_epoch"),
                        bonus_schedule_exp_ratio=values.get("authors_el_exp_schedule_ratio"))
    elif "authors_el_schedule_max_epoch" in values or "authors_el_exp_schedule_ratio" in values:
        raise ValueError("--el_schedule_max_epoch and --el_exp_schedule_ratio apply to an --el_schedule only")
    return settings


NOT_TRAIN_PY = "{path} does not look like timm's train.py ({why}); expected timm's train.py " \
               "(pytorch-image-models), which has a module-level argparse `parser` with --smoothing and a `main()`"


def check_train_script_source(path):
    """Look at the script's source without running it: timm's train.py (any version) imports timm, builds a
    module-level argparse ``parser`` with a ``--smoothing`` option and defines ``main()``. Anything else is
    refused (a :class:`el_plugins.commands.CommandError`) before a line of it runs (a data script given by
    mistake must not execute)."""
    import ast

    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError) as exc:
        raise commands.CommandError(NOT_TRAIN_PY.format(path=path, why=f"it cannot be read as Python: {exc}")) from None
    top_names = {target.id for node in tree.body if isinstance(node, ast.Assign)
                 for target in ast.walk(node) if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store)}
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    imports_timm = any(isinstance(node, (ast.Import, ast.ImportFrom)) and any(
        (alias.name if isinstance(node, ast.Import) else (node.module or "")).split(".")[0] == "timm"
        for alias in node.names) for node in ast.walk(tree))
    options = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and node.value.startswith("--")}
    missing = [what for what, ok in (("no import of timm", imports_timm), ("no module-level `parser`", "parser" in top_names),
                                     ("no `main()`", "main" in functions),
                                     ("no --smoothing option: not a training script", "--smoothing" in options)) if not ok]
    if missing:
        hint = ". timm's validate.py evaluates a model: run it directly" if os.path.basename(path) == "validate.py" else ""
        raise commands.CommandError(NOT_TRAIN_PY.format(path=path, why=", ".join(missing)) + hint)


def load_train_script(path):
    """Import train.py from ``path`` as a module (its ``if __name__ == '__main__'`` block does not run),
    after :func:`check_train_script_source` found it shaped like timm's train.py."""
    path = os.path.abspath(path)
    check_train_script_source(path)
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("timm_train_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "parser", None), argparse.ArgumentParser) or not callable(
            getattr(module, "main", None)):
        raise commands.CommandError(f"{path} does not look like timm's train.py "
                                    "(it needs a module-level argparse `parser` and a `main()`)")
    return module


def _mixup_active(args):
    return (getattr(args, "mixup", 0) or 0) > 0 or (getattr(args, "cutmix", 0) or 0) > 0 or \
        getattr(args, "cutmix_minmax", None) is not None


def _given_values(args, parser):
    """The EL and authors' options given (flag or -c config.yaml: argparse never checks a config's values), checked
    as their flags are: {dest: value}."""
    values = {}
    for dest, (flag, check, *_) in {**EL_OPTIONS, **AUTHORS_FLAGS}.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        convert = _integer_or_text if dest in INTEGER_OPTIONS else (_number_or_text if dest not in (
            "el_bonus", "el_bonus_schedule", "authors_el_schedule") else str)
        try:
            values[dest] = check(convert(value), f"{flag} ({dest})" if not isinstance(value, str) or dest in
                                 ("el_bonus", "el_bonus_schedule", "authors_el_schedule") else flag)
        except ValueError as exc:
            parser.error(str(exc))
    return values


def check_and_apply(args, parser, module):
    """Validate the EL options of parsed train.py args and make training use EL (no-op unless --loss el, or the
    authors' flags, which imply it): the task classes train.py builds get the EL that its recipe flags ask for
    (:func:`recipe_kwargs`) as their criterion, whichever criterion (or criterion_kwargs) train.py gives them.

    Values from a ``-c config.yaml`` reach args through set_defaults, which argparse never checks: the loss
    is checked against the --loss choices here, EL's options are checked (they are recorded in the run's
    args.yaml) and refused without --loss el, which would not use them, and a config key spelled with
    dashes (``log-end:``), which train.py would ignore, is refused naming the key."""
    dests = {action.dest for action in parser._actions}
    for key in vars(args):
        if "-" in key and key.replace("-", "_") in dests:
            parser.error(f"{key}: (from the config file) is not read: train.py takes a config key by its option's "
                         f"name with underscores; write {key.replace('-', '_')}:")
    loss_action = parser._option_string_actions["--loss"]
    if loss_action.choices is not None and args.loss is not None and args.loss not in loss_action.choices:
        parser.error(f"loss: {args.loss!r} (from the config file) is not an allowed --loss: choose from "
                     f"{', '.join(map(repr, loss_action.choices))}")
    for flag, no_op in AUTHORS_REFUSED.items():
        value = getattr(args, "authors_refused_" + flag.lstrip("-"), None)
        if value is not None and value != no_op:
            parser.error(f"{flag} {value}: one of the authors' train_el.py flags el-plugins does not take (another "
                         f"loss than EL, or unused in their code); leave it out")
    values = _given_values(args, parser)
    authors = {k: v for k, v in values.items() if k.startswith("authors_")}
    native = {k: v for k, v in values.items() if k in EL_OPTIONS and k != "log_end"}
    if authors and native:
        parser.error(f"{', '.join(EL_OPTIONS[k][0] for k in native)} and the authors' "
                     f"{', '.join(AUTHORS_FLAGS[k][0] for k in authors)} set the same loss: use one spelling")
    if authors and getattr(args, "loss", None) in (None, "el"):
        args.loss = "el"  # the authors' train_el.py always trained with their EL
    if getattr(args, "loss", None) != "el":
        loss = f"--loss {args.loss}" if args.loss else "train.py's own loss"
        for dest, value in values.items():
            flag = {**EL_OPTIONS, **AUTHORS_FLAGS}[dest][0]
            shown = f"{value:g}" if isinstance(value, (int, float)) else value
            parser.error(f"{flag} ({dest}: {shown}) applies to --loss el only, and this run trains with {loss}: add "
                         f"--loss el (loss: el), or leave {dest} out")
        return
    recipe = recipe_kwargs(args, parser)
    if authors:
        try:
            settings = authors_settings({**authors, **({"log_end": values["log_end"]} if "log_end" in values else {})})
        except ValueError as exc:
            parser.error(str(exc))
    else:
        settings = {EL_OPTIONS[dest][2]: value for dest, value in values.items()}
    from el_plugins.timm_plugin import loss_factory

    try:  # every combination checked now, before anything is built (the factory builds it again)
        probe = loss_factory.check_arguments(**recipe, **{f"el_{k}": v for k, v in settings.items()})
    except ValueError as exc:
        parser.error(str(exc))
    if not authors:  # the values used land in the run's args.yaml
        args.log_end, args.el_bonus_weight = probe.log_end, probe.bonus_weight
    loss_factory.set_el_defaults(**settings)
    log = (getattr(module, "_logger", None) or _logger).info if int(os.environ.get("RANK", "0")) == 0 else None

    def make_criterion(train_py_kwargs, multi_label):
        """The EL train.py's flags ask for; what train.py gave the task's criterion_kwargs (timm 1.0.31's
        train.py) passes through, but for the loss type and the options the flags set."""
        import timm.loss

        kwargs = {**train_py_kwargs, **recipe}
        if multi_label:
            kwargs["multi_label"] = True
        return timm.loss.create_classification_loss(**kwargs)

    for name in TASK_CLASSES:  # the criterion train.py gives its task (or asks the factory for) becomes EL
        if hasattr(module, name):  # (parsed again: the original class, wrapped anew)
            task_class = getattr(module, name)
            task_class = getattr(task_class, "__el_original__", task_class)
            setattr(module, name, _with_el_criterion(task_class, make_criterion, log))
    scheduled = settings.get("bonus_schedule", "constant") != "constant" or settings.get("bonus_defer", 0)
    if scheduled:
        _tell_the_epoch(module, log)
    if log:
        log(f"el-plugins: training loss = {describe_training_loss(probe, recipe)}; validation loss = cross-entropy")


def recipe_kwargs(args, parser) -> dict:
    """create_classification_loss's arguments for ``--loss el`` under train.py's recipe flags (--bce-loss and its
    options, --jsd-loss with --aug-splits, Mixup/CutMix, --smoothing), refusing, naming the flags, the
    combinations that would leave a flag unused or that train.py cannot train."""
    bce, jsd = bool(getattr(args, "bce_loss", False)), bool(getattr(args, "jsd_loss", False))
    splits = getattr(args, "aug_splits", 0) or 0
    soft = _mixup_active(args)
    if bce and jsd:
        parser.error("--bce-loss and --jsd-loss are two forms of the training loss: with --loss el give one "
                     "(train.py itself would use --jsd-loss and ignore --bce-loss)")
    if jsd and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 2):
        parser.error(f"--jsd-loss needs --aug-splits N with N >= 2 (the clean split and N - 1 augmented ones; the "
                     f"AugMix recipes use --aug-splits 3), got --aug-splits {splits}")
    if jsd and soft:
        parser.error("--jsd-loss does not combine with --mixup/--cutmix: the JSD form scores the clean split against "
                     "class indices, and Mixup/CutMix would mix the splits (train.py cannot train it either: an "
                     "assert, or timm's JsdCrossEntropy failing on soft targets)")
    bce_flags = {"bce_target_thresh": "--bce-target-thresh", "bce_sum": "--bce-sum",
                 "bce_pos_weight": "--bce-pos-weight"}
    given = {dest: getattr(args, dest) for dest in bce_flags if getattr(args, dest, None) not in (None, False)}
    if given and not bce:
        parser.error(f"{', '.join(bce_flags[d] for d in given)} set{'s' if len(given) == 1 else ''} the BCE form "
                     f"(--bce-loss), and this run trains without it: add --bce-loss, or leave "
                     f"{'it' if len(given) == 1 else 'them'} out")
    kwargs = dict(loss_type="el", smoothing=getattr(args, "smoothing", 0.0) or 0.0, soft_targets=soft)
    if jsd:
        kwargs["jsd_splits"] = splits
    if bce:
        from el_plugins.checks import check_target_threshold

        try:
            threshold = check_target_threshold(_number_or_text(getattr(args, "bce_target_thresh", None)),
                                               "--bce-target-thresh")
            pos_weight = getattr(args, "bce_pos_weight", None)
            if pos_weight is not None:
                pos_weight = _checked_pos_weight(_number_or_text(pos_weight))
        except ValueError as exc:
            parser.error(str(exc))
        bce_sum = getattr(args, "bce_sum", False)
        if not isinstance(bce_sum, bool):
            parser.error(f"--bce-sum (bce_sum) must be true or false, got {bce_sum!r}")
        kwargs.update(el_binary=True, bce_target_thresh=threshold, bce_sum=bce_sum, pos_weight=pos_weight)
    return kwargs


def _checked_pos_weight(value):
    number = checks.real_number(value)
    if number is None or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"--bce-pos-weight must be a finite number >= 0 (the weight of the positive side of each "
                         f"class), got {value!r}")
    return number


def describe_training_loss(loss, recipe) -> str:
    """The training log's description of the EL train.py trains with: the form (the flag that chose it) and the
    settings."""
    from el_plugins.timm_plugin import loss_factory

    soft = recipe.get("soft_targets", False)
    details = [loss._bonus_repr(), f"bonus_weight={loss.bonus_weight}", f"label smoothing={loss.smoothing}",
               f"targets={'soft (Mixup/CutMix)' if soft else 'class index'}"]
    (form, equals), flag = loss_factory.describe(loss), None
    if "el_binary" in recipe:
        flag = "--bce-loss"
        if loss.target_threshold is not None:
            details.append(f"target threshold={loss.target_threshold:g}")
        if loss.sum_classes:
            details.append("summed over classes")
        if loss.pos_weight is not None:
            details.append(f"pos_weight={loss.pos_weight.item():g}")
    elif "jsd_splits" in recipe:
        flag = "--jsd-loss"
    if flag:
        return f"{form} of {flag} ({', '.join(details)}; at bonus weight 0: {equals})"
    return f"{form} ({', '.join(details)})"


def _tell_the_epoch(module, log):
    """Wrap train.py's ``train_one_epoch(epoch, ...)`` (epoch from 0) so that every EL loss hears the epoch (from 1)
    before it trains, and the log shows the bonus weight in use."""
    from el_plugins.timm_plugin import loss_factory

    train_one_epoch = getattr(module, "train_one_epoch", None)
    train_one_epoch = getattr(train_one_epoch, "__el_original__", train_one_epoch)
    if not callable(train_one_epoch):
        raise commands.CommandError("this train.py has no train_one_epoch(epoch, ...), so a schedule of the bonus "
                                    "weight cannot follow its epochs")

    @functools.wraps(train_one_epoch)
    def train_one_epoch_with_el(epoch, *args, **kwargs):
        loss_factory.set_epoch(epoch + 1)
        if log:
            weights = sorted({f"{loss.current_bonus_weight:.4g}" for loss in list(loss_factory._made)})
            log(f"el-plugins: epoch {epoch}: bonus_weight {', '.join(weights)}")
        return train_one_epoch(epoch, *args, **kwargs)

    train_one_epoch_with_el.__el_original__ = train_one_epoch
    module.train_one_epoch = train_one_epoch_with_el


def _with_el_criterion(task_class, make_criterion, log):
    """``task_class`` (ClassificationTask or a distillation task) with EL as its criterion, the task loss, in place
    of the criterion (or criterion_kwargs) train.py gives it."""
    multi_label = bool(getattr(task_class, "multi_label", False))

    @functools.wraps(task_class)
    def build_task(*args, **kwargs):
        if "criterion" not in kwargs and "criterion_kwargs" not in kwargs:
            raise commands.CommandError(f"this train.py builds {task_class.__name__} without criterion=... or "
                                        "criterion_kwargs=..., so it cannot be given the encouraging loss")
        kwargs.pop("criterion", None)
        kwargs["criterion"] = make_criterion(kwargs.pop("criterion_kwargs", None) or {}, multi_label)
        if log:
            role = "its loss" if "Distillation" not in task_class.__name__ else \
                "the task loss (train.py's distillation loss is added to it)"
            log(f"el-plugins: {task_class.__name__} trains with the encouraging loss "
                f"({type(kwargs['criterion']).__name__}) as {role}")
        return task_class(*args, **kwargs)

    build_task.__el_original__ = task_class
    return build_task


def install(module):
    """Add the EL options to train.py's parser and check/apply them whenever it parses."""
    parser = module.parser
    own_loss_option = "--loss" not in parser._option_string_actions
    group = parser.add_argument_group("Encouraging loss (el-plugins)")
    if own_loss_option:
        group.add_argument("--loss", default=None, choices=("ce", "el"),
                           help="el: train with the encouraging loss; ce (default): train.py's own loss")
    for dest, (flag, check, _, help_text) in EL_OPTIONS.items():
        convert = _integer_or_text if dest in INTEGER_OPTIONS else (
            str if dest in ("el_bonus", "el_bonus_schedule") else _number_or_text)
        flags = (flag, "--log_end") if dest == "log_end" else (flag,)
        group.add_argument(*flags, dest=dest, type=_checked(check, flag, convert), default=None,
                           help=help_text + " (refused without --loss el)")
    authors = parser.add_argument_group("The authors' EfficientNet flags (imagenet-efficientnetb0/readme.sh; they "
                                        "imply --loss el)")
    for dest, (flag, check, help_text) in AUTHORS_FLAGS.items():
        convert = _integer_or_text if dest in INTEGER_OPTIONS else (
            str if dest == "authors_el_schedule" else _number_or_text)
        authors.add_argument(flag, dest=dest, type=_checked(check, flag, convert), default=None, help=help_text)
    for flag in AUTHORS_REFUSED:
        authors.add_argument(flag, dest="authors_refused_" + flag.lstrip("-"), default=None, help=argparse.SUPPRESS)
    parse_args = parser.parse_args

    @functools.wraps(parse_args)
    def parse_and_apply(*a, **kw):
        args = parse_args(*a, **kw)
        check_and_apply(args, parser, module)
        return args

    parser.parse_args = parse_and_apply


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]) and len(argv) == 1:
        print(USAGE + "\n\n" + __doc__)
        return 0
    if not argv:
        sys.stderr.write(USAGE + "\n")
        return commands.error(PROG, "the path to timm's train.py is required as the first argument",
                              commands.USAGE_EXIT)
    if not os.path.isfile(argv[0]) or not argv[0].endswith(".py"):
        sys.stderr.write(USAGE + "\n")
        return commands.error(PROG, f"the first argument must be the path to timm's train.py, got {argv[0]!r}",
                              commands.USAGE_EXIT)
    return commands.run(PROG, lambda: _train(argv))


def _train(argv) -> int:
    """Load train.py (argv[0]), give its parser the EL options and run its main() with the rest of argv."""
    import el_plugins.timm_plugin  # noqa: F401  ('el' in timm's factory, also with EL_PLUGINS_DISABLE=1)

    module = load_train_script(argv[0])
    install(module)
    sys.argv = [argv[0], *argv[1:]]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
