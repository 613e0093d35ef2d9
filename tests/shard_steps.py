"""A sequence-parallel training step written out in plain torch.distributed, for tests that compare
ranks with one process: this rank's rows and token segment of a global batch, its scaled segment
loss, and the gradient average over the world (what DeepSpeed does in training, train/engine.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.step_share import StepShare


def replica_rows(shard: StepShare, *tensors):
    """This replica's rows of global-batch tensors."""
    lo = shard.layout.dp_rank * shard.local_batch
    return tuple(t[lo : lo + shard.local_batch] for t in tensors)


def segment(shard: StepShare, *tensors):
    """This rank's token segment of [B, C, L, P*P] tensors."""
    return tuple(t[:, :, shard.start : shard.stop] for t in tensors)


def segment_loss(shard: StepShare, model, x, lead, y, loss_fn):
    """Scaled loss of this rank's segment for (already this replica's) samples x, lead, y."""
    x, y = segment(shard, x, y)
    return shard.scaled(loss_fn(model(x, lead, token_offset=shard.start), y - x, shard.weights))


def average_gradients(shard: StepShare, parameters, loss: torch.Tensor) -> float:
    """Average gradients over the world (one all-reduce); returns the global loss."""
    parameters = [p for p in parameters if p.requires_grad]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
        + [loss.detach().reshape(1).to(parameters[0].dtype)]
    )
    dist.all_reduce(flat)
    STATS.add("gradients", "all_reduce", flat.numel() * flat.element_size(), shard.layout.world_size, "backward")
    flat /= shard.layout.world_size
    offset = 0
    for p in parameters:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n
    return float(flat[-1])
