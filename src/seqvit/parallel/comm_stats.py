"""Communication accounting: collectives and bytes each sequence-parallel method sends.

Every collective our methods issue is recorded in STATS as (method, collective, phase) ->
[calls, bytes sent to other ranks]. "Bytes sent" is what leaves this rank under the usual
algorithms (ring all-gather / reduce-scatter, pairwise all-to-all), for a group of P ranks and
a local buffer of n bytes:

  all_to_all_single   n (P-1)/P      (the chunk addressed to itself stays)
  all_gather          n (P-1)        (n = this rank's piece, delivered to P-1 others)
  reduce_scatter      n (P-1)/P      (n = the full buffer of P pieces)
  all_reduce          2 n (P-1)/P
  send                n              (point to point: the whole buffer goes to one other rank)

trace_collectives() additionally intercepts torch.distributed calls made by anyone (DeepSpeed
included), so tests can check a method's own accounting and third-party code alike.

Per attention layer and rank, batch B, global sequence N, hidden size h = heads x head_dim,
element size e (the formulas the tests check):

  ulysses            forward 2 all-to-all (fused QKV, output), 4 B N h e (P-1)/P^2; backward the same
  deepspeed-ulysses  forward 4 all-to-all (Q, K, V, output), same bytes; backward the same
  lss                forward 1 all-gather (fused KV), 2 B N h e (P-1)/P;
                     backward 1 reduce-scatter (fused dK dV), the same bytes
  ring               forward P-1 sends of the fused KV block, 2 B N h e (P-1)/P;
                     backward P-1 sends of KV and P-1 of dK dV in fp32, 2 B N h (e + 4) (P-1)/P
                     (twice the forward bytes in fp32)
  ulysses-lss,       the sum of the two levels at their own degrees: ulysses at I = sp_inner on
  ulysses-ring       the rank's own tokens (N/P each, all h), then lss or ring at P/I on blocks
                     of N I/P tokens with hidden h/I
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
import torch.distributed as dist


def sent_bytes(collective: str, nbytes: int, group_size: int) -> int:
    """Bytes this rank sends to others for one collective on a local buffer of nbytes."""
    p = group_size
    if p <= 1:
        return 0
    if collective == "all_to_all_single":
        return nbytes * (p - 1) // p
    if collective == "all_gather":
        return nbytes * (p - 1)
    if collective == "reduce_scatter":
        return nbytes * (p - 1) // p
    if collective == "all_reduce":
        return 2 * nbytes * (p - 1) // p
    if collective == "send":
        return nbytes
    raise ValueError(f"unknown collective {collective!r}")


def current_phase() -> str:
    """'backward' while autograd runs a backward pass, else 'forward'."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return "backward" if task is not None and task() != -1 else "forward"


class CommStats:
    """Counters keyed by (method, collective, phase): [calls, bytes sent]."""

    def __init__(self):
        self.counts: dict = defaultdict(lambda: [0, 0])

    def add(self, method: str, collective: str, nbytes: int, group_size: int, phase: str | None = None) -> None:
        entry = self.counts[(method, collective, phase or current_phase())]
        entry[0] += 1
        entry[1] += sent_bytes(collective, nbytes, group_size)

    def reset(self) -> None:
        self.counts.clear()

    def calls(self, method: str | None = None, phase: str | None = None, collective: str | None = None) -> int:
        return sum(v[0] for k, v in self._select(method, phase, collective))

    def bytes(self, method: str | None = None, phase: str | None = None, collective: str | None = None) -> int:
        return sum(v[1] for k, v in self._select(method, phase, collective))

    def _select(self, method, phase, collective):
        for key, value in self.counts.items():
            if (
                (method is None or key[0] == method)
                and (phase is None or key[2] == phase)
                and (collective is None or key[1] == collective)
            ):
                yield key, value

    def table(self) -> list[dict]:
        return [
            {"method": m, "collective": c, "phase": p, "calls": v[0], "bytes": v[1]}
            for (m, c, p), v in sorted(self.counts.items())
        ]


STATS = CommStats()  # what our own methods record (always on: two integer additions per collective)


def expected(
    method: str, batch: int, num_tokens: int, hidden: int, sp: int, element_size: int = 4, sp_inner: int = 1
) -> dict:
    """{phase: (collectives, bytes sent)} per layer and rank, from the formulas above."""
    if sp <= 1:
        return {"forward": (0, 0), "backward": (0, 0)}
    b, n, h, p, e = batch, num_tokens, hidden, sp, element_size
    if method in ("ulysses-lss", "ulysses-ring"):
        outer = p // sp_inner
        # inner: Ulysses over sp_inner ranks holding N/P tokens each, i.e. a sequence of N/outer tokens
        inner = expected("ulysses", b, n // outer, h, sp_inner, e)
        rest = expected(method.split("-")[1], b, n, h // sp_inner, outer, e)
        return {ph: (inner[ph][0] + rest[ph][0], inner[ph][1] + rest[ph][1]) for ph in ("forward", "backward")}
    if method == "ring":
        block = 2 * b * (n // p) * h  # elements of one fused K/V block
        return {"forward": (p - 1, block * e * (p - 1)), "backward": (2 * (p - 1), block * (e + 4) * (p - 1))}
    if method in ("ulysses", "deepspeed-ulysses"):
        calls = 2 if method == "ulysses" else 4
        # per rank: (3 + 1) buffers of B (N/P) h elements, (P-1)/P of each leaves the rank
        nbytes = 4 * b * (n // p) * h * e * (p - 1) // p
        return {"forward": (calls, nbytes), "backward": (calls, nbytes)}
    if method == "lss":
        nbytes = 2 * b * (n // p) * h * e * (p - 1)
        return {"forward": (1, nbytes), "backward": (1, nbytes)}
    raise ValueError(f"unknown method {method!r}")


_TRACED = {
    "all_to_all_single": ("all_to_all_single", 1),  # (collective, index of the input tensor)
    "all_gather_single": ("all_gather", 1),
    "all_gather_into_tensor": ("all_gather", 1),
    "reduce_scatter_single": ("reduce_scatter", 1),
    "reduce_scatter_tensor": ("reduce_scatter", 1),
    "all_reduce": ("all_reduce", 0),
}


@contextlib.contextmanager
def trace_collectives(stats: CommStats, label: str = "trace"):
    """Record every torch.distributed collective listed in _TRACED called inside the block."""
    originals = {}

    def wrap(name, collective, index, original):
        def traced(*args, **kwargs):
            if len(args) > index:
                tensor = args[index]
            else:
                tensor = next(kwargs[k] for k in ("input", "input_tensor", "tensor") if k in kwargs)
            group = kwargs.get("group")
            stats.add(label, collective, tensor.numel() * tensor.element_size(), dist.get_world_size(group))
            return original(*args, **kwargs)

        return traced

    def wrap_batch(original):
        def traced(ops, *args, **kwargs):
            for op in ops:  # P2POp: the sends of the batch (receives send nothing)
                if getattr(op.op, "__name__", "") == "isend":
                    size = dist.get_world_size(op.group)
                    stats.add(label, "send", op.tensor.numel() * op.tensor.element_size(), size)
            return original(ops, *args, **kwargs)

        return traced

    for name, (collective, index) in _TRACED.items():
        if hasattr(dist, name):
            originals[name] = getattr(dist, name)
            setattr(dist, name, wrap(name, collective, index, originals[name]))
    originals["batch_isend_irecv"] = dist.batch_isend_irecv
    dist.batch_isend_irecv = wrap_batch(originals["batch_isend_irecv"])
    try:
        yield stats
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
