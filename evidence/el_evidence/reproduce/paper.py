"""What Zhao et al. (AAAI 2022, arXiv 2110.06537) report on MNIST, under the keys of ``results.json``.

Accuracies, AUROC and FPR95 in %, ECE as a fraction, energies in logit units. A key a variant does
not have here is one the paper does not report for it. All EL numbers are with the normal bonus,
log_end = 1 (the authors' MNIST scripts: ``--log_end 1`` for training and the OOD/energy models,
``attack.py``'s default ``--log_end 1`` for the attacked models).
"""

VARIANTS = ("ce", "ce_ls", "el", "el_ls")
VARIANT_NAMES = {"ce": "CE", "ce_ls": "CE+LS", "el": "EL", "el_ls": "EL+LS"}
PAPER_LOG_END = 1.0
PAPER_SMOOTHING = 0.1

PAPER = {
    "ce": {"accuracy": 99.42, "accuracy_short_training": 98.69, "auroc": 95.68, "fpr95": 20.92, "ece": 0.005,
           "energy_data": -27.0, "energy_ood_lowest": -5.85, "attack_0.1": 74.89, "attack_0.2": 5.04},
    "ce_ls": {"auroc": 97.10, "fpr95": 8.10, "ece": 0.009, "energy_data": -4.0, "energy_ood_lowest": -0.08},
    "el": {"accuracy": 99.56, "accuracy_short_training": 99.04, "auroc": 98.04, "fpr95": 8.69, "ece": 0.004,
           "energy_data": -131.6, "energy_ood_lowest": -23.9, "attack_0.1": 79.31, "attack_0.2": 7.59},
    "el_ls": {"auroc": 99.55, "fpr95": 0.98, "ece": 0.003, "energy_data": -12.6, "energy_ood_lowest": -0.07},
}
PAPER_STD = {"ce": {"accuracy": 0.06}, "el": {"accuracy": 0.05}}

SOURCES = {
    "accuracy": "Table 1: a larger CNN (the L-Softmax code's MNIST net: 11 conv layers with BatchNorm), SGD 100 "
                "epochs, mean +- std over 5 runs of each run's best test-set epoch",
    "accuracy_short_training": "Table 11, clean column: the torchattacks demo CNN, Adam 1e-3, 5 epochs, one model",
    "auroc": "Tables 4 and 13: MNIST test (in) vs Fashion-MNIST test (OOD), score -max_k z_k; one model each, by "
             "the authors' scripts the Table 1 network (checkpoints of 99.41 / 99.51 / 99.58 / 99.65% accuracy)",
    "fpr95": "Tables 4 and 13: as auroc, FPR at 95% TPR",
    "ece": "Table 13: ECE, 10 equal-width confidence bins (the Tables 4/13 models)",
    "energy_data": "Table 13: mean of -z_y over the MNIST test set",
    "energy_ood_lowest": "Table 13: 'lowest energy out of the data', mean over the MNIST test set of "
                         "min_{k != y} -z_k; the authors' code takes max(0, max_{k != y} z_k)",
    "attack_0.1": "Table 11: accuracy under AutoAttack (L-inf, eps 0.1), the short-training models",
    "attack_0.2": "Table 11: accuracy under AutoAttack (L-inf, eps 0.2), the short-training models",
}


def paper_block() -> dict:
    """The ``paper`` entry of results.json."""
    return {"variants": {v: dict(PAPER[v]) for v in VARIANTS}, "std": {v: dict(s) for v, s in PAPER_STD.items()},
            "sources": dict(SOURCES), "log_end": PAPER_LOG_END, "label_smoothing": PAPER_SMOOTHING,
            "reference": "Zhao et al., Well-classified Examples are Underestimated in Classification with Deep "
                         "Neural Networks, AAAI 2022, arXiv 2110.06537"}
