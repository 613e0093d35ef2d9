"""Ring attention and the two-level methods against one process: real processes, gloo, CPU, fp32.

Each world size is spawned once (spawn_world, cached) and its ranks run every case of that world.
World 2: ring at P = 2. World 4: ring at P = 4 and P = 2 x D = 2, ulysses-lss and ulysses-ring at
(inner, outer) = (2, 2), and the byte accounting. World 8 (workflow: eight processes on a small
machine): ring at P = 8, both two-level methods at (2, 4) with 6 heads (which the outer degree 4
does not divide) and at (4, 2), and ulysses-ring (2, 2) x D = 2.

Per case every rank computes the one-process output, loss and parameter gradients of a tiny
ForecastViT on the whole batch, then the same on its token segment (and batch share) through the
method, averaging gradients as training does (tests/shard_steps.py). Tolerance: 1e-5 relative to
each tensor's largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqvit.data.tokenize import token_weights
from seqvit.errors import SeqvitError
from seqvit.model.vit import ForecastViT
from seqvit.parallel import groups
from seqvit.parallel.comm_stats import STATS, CommStats, expected, trace_collectives
from seqvit.parallel.methods import sequence_parallel_attention
from seqvit.parallel.spawn import spawn
from seqvit.parallel.step_share import StepShare
from seqvit.train.engine import weighted_mse
from shard_steps import average_gradients, replica_rows, segment, segment_loss

TOL = 1e-5
C, PATCH, DIM, DEPTH = 2, 2, 24, 2
GRID_EVEN = (8, 16)  # 4 x 8 patches: 32 tokens
GRID_ODD = (6, 10)  # 3 x 5 patches: 15 tokens, divisible by none of 2, 4, 8

# (world, case id, P, D, sp_inner, method, batch, heads, grid, uneven)
CASES = [
    (2, "P2-ring-b1-h3", 2, 1, 1, "ring", 1, 3, GRID_EVEN, "error"),
    (2, "P2-ring-b3-h4-pad", 2, 1, 1, "ring", 3, 4, GRID_ODD, "pad"),
    (4, "P4-ring-b3-h3", 4, 1, 1, "ring", 3, 3, GRID_EVEN, "error"),
    (4, "P4-ring-b1-h4-pad", 4, 1, 1, "ring", 1, 4, GRID_ODD, "pad"),
    (4, "P2xD2-ring-b2-h3", 2, 2, 1, "ring", 2, 3, GRID_EVEN, "error"),
    (4, "I2O2-ulysses-lss-b1-h2", 4, 1, 2, "ulysses-lss", 1, 2, GRID_EVEN, "error"),
    (4, "I2O2-ulysses-lss-b3-h4-pad", 4, 1, 2, "ulysses-lss", 3, 4, GRID_ODD, "pad"),
    (4, "I2O2-ulysses-ring-b3-h2", 4, 1, 2, "ulysses-ring", 3, 2, GRID_EVEN, "error"),
    (4, "I2O2-ulysses-ring-b1-h4-pad", 4, 1, 2, "ulysses-ring", 1, 4, GRID_ODD, "pad"),
    (8, "P8-ring-b3-h3-pad", 8, 1, 1, "ring", 3, 3, GRID_ODD, "pad"),
    (8, "I2O4-ulysses-lss-b3-h6", 8, 1, 2, "ulysses-lss", 3, 6, GRID_EVEN, "error"),
    (8, "I2O4-ulysses-ring-b1-h6-pad", 8, 1, 2, "ulysses-ring", 1, 6, GRID_ODD, "pad"),
    (8, "I4O2-ulysses-lss-b1-h4-pad", 8, 1, 4, "ulysses-lss", 1, 4, GRID_ODD, "pad"),
    (8, "I4O2-ulysses-ring-b3-h4", 8, 1, 4, "ulysses-ring", 3, 4, GRID_EVEN, "error"),
    (8, "I2O2xD2-ulysses-ring-b2-h2", 4, 2, 2, "ulysses-ring", 2, 2, GRID_EVEN, "error"),
]
ACCOUNTING = [("ring", 4, 1), ("ring", 2, 1), ("ulysses-lss", 4, 2), ("ulysses-ring", 4, 2)]  # (method, P, I)


def _relative(a, b) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def _model(heads, grid):
    torch.manual_seed(0)
    model = ForecastViT(C, PATCH, grid, embed_dim=DIM, depth=DEPTH, num_heads=heads, mlp_ratio=2.0)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would zero every other gradient
    return model


def _run_case(case, layouts):
    _, name, p, d, inner, method, batch, heads, grid, uneven = case
    layout = layouts[(p, inner)]
    model = _model(heads, grid)
    n = model.num_tokens
    torch.manual_seed(1)
    x = torch.randn(batch, C, n, PATCH * PATCH)
    y = torch.randn(batch, C, n, PATCH * PATCH)
    lead = torch.tensor([6.0, 24.0, 12.0][:batch])
    weights = torch.from_numpy(token_weights(np.linspace(-80, 80, grid[0]), grid, PATCH))

    reference = model(x, lead)
    ref_loss = weighted_mse(reference, y - x, weights)
    ref_loss.backward()
    ref_grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    backend = sequence_parallel_attention(
        method, layout.sp_group, n, heads, "sdpa", uneven, inner, layout.inner_group, layout.outer_group
    )
    model.set_attention_backend(backend)
    shard = StepShare.of(layout, n, batch, weights)
    xs, leads, ys = replica_rows(shard, x, lead, y)
    out = model(*segment(shard, xs), leads, token_offset=shard.start)
    loss = segment_loss(shard, model, xs, leads, ys, weighted_mse)
    loss.backward()
    global_loss = average_gradients(shard, model.parameters(), loss)

    ref_rows = replica_rows(shard, reference)[0][:, :, shard.start : shard.stop]
    grad_errors = {k: _relative(v.grad, ref_grads[k]) for k, v in model.named_parameters()}
    worst = max(grad_errors, key=grad_errors.get)
    return {
        "output": _relative(out.detach(), ref_rows.detach()),
        "loss": abs(global_loss - ref_loss.item()) / abs(ref_loss.item()),
        "grad": grad_errors[worst],
        "worst": worst,
        "n_grads": len(grad_errors),
    }


def _accounting(method, p, inner, layout):
    """Collectives and bytes of one attention layer: the method's own count, a tracer's, the formulas."""
    batch, n, heads, dim = 2, 8 * p, 4, 6
    torch.manual_seed(4)
    attn = sequence_parallel_attention(
        method, layout.sp_group, n, heads, "sdpa", "error", inner, layout.inner_group, layout.outer_group
    )
    q, k, v = (torch.randn(batch, n // p, heads, dim, requires_grad=True) for _ in range(3))
    STATS.reset()
    trace = CommStats()
    with trace_collectives(trace):
        attn(q, k, v).sum().backward()
    phases = ("forward", "backward")
    return {
        "own": {ph: (STATS.calls(method, ph), STATS.bytes(method, ph)) for ph in phases},
        "trace": {ph: (trace.calls(phase=ph), trace.bytes(phase=ph)) for ph in phases},
        "expected": expected(method, batch, n, heads * dim, p, 4, inner),
    }


def _dropout_refused(layout):
    attn = sequence_parallel_attention("ring", layout.sp_group, 8, 2)
    q = torch.zeros(1, 8 // layout.sp, 2, 4)
    try:
        attn(q, q, q, dropout_p=0.1)
    except SeqvitError as exc:
        return str(exc)
    return None


def _worker(rank, world):
    torch.set_num_threads(1)
    wanted = sorted({(c[2], c[4]) for c in CASES if c[0] == world})
    if world == 4:
        wanted = sorted(set(wanted) | {(p, i) for _, p, i in ACCOUNTING})
    layouts = {(p, inner): groups.build_groups(p, sp_inner=inner) for p, inner in wanted}
    results = {"cases": {case[1]: _run_case(case, layouts) for case in CASES if case[0] == world}}
    if world == 4:
        results["accounting"] = {(m, p, i): _accounting(m, p, i, layouts[(p, i)]) for m, p, i in ACCOUNTING}
        results["dropout"] = _dropout_refused(layouts[(4, 1)])
        results["groups"] = (
            groups.dist.get_process_group_ranks(layouts[(4, 2)].inner_group),
            groups.dist.get_process_group_ranks(layouts[(4, 2)].outer_group),
        )
    return results


_SPAWNED: dict = {}


def spawn_world(world):
    if world not in _SPAWNED:
        _SPAWNED[world] = spawn(_worker, world, timeout_s=600)
    return _SPAWNED[world]


def _params(world):
    marks = [pytest.mark.workflow] if world == 8 else []
    return [pytest.param(c, id=c[1], marks=marks) for c in CASES if c[0] == world]


@pytest.mark.parametrize("case", [p for w in (2, 4, 8) for p in _params(w)])
def test_matches_single_process(case):
    world, name = case[:2]
    for rank, result in enumerate(r["cases"][name] for r in spawn_world(world)):
        assert result["output"] < TOL, (rank, result)
        assert result["loss"] < TOL, (rank, result)
        assert result["grad"] < TOL, (rank, result)
        assert result["n_grads"] > 20


@pytest.mark.parametrize("key", ACCOUNTING, ids=[f"{m}-P{p}-I{i}" for m, p, i in ACCOUNTING])
def test_communication_accounting_matches_hand_worked_bytes(key):
    method, p, inner = key
    # per rank and layer, B = 2, N = 8P (8 tokens per rank), 4 heads x 6 = hidden 24, fp32, worked by hand:
    # one fused K/V block of a rank is 2 x 2 x 8 x 24 x 4 = 3072 bytes; an all-to-all buffer of one
    # tensor (q, k, v or the output) 2 x 8 x 24 x 4 = 1536 bytes.
    hand = {
        # P-1 = 3 sends of the block; backward the block and its fp32 dK/dV, 3 each
        ("ring", 4, 1): {"forward": (3, 3 * 3072), "backward": (6, 6 * 3072)},
        ("ring", 2, 1): {"forward": (1, 3072), "backward": (2, 2 * 3072)},
        # inner Ulysses at 2: (q, k, v fused) + output, half of each leaves: 4 x 768 = 3072, two all-to-alls;
        # outer LSS at 2 on 16-token blocks of 2 heads (hidden 12): K and V, 2 x 2 x 16 x 12 x 4 = 3072 bytes
        # to the one other rank, an all-gather; backward a reduce-scatter of the gathered 6144, half leaves
        ("ulysses-lss", 4, 2): {"forward": (3, 3072 + 3072), "backward": (3, 3072 + 3072)},
        # outer ring at 2 on the same blocks: 1 send of 3072 forward, 2 backward
        ("ulysses-ring", 4, 2): {"forward": (3, 3072 + 3072), "backward": (4, 3072 + 2 * 3072)},
    }[key]
    for result in spawn_world(4):
        counts = result["accounting"][key]
        assert counts["trace"] == hand  # what torch.distributed saw
        assert counts["own"] == hand
        assert counts["expected"] == hand


def test_two_level_groups_are_adjacent_inner_and_strided_outer():
    assert groups.two_level_ranks(8, 4, 2) == (
        [[0, 1], [2, 3], [4, 5], [6, 7]],
        [[0, 2], [1, 3], [4, 6], [5, 7]],
    )
    ranks = spawn_world(4)
    assert [r["groups"] for r in ranks] == [([0, 1], [0, 2]), ([0, 1], [1, 3]), ([2, 3], [0, 2]), ([2, 3], [1, 3])]


def test_ring_refuses_attention_dropout_with_the_fix():
    for result in spawn_world(4):
        assert result["dropout"] and "model.dropout" in result["dropout"] and "ulysses" in result["dropout"]
