"""Dropout under sequence and data parallelism: each rank draws its own masks, and a parallel run
equals one process that uses those masks. Real processes, gloo, CPU, fp32.

Ranks hold different token segments (sequence parallel) and samples (data parallel), so their
dropout masks must be independent draws; with one seed on every rank they would be copies
(the contrast checked below). The engine seeds each rank's stream with groups.rank_seed after
building the model from the common seed, as the workers here do.

Exactness: a one-process run cannot draw the masks the ranks drew, so it replays them
(tests/recorders.DropoutTape: every call of torch.nn.functional.dropout, which nn.Dropout and
the math attention kernel make). Loss and every parameter gradient then agree with the
sequence-parallel run to 1e-5 relative, for each method, attention-probability dropout
included (model.attention=math).

Attention dropout inside a fused kernel (sdpa, flash) is drawn by the kernel from the rank's
stream and cannot be replayed. seqvit supports it under sequence parallelism with this
guarantee, checked for sdpa: every rank's kernel draws its own mask for its share of the
attention probabilities (its heads under Ulysses, its query rows under LSS), each probability
is kept with probability 1 - p, and the shares are not copies of each other. The draws differ
from a one-process run's, so such a run matches one process in distribution only.

The engine-level test (workflow) trains with torchrun and replays the masks every rank drew in
seqvit's training in a one-process training: the loss curves agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_runs
from recorders import DropoutTape
from seqvit.data.tokenize import token_weights
from seqvit.model.vit import ForecastViT
from seqvit.parallel import groups
from seqvit.parallel.methods import sequence_parallel_attention
from seqvit.parallel.spawn import spawn
from seqvit.parallel.step_share import StepShare
from seqvit.train.engine import train, weighted_mse
from shard_steps import average_gradients, replica_rows, segment_loss

# ring refuses dropout (a blockwise softmax cannot draw one mask per row; parallel/ring.py), and the
# two-level methods are the one-level exchanges composed, at sp >= 4: the one-level methods at P = 2 here.
METHODS = [m for m in groups.SP_METHODS if m != "ring" and m not in groups.TWO_LEVEL]
SEED, P_DROP, TOL = 7, 0.25, 1e-5
C, PATCH, GRID, DIM, DEPTH, HEADS, BATCH = 2, 2, (8, 16), 16, 2, 4, 4  # 32 tokens


def _model():
    torch.manual_seed(SEED)  # the same initial weights on every rank, as in training
    model = ForecastViT(C, PATCH, GRID, DIM, DEPTH, HEADS, mlp_ratio=2, dropout=P_DROP, attention_backend="math")
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a zero head would zero the loss's dependence on the rest
    return model


def _data():
    generator = torch.Generator().manual_seed(1)
    n = (GRID[0] // PATCH) * (GRID[1] // PATCH)
    x = torch.randn(BATCH, C, n, PATCH * PATCH, generator=generator)
    y = torch.randn(BATCH, C, n, PATCH * PATCH, generator=generator)
    lead = torch.tensor([6.0, 24.0, 12.0, 6.0])
    weights = torch.from_numpy(token_weights(np.linspace(-80, 80, GRID[0]), GRID, PATCH))
    return x, lead, y, weights


def _parallel_step(layout, method):
    """Loss, averaged gradients and taped masks of one training step on this rank's share."""
    model = _model().train()
    n = model.num_tokens
    if layout.sp > 1:
        model.set_attention_backend(sequence_parallel_attention(method, layout.sp_group, n, HEADS, kernel="math"))
    torch.manual_seed(groups.rank_seed(SEED, layout))  # from here this rank's own stream, as training does
    x, lead, y, weights = _data()
    shard = StepShare.of(layout, n, BATCH, weights)
    with DropoutTape() as tape:
        loss = segment_loss(shard, model, *replica_rows(shard, x, lead, y), weighted_mse)
        loss.backward()
    global_loss = average_gradients(shard, model.parameters(), loss)
    return {
        "loss": global_loss,
        "grads": {name: p.grad.numpy().copy() for name, p in model.named_parameters()},
        "masks": [m.numpy().copy() for m in tape.masks],
    }


def _attention_masks(layout, method, seed):
    """This rank's share of the attention-dropout mask of the sdpa kernel, [B, local queries, H, N].

    q = k = 0 makes every probability 1/N and v the identity over keys, so output element
    (query i, head h, component j) is nonzero exactly when the kernel kept probability (i, j).
    """
    n = 32
    attn = sequence_parallel_attention(method, layout.sp_group, n, HEADS, kernel="sdpa")
    local = n // layout.sp
    q = torch.zeros(2, local, HEADS, n)
    v = torch.eye(n)[layout.sp_rank * local : (layout.sp_rank + 1) * local, None, :].expand(2, local, HEADS, n)
    torch.manual_seed(seed)
    return (attn(q, q, v, dropout_p=P_DROP) != 0).numpy()


def _worker(rank, world):
    torch.set_num_threads(1)
    sequence = groups.build_groups(2)
    data = groups.build_groups(1)  # P = 1 x D = 2: each rank half the samples
    own = groups.rank_seed(SEED, sequence)
    return {
        "steps": {method: _parallel_step(sequence, method) for method in METHODS},
        "data_parallel": _parallel_step(data, "ulysses"),
        "attention": {method: _attention_masks(sequence, method, own) for method in METHODS},
        "attention_one_seed": {method: _attention_masks(sequence, method, SEED) for method in METHODS},
    }


@pytest.fixture(scope="module")
def ranks():
    return spawn(_worker, 2, timeout_s=300)


def _one_process(per_rank_masks):
    """Loss and gradients of one process over the whole batch, replaying the ranks' masks."""
    model = _model().train()
    x, lead, y, weights = _data()
    with DropoutTape(replay=[[torch.from_numpy(m) for m in masks] for masks in per_rank_masks]) as tape:
        loss = weighted_mse(model(x, lead), y - x, weights)
        loss.backward()
    assert tape.position == len(per_rank_masks[0])  # every taped mask was used
    return loss.item(), {name: p.grad.numpy() for name, p in model.named_parameters()}


def _check_matches_one_process(results):
    loss, grads = _one_process([r["masks"] for r in results])
    # 2 blocks x (attention probabilities, projection, 2 in the MLP)
    assert len(results[0]["masks"]) == DEPTH * 4
    for r in results:
        assert abs(r["loss"] - loss) <= TOL * abs(loss)
        for name, want in grads.items():
            scale = np.abs(want).max()
            assert scale > 0, f"{name}: no gradient to compare"
            assert np.abs(r["grads"][name] - want).max() <= TOL * scale, name
    # the masks matter: the ranks' masks joined the wrong way round give other gradients
    _, swapped = _one_process([r["masks"] for r in results[::-1]])
    assert max(np.abs(swapped[k] - g).max() / np.abs(g).max() for k, g in grads.items()) > 1000 * TOL


@pytest.mark.parametrize("method", METHODS)
def test_sequence_parallel_step_with_dropout_equals_one_process_with_the_same_masks(ranks, method):
    _check_matches_one_process([r["steps"][method] for r in ranks])


def test_data_parallel_step_with_dropout_equals_one_process_with_the_same_masks(ranks):
    _check_matches_one_process([r["data_parallel"] for r in ranks])


@pytest.mark.parametrize("case", ["steps", "data_parallel"])
def test_ranks_draw_their_own_masks(ranks, case):
    results = [r[case][METHODS[0]] if case == "steps" else r[case] for r in ranks]
    for call, (a, b) in enumerate(zip(results[0]["masks"], results[1]["masks"])):
        assert a.shape == b.shape and not np.array_equal(a, b), f"dropout call {call}: both ranks drew the same mask"
        kept = np.concatenate([a.ravel(), b.ravel()]).mean()
        assert abs(kept - (1 - P_DROP)) < 6 * np.sqrt(P_DROP * (1 - P_DROP) / (2 * a.size)), call


def _halves(method, masks):
    """The two ranks' draws of the attention mask: head groups (Ulysses) or query rows (LSS)."""
    full = np.concatenate(masks, axis=1)  # [B, N queries, H, N keys]
    if method == "lss":
        half = full.shape[1] // 2
        return full[:, :half], full[:, half:]
    half = full.shape[2] // 2
    return full[:, :, :half], full[:, :, half:]


@pytest.mark.parametrize("method", METHODS)
def test_fused_attention_dropout_draws_independent_shares(ranks, method):
    first, second = _halves(method, [r["attention"][method] for r in ranks])
    assert not np.array_equal(first, second)
    full = np.concatenate([first.ravel(), second.ravel()])
    assert abs(full.mean() - (1 - P_DROP)) < 6 * np.sqrt(P_DROP * (1 - P_DROP) / full.size)
    # the contrast: with one seed on every rank the shares are copies of each other
    first, second = _halves(method, [r["attention_one_seed"][method] for r in ranks])
    assert np.array_equal(first, second)


@pytest.mark.workflow  # multi-process training
def test_training_with_dropout_equals_one_process_replaying_the_ranks_masks(tmp_path):
    """seqvit's training (P = 2 Ulysses, and D = 2) with dropout, against one process replaying the masks."""
    cfg = tiny_runs.config(tmp_path / "results", device="cpu", steps=6, val_every=3, checkpoint_every=6)
    cfg = tiny_runs.variant(cfg, model={"dropout": P_DROP, "attention": "math"})
    tokens = tiny_runs.tokens_store(tmp_path, cfg)
    layouts = {"sp2": {"sp": 2, "sp_method": "ulysses"}, "dp2": {"sp": 1}}
    runs = [{"cfg": tiny_runs.variant(cfg, parallel=p), "out": str(tmp_path / name)} for name, p in layouts.items()]
    tiny_runs.torchrun(2, tokens, runs, "dropout", tmp_path / "spec.json")
    for name in layouts:
        taped = [torch.load(tmp_path / name / f"rank{r}-end.pt", weights_only=False)["masks"] for r in (0, 1)]
        assert len(taped[0]) == 6 * cfg["model"]["depth"] * 4  # steps x blocks x dropout calls
        assert all(not torch.equal(a, b) for a, b in zip(*taped)), name
        with DropoutTape(replay=taped) as tape:
            train(cfg, tokens, tmp_path / f"one-{name}", tiny_runs.P, progress=False)
        assert tape.position == len(taped[0])
        want = tiny_runs.losses(tmp_path / f"one-{name}")
        got = tiny_runs.losses(tmp_path / name)
        assert len(want) == 6
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=name)
    # the comparison can tell: the same masks joined the wrong way round give another curve
    with DropoutTape(replay=taped[::-1]):
        train(cfg, tokens, tmp_path / "swapped", tiny_runs.P, progress=False)
    assert np.max(np.abs(tiny_runs.losses(tmp_path / "swapped") - want) / want) > 10 * 1e-5
