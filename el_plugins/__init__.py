"""el-plugins: the encouraging loss (Zhao et al., AAAI 2022) for fairseq and timm.

Layout (framework-free core first, thin adapters after, tools last; each imports only those above it):
  el_plugins.core               the EL math that functional and ops share, torch only: the bonus and its
                                slope, the per-row terms, their assembly and reduction, the argument checks
  el_plugins.ops                the fused kernels: chunked torch path and the Triton kernel, and the output
                                layer fused into the loss (imports core only)
  el_plugins.functional         the public loss functions, torch only: encouraging_loss_with_stats (logits)
                                and linear_encouraging_loss_with_stats (features and an output layer, as
                                F.linear_cross_entropy), where the implementation (auto/fused/reference) is
                                chosen; the reference form; soft and multi-label targets
  el_plugins.loss               torch.nn modules (EncouragingLoss, LinearEncouragingLoss,
                                BinaryEncouragingLoss), timm-style
  el_plugins.fairseq_plugin     the fairseq criterion ``label_smoothed_encouraging_loss`` and the
                                fixes applied to fairseq on activation (fixes.py)
  el_plugins.timm_plugin        ``'el'`` in timm's loss factory, and the el-timm-train launcher
  el_plugins.commands           what every el-* command shares: the error convention (``prog: error:``,
                                exit 2 usage / 1 failure), logging, --no-progress, fairseq's programs
  el_plugins.checkpoints        torch >= 2.6 loading of fairseq / timm checkpoints (load_checkpoint)
  el_plugins.files              all-or-nothing file writes and output sets (what a rerun does: start over,
                                swap the new outputs in whole) and UTF-8 line reading, for every command
  el_plugins.devices            the one --device option: check it, move models and batches
  el_plugins.analysis           margins, energy, ECE, OOD metrics and el-analyze
  el_plugins.translation        IWSLT preparation, recipes, checkpoint averaging, BLEU (el-* commands),
                                what a data-bin holds (data_bin)
  el_plugins.demo               el-demo: translation (LS-CE vs EL) and vision (CE vs EL) on generated data
  el_evidence.testing            generated data (toy corpus, digits folder, the spec's worked example) and
                                test helpers, used by the tests, the benchmarks and the demo
  el_plugins._activation        the import hook run from el_plugins.pth

Importing this package imports nothing else (it is imported at interpreter start-up by
el_plugins.pth to install the activation hook, see el_plugins._activation).
"""
__version__ = "0.1.0"
