"""fairseq adapter: the criterion ``label_smoothed_encouraging_loss``.

Registered automatically when fairseq loads its criteria (see el_plugins._activation); this
directory also works as ``--user-dir`` (print its path with ``python -m el_plugins.fairseq_plugin``).
Imports are absolute so that loading it as a user dir does not register the criterion twice.
"""
import el_plugins.fairseq_plugin.checkpoint_loading  # noqa: F401
import el_plugins.fairseq_plugin.criterion  # noqa: F401
