"""Activate el-plugins inside fairseq and timm without --user-dir or code changes.

Neither fairseq nor timm discovers plugins through entry points, so el-plugins installs
``el_plugins.pth`` in site-packages. Python runs it at start-up; it calls :func:`install`, which only
puts a small finder on ``sys.meta_path`` (this module imports nothing but the standard library).
When a program imports one of the ``TRIGGERS`` modules (``fairseq.criterions``, ``timm.loss``), the
finder lets the real module run, then loads every entry point of the group ``el_plugins.activate``
whose name is that module (setup.py declares them), e.g. the module that registers the criterion.
Programs that never import fairseq or timm import nothing of el-plugins or torch.

Set ``EL_PLUGINS_DISABLE=1`` to turn this off; ``import el_plugins.fairseq_plugin`` (or
``--user-dir``) and ``import el_plugins.timm_plugin`` still activate by hand. Like every el-plugins switch
(:func:`read_switch`) it takes ``1`` or ``0``, unset meaning 0; any other value (``false``, ``no``) never
breaks Python's start-up: the hook stays in place and stops the program that imports fairseq or timm, with a
message naming the variable.
"""
import os
import sys

ENTRY_POINT_GROUP = "el_plugins.activate"
TRIGGERS = ("fairseq.criterions", "timm.loss")
DISABLE_ENV = "EL_PLUGINS_DISABLE"
SWITCH_VALUES = {"1": True, "0": False}
_switch_problem = None  # set by install(): a bad EL_PLUGINS_DISABLE, reported when fairseq or timm is imported


class SwitchError(ValueError):
    """An el-plugins environment switch with a value other than 0 or 1."""


def read_switch(name: str, on: str = "on", off: str = "off", unset: str = "on"):
    """The switch ``name`` of the environment: True for 1, False for 0, None when unset or empty; any other
    value is a :class:`SwitchError` naming the variable and the allowed values (``on``, ``off``: what 1 and
    0 mean, ``unset``: what leaving it unset means)."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return None
    if value not in SWITCH_VALUES:
        raise SwitchError(f"{name}={value!r} is not allowed: use {name}=1 ({on}) or {name}=0 ({off}), "
                          f"or leave it unset ({unset})")
    return SWITCH_VALUES[value]


def activate(module_name: str) -> None:
    """Import the plugins registered for ``module_name`` in the ``el_plugins.activate`` group (or stop the
    program, as a bad command-line flag would, when EL_PLUGINS_DISABLE has a value that is not 0 or 1)."""
    if _switch_problem is not None:
        raise SystemExit(f"el-plugins: {_switch_problem}")
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == module_name:
            try:
                ep.load()
            except Exception as exc:  # never break the host program: say what failed
                import warnings

                warnings.warn(f"el-plugins: could not load {ep.value} for {module_name}: {exc!r}", stacklevel=2)


class _ActivatingLoader:
    """Wraps the real loader: runs the module, then activates the plugins registered for it."""

    def __init__(self, loader, name):
        self._loader, self._name = loader, name

    def __getattr__(self, attr):
        return getattr(self._loader, attr)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        activate(self._name)


class _ActivationFinder:
    """A meta-path finder that only answers for the TRIGGERS modules, and only to wrap their loader."""

    def __init__(self, triggers):
        self._pending = set(triggers)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self._pending:
            return None
        self._pending.discard(fullname)  # once per process; also stops recursion below
        from importlib.util import find_spec

        spec = find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ActivatingLoader(spec.loader, fullname)
        return spec


def install(triggers=TRIGGERS) -> None:
    """Called from el_plugins.pth at interpreter start-up; cheap and idempotent."""
    global _switch_problem
    try:
        if read_switch(DISABLE_ENV, on="el-plugins does not activate", off="it activates", unset="it activates"):
            return
    except SwitchError as exc:  # start-up must not fail: say so when fairseq or timm is imported
        _switch_problem = str(exc)
    if any(isinstance(f, _ActivationFinder) for f in sys.meta_path):
        return
    already = [name for name in triggers if name in sys.modules]
    sys.meta_path.insert(0, _ActivationFinder([t for t in triggers if t not in already]))
    for name in already:  # imported before us (unusual): activate now
        activate(name)
