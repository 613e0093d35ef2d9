"""DeepSpeed-Ulysses sequence parallelism, our implementation (arXiv 2309.14509).

Before attention, one all-to-all scatters heads and gathers the sequence: rank r sends head
group j of its segment to rank j and receives segment s of head group r from every rank s, so
it ends with the whole sequence for H / P heads. Q, K and V travel in one fused all-to-all
(one [P, 3, B, S, H/P, d] buffer). After the local kernel, the inverse all-to-all gathers the
heads and scatters the sequence. The gradient of an all-to-all with equal splits is the same
all-to-all on the gradient, so the backward pass is two all-to-alls as well.

Per layer and rank: 2 all-to-all forward, 2 backward, each moving 4 B (N/P) h elements of
which (P-1)/P leave the rank (comm_stats). The head count must be divisible by P
(groups.check_layout says so before training; parallel.sp_method=lss has no such constraint).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.sequence import SequenceParallelAttention


def _exchange(buffer: torch.Tensor, group, tag: str, phase: str) -> torch.Tensor:
    buffer = buffer.contiguous()
    out = torch.empty_like(buffer)
    dist.all_to_all_single(out, buffer, group=group)
    STATS.add(tag, "all_to_all_single", buffer.numel() * buffer.element_size(), dist.get_world_size(group), phase)
    return out


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0 (one chunk per rank); its own adjoint."""

    @staticmethod
    def forward(ctx, buffer, group, tag):
        ctx.group, ctx.tag = group, tag
        return _exchange(buffer, group, tag, "forward")

    @staticmethod
    def backward(ctx, grad):
        return _exchange(grad, ctx.group, ctx.tag, "backward"), None, None


def all_to_all(buffer: torch.Tensor, group=None, tag: str = "ulysses") -> torch.Tensor:
    """Differentiable all_to_all_single: chunk j of dim 0 goes to rank j; chunk s of the result came from rank s."""
    return _AllToAll.apply(buffer, group, tag)


def scatter_heads(*tensors: torch.Tensor, group=None, tag: str = "ulysses") -> tuple[torch.Tensor, ...]:
    """[B, S, H, d] segments -> [B, P*S, H/P, d] whole sequences for this rank's heads; all in one all-to-all."""
    p = dist.get_world_size(group)
    batch, seq, heads, dim = tensors[0].shape
    # [P (head group = destination), T, B, S, H/P, d]: one copy, then one exchange
    send = torch.stack([t.reshape(batch, seq, p, heads // p, dim).permute(2, 0, 1, 3, 4) for t in tensors], dim=1)
    recv = all_to_all(send, group, tag)  # [P (segment = source), T, B, S, H/P, d]
    full = recv.permute(1, 2, 0, 3, 4, 5).reshape(len(tensors), batch, p * seq, heads // p, dim)
    return full.unbind(0)


def gather_heads(x: torch.Tensor, group=None, tag: str = "ulysses") -> torch.Tensor:
    """Inverse of scatter_heads for one tensor: [B, P*S, H/P, d] -> [B, S, H, d]."""
    p = dist.get_world_size(group)
    batch, seq_all, heads_local, dim = x.shape
    seq = seq_all // p
    send = x.reshape(batch, p, seq, heads_local, dim).transpose(0, 1)  # [P (segment = destination), B, S, H/P, d]
    recv = all_to_all(send, group, tag)  # [P (head group = source), B, S, H/P, d]
    return recv.permute(1, 2, 0, 3, 4).reshape(batch, seq, p * heads_local, dim)


class UlyssesAttention(SequenceParallelAttention):
    method = "ulysses"

    def exchange_attend(self, q, k, v, dropout_p: float):
        q_all, k_all, v_all = scatter_heads(q, k, v, group=self.group, tag=self.method)
        out = self.local_attention(q_all, k_all, v_all, dropout_p)
        return gather_heads(out, group=self.group, tag=self.method)
