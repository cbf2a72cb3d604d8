"""The helpers only the tests use (the demo's generated data, which the tests use too, is el_plugins.demo's:
toy_corpus and digits).

  el_evidence.testing.spec_example     the EL spec's worked example: its logits, targets, settings and
                                      expected losses, for every implementation to be checked against
  el_evidence.testing.toy_fairseq      the toy corpus binarized by the real fairseq-preprocess, the tiny
                                      transformer trained on it, fairseq-train's per-update log records
  el_evidence.testing.programs         running console scripts and ``python -m`` modules as their own
                                      processes (the installed package, the caller's environment), a free port
  el_evidence.testing.interrupts       a command interrupted as a user does (SIGTERM, SIGKILL at a chosen
                                      moment, or while its outputs are renamed into place)
  el_evidence.testing.mixed_precision  trained-like logits and the gradient precision measure of the
                                      float16/bfloat16 tests

Nothing here needs pytest. Importing this package imports nothing else: torch, fairseq, PIL and
scikit-learn are imported by the modules (or functions) that need them.
"""
