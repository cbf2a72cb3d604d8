"""The torch.nn modules of el_plugins.loss (timm-style, torch only): EncouragingLoss against the spec's timm-style
worked example and the functional form, BinaryEncouragingLoss's smoothing as timm's BCE smooths, gradcheck."""
import pytest
import torch
import torch.nn.functional as F

from el_plugins import functional as EF
from el_plugins.loss import BinaryEncouragingLoss, EncouragingLoss
from el_evidence.testing import spec_example as spec


def test_module_matches_spec_timm_example_and_functional():
    z, t = spec.logits_and_targets()
    loss = EncouragingLoss(log_end=spec.TIMM_LOG_END, smoothing=spec.LABEL_SMOOTHING)
    assert loss(z, t).item() == pytest.approx(spec.TIMM_MEAN_LOSS, abs=1e-11)
    soft = torch.softmax(torch.randn(6, 11, dtype=torch.float64), -1)
    torch.testing.assert_close(EncouragingLoss(log_end=0.5)(z, soft),
                               EF.soft_target_encouraging_loss(z, soft, log_end=0.5))


def test_binary_module_smoothing_follows_timm_bce():
    z = torch.randn(4, 5, dtype=torch.float64)
    t = torch.tensor([0, 4, 2, 2])
    dense = torch.full((4, 5), 0.1 / 5, dtype=torch.float64).scatter_(1, t[:, None], 1 - 0.1 + 0.1 / 5)
    torch.testing.assert_close(BinaryEncouragingLoss(smoothing=0.1)(z, t),
                               EF.binary_encouraging_loss(z, dense.float()).to(torch.float64), rtol=1e-6, atol=1e-7)
    multi = torch.randint(0, 2, (4, 5)).double()
    torch.testing.assert_close(BinaryEncouragingLoss(smoothing=0.2, bonus_weight=0.0)(z, multi),
                               F.binary_cross_entropy_with_logits(z, multi * 0.8 + 0.1))


def test_gradcheck_modules():
    torch.manual_seed(4)
    z = (torch.randn(5, 4, dtype=torch.float64) * 2).requires_grad_()
    t = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda x: EncouragingLoss(smoothing=0.1)(x, t), (z,))
    assert torch.autograd.gradcheck(lambda x: BinaryEncouragingLoss(smoothing=0.1)(x, t), (z,))
