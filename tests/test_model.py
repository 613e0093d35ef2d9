import pytest
import torch

from seqvit.data.tokenize import token_weights
from seqvit.errors import SeqvitError
from seqvit.model.attention import attention
from seqvit.model.vit import ForecastViT, build_model
from seqvit.train.engine import weighted_mse

GRID, P, C = (8, 16), 4, 3  # 2 x 4 patch grid: 8 tokens of 16 pixels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread (and do not fight other jobs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(**overrides):
    cfg = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2, "dropout": 0.0, **overrides}
    return build_model(cfg, C, P, GRID)


def test_output_shape_and_starts_from_persistence():
    torch.manual_seed(0)
    model = tiny_model()
    x = torch.randn(5, C, 8, P * P)
    out = model(x, torch.tensor([6.0, 24, 6, 24, 12]))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero head: zero tendency before training


def test_bad_inputs_raise():
    model = tiny_model()
    with pytest.raises(SeqvitError, match="expects tokens"):
        model(torch.randn(1, C + 1, 8, P * P), torch.tensor([6.0]))
    with pytest.raises(SeqvitError, match="outside"):
        model(torch.randn(1, C, 4, P * P), torch.tensor([6.0]), token_offset=6)
    with pytest.raises(SeqvitError, match="divisible"):
        build_model({"embed_dim": 30, "num_heads": 4}, C, P, GRID)


def test_backends_agree():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, 4, 16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"), atol=1e-5, rtol=1e-5)
    with pytest.raises(SeqvitError, match="unknown attention backend"):
        attention(q, k, v, "flash9")

    model = tiny_model()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    x, lead = torch.randn(2, C, 8, P * P), torch.tensor([6.0, 24.0])
    with torch.no_grad():
        fused = model(x, lead)
        model.set_attention_backend("math")
        reference = model(x, lead)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_channel_aggregation_equals_plain_cross_attention():
    """The shortcut (no per-channel keys) computes textbook multi-head cross-attention."""
    torch.manual_seed(0)
    aggregation = tiny_model().aggregation
    torch.nn.init.normal_(aggregation.value.bias)
    x = torch.randn(2, C, 8, 32)  # [B, C, L, D]
    heads, head_dim = 4, 8
    keys = (x @ aggregation.key.weight.T).reshape(2, C, 8, heads, head_dim)
    values = (x @ aggregation.value.weight.T + aggregation.value.bias).reshape(2, C, 8, heads, head_dim)
    scores = torch.einsum("hk,bclhk->blhc", aggregation.query, keys) / head_dim**0.5
    mixed = torch.einsum("blhc,bclhk->blhk", scores.softmax(-1), values).reshape(2, 8, 32)
    torch.testing.assert_close(aggregation(x), aggregation.out(mixed), atol=1e-5, rtol=1e-5)


def test_attention_accepts_a_callable_backend():
    calls = []

    def spy(q, k, v, dropout_p=0.0):
        calls.append(q.shape)
        return attention(q, k, v, "math")

    model = tiny_model(depth=3)
    model.set_attention_backend(spy)
    model(torch.randn(2, C, 8, P * P), torch.tensor([6.0, 6.0]))
    assert calls == [torch.Size([2, 8, 4, 8])] * 3  # one call site per block, [batch, seq, heads, head_dim]


def test_segment_forward_matches_slice_of_full_forward():
    """A rank holding a latitude stripe computes the same per-token embedding as the full model."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    x, lead = torch.randn(3, C, 8, P * P), torch.tensor([6.0, 24.0, 12.0])
    with torch.no_grad():
        full = model.embed(x, lead)
        for start, stop in ((0, 4), (4, 8), (2, 6)):  # patch rows 0 and 1, and a ragged segment
            segment = model.embed(x[:, :, start:stop], lead, token_offset=start)
            torch.testing.assert_close(segment, full[:, start:stop], atol=1e-6, rtol=1e-6)
        # without the offset the position embedding would be wrong: the seam matters
        assert not torch.allclose(model.embed(x[:, :, 4:8], lead), full[:, 4:8], atol=1e-3)
        # the blocks mix tokens only through attention: a single-token sequence is per-token all the way
        single = model(x[:, :, 5:6], lead, token_offset=5)
        assert single.shape == (3, C, 1, P * P)


def test_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = tiny_model()
    x = torch.randn(4, C, 8, P * P)
    lead = torch.tensor([6.0, 24.0, 6.0, 24.0])
    tendency = torch.randn(4, C, 8, P * P)
    weights = torch.from_numpy(token_weights(torch.linspace(-67.5, 67.5, 8).numpy(), GRID, P))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(300):
        loss = weighted_mse(model(x, lead), tendency, weights)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_forecastvit_is_an_nn_module_with_expected_parameter_count():
    model = ForecastViT(channels=9, patch_size=4, grid_shape=(32, 64), embed_dim=128, depth=4, num_heads=4)
    n = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n < 2e6


def test_weight_decay_spares_biases_norms_and_embedding_tables():
    from seqvit.model.vit import build_model

    model = build_model({"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2}, 3, 4, (8, 16))
    decay, spared = model.weight_decay_groups(0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and spared["weight_decay"] == 0.0
    assert {"blocks.0.qkv.weight", "blocks.0.proj.weight", "head.weight", "patch_embedding.weight"} <= decayed
    assert not {"channel_embedding", "aggregation.query", "blocks.0.norm1.weight", "head.bias"} & decayed
    assert len(decay["params"]) + len(spared["params"]) == len(list(model.parameters()))
    # a step with zero gradients leaves the spared parameters as they are and shrinks the others
    optimizer = torch.optim.AdamW(model.weight_decay_groups(0.5), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["blocks.0.norm1.weight"], before["blocks.0.norm1.weight"])
    assert torch.equal(after["channel_embedding"], before["channel_embedding"])
    assert torch.allclose(after["blocks.0.qkv.weight"], before["blocks.0.qkv.weight"] * (1 - 0.1 * 0.5))


def test_window_attention_batches_windows_through_the_kernel():
    """attention_pattern window: one kernel call per band height, windows as the batch; same weights as full."""
    calls = []

    def spy(q, k, v, dropout_p=0.0):
        calls.append(tuple(q.shape))
        return attention(q, k, v, "math")

    cfg = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2}
    # 8 x 16 grid in patches of 2: 4 x 8 tokens, windows of 2 x 2 (4 rows of 4 per sample of 2)
    model = build_model({**cfg, "attention_pattern": "window", "window_size": 2}, C, 2, GRID)
    assert {n: p.shape for n, p in model.named_parameters()} == {
        n: p.shape for n, p in build_model(cfg, C, 2, GRID).named_parameters()
    }
    model.set_attention_backend(spy)
    model(torch.randn(2, C, 32, 4), torch.tensor([6.0, 6.0]))
    # block 0: 2 x 8 windows of 4 tokens; block 1 (shifted): 1-row windows of 2 tokens at each pole, 2 x 2 between
    assert calls == [(16, 4, 4, 8), (8, 2, 4, 8), (8, 4, 4, 8), (8, 2, 4, 8)]
