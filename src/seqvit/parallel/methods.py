"""The sequence-parallel methods by name (config key parallel.sp_method) and the factory that builds one.

Every method is a subclass of seqvit.parallel.sequence.SequenceParallelAttention in a module of
its own; this registry imports them all, and nothing they import imports it back. Its names are
groups.SP_METHODS (tests/test_registries.py checks), the list the config schema and check_layout use.
"""

from __future__ import annotations

from seqvit.errors import SeqvitError
from seqvit.parallel import groups
from seqvit.parallel.deepspeed_ulysses import DeepSpeedUlyssesAttention
from seqvit.parallel.lss import LSSAttention
from seqvit.parallel.ring import RingAttention
from seqvit.parallel.sequence import SequenceParallelAttention
from seqvit.parallel.two_level import UlyssesLSSAttention, UlyssesRingAttention
from seqvit.parallel.ulysses import UlyssesAttention

METHODS: dict[str, type[SequenceParallelAttention]] = {
    "ulysses": UlyssesAttention,
    "lss": LSSAttention,
    "deepspeed-ulysses": DeepSpeedUlyssesAttention,
    "ring": RingAttention,
    "ulysses-lss": UlyssesLSSAttention,
    "ulysses-ring": UlyssesRingAttention,
}


def sequence_parallel_attention(
    method: str,
    group,
    num_tokens: int,
    num_heads: int,
    kernel: str = "sdpa",
    uneven: str = "error",
    sp_inner: int = 1,
    inner_group=None,
    outer_group=None,
) -> SequenceParallelAttention:
    """The attention backend for config key parallel.sp_method (groups.SP_METHODS).

    The two-level methods (groups.TWO_LEVEL) take parallel.sp_inner and the layout's inner and
    outer groups (groups.build_groups with sp_inner); without them they build those groups, a
    collective call that every rank of the world must make.
    """
    if method not in METHODS:
        raise SeqvitError(f"config key parallel.sp_method: {method!r} is not one of {groups.SP_METHODS}")
    cls = METHODS[method]
    if method in groups.TWO_LEVEL:
        return cls(group, num_tokens, num_heads, kernel, uneven, sp_inner, inner_group, outer_group)  # type: ignore[call-arg]  # TwoLevelAttention takes the inner and outer groups too
    if sp_inner != 1:  # the message names the fix
        groups.check_layout(num_tokens=num_tokens, num_heads=num_heads, sp=2, method=method, sp_inner=sp_inner)
    return cls(group, num_tokens, num_heads, kernel=kernel, uneven=uneven)
