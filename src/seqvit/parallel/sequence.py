"""What every sequence-parallel attention shares: segment bookkeeping, padding, the local kernel.

A sequence-parallel attention is a callable backend for seqvit.model.attention.attention:
it receives this rank's q, k, v [batch, local seq, heads, head_dim] (the local segment of the
token sequence), exchanges what its method needs with the other ranks of the sequence-parallel
group, runs the local kernel (sdpa, flash, math) and returns this rank's output segment.

Uneven sequences (parallel.uneven=pad): segments are ceil(N / P) long and only the last ones
are short (groups.segment_bounds). A short segment is padded with zeros to the common length
before the exchange, so the padding lands at the end of the gathered sequence, positions N and
beyond; the local kernel sees only the first N keys (and, in Ulysses, queries), so padding never
enters attention, and the padded rows of the output are dropped again (ring attention leaves
the padded keys of the last segment out of its block; the two-level methods gather whole padded
segments, so their padding too lies at positions N and beyond). Nothing else in the model
mixes tokens, so nothing else needs a mask; the loss scales each rank by its real token count
(train/engine.py).
"""

from __future__ import annotations

import torch.distributed as dist
import torch.nn.functional as F

from seqvit.errors import SeqvitError
from seqvit.model.attention import attention, check_backend
from seqvit.parallel import groups


class SequenceParallelAttention:
    """Base class; subclasses implement exchange_attend(q, k, v, dropout_p) on equal-length segments."""

    method = "none"

    def __init__(
        self, group, num_tokens: int, num_heads: int, kernel: str = "sdpa", uneven: str = "error", sp_inner: int = 1
    ):
        if callable(kernel):
            raise SeqvitError("the local kernel of a sequence-parallel attention is a name: auto, sdpa, flash or math")
        check_backend(kernel)
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.num_tokens = int(num_tokens)
        self.num_heads = int(num_heads)
        self.kernel = kernel
        self.uneven = uneven
        self.sp_inner = int(sp_inner)
        groups.check_layout(
            num_tokens=self.num_tokens,
            num_heads=self.num_heads,
            sp=self.size,
            method=self.method,
            uneven=uneven,
            sp_inner=self.sp_inner,
        )
        self.length = groups.segment_length(self.num_tokens, self.size)
        start, stop = groups.segment_bounds(self.num_tokens, self.size, self.rank)
        self.local_tokens = stop - start

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sp={self.size}, tokens={self.num_tokens}, heads={self.num_heads}, kernel={self.kernel})"

    def __call__(self, q, k, v, dropout_p: float = 0.0):
        if q.shape[1] != self.local_tokens or q.shape[2] != self.num_heads:
            raise SeqvitError(
                f"{self.method}: rank {self.rank} of {self.size} holds {self.local_tokens} of {self.num_tokens} tokens "
                f"and {self.num_heads} heads, but got q of shape {tuple(q.shape)} ([batch, seq, heads, head_dim])"
            )
        pad = self.length - self.local_tokens
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        out = self.exchange_attend(q, k, v, dropout_p)
        return out[:, : self.local_tokens] if pad else out

    def exchange_attend(self, q, k, v, dropout_p: float):
        raise NotImplementedError

    def local_attention(self, q, k, v, dropout_p: float = 0.0):
        """The local kernel on gathered keys/values (and queries); padding beyond token N left out."""
        n = self.num_tokens
        if k.shape[1] > n:
            k, v = k[:, :n], v[:, :n]
        if q.shape[1] > n:  # Ulysses: the gathered queries carry the padding too
            out = attention(q[:, :n], k, v, backend=self.kernel, dropout_p=dropout_p)
            return F.pad(out, (0, 0, 0, 0, 0, q.shape[1] - n))
        return attention(q, k, v, backend=self.kernel, dropout_p=dropout_p)
