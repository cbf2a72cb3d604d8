"""el-timm-train: run timm's own train.py with the encouraging loss.

    el-timm-train path/to/train.py <train.py options> --loss el [--log-end 0.5] [--el-bonus-weight 1]
    torchrun --nproc_per_node 2 -m el_plugins.timm_plugin.launcher path/to/train.py ... --loss el

timm 1.0.31's train.py already takes ``--loss el`` once el-plugins is installed; this launcher adds
what it lacks: ``--log-end`` / ``--el-bonus-weight``, and ``--loss`` itself for train.py 1.0.23-1.0.30.
It loads the given train.py as a module, adds its options to train.py's argparse parser (so a
``-c config.yaml`` with ``loss: el`` and ``log_end: 0.5`` works and both land in the run's args.yaml),
checks them before anything is built, then calls train.py's ``main()``. Training uses EL; validation
keeps train.py's plain cross-entropy.

Errors as every el-* command (el_plugins.commands): a bad option is ``el-timm-train: error: ...``, exit 2
(train.py's own parser included); a script that is not timm's train.py is ``el-timm-train: error: ...``,
exit 1, before a line of it runs. Messages during training go through train.py's own logging.
"""
import argparse
import functools
import importlib.util
import logging
import os
import sys

from el_plugins import commands
from el_plugins import functional as EF

PROG = "el-timm-train"
USAGE = ("usage: el-timm-train path/to/train.py [train.py options] --loss el [--log-end LE] [--el-bonus-weight RHO]\n"
         "       (torchrun ... -m el_plugins.timm_plugin.launcher path/to/train.py ...)")
TASK_CLASSES = ("ClassificationTask", "LogitDistillationTask", "FeatureDistillationTask", "TokenDistillationTask")
_logger = logging.getLogger("el_plugins.timm")


def _number_or_text(text):
    if isinstance(text, bool):  # YAML's true/false: not a number here
        return text
    try:
        return float(text)
    except (TypeError, ValueError):
        return text  # the check below then says what is allowed


def _log_end_arg(text):
    try:
        return EF.check_log_end(_number_or_text(text), "--log-end")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bonus_weight_arg(text):
    try:
        return EF.check_bonus_weight(_number_or_text(text), "--el-bonus-weight")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


EL_DEFAULTS = {"log_end": 0.75, "el_bonus_weight": 1.0}  # with --loss el, where not given


def check_and_apply(args, parser, module, own_loss_option):
    """Validate the EL options of parsed train.py args and make training use EL (no-op unless --loss el).

    Values from a ``-c config.yaml`` reach args through set_defaults, which argparse never checks: the loss
    is checked against the --loss choices here, log_end / el_bonus_weight are checked (they are recorded in the
    run's args.yaml) and refused without --loss el, which would not use them, and a config key spelled with
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
    try:
        given = {"log_end": None if args.log_end is None else
                 EF.check_log_end(_number_or_text(args.log_end), "--log-end (log_end)"),
                 "el_bonus_weight": None if args.el_bonus_weight is None else
                 EF.check_bonus_weight(_number_or_text(args.el_bonus_weight), "--el-bonus-weight (el_bonus_weight)")}
    except ValueError as exc:
        parser.error(str(exc))
    if getattr(args, "loss", None) != "el":
        loss = f"--loss {args.loss}" if args.loss else "train.py's own loss"
        for key, value in given.items():
            if value is not None:
                parser.error(f"--{key.replace('_', '-')} ({key}: {value:g}) applies to --loss el only, and this run "
                             f"trains with {loss}: add --loss el (loss: el), or leave {key} out")
        return
    args.log_end, args.el_bonus_weight = (EL_DEFAULTS[k] if v is None else v for k, v in given.items())
    for flag in ("jsd_loss", "bce_loss"):
        if getattr(args, flag, False):
            parser.error(f"--loss el cannot be combined with --{flag.replace('_', '-')}: EL replaces the training loss "
                         "(for multi-label targets use the factory's multi_label=True)")
    from el_plugins.timm_plugin.loss_factory import set_el_defaults

    set_el_defaults(log_end=args.log_end, bonus_weight=args.el_bonus_weight)
    soft = _mixup_active(args)
    if own_loss_option:  # train.py without --loss: swap the criterion it gives its task for EL
        import timm.loss

        def make_criterion():
            return timm.loss.create_classification_loss(loss_type="el", smoothing=args.smoothing, soft_targets=soft)

        for name in TASK_CLASSES:
            if hasattr(module, name):
                setattr(module, name, _with_el_criterion(getattr(module, name), make_criterion))
    if int(os.environ.get("RANK", "0")) == 0:
        (getattr(module, "_logger", None) or _logger).info(
            f"el-plugins: training loss = encouraging loss (log_end={args.log_end}, bonus_weight={args.el_bonus_weight}, "
            f"label smoothing={0.0 if soft else args.smoothing}, targets={'soft (Mixup/CutMix)' if soft else 'class index'}); "
            "validation loss = cross-entropy")


def _with_el_criterion(task_class, make_criterion):
    @functools.wraps(task_class)
    def build_task(*args, **kwargs):
        if "criterion" not in kwargs:
            raise commands.CommandError(f"this train.py builds {task_class.__name__} without criterion=..., "
                                        "so it cannot be given the encouraging loss")
        kwargs["criterion"] = make_criterion()
        return task_class(*args, **kwargs)

    return build_task


def install(module):
    """Add the EL options to train.py's parser and check/apply them whenever it parses."""
    parser = module.parser
    own_loss_option = "--loss" not in parser._option_string_actions
    group = parser.add_argument_group("Encouraging loss (el-plugins)")
    if own_loss_option:
        group.add_argument("--loss", default=None, choices=("ce", "el"),
                           help="el: train with the encouraging loss; ce (default): train.py's own loss")
    group.add_argument("--log-end", type=_log_end_arg, default=None,
                       help="EL: where the bonus log(1-p) turns linear, in (0, 1]; 1 = normal bonus (default with "
                            "--loss el: 0.75; refused without it)")
    group.add_argument("--el-bonus-weight", type=_bonus_weight_arg, default=None,
                       help="EL: weight of the bonus, >= 0; 0 = cross-entropy (default with --loss el: 1.0; refused "
                            "without it)")
    parse_args = parser.parse_args

    @functools.wraps(parse_args)
    def parse_and_apply(*a, **kw):
        args = parse_args(*a, **kw)
        check_and_apply(args, parser, module, own_loss_option)
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
