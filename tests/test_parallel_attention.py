"""Sequence-parallel attention against one process: real processes, gloo, CPU, fp32.

Each world size is spawned once (spawn_world, cached); its ranks run every case and return
numbers that the parametrized tests below check. World 2 runs P = 2; world 4 runs P = 4 and
P = 2 x D = 2 (data parallel). (P = 1 would compare the model with itself.)

Per case, every rank builds the same tiny ForecastViT, computes the single-process output,
loss and parameter gradients on the whole batch, then the same with its token segment (and
batch share) through the sequence-parallel attention, averaging gradients as training does
(tests/shard_steps.py). Tolerance: 1e-5 relative to each tensor's largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

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

METHODS = ["ulysses", "lss", "deepspeed-ulysses"]
TOL = 1e-5
C, PATCH, DIM, DEPTH = 2, 2, 24, 2
GRID_EVEN = (8, 16)  # 4 x 8 patches: 32 tokens
GRID_ODD = (6, 10)  # 3 x 5 patches: 15 tokens, divisible by neither 2 nor 4


def _cases():
    """(world, case id, P, D, method, batch, heads, grid, uneven, kernel)."""
    cases = []
    for method in METHODS:
        for batch in (1, 3):
            for heads in (4, 3):  # 3: not divisible by 2
                cases.append(
                    (2, f"P2-{method}-b{batch}-h{heads}", 2, 1, method, batch, heads, GRID_EVEN, "error", "sdpa")
                )
            for heads in (4, 6):  # 6: not divisible by 4
                cases.append(
                    (4, f"P4-{method}-b{batch}-h{heads}", 4, 1, method, batch, heads, GRID_EVEN, "error", "sdpa")
                )
        for world, p in ((2, 2), (4, 4)):
            cases.append((world, f"P{p}-{method}-b3-h4-pad", p, 1, method, 3, 4, GRID_ODD, "pad", "sdpa"))
        cases.append((4, f"P2xD2-{method}-b2-h4", 2, 2, method, 2, 4, GRID_EVEN, "error", "sdpa"))
    cases.append((2, "P2-ulysses-b3-h4-math", 2, 1, "ulysses", 3, 4, GRID_EVEN, "error", "math"))
    cases.append((2, "P2-lss-b3-h3-math", 2, 1, "lss", 3, 3, GRID_EVEN, "error", "math"))
    return cases


CASES = _cases()


def _relative(a, b) -> float:
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / max(scale, 1e-30)


def _model(heads, grid, kernel):
    torch.manual_seed(0)
    model = ForecastViT(
        C, PATCH, grid, embed_dim=DIM, depth=DEPTH, num_heads=heads, mlp_ratio=2.0, attention_backend=kernel
    )
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would zero every other gradient
    return model


def _run_case(case, layouts):
    _, name, p, d, method, batch, heads, grid, uneven, kernel = case
    layout = layouts[(p, d)]
    model = _model(heads, grid, kernel)
    n = model.num_tokens
    torch.manual_seed(1)
    x = torch.randn(batch, C, n, PATCH * PATCH)
    y = torch.randn(batch, C, n, PATCH * PATCH)
    lead = torch.tensor([6.0, 24.0, 12.0, 6.0][:batch])
    lat = np.linspace(-80, 80, grid[0])
    weights = torch.from_numpy(token_weights(lat, grid, PATCH))

    reference = model(x, lead)
    ref_loss = weighted_mse(reference, y - x, weights)
    ref_loss.backward()
    ref_grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    try:
        backend = sequence_parallel_attention(method, layout.sp_group, n, heads, kernel=kernel, uneven=uneven)
    except SeqvitError as exc:
        return {"error": str(exc)}
    model.set_attention_backend(backend)
    shard = StepShare.of(layout, n, batch, weights)
    xs, leads, ys = replica_rows(shard, x, lead, y)
    trace = CommStats()
    with trace_collectives(trace):
        out = model(*segment(shard, xs), leads, token_offset=shard.start)
        loss = segment_loss(
            shard, model, xs, leads, ys, weighted_mse
        )  # (a second forward: the segment loss training scales the same way)
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
        "segment": (shard.start, shard.stop),
        "forward_calls": trace.calls(phase="forward"),
        "backward_calls": trace.calls(phase="backward"),
    }


def _round_trip(world):
    """The all-to-all and all-gather are exact data movements (checked bit for bit)."""
    from seqvit.parallel.lss import gather_segments
    from seqvit.parallel.ulysses import gather_heads, scatter_heads

    rank = dist.get_rank()
    torch.manual_seed(3)
    full = torch.randn(3, 4 * world, 2 * world, 5)  # [B, N, H, d]
    seg = full.shape[1] // world
    mine = full[:, rank * seg : (rank + 1) * seg]
    heads = full.shape[2] // world
    q_all, k_all = scatter_heads(mine, mine * 2, group=None, tag="roundtrip")
    back = gather_heads(q_all, group=None, tag="roundtrip")
    gathered = gather_segments(mine.contiguous(), None, "roundtrip")
    return {
        "scatter": torch.equal(q_all, full[:, :, rank * heads : (rank + 1) * heads])
        and torch.equal(k_all, 2 * full[:, :, rank * heads : (rank + 1) * heads]),
        "round_trip": torch.equal(back, mine),
        "gather": torch.equal(gathered, full.reshape(3, world, seg, *full.shape[2:]).transpose(0, 1)),
    }


def _accounting(p, group):
    """Collectives and bytes of one attention layer, counted by the method and by a tracer."""
    out = {}
    batch, n, heads, dim = 2, 8 * p, 4, 6
    torch.manual_seed(4)
    for method in METHODS:
        attn = sequence_parallel_attention(method, group, n, heads)
        q, k, v = (torch.randn(batch, n // p, heads, dim, requires_grad=True) for _ in range(3))
        STATS.reset()
        trace = CommStats()
        with trace_collectives(trace):
            result = attn(q, k, v)
            result.sum().backward()
        out[method] = {
            "own": {ph: (STATS.calls(method, ph), STATS.bytes(method, ph)) for ph in ("forward", "backward")},
            "trace": {ph: (trace.calls(phase=ph), trace.bytes(phase=ph)) for ph in ("forward", "backward")},
            "expected": expected(method, batch, n, heads * dim, p, 4),
        }
    return out


def _worker(rank, world):
    torch.set_num_threads(1)
    layouts = {}
    for p in (2, 4):
        if p <= world:
            layouts[(p, world // p)] = groups.build_groups(p)
    results = {"cases": {}, "round_trip": _round_trip(world)}
    for case in CASES:
        if case[0] == world:
            results["cases"][case[1]] = _run_case(case, layouts)
    results["accounting"] = {p: _accounting(p, layouts[(p, 1)].sp_group) for p in (2, 4) if (p, 1) in layouts}
    return results


_SPAWNED: dict = {}


def spawn_world(world):
    if world not in _SPAWNED:
        _SPAWNED[world] = spawn(_worker, world, timeout_s=300)
    return _SPAWNED[world]


@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_matches_single_process(case):
    world, name, p, d, method, batch, heads, grid, uneven, kernel = case
    ranks = [r["cases"][name] for r in spawn_world(world)]
    if method in groups.HEAD_SCATTERING and heads % p:
        for result in ranks:  # rejected up front, with the fix
            assert "sp must divide the head count" in result.get("error", ""), result
            assert "parallel.sp_method=lss" in result["error"]
        return
    for rank, result in enumerate(ranks):
        assert "error" not in result, result
        assert result["output"] < TOL, (rank, result)
        assert result["loss"] < TOL, (rank, result)
        assert result["grad"] < TOL, (rank, result)
        assert result["n_grads"] > 20
    segments = [r["segment"] for r in ranks[:p]]
    n = (grid[0] // PATCH) * (grid[1] // PATCH)
    assert segments[0][0] == 0 and segments[-1][1] == n  # the segments tile the sequence
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:]))
    # collectives per layer, as comm_stats documents (two forward passes in the case: model output and loss)
    per_layer = {"ulysses": (2, 2), "deepspeed-ulysses": (4, 4), "lss": (1, 1)}[method]
    if p > 1:
        assert ranks[0]["forward_calls"] == 2 * DEPTH * per_layer[0]
        assert ranks[0]["backward_calls"] == DEPTH * per_layer[1]


def test_uneven_sequence_is_an_error_with_the_fix():
    with pytest.raises(SeqvitError, match=r"15 tokens .* does not split into 2 equal segments.*parallel.uneven=pad"):
        groups.check_layout(num_tokens=15, num_heads=4, sp=2, method="lss")
    groups.check_layout(num_tokens=15, num_heads=4, sp=2, method="lss", uneven="pad")


@pytest.mark.parametrize("world", [2, 4])
def test_exchanges_are_exact_data_movements(world):
    for result in spawn_world(world):
        assert result["round_trip"] == {"scatter": True, "round_trip": True, "gather": True}


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("method", METHODS)
def test_communication_accounting_matches_formulas(p, method):
    for result in spawn_world(p):
        counts = result["accounting"][p][method]
        want = counts["expected"]
        assert counts["trace"] == want  # what torch.distributed saw
        if method != "deepspeed-ulysses":  # DeepSpeed does not count; the tracer does
            assert counts["own"] == want
    # the headline formulas, per rank and layer in the forward pass (B=2, N=8P, h=24, fp32)
    b, n, h, e = 2, 8 * p, 24, 4
    if method == "lss":
        assert want["forward"][1] == 2 * b * n * h * e * (p - 1) // p
    else:
        assert want["forward"][1] == 4 * b * n * h * e // p * (p - 1) // p
