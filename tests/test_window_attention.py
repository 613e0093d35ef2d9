"""Window attention (model.attention_pattern: window): windows, shifts, the seam, the poles, training."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from conftest import write_regridded
from seqvit.config import validate
from seqvit.data.tokenize import tokenize
from seqvit.errors import SeqvitError
from seqvit.model.vit import Block, build_model
from seqvit.model.window import BlockWindows, window_attention
from seqvit.train.engine import train


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread (and do not fight other jobs for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MODEL = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2, "dropout": 0.0}


@pytest.mark.parametrize("kernel", ["math", "sdpa"])
def test_one_window_over_the_whole_grid_is_full_attention(kernel):
    # a 16 x 16 grid in patches of 4: 4 x 4 tokens, one window of 4 x 4 in both the plain and the shifted block
    torch.manual_seed(0)
    full = build_model({**MODEL, "attention": kernel}, 3, 4, (16, 16))
    torch.nn.init.normal_(full.head.weight, std=0.02)  # a zero head would make any two models agree
    window = build_model(
        {**MODEL, "attention": kernel, "attention_pattern": "window", "window_size": 4}, 3, 4, (16, 16)
    )
    window.load_state_dict(full.state_dict())
    x, lead = torch.randn(2, 3, 16, 16), torch.tensor([6.0, 24.0])
    with torch.no_grad():
        expected, got = full(x, lead), window(x, lead)
    assert expected.abs().max() > 0.1
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-6
    # smaller windows do change the output (the comparison above can tell them apart)
    smaller = build_model(
        {**MODEL, "attention": kernel, "attention_pattern": "window", "window_size": 2}, 3, 4, (16, 16)
    )
    smaller.load_state_dict(full.state_dict())
    with torch.no_grad():
        assert (smaller(x, lead) - expected).abs().max() > 1e-3 * expected.abs().max()


def _masked_reference(q, k, v, window_of):
    """Full attention with every pair of tokens in different windows masked out: O(N^2), for tests."""
    ids = torch.tensor(window_of)
    allowed = ids[:, None] == ids[None, :]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_windows_equal_full_attention_masked_to_the_same_windows(shifted):
    # 8 x 12 tokens, windows of 4: plain windows start at rows 0, 4 and columns 0, 4, 8; shifted ones
    # are the row bands [0, 2), [2, 6), [6, 8) (stopping at the poles) and the columns 2-5, 6-9,
    # 10-1 (across the seam)
    rows, cols = 8, 12
    if shifted:
        band = [0, 0, 1, 1, 1, 1, 2, 2]
        column = [2, 2, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    else:
        band = [0, 0, 0, 0, 1, 1, 1, 1]
        column = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    window_of = [band[r] * 3 + column[c] for r in range(rows) for c in range(cols)]
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, rows * cols, 3, 8) for _ in range(3))
    got = window_attention(q, k, v, BlockWindows(rows, cols, 4, shifted), backend="math")
    torch.testing.assert_close(got, _masked_reference(q, k, v, window_of))  # float32 rounding


def _support(rows, cols):
    return {(r, c) for r in rows for c in cols}


# (token, layout shifted?, the tokens its output may depend on) on an 8 x 8 token grid, windows of 4
DEPENDENCIES = [
    ((0, 0), False, _support(range(0, 4), range(0, 4))),
    ((0, 0), True, _support([0, 1], [6, 7, 0, 1])),  # northern pole window, across the seam
    ((7, 7), True, _support([6, 7], [6, 7, 0, 1])),  # southern pole window: no northern rows
    ((4, 7), True, _support(range(2, 6), [6, 7, 0, 1])),
    ((3, 5), True, _support(range(2, 6), range(2, 6))),
]


@pytest.mark.parametrize("token, shifted, expected", DEPENDENCIES)
def test_output_depends_on_its_window_only(token, shifted, expected):
    torch.manual_seed(2)
    rows = cols = 8
    block = Block(16, 2, 2.0, 0.0, "math", BlockWindows(rows, cols, 4, shifted)).double()
    x = torch.randn(1, rows * cols, 16, dtype=torch.float64, requires_grad=True)
    out = block(x)
    r, c = token
    out[0, r * cols + c].sum().backward()
    assert x.grad is not None
    moved = x.grad[0].abs().sum(dim=-1).reshape(rows, cols)
    assert {(int(r), int(c)) for r, c in torch.nonzero(moved)} == expected


def test_bad_window_sizes_are_refused_with_the_fix():
    window = {**MODEL, "attention_pattern": "window"}
    # 8 x 16 grid in patches of 2: 4 x 8 tokens
    with pytest.raises(
        SeqvitError, match=r"model.window_size: 3 does not divide the token grid of 4 x 8 .*\[1, 2, 4\]"
    ):
        build_model({**window, "window_size": 3}, 3, 2, (8, 16))
    with pytest.raises(SeqvitError, match=r"model.window_size: 8 does not divide .*patch size 2 on the 8 x 16 grid"):
        build_model({**window, "window_size": 8}, 3, 2, (8, 16))
    with pytest.raises(SeqvitError, match=r"model.window_size: None must be a positive integer"):
        build_model(window, 3, 2, (8, 16))
    with pytest.raises(SeqvitError, match=r"model.attention_pattern: unknown pattern 'windowed'"):
        build_model({**MODEL, "attention_pattern": "windowed"}, 3, 2, (8, 16))
    # a model of another rank's token segment: window attention needs the whole grid
    model = build_model({**window, "window_size": 2}, 3, 2, (8, 16))
    with pytest.raises(SeqvitError, match=r"use parallel.sp: 1 or model.attention_pattern: full"):
        model(torch.randn(1, 3, 16, 4), torch.tensor([6.0]), token_offset=16)


def test_the_schema_wants_a_window_size_with_window_attention(demo_cfg):
    cfg = copy.deepcopy(demo_cfg)
    assert validate(copy.deepcopy(cfg))["model"]["attention_pattern"] == "full"  # the schema's default
    cfg["model"]["attention_pattern"] = "window"
    with pytest.raises(SeqvitError, match=r"config key model: 'window_size' is a required property"):
        validate(copy.deepcopy(cfg))
    cfg["model"]["window_size"] = 0
    with pytest.raises(SeqvitError, match=r"config key model.window_size: 0 is less than the minimum of 1"):
        validate(copy.deepcopy(cfg))


HEIGHT, WIDTH, P = 8, 16, 2  # 4 x 8 tokens: windows of 2 shift in both latitude and longitude
CFG = {
    "experiment": "tiny-window",
    "data": {"single_level": ["t2m"], "pressure_level": ["t"], "levels": [850]},
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
    "model": {
        "embed_dim": 16,
        "depth": 2,
        "num_heads": 2,
        "mlp_ratio": 2,
        "dropout": 0.0,
        "attention_pattern": "window",
        "window_size": 2,
    },
    "train": {
        "lead_hours": [6, 24],
        "batch_size": 4,
        "steps": 12,
        "lr": 0.003,
        "weight_decay": 0.01,
        "warmup_steps": 3,
        "val_every": 12,
        "checkpoint_every": 12,
        "log_every": 2,
        "threads": 1,
        "seed": 0,
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-window")
    paths, stats_path = write_regridded(root, CFG, (2015, 2016, 2017), height=HEIGHT, width=WIDTH)
    tokens_path = root / f"p{P}.zarr"
    tokenize(CFG, paths, stats_path, P, tokens_path)
    return tokens_path


def test_window_model_trains_and_its_loss_decreases(store, tmp_path):
    model_path = train(CFG, store, tmp_path / "run", P, progress=False)
    assert model_path is not None and model_path.exists()
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in rows]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.7 * losses[0]
    saved = torch.load(model_path, weights_only=False)
    assert saved["model_config"]["attention_pattern"] == "window"
    assert build_model(saved["model_config"], 2, P, (HEIGHT, WIDTH)).blocks[1].window.shifted


def test_window_attention_is_refused_under_sequence_parallelism(store, tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["parallel"] = {"sp": 2}
    with pytest.raises(SeqvitError, match=r"patch size 2 has parallel.sp=2; set parallel.sp: 1 .*attention_pattern"):
        train(cfg, store, tmp_path / "run", P, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was started or written


def test_window_layout_sizes():
    # independent of the code: count the windows by hand on 8 x 12 tokens, windows of 4
    plain, shifted = BlockWindows(8, 12, 4, False), BlockWindows(8, 12, 4, True)
    assert plain.attention_pairs() == 6 * 16**2
    # shifted: 3 windows of 2 x 4 at each pole, 3 of 4 x 4 in between
    assert shifted.attention_pairs() == 6 * 8**2 + 3 * 16**2
    assert shifted.bands() == [(0, 2, 2), (2, 6, 4), (6, 8, 2)]
    # an axis of a single window is not shifted: 4 x 8 tokens with windows of 4 shift in longitude only
    assert (BlockWindows(4, 8, 4, True).row_shift, BlockWindows(4, 8, 4, True).col_shift) == (0, 2)
