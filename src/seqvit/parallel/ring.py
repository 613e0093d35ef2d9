"""Ring attention (arXiv 2310.01889): exact attention with K/V blocks travelling around the ring.

Each rank keeps the queries of its segment. K and V of its segment (one fused [2, B, S, H, d]
buffer) go around the sequence-parallel ring: at step t = 0 .. P-1 rank r holds the block of
rank r - t, attends its queries against it and, meanwhile, sends that block on to rank r + 1 and
receives the next one from rank r - 1 (batch_isend_irecv, started before the block's
arithmetic, so a backend that progresses it in the background overlaps the two; whether gloo
does is measured by benchmarks/attention_parallel.py --sections overlap). The partial results
are merged by log-sum-exp rescaling (the online softmax): running maximum m, denominator l and
numerator in fp32, whatever the input dtype, so the result equals softmax over the whole
sequence.

Backward (a custom autograd.Function, flash-attention's recurrence): the K/V blocks go around
the ring once more; each rank adds its queries' contribution to a block's dK/dV, which travel
with the block (in fp32, so the sum over P ranks rounds once) and reach their owner one step
after the last contribution. dQ stays local. Saved for the backward pass: this rank's q, k, v,
output and lse, so memory per rank is O(N / P) (plus one block of scores, [B, H, S, S] fp32).

Non-causal attention: every block costs the same, so the ranks are balanced at every step
without the reordering that causal ring attention needs. Padded uneven sequences
(parallel.uneven=pad): only the last segment is short; its padded keys are left out of its block
(valid lengths per source rank), so they never enter attention.

The block arithmetic is an explicit softmax in fp32 (the kernel setting model.attention is not
used: SDPA does not return the lse a merge needs). Attention-probability dropout is refused.

Per layer and rank: P - 1 sends of 2 B (N/P) h elements forward; backward P - 1 of K/V plus
P - 1 of dK/dV in fp32 (comm_stats; "send" counts bytes leaving the rank).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.parallel import groups
from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.sequence import SequenceParallelAttention

_KV_TAG, _DKV_TAG = 0, 1  # gloo matches messages on their tag; NCCL keeps the order per pair


def check_no_dropout(method: str, dropout_p: float) -> None:
    if dropout_p > 0:
        raise SeqvitError(
            f"config key model.dropout: parallel.sp_method {method} has no attention-probability dropout (its "
            f"blockwise softmax cannot draw one mask over the whole row); set model.dropout=0, or use "
            f"parallel.sp_method=ulysses, lss or ulysses-lss"
        )


class _Ring:
    """This rank's neighbours on the ring of `group`."""

    def __init__(self, group, tag: str):
        self.group, self.tag = group, tag
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def shift(self, send: torch.Tensor, recv: torch.Tensor, tag: int, phase: str) -> list:
        """Start sending `send` to rank + 1 and receiving `recv` from rank - 1 (one batch: NCCL needs it)."""
        ops = [
            dist.P2POp(dist.isend, send, group=self.group, tag=tag, group_peer=(self.rank + 1) % self.size),
            dist.P2POp(dist.irecv, recv, group=self.group, tag=tag, group_peer=(self.rank - 1) % self.size),
        ]
        STATS.add(self.tag, "send", send.numel() * send.element_size(), self.size, phase)
        return dist.batch_isend_irecv(ops)


def _wait(requests: list) -> None:
    for request in requests:
        request.wait()


def _block(kv: torch.Tensor, valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of a [2, B, S, H, d] block as fp32 [B, H, valid, d] (padded keys left out)."""
    return kv[0, :, :valid].transpose(1, 2).float(), kv[1, :, :valid].transpose(1, 2).float()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, valid, tag):
        ring = _Ring(group, tag)
        scale = 1.0 / math.sqrt(q.shape[-1])
        qs = q.transpose(1, 2).float() * scale  # [B, H, S, d]
        batch, heads, seq, dim = qs.shape
        m = qs.new_full((batch, heads, seq), -math.inf)
        denom = qs.new_zeros((batch, heads, seq))
        acc = qs.new_zeros((batch, heads, seq, dim))
        kv = torch.stack((k, v)).contiguous()
        for step in range(ring.size):
            requests = []
            if step < ring.size - 1:
                incoming = torch.empty_like(kv)
                requests = ring.shift(kv, incoming, _KV_TAG, "forward")
            kb, vb = _block(kv, valid[(ring.rank - step) % ring.size])
            scores = torch.matmul(qs, kb.transpose(-1, -2))
            m_new = torch.maximum(m, scores.amax(-1))
            alpha = torch.exp(m - m_new)  # 0 at the first block (m = -inf)
            weights = torch.exp(scores - m_new.unsqueeze(-1))
            denom = denom * alpha + weights.sum(-1)
            acc = acc * alpha.unsqueeze(-1) + torch.matmul(weights, vb)
            m = m_new
            _wait(requests)
            if requests:
                kv = incoming
        out = acc / denom.unsqueeze(-1)
        lse = m + torch.log(denom)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.valid, ctx.tag, ctx.scale = group, valid, tag, scale
        return out.transpose(1, 2).to(q.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        ring = _Ring(ctx.group, ctx.tag)
        qs = q.transpose(1, 2).float() * ctx.scale
        dout = grad.transpose(1, 2).float()
        delta = (dout * out).sum(-1, keepdim=True)  # rowsum(dO o O): the softmax's Jacobian term
        dq = torch.zeros_like(qs)
        kv = torch.stack((k, v)).contiguous()
        length = kv.shape[2]
        own = travelling = None
        for step in range(ring.size):
            requests = []
            if step < ring.size - 1:
                incoming = torch.empty_like(kv)
                requests += ring.shift(kv, incoming, _KV_TAG, "backward")
            valid = ctx.valid[(ring.rank - step) % ring.size]
            kb, vb = _block(kv, valid)
            probs = torch.exp(torch.matmul(qs, kb.transpose(-1, -2)) - lse.unsqueeze(-1))
            dscores = probs * (torch.matmul(dout, vb.transpose(-1, -2)) - delta)
            dq += torch.matmul(dscores, kb)
            # [2, B, valid, H, d], zeros for the padded keys
            contribution = torch.stack(
                (torch.matmul(dscores.transpose(-1, -2), qs), torch.matmul(probs.transpose(-1, -2), dout))
            )
            contribution = contribution.transpose(2, 3)
            if valid < length:
                contribution = torch.nn.functional.pad(contribution, (0, 0, 0, 0, 0, length - valid))
            if step == 0:
                own = contribution
            else:
                outgoing = (contribution if travelling is None else travelling + contribution).contiguous()
                travelling = torch.empty_like(outgoing)
                requests += ring.shift(outgoing, travelling, _DKV_TAG, "backward")
            _wait(requests)
            if step < ring.size - 1:
                kv = incoming
        total = own if travelling is None else own + travelling  # the last message is this rank's own dK/dV
        dq = (dq * ctx.scale).transpose(1, 2).to(q.dtype)
        return dq, total[0].to(k.dtype), total[1].to(v.dtype), None, None, None


def ring_attention(q, k, v, group, valid, tag: str = "ring") -> torch.Tensor:
    """Attention of this rank's q [B, S, H, d] over the k, v blocks of every rank of `group`.

    valid[s]: how many of rank s's S keys are real (the rest is padding at the block's end).
    """
    return _RingAttention.apply(q, k, v, group, tuple(int(n) for n in valid), tag)


class RingAttention(SequenceParallelAttention):
    method = "ring"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        bounds = [groups.segment_bounds(self.num_tokens, self.size, s) for s in range(self.size)]
        self.valid = [stop - start for start, stop in bounds]

    def exchange_attend(self, q, k, v, dropout_p: float):
        check_no_dropout(self.method, dropout_p)
        return ring_attention(q, k, v, self.group, self.valid, self.method)
