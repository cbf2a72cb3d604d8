"""EL in a DistributedDataParallel-wrapped timm model, two processes under torchrun (gloo, CPU).

timm's train.py itself cannot run distributed on a CPU (it passes device_ids to DDP), so this runs timm's
model and timm's loss factory under DDP directly: the averaged gradient of two ranks must equal the mean of
the two shards' gradients computed in one process, in float32 and with bfloat16 autocast logits."""
import os
import subprocess

import pytest
import torch

from el_evidence.testing.programs import BIN, free_port

timm = pytest.importorskip("timm")
from timm.loss import create_classification_loss  # noqa: E402

pytestmark = pytest.mark.e2e  # every test here runs programs (torchrun)


def test_el_under_torchrun_ddp_matches_one_process(tmp_path):
    port = free_port()
    out = tmp_path / "ranks.pt"
    worker = os.path.join(os.path.dirname(__file__), "timm_ddp_worker.py")
    proc = subprocess.run([os.path.join(BIN, "torchrun"), "--nnodes", "1", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), worker, str(out)],
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    ranks = torch.load(out, weights_only=True)

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    criterion = create_classification_loss(loss_type="el", smoothing=0.1, el_log_end=0.75)
    assert "EncouragingLoss" in repr(criterion) and ranks["float32"]["criterion"] == repr(criterion)
    gen = torch.Generator().manual_seed(1)
    images, targets = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    for name, autocast in (("float32", False), ("bfloat16", True)):
        shard_grads = []
        for shard in (slice(0, 4), slice(4, 8)):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = criterion(model(images[shard]), targets[shard])
            loss.backward()
            shard_grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        expected = (shard_grads[0] + shard_grads[1]) / 2
        got = ranks[name]["grads"]
        scale = expected.abs().max().item()
        tol = 1e-5 if name == "float32" else 1e-2  # float32 rounding; bfloat16 logits
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol * scale, msg=name)
        assert got.abs().max() > 0
