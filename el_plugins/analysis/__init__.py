"""What EL changed vs a cross-entropy baseline: margins, energies, calibration, OOD detection.

The diagnostics of Zhao et al. (AAAI 2022), computed from logits and targets with torch, numpy and
scikit-learn's ROC functions (sign conventions in :mod:`el_plugins.analysis.metrics`). :class:`StreamingAnalysis`
accumulates them over batches; ``el-analyze`` (:mod:`el_plugins.analysis.cli`) runs timm or
fairseq checkpoints over a data set and writes report.json, PNG plots and a side-by-side table.
"""
from el_plugins.analysis.metrics import (
    ID_IS,
    OOD_SCORES,
    accuracy,
    auroc,
    auroc_paper_code,
    data_energy,
    describe,
    ece_from_table,
    expected_calibration_error,
    fpr_at_tpr,
    fpr_at_tpr_paper_code,
    free_energy,
    margins,
    log_max_prob,
    max_prob,
    min_energy,
    ood_scores,
    paper_code_ood_scores,
    reliability_table,
    roc_curve,
    row_values,
    target_probs,
    well_classified_fraction,
)
from el_plugins.analysis.streaming import StreamingAnalysis

__all__ = [
    "ID_IS", "OOD_SCORES", "StreamingAnalysis", "accuracy", "auroc", "auroc_paper_code", "data_energy", "describe",
    "ece_from_table", "expected_calibration_error", "fpr_at_tpr", "fpr_at_tpr_paper_code", "free_energy", "log_max_prob", "margins", "max_prob",
    "min_energy", "ood_scores", "paper_code_ood_scores", "reliability_table", "roc_curve", "row_values", "target_probs",
    "well_classified_fraction",
]
