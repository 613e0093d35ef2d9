"""The position table built per rank, and LSS gathering heads in chunks.

Position embeddings are checked against sin-cos values evaluated here in numpy; LSS against
single-process attention on the whole sequence, gradients included, in real processes (gloo).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from seqvit.errors import SeqvitError
from seqvit.model.vit import ForecastViT, sincos_position_embedding
from seqvit.parallel.comm_stats import STATS
from seqvit.parallel.lss import LSSAttention, head_chunks
from seqvit.parallel.spawn import spawn


def _expected_position(row: int, col: int, dim: int) -> np.ndarray:
    """MAE/ClimaX 2-D sin-cos: [sin(r w), cos(r w), sin(c w), cos(c w)], w_k = 10000^(-k / (dim/4))."""
    quarter = dim // 4
    w = np.array([10000.0 ** (-k / quarter) for k in range(quarter)])
    return np.concatenate([np.sin(row * w), np.cos(row * w), np.sin(col * w), np.cos(col * w)])


@pytest.mark.parametrize("rows, cols, dim", [(4, 8, 16), (32, 64, 128), (720, 1440, 1024)])
def test_position_rows_match_the_formula(rows, cols, dim):
    rng = np.random.default_rng(0)
    tokens = rng.choice(rows * cols, size=6, replace=False)
    start = int(tokens.min())
    block = sincos_position_embedding(rows, cols, dim, start, int(tokens.max()) + 1)
    assert block.dtype == torch.float32 and block.shape == (int(tokens.max()) + 1 - start, dim)
    for token in tokens:
        want = _expected_position(token // cols, token % cols, dim).astype(np.float32)
        np.testing.assert_allclose(block[token - start].numpy(), want, rtol=0, atol=2e-6)


def test_a_segment_is_the_rows_of_the_whole_table():
    whole = sincos_position_embedding(6, 10, 32)
    assert torch.equal(sincos_position_embedding(6, 10, 32, 17, 43), whole[17:43])
    with pytest.raises(SeqvitError, match=r"positions \[50, 61\) are outside the 6 x 10 patches"):
        sincos_position_embedding(6, 10, 32, 50, 61)


def test_the_model_keeps_per_axis_tables_not_the_whole_table():
    model = ForecastViT(2, 1, (180, 360), embed_dim=64, depth=1, num_heads=4)
    buffers = dict(model.named_buffers())
    assert {k: tuple(v.shape) for k, v in buffers.items()} == {"position_rows": (180, 32), "position_cols": (360, 32)}
    assert not any("position" in k for k in model.state_dict())  # not persistent: never in checkpoints
    # the embedding of a segment uses the rows of the whole table at its tokens
    tokens = torch.zeros(1, 2, 50, 1)
    lead = torch.tensor([6.0])
    with torch.no_grad():
        embedded = model.embed(tokens, lead, token_offset=1000)
        lead_part = model.lead_embedding(lead)
        base = model.aggregation(model.patch_embedding(tokens) + model.channel_embedding[None, :, None, :])
    torch.testing.assert_close(
        embedded - base - lead_part, sincos_position_embedding(180, 360, 64, 1000, 1050)[None], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    "heads, sp, chunks", [(16, 64, 16), (16, 8, 2), (16, 4, 1), (4, 2, 1), (6, 8, 2), (3, 64, 3), (5, 12, 3)]
)
def test_head_chunks_gather_about_four_segments(heads, sp, chunks):
    assert head_chunks(heads, sp) == chunks


def _lss_worker(rank, world):
    torch.manual_seed(0)
    batch, tokens, heads, dim = 2, 8 * world, 6, 4
    full = [torch.randn(batch, tokens, heads, dim, dtype=torch.float64) for _ in range(3)]
    upstream = torch.randn(batch, tokens, heads, dim, dtype=torch.float64)
    seg = slice(rank * tokens // world, (rank + 1) * tokens // world)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        # the reference: one process, the whole sequence, in float64
        ref = [t.clone().requires_grad_() for t in full]
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in ref)).transpose(1, 2)
        out.backward(upstream)
        # one process in `dtype`: the rounding the kernel alone brings
        single = [t.to(dtype).requires_grad_() for t in full]
        out_single = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in single)).transpose(1, 2)
        out_single.backward(upstream.to(dtype))
        for chunks in (1, 2, 3, 6, None):
            mine = [t[:, seg].to(dtype).requires_grad_() for t in full]
            attn = LSSAttention(None, tokens, heads, head_chunks=chunks)
            STATS.reset()
            got = attn(*mine)
            got.backward(upstream[:, seg].to(dtype))
            calls = STATS.calls("lss", "forward", "all_gather"), STATS.calls("lss", "backward", "reduce_scatter")

            def error(a, b):
                return float((a.double() - b).abs().max() / b.abs().max())

            results[(str(dtype), chunks)] = {
                "calls": calls,
                "output": error(got.detach(), out.detach()[:, seg]),
                "grads": max(error(m.grad, r.grad[:, seg]) for m, r in zip(mine, ref)),
                # dK and dV: the ones the reduce-scatter sums
                "kv_grads": max(error(m.grad, r.grad[:, seg]) for m, r in zip(mine[1:], ref[1:])),
                "single_kv_grads": max(error(s.grad[:, seg], r.grad[:, seg]) for s, r in zip(single[1:], ref[1:])),
            }
    dist.barrier()
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=["P2", "P4"])
def lss_results(request):
    return request.param, spawn(_lss_worker, request.param, timeout_s=300)


def test_lss_in_chunks_matches_one_process_with_gradients(lss_results):
    world, ranks = lss_results
    for rank, results in enumerate(ranks):
        for chunks in (1, 2, 3, 6, None):
            fp32 = results[(str(torch.float32), chunks)]
            assert fp32["output"] < 1e-5 and fp32["grads"] < 1e-5, (rank, chunks, fp32)
            # one all-gather and one reduce-scatter per chunk; the default for 6 heads on <= 4 ranks is one
            want = chunks or 1
            assert fp32["calls"] == (want, want), (rank, chunks, fp32["calls"])


def test_lss_sums_bf16_gradients_without_adding_to_the_kernels_rounding(lss_results):
    world, ranks = lss_results
    for rank, results in enumerate(ranks):
        for chunks in (1, 3, None):
            bf16 = results[(str(torch.bfloat16), chunks)]
            # bf16 carries 8 bits: the kernel alone errs by ~0.4%; summing the P partial dK, dV in fp32 and
            # rounding once may at most double that (it rounds the partials, then the sum)
            assert bf16["kv_grads"] < 2 * bf16["single_kv_grads"] + 1e-3, (rank, chunks, bf16)
            assert bf16["output"] < 2e-2, (rank, chunks, bf16)
