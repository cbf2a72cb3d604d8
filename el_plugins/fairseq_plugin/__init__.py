"""fairseq adapter: the criteria ``label_smoothed_encouraging_loss`` and ``encourage_loss`` (the authors' flags,
authors.py), and the fixes el-plugins applies
to fairseq (``fixes``: keep batch_by_size's last batch, load checkpoints on torch >= 2.6).

Registered automatically when fairseq loads its criteria (see el_plugins._activation); this
directory also works as ``--user-dir`` (print its path with ``python -m el_plugins.fairseq_plugin``).
Imports are absolute so that loading it as a user dir does not register the criterion twice, and the
fixes are idempotent for the same reason. A fix switch with an invalid value stops the program, as a
bad command-line flag would (an exception here would only become a warning in the import hook). Without
fairseq, importing it is a ModuleNotFoundError that says how to install fairseq (``python -m`` prints it in
one line).
"""
import importlib.util
import sys

if importlib.util.find_spec("fairseq") is None:
    _MISSING = ("fairseq is not installed here: pip install cython numpy && pip install --no-build-isolation "
                "fairseq-fixed (Python >= 3.11), or pip install fairseq (older Pythons)")
    if sys.argv[:1] == ["-m"]:  # python -m el_plugins.fairseq_plugin: sys.argv[0] is '-m' while it is located
        raise SystemExit(f"python -m el_plugins.fairseq_plugin: error: {_MISSING}")
    raise ModuleNotFoundError(f"el_plugins.fairseq_plugin needs fairseq: {_MISSING}", name="fairseq")

from el_plugins.fairseq_plugin.fixes import FixSwitchError, apply_fixes  # noqa: E402

try:
    apply_fixes()
except FixSwitchError as exc:
    raise SystemExit(f"el-plugins: {exc}") from None

import el_plugins.fairseq_plugin.criterion  # noqa: E402,F401
import el_plugins.fairseq_plugin.authors  # noqa: E402,F401  (encourage_loss: the authors' flags)
