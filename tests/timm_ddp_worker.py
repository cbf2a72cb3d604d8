"""Run by tests/test_timm_distributed.py under torchrun (2 processes, gloo, CPU): one training step of a timm
model wrapped in DistributedDataParallel, with the EL that timm's own loss factory builds (loss_type='el'),
in float32 and under CPU autocast (bfloat16 logits, the fused path's half-precision route). Rank 0 saves the
averaged gradients; every rank checks they are the same on all ranks."""
import os
import sys

import torch
import torch.distributed as dist


def main(out_path):
    import timm
    from timm.loss import create_classification_loss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    criterion = create_classification_loss(loss_type="el", smoothing=0.1, el_log_end=0.75)
    gen = torch.Generator().manual_seed(1)
    images, targets = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    shard = slice(rank * 8 // world, (rank + 1) * 8 // world)
    results = {}
    for name, autocast in (("float32", False), ("bfloat16", True)):
        ddp.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = ddp(images[shard])
            loss = criterion(logits, targets[shard])
        assert logits.dtype == (torch.bfloat16 if autocast else torch.float32), logits.dtype
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        gathered = [torch.empty_like(grads) for _ in range(world)]
        dist.all_gather(gathered, grads)
        assert all(torch.equal(g, grads) for g in gathered), "ranks disagree after the all-reduce"
        results[name] = {"loss": loss.detach(), "grads": grads, "criterion": repr(criterion)}
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
