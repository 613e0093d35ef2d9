import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import write_regridded
from processes import descendants
from seqvit.data.loader import (
    ForecastPairs,
    SampleOrder,
    SegmentBatches,
    SplitIndex,
    read_pairs,
    step_loader,
)
from seqvit.data.token_store import TokenStore
from seqvit.data.tokenize import open_tokens, tokenize
from seqvit.errors import SeqvitError
from seqvit.parallel.groups import segment_bounds

HEIGHT, WIDTH, TIMES_PER_YEAR = 8, 16, 80  # 80 six-hourly times: two shards of 64 times per year pair
CFG = {
    "data": {"single_level": ["t2m"], "pressure_level": ["t"], "levels": [850]},
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
    "tokenize": {"sp_segments": 4},
}
LEADS = [6, 24]


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fields") / "regridded"
    noise = {"field": "noise", "seed": 3, "stats": ((280.0, 5.0), (250.0, 3.0))}
    return write_regridded(
        folder, CFG, [2015, 2016, 2017], height=HEIGHT, width=WIDTH, times_per_year=TIMES_PER_YEAR, **noise
    )


@pytest.fixture(scope="module")
def store_p2(fields, tmp_path_factory):
    """32 tokens of 4 pixels in 4 segments of 8 tokens; 240 times."""
    out = tmp_path_factory.mktemp("tokens") / "p2.zarr"
    tokenize(CFG, *fields, 2, out)
    return out


def _full(path) -> np.ndarray:
    with open_tokens(path) as store:
        return store["tokens"].values


def _array_meta(path) -> dict:
    return json.loads((Path(path) / "tokens" / "zarr.json").read_text())


def _chunking(path) -> tuple[tuple, tuple]:
    """(shard shape, inner chunk shape) of the tokens array as written on disk."""
    meta = _array_meta(path)
    (codec,) = meta["codecs"]
    assert codec["name"] == "sharding_indexed"
    return tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]), tuple(codec["configuration"]["chunk_shape"])


def test_store_chunks_tokens_into_segments(fields, store_p2, tmp_path):
    # 32 tokens / 4 segments: inner chunks of one time x 8 tokens, shards of 64 times x all tokens
    assert _chunking(store_p2) == ((64, 2, 32, 4), (1, 2, 8, 4))
    assert TokenStore(store_p2).segmented
    with open_tokens(store_p2) as store:
        assert store.attrs["sp_segments"] == 4 and store.attrs["patch_size"] == 2
        assert list(store["channel"].values) == ["t2m", "t_850"] and store.sizes["time"] == 240
    # ceil(32 / 3) = 11: the last segment is shorter; the default is 8 segments
    tokenize({**CFG, "tokenize": {"sp_segments": 3}}, *fields, 2, tmp_path / "s3.zarr")
    assert _chunking(tmp_path / "s3.zarr") == ((64, 2, 33, 4), (1, 2, 11, 4))
    tokenize({key: value for key, value in CFG.items() if key != "tokenize"}, *fields, 4, tmp_path / "p4.zarr")
    assert _chunking(tmp_path / "p4.zarr") == ((64, 2, 8, 16), (1, 2, 1, 16))  # 8 tokens, 8 segments
    with pytest.raises(SeqvitError, match="tokenize.sp_segments"):
        tokenize({**CFG, "tokenize": {"sp_segments": 0}}, *fields, 2, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def test_read_equals_slices_of_the_full_array(fields, store_p2, tmp_path):
    full = _full(store_p2)
    store = TokenStore(store_p2)
    times = np.array([5, 200, 5, 63, 64, 0, 239, 130])  # unsorted, repeated, both sides of a shard boundary
    for start, stop in [(0, 32), (0, 8), (8, 16), (24, 32), (3, 29), (7, 9), (31, 32)]:
        got = store.read(times, (start, stop))
        assert got.dtype == np.float32 and got.shape == (8, 2, stop - start, 4)
        np.testing.assert_array_equal(got, full[times][:, :, start:stop])
    # uneven segments (last chunk shorter than the others)
    tokenize({**CFG, "tokenize": {"sp_segments": 3}}, *fields, 2, tmp_path / "s3.zarr")
    np.testing.assert_array_equal(TokenStore(tmp_path / "s3.zarr").read(times, (20, 32)), full[times][:, :, 20:32])
    # a store written before segment chunking (64 times x all tokens, zstd) reads the same, through zarr
    with open_tokens(store_p2) as ds:
        ds = ds.load().drop_encoding()
        ds.to_zarr(tmp_path / "old.zarr", encoding={"tokens": {"chunks": (64, 2, 32, 4)}}, consolidated=False)
    old = TokenStore(tmp_path / "old.zarr")
    assert not old.segmented and _array_meta(tmp_path / "old.zarr")["codecs"][-1]["name"] == "zstd"
    np.testing.assert_array_equal(old.read(times, (8, 16)), full[times][:, :, 8:16])
    # a store pickled into a worker (after reading) reopens itself
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store)).read(times, (8, 16)), full[times][:, :, 8:16])
    with pytest.raises(SeqvitError, match=r"token range \[8, 40\)"):
        store.read(times, (8, 40))
    with pytest.raises(IndexError):
        store.read([240], (0, 8))


def test_missing_or_foreign_store_errors(tmp_path):
    with pytest.raises(SeqvitError, match=r"nope\.zarr.*seqvit tokenize"):
        TokenStore(tmp_path / "nope.zarr")
    with pytest.raises(SeqvitError, match=r"nope\.zarr.*seqvit tokenize"):
        SplitIndex(tmp_path / "nope.zarr", CFG, "train", LEADS)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(SeqvitError, match="not a tokens store"):
        TokenStore(tmp_path / "empty.zarr")


def test_split_index_positions_on_the_store_time_axis(store_p2):
    with open_tokens(store_p2) as ds:
        times = pd.DatetimeIndex(ds["time"].values)
    index = SplitIndex(store_p2, CFG, "val", LEADS)
    assert len(index) == TIMES_PER_YEAR - 4  # a 24 h lead needs 4 later times in the same split
    assert index.num_tokens == 32 and index.patch_size == 2 and index.grid_shape == (HEIGHT, WIDTH)
    assert index.channels == ["t2m", "t_850"] and index.lead_hours == LEADS
    assert index.target_index.shape == (2, len(index))
    np.testing.assert_array_equal(times[index.input_index], index.init_times)
    for lead, hours in enumerate(LEADS):
        np.testing.assert_array_equal(times[index.target_index[lead]], index.init_times + pd.Timedelta(hours=hours))
    assert index.input_index[0] == TIMES_PER_YEAR  # 2016 starts after the 80 times of 2015
    with pytest.raises(SeqvitError, match="train.lead_hours"):
        SplitIndex(store_p2, CFG, "val", [])


def test_sample_order_deterministic_per_seed_and_epoch():
    order = SampleOrder(num_samples=48, num_leads=2, global_batch=8, seed=0)
    assert order.batches_per_epoch == 6
    epochs = [np.concatenate([order.global_batch(e * 6 + k)[0] for k in range(6)]) for e in range(3)]
    for samples in epochs:
        np.testing.assert_array_equal(np.sort(samples), np.arange(48))  # each init time once per epoch
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = SampleOrder(48, 2, 8, 0)
    for step in (0, 5, 6, 17, 1000):  # any step, in any order, from a fresh object
        for a, b in zip(order.global_batch(step), again.global_batch(step)):
            np.testing.assert_array_equal(a, b)
    other_seed = SampleOrder(48, 2, 8, 1)
    assert not np.array_equal(other_seed.global_batch(0)[0], order.global_batch(0)[0])
    leads = np.concatenate([order.global_batch(s)[1] for s in range(6)])
    assert set(leads.tolist()) == {0, 1}
    assert not np.array_equal(leads, np.concatenate([order.global_batch(s)[1] for s in range(6, 12)]))
    # the tail that does not fill a batch is dropped: 50 samples, 6 batches of 8
    tail = SampleOrder(50, 2, 8, 0)
    assert tail.batches_per_epoch == 6
    seen = np.concatenate([tail.global_batch(k)[0] for k in range(6)])
    assert len(np.unique(seen)) == 48 and np.array_equal(tail.global_batch(6)[0], tail.epoch(1)[0][:8])


def test_data_parallel_ranks_split_the_global_batch():
    order = SampleOrder(40, 3, 8, 7)
    for step in (0, 3, 11):
        samples, leads = order.global_batch(step)
        for dp in (1, 2, 4, 8):
            parts = [order.rank_batch(step, dp, rank) for rank in range(dp)]
            got = [set(p[0].tolist()) for p in parts]
            assert all(len(g) == 8 // dp for g in got)
            assert set().union(*got) == set(samples.tolist()) and sum(map(len, got)) == 8  # disjoint, complete
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), leads)
    with pytest.raises(SeqvitError, match=r"train\.batch_size.*3 data-parallel"):
        order.rank_batch(0, 3, 0)
    with pytest.raises(SeqvitError, match=r"train\.batch_size.*16 samples.*10 init times"):
        SampleOrder(10, 2, 16, 0)


def test_segment_batches_and_read_pairs_values(store_p2):
    full = torch.from_numpy(_full(store_p2))
    index = SplitIndex(store_p2, CFG, "train", LEADS)
    store = TokenStore(store_p2)
    order = SampleOrder(len(index), len(LEADS), 8, 0)
    for sp in (1, 2, 3, 4):
        for sp_rank in range(sp):
            segment = segment_bounds(index.num_tokens, sp, sp_rank)
            for dp, dp_rank in ((1, 0), (2, 1)):
                x, lead, y = SegmentBatches(store, index, order, dp, dp_rank, segment)[5]
                samples, leads = order.rank_batch(5, dp, dp_rank)
                tokens = slice(*segment)
                assert x.shape == (8 // dp, 2, segment[1] - segment[0], 4) and x.dtype == torch.float32
                assert torch.equal(x, full[index.input_index[samples]][:, :, tokens])
                assert torch.equal(y, full[index.target_index[leads, samples]][:, :, tokens])
                assert torch.equal(lead, torch.tensor(LEADS, dtype=torch.float32)[leads])
    # validation pairs; the 24 h target of init i is the input of init i + 4
    x, lead, y = read_pairs(store, index, [0, 3, 3], [1, 0, 1], (8, 24))
    assert torch.equal(x, full[index.input_index[[0, 3, 3]]][:, :, 8:24])
    assert torch.equal(y[0], full[index.input_index[4]][:, 8:24]) and lead.tolist() == [24.0, 6.0, 24.0]
    # ForecastPairs (prediction) reads the same values through the same store reader
    pairs = ForecastPairs(store_p2, CFG, "train", LEADS)
    px, plead, py = pairs.batch([len(index) + 3])
    assert torch.equal(px, full[index.input_index[[3]]]) and plead.item() == 24.0
    assert torch.equal(py[:, :, 8:24], y[2:3])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_step_yields_the_uninterrupted_batches(store_p2, workers):
    index = SplitIndex(store_p2, CFG, "train", LEADS)
    batches = SegmentBatches(TokenStore(store_p2), index, SampleOrder(len(index), 2, 16, 3), 2, 1, (8, 16))
    total = 2 * (len(index) // 16) + 3  # crosses two epoch boundaries
    uninterrupted = list(step_loader(batches, 0, total, workers=0))
    assert len(uninterrupted) == total
    resumed = list(step_loader(batches, 7, total, workers=workers))
    assert len(resumed) == total - 7
    for a, b in zip(uninterrupted[7:], resumed):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(uninterrupted[0][0], uninterrupted[1][0])


def test_workers_outlive_the_signals_slurm_sends_to_the_whole_step(store_p2):
    """USR1 and TERM are the training process's cue to checkpoint; its loader workers carry on meanwhile."""
    index = SplitIndex(store_p2, CFG, "train", LEADS)
    batches = SegmentBatches(TokenStore(store_p2), index, SampleOrder(len(index), 2, 16, 3), 1, 0, (0, 16))
    loader = iter(step_loader(batches, 0, 12, workers=2))
    first = next(loader)
    helpers = [pid for pid in descendants(os.getpid()) if pid != os.getpid()]
    assert len(helpers) >= 3  # the fork server and two workers
    for pid in helpers:
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGTERM)
    rest = list(loader)
    assert len(rest) == 11 and torch.equal(first[0], batches[0][0]) and torch.equal(rest[-1][2], batches[11][2])


def _rchar() -> int:
    """Bytes this process has read through read() and pread() so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def _bytes_read(read) -> int:
    """Bytes read by read(), less what reading /proc/self/io itself adds (~120 bytes)."""
    before = _rchar()
    own = _rchar() - before
    before = _rchar()
    read()
    return _rchar() - before - own


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_a_rank_reads_only_its_segment_bytes(store_p2):
    store = TokenStore(store_p2)
    times = np.arange(0, 240, 3)  # 80 samples over all four shards
    sample_bytes = 2 * 32 * 4 * 4  # channels x tokens x pixels x float32
    assert store.shape == (240, 2, 32, 4)  # opening reads the metadata
    first = _bytes_read(lambda: store.read(times, (0, 32)))
    index_bytes = 4 * (64 * 4 * 16 + 4)  # four shards: 64 times x 4 segments x (offset, length) + checksum
    assert abs(first - len(times) * sample_bytes - index_bytes) <= 8
    whole = _bytes_read(lambda: store.read(times, (0, 32)))  # indices are cached now
    assert abs(whole - len(times) * sample_bytes) <= 8  # 8: /proc/self/io growing by a digit
    for sp in (2, 4):
        for sp_rank in range(sp):
            assert abs(_bytes_read(lambda: store.read(times, segment_bounds(32, sp, sp_rank))) - whole // sp) <= 8
    # a range inside one chunk still reads that whole chunk, and only it
    assert abs(_bytes_read(lambda: store.read(times, (9, 11))) - whole // 4) <= 8
