"""el-plugins: the encouraging loss (Zhao et al., AAAI 2022) for fairseq, timm and Hugging Face Transformers.

Layers, lowest first; each imports only those below it, and the adapters know nothing of each other (the
contracts in the repository's .importlinter, checked by tests/test_layers.py):
  el_plugins.core               the EL math, torch only: the bonus family and its schedules, the target
                                weights, the per-row terms, their assembly and reduction
  el_plugins.checks             the argument checks that build core's settings (ValueErrors naming what is
                                allowed)
  el_plugins.ops                the fused op: one entry point (fused_loss), the backends (chunked torch, C++
                                on CPU tensors, Triton on CUDA) and the output layer fused into the loss
  el_plugins.functional         the public loss functions (encouraging_loss, linear_encouraging_loss and
                                their *_with_stats forms, bonus); the one place an implementation is chosen
  el_plugins.loss               torch.nn modules (EncouragingLoss, LinearEncouragingLoss,
                                BinaryEncouragingLoss, JsdEncouragingLoss), timm-style
  el_plugins.fairseq_plugin     the criteria label_smoothed_encouraging_loss and encourage_loss (the
                                authors' flags), and the fixes applied to fairseq on activation
  el_plugins.timm_plugin        'el' in timm's loss factory, and the el-timm-train launcher
  el_plugins.hf                 Transformers: compute_loss_func and apply_encouraging_loss (output layer fused)
  el_plugins.analysis           margins, energy, ECE, OOD metrics and el-analyze
  el_plugins.translation        IWSLT preparation, recipes, checkpoint averaging, BLEU (el-* commands)
  el_plugins.demo               el-demo: translation (LS-CE vs EL) and vision (CE vs EL) on generated data
Beside them, used by the commands only: commands (the error convention, logging, fairseq's programs),
files (all-or-nothing writes and output sets), devices (--device), checkpoints (torch >= 2.6 loading),
provenance (version and commit in results). _activation is the import hook run from el_plugins.pth.

The evidence (the paper's reproductions, their data, the README's headlines, test helpers) is the
repository's separate distribution el_evidence, which this package never imports.

Importing this package imports nothing else (it is imported at interpreter start-up by
el_plugins.pth to install the activation hook, see el_plugins._activation).
"""
__version__ = "0.1.0"
