"""The worked example of el-plugins' specification of EL (its section "Worked example (float64)", kept with the
project's specification outside this repository; the numbers are all here),
written once for every test that checks an implementation against it.

``torch.manual_seed(0); z = torch.randn(6, 11, dtype=torch.float64) * 3``, targets ``[9, 1, 2, 10, 6, 4]``,
padding index 1 (row 1 is padding: 5 tokens count), label smoothing 0.1, bonus weight rho as the table
says. SUM_TABLE gives the loss summed over the 5 tokens for each (smoothing convention, log_end, rho);
nll_loss (the sum of -log p_y) is NLL_LOSS_SUM in every row. The rho = 0 rows are fairseq's own
``label_smoothed_nll_loss(log_softmax(z), t, 0.1, ignore_index=1)``. The same logits with no padding
(row 1 is class 1), a timm-style mean over the rows, smoothing 0.1 and log_end 0.75: TIMM_MEAN_LOSS.
"""
import functools

import torch

from el_plugins.functional import encouraging_loss, encouraging_loss_with_stats

SEED = 0
SHAPE = (6, 11)
SCALE = 3.0
TARGETS = (9, 1, 2, 10, 6, 4)
PADDING_INDEX = 1
LABEL_SMOOTHING = 0.1

# (smoothing convention, log_end, bonus weight rho, loss summed over the 5 tokens)
SUM_TABLE = (
    ("paper", 1.0, 1.0, 1.160236598915),
    ("paper", 0.75, 1.0, 1.218452204029),
    ("paper", 0.5, 1.0, 1.809252236702),
    ("fairseq", 0.75, 1.0, 1.496696504549),
    ("fairseq", 0.75, 0.0, 6.003459446279),
    ("fairseq", 0.3, 0.0, 6.003459446279),  # rho = 0: any log_end
)
NLL_LOSS_SUM = 3.409925482129

TIMM_LOG_END = 0.75
TIMM_MEAN_LOSS = 0.701847684127


def logits_and_targets():
    """(z, t): the example's float64 logits, shape SHAPE, and its int64 targets, made afresh on each call
    (callers may change them). Seeds torch's global generator with SEED, as the spec writes it."""
    torch.manual_seed(SEED)
    return torch.randn(*SHAPE, dtype=torch.float64) * SCALE, torch.tensor(TARGETS)


# the public loss function on each implementation, for the tests that compare them (the fused one also takes
# backend=, chunk_size=, block_size=)
reference_loss = functools.partial(encouraging_loss, implementation="reference")
reference_loss_with_stats = functools.partial(encouraging_loss_with_stats, implementation="reference")
fused_loss = functools.partial(encouraging_loss, implementation="fused")
fused_loss_with_stats = functools.partial(encouraging_loss_with_stats, implementation="fused")
