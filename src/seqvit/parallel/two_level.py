"""Two-level sequence parallelism: Ulysses inside groups of sp_inner ranks, LSS or ring across them.

The P ranks of a sequence-parallel group form P / I outer groups' worth of inner groups of
I = parallel.sp_inner adjacent ranks (groups.build_groups; adjacent so that the all-to-all stays
inside a node first). Inner step: the Ulysses all-to-all over the inner group scatters the heads
and gathers the tokens, so inner rank i holds heads [i H/I, (i+1) H/I) of the I segments of its
inner group, one contiguous block of I S tokens (S = ceil(N / P)). Outer step: the P / I ranks
with the same inner index (one per inner group, holding the same heads) run LSS (ulysses-lss)
or ring attention (ulysses-ring) over those blocks, as if the sequence were split in P / I
segments. The inverse all-to-all then returns every rank its own segment with all heads.

Constraints: I divides P and the heads (the inner all-to-all scatters heads); the outer degree
P / I is unconstrained by the heads (groups.check_layout). Padding (parallel.uneven=pad): only
the last segment is short, so the padding lies at the end of the last outer block, positions N
and beyond, which LSS and ring leave out of attention.

Per layer and rank: Ulysses at degree I on the rank's own tokens (4 B (N/P) h e (I-1)/I bytes
each way) plus the outer method at degree P / I on blocks of N I / P tokens with h / I hidden
(comm_stats.expected sums the two levels).
"""

from __future__ import annotations

import torch.distributed as dist

from seqvit.errors import SeqvitError
from seqvit.parallel import groups
from seqvit.parallel.lss import LSSAttention
from seqvit.parallel.ring import check_no_dropout, ring_attention
from seqvit.parallel.sequence import SequenceParallelAttention
from seqvit.parallel.ulysses import gather_heads, scatter_heads


class TwoLevelAttention(SequenceParallelAttention):
    """Base of ulysses-lss and ulysses-ring; subclasses implement outer_attend on gathered blocks."""

    def __init__(self, group, num_tokens, num_heads, kernel="sdpa", uneven="error", sp_inner=1, inner=None, outer=None):
        super().__init__(group, num_tokens, num_heads, kernel=kernel, uneven=uneven, sp_inner=sp_inner)
        if inner is None or outer is None:
            inner, outer = groups.two_level_groups(self.size, self.sp_inner)
        self.inner_group, self.outer_group = inner, outer
        self.outer_size = self.size // self.sp_inner
        want = (self.rank % self.sp_inner, self.rank // self.sp_inner)
        got = (dist.get_rank(inner), dist.get_rank(outer))
        sizes = (dist.get_world_size(inner), dist.get_world_size(outer))
        if got != want or sizes != (self.sp_inner, self.outer_size):
            raise SeqvitError(
                f"{self.method}: the inner/outer groups (this rank {got}, sizes {sizes}) do not match "
                f"parallel.sp {self.size} with parallel.sp_inner {self.sp_inner}; build them with "
                f"groups.build_groups(sp, sp_inner=...)"
            )
        block = self.sp_inner * self.length  # tokens an outer rank holds after the inner exchange
        self.outer_valid = [max(0, min(block, self.num_tokens - o * block)) for o in range(self.outer_size)]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, sp_inner={self.sp_inner})"

    def exchange_attend(self, q, k, v, dropout_p: float):
        q_all, k_all, v_all = scatter_heads(q, k, v, group=self.inner_group, tag=self.method)
        out = self.outer_attend(q_all, k_all, v_all, dropout_p)
        return gather_heads(out, group=self.inner_group, tag=self.method)

    def outer_attend(self, q, k, v, dropout_p: float):
        raise NotImplementedError


class UlyssesLSSAttention(TwoLevelAttention):
    method = "ulysses-lss"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outer = LSSAttention(
            self.outer_group, self.num_tokens, self.num_heads // self.sp_inner, kernel=self.kernel, uneven="pad"
        )
        self.outer.method = self.method  # its collectives count under this method (comm_stats)

    def outer_attend(self, q, k, v, dropout_p: float):
        # LSS on the padded blocks as they are: its gathered keys beyond N (the padding) are left out
        return self.outer.exchange_attend(q, k, v, dropout_p)


class UlyssesRingAttention(TwoLevelAttention):
    method = "ulysses-ring"

    def outer_attend(self, q, k, v, dropout_p: float):
        check_no_dropout(self.method, dropout_p)
        return ring_attention(q, k, v, self.outer_group, self.outer_valid, self.method)
