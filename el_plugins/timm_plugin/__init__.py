"""timm adapter: ``'el'`` in timm's loss factory, and the ``el-timm-train`` launcher for train.py.

Registered automatically when ``timm.loss`` is imported (see el_plugins._activation); importing this
package registers it by hand.
"""
import el_plugins.timm_plugin.loss_factory  # noqa: F401
