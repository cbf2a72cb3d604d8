"""el-plugins: the encouraging loss (Zhao et al., AAAI 2022) for fairseq and timm.

Layout (framework-free core first, thin adapters after):
  el_plugins.functional     the EL math on torch tensors (the one implementation)
  el_plugins.loss           torch.nn modules around it (EncouragingLoss, ...), timm-style
  el_plugins.fairseq_plugin the fairseq criterion ``label_smoothed_encouraging_loss``
  el_plugins.timm_plugin    ``'el'`` in timm's loss factory, and the train.py launcher

Importing this package imports nothing else (it is imported at interpreter start-up by
el_plugins.pth to install the activation hook, see el_plugins._activation).
"""
__version__ = "0.1.0"
