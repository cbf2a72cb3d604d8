"""Activate el-plugins inside fairseq and timm without --user-dir or code changes.

Neither fairseq nor timm discovers plugins through entry points, so el-plugins installs
``el_plugins.pth`` in site-packages. Python runs it at start-up; it calls :func:`install`, which only
puts a small finder on ``sys.meta_path`` (this module imports nothing but the standard library).
When a program imports one of the ``TRIGGERS`` modules (``fairseq.criterions``, ``timm.loss``), the
finder lets the real module run, then loads every entry point of the group ``el_plugins.activate``
whose name is that module (setup.py declares them), e.g. the module that registers the criterion.
Programs that never import fairseq or timm import nothing of el-plugins or torch.

Set ``EL_PLUGINS_DISABLE=1`` to turn this off; ``import el_plugins.fairseq_plugin`` (or
``--user-dir``) and ``import el_plugins.timm_plugin`` still activate by hand.
"""
import os
import sys

ENTRY_POINT_GROUP = "el_plugins.activate"
TRIGGERS = ("fairseq.criterions", "timm.loss")


def activate(module_name: str) -> None:
    """Import the plugins registered for ``module_name`` in the ``el_plugins.activate`` group."""
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
    if os.environ.get("EL_PLUGINS_DISABLE", "") not in ("", "0"):
        return
    if any(isinstance(f, _ActivationFinder) for f in sys.meta_path):
        return
    already = [name for name in triggers if name in sys.modules]
    sys.meta_path.insert(0, _ActivationFinder([t for t in triggers if t not in already]))
    for name in already:  # imported before us (unusual): activate now
        activate(name)
