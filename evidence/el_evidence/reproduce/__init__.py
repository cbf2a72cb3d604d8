"""Reruns of the paper's experiments that fit a CPU, side by side with the paper's numbers.

``el-reproduce mnist`` (:mod:`el_evidence.reproduce.__main__`): the MNIST tables (accuracy, OOD detection
against Fashion-MNIST, calibration and energies, adversarial robustness) for CE, CE+LS, EL and EL+LS.
"""
