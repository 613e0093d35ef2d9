"""Long-Sequence-Segmentation (LSS, arXiv 2311.02382): queries stay, keys and values are gathered.

Each rank keeps the queries of its own segment. K and V of every segment are gathered (one fused
all-gather of K and V per chunk of heads) and the local kernel attends the local queries of those
heads over the whole sequence; the output is the concatenation over the chunks. In the backward
pass the gradients of the gathered K and V are reduce-scattered back to the ranks that own them
(summing the contributions of every rank's queries). Gradients of the parameters are then
averaged over the sequence and the data ranks together ("double gradient averaging",
train/engine.py). No constraint on the head count.

Head chunks (head_chunks): gathering all heads at once holds K and V of the whole sequence, 2 N E
elements, twice more in transit (the gathered buffer and the kernel's layout in the forward
pass, dK/dV and the reduce-scatter's layout in the backward pass). Attention is independent per
head, so the heads go in turn, in chunks of ceil(H / c) heads, and only one chunk's transit
buffers exist at a time. The autograd graph still saves each chunk's gathered K and V for the
backward pass (2 N E in all per block: recomputing them instead would cost one more attention
forward). c = min(H, ceil(P / 4)): a chunk gathers about 4 segments' worth, 8 n E elements
(n = N / P), less than the 8 n E + 2 n F a block saves for its own tokens (plan/estimate.py), so
the transit never dominates the peak; up to P = 4 the whole sequence is within that bound and one
all-gather per layer keeps the latency lowest.

Reduce-scatter precision: in bf16 (or fp16) the gradients are summed in fp32 and rounded once.
Measured with gloo on P ranks, random partial gradients, mean error relative to an exact sum:
bf16 summation 0.13% (P = 2), 0.24% (P = 4), 0.36% (P = 8), growing with P because every step
of the ring rounds; fp32 summation rounded to bf16 stays at 0.14%. The price is twice the bytes
of the backward reduce-scatter.

Per layer and rank: c all-gathers forward and c reduce-scatters backward, which together move
2 B (N/P) h (P-1) elements each way (comm_stats; the reduce-scatter's in fp32).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.sequence import SequenceParallelAttention


# all_gather_single / reduce_scatter_single: torch >= 2.13 (pyproject) has them, and deprecates the
# *_into_tensor / *_tensor names
def _all_gather(out, inp, group):
    dist.all_gather_single(out, inp, group=group)


def _reduce_scatter(out, inp, group):
    dist.reduce_scatter_single(out, inp, op=dist.ReduceOp.SUM, group=group)


SEGMENTS_PER_CHUNK = 4  # a chunk of heads gathers about this many segments' worth of K and V
_SUM_DTYPES = {torch.bfloat16: torch.float32, torch.float16: torch.float32}


def head_chunks(num_heads: int, sp: int) -> int:
    """How many chunks of heads LSS gathers in turn on `sp` ranks (module docstring)."""
    wanted = min(num_heads, max(1, math.ceil(sp / SEGMENTS_PER_CHUNK)))
    return math.ceil(num_heads / math.ceil(num_heads / wanted))  # chunks of ceil(H / wanted) heads


class _GatherSegments(torch.autograd.Function):
    """All-gather of a segment buffer along a new dim 0; backward: reduce-scatter of the gradient
    (summed in fp32 when it is bf16 or fp16)."""

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
        send = grad.contiguous().reshape(-1).to(_SUM_DTYPES.get(grad.dtype, grad.dtype))
        out = send.new_empty((send.numel() // p,))
        _reduce_scatter(out, send, ctx.group)
        STATS.add(ctx.tag, "reduce_scatter", send.numel() * send.element_size(), p, "backward")
        return out.view(ctx.shape).to(grad.dtype), None, None


def gather_segments(local: torch.Tensor, group=None, tag: str = "lss") -> torch.Tensor:
    """[...] on each rank -> [P, ...] (differentiable: the gradient is reduce-scattered to the owners)."""
    return _GatherSegments.apply(local, group, tag)


class _GatherSequence(torch.autograd.Function):
    """[2, B, S, h, d] K and V of this segment -> [2, B, P*S, h, d] of the whole sequence.

    Backward: the gradient goes back into the all-gather's layout and is reduce-scattered, summed
    in fp32 when it is bf16 or fp16 (module docstring), in one copy.
    """

    @staticmethod
    def forward(ctx, local, group, tag):
        ctx.group, ctx.tag = group, tag
        p = dist.get_world_size(group)
        local = local.contiguous()
        out = local.new_empty((p * local.numel(),))
        _all_gather(out, local.reshape(-1), group)
        STATS.add(tag, "all_gather", local.numel() * local.element_size(), p, "forward")
        two, batch, seq, heads, dim = local.shape
        return out.view(p, *local.shape).permute(1, 2, 0, 3, 4, 5).reshape(two, batch, p * seq, heads, dim)

    @staticmethod
    def backward(ctx, grad):
        p = dist.get_world_size(ctx.group)
        two, batch, length, heads, dim = grad.shape
        seq = length // p
        dtype = _SUM_DTYPES.get(grad.dtype, grad.dtype)
        send = grad.new_empty((p, two, batch, seq, heads, dim), dtype=dtype)
        send.copy_(grad.view(two, batch, p, seq, heads, dim).permute(2, 0, 1, 3, 4, 5))
        out = send.new_empty((two, batch, seq, heads, dim))
        _reduce_scatter(out.view(-1), send.view(-1), ctx.group)
        STATS.add(ctx.tag, "reduce_scatter", send.numel() * send.element_size(), p, "backward")
        return out.to(grad.dtype), None, None


def gather_sequence(local: torch.Tensor, group=None, tag: str = "lss") -> torch.Tensor:
    """[2, B, S, h, d] on each rank -> [2, B, P*S, h, d] (differentiable: the gradient is reduce-scattered)."""
    return _GatherSequence.apply(local, group, tag)


class LSSAttention(SequenceParallelAttention):
    method = "lss"

    def __init__(self, *args, head_chunks: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_chunks = head_chunks  # None: derived from the heads and sp (module docstring)

    def exchange_attend(self, q, k, v, dropout_p: float):
        heads = k.shape[2]
        chunks = self.head_chunks or head_chunks(heads, self.size)
        width = math.ceil(heads / chunks)
        outputs = []
        for first in range(0, heads, width):
            part = slice(first, first + width)
            kv = gather_sequence(torch.stack((k[:, :, part], v[:, :, part])), self.group, self.method)
            k_all, v_all = kv.unbind(0)  # unbind: its backward stacks dK and dV into one buffer
            outputs.append(self.local_attention(q[:, :, part], k_all, v_all, dropout_p))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
