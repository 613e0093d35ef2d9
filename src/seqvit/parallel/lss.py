"""Long-Sequence-Segmentation (LSS, arXiv 2311.02382): queries stay, keys and values are gathered.

Each rank keeps the queries of its own segment. K and V of every segment are gathered in one
fused all-gather ([P, 2, B, S, H, d]); the local kernel attends the local queries over the whole
sequence. In the backward pass the gradients of the gathered K and V are reduce-scattered back
to the ranks that own them (summing the contributions of every rank's queries). Gradients of the
parameters are then averaged over the sequence and the data ranks together ("double gradient
averaging", train/engine.py). No constraint on the head count.

Per layer and rank: 1 all-gather forward, 1 reduce-scatter backward, each moving
2 B (N/P) h (P-1) elements (comm_stats).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.sequence import SequenceParallelAttention


def _all_gather(out, inp, group):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def _reduce_scatter(out, inp, group):
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    scatter(out, inp, op=dist.ReduceOp.SUM, group=group)


class _GatherSegments(torch.autograd.Function):
    """All-gather of a segment buffer along a new dim 0; backward: reduce-scatter of the gradient."""

    @staticmethod
    def forward(ctx, local, group, tag):
        ctx.group, ctx.tag, ctx.shape = group, tag, local.shape
        p = dist.get_world_size(group)
        local = local.contiguous()
        out = local.new_empty((p * local.numel(),))
        _all_gather(out, local.reshape(-1), group)
        STATS.add(tag, "all_gather", local.numel() * local.element_size(), p, "forward")
        return out.view(p, *local.shape)

    @staticmethod
    def backward(ctx, grad):
        p = dist.get_world_size(ctx.group)
        grad = grad.contiguous().reshape(-1)
        out = grad.new_empty((grad.numel() // p,))
        _reduce_scatter(out, grad, ctx.group)
        STATS.add(ctx.tag, "reduce_scatter", grad.numel() * grad.element_size(), p, "backward")
        return out.view(ctx.shape), None, None


def gather_segments(local: torch.Tensor, group=None, tag: str = "lss") -> torch.Tensor:
    """[...] on each rank -> [P, ...] (differentiable: the gradient is reduce-scattered to the owners)."""
    return _GatherSegments.apply(local, group, tag)


class LSSAttention(SequenceParallelAttention):
    method = "lss"

    def exchange_attend(self, q, k, v, dropout_p: float):
        batch, seq, heads, dim = k.shape
        gathered = gather_segments(torch.stack((k, v)), self.group, self.method)  # [P, 2, B, S, H, d]
        k_all, v_all = gathered.permute(1, 2, 0, 3, 4, 5).reshape(2, batch, self.size * seq, heads, dim).unbind(0)
        return self.local_attention(q, k_all, v_all, dropout_p)
