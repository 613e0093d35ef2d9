import numpy as np
import pytest
import torch
import xarray as xr

from conftest import write_regridded
from seqvit.data.grids import latitude_weights, named_grid
from seqvit.data.loader import ForecastPairs
from seqvit.data.tokenize import open_tokens, patchify, token_weights, tokenize, unpatchify
from seqvit.errors import SeqvitError


def test_patchify_layout_and_inverse():
    height, width, p = 8, 12, 4
    field = np.arange(height * width, dtype=np.float32).reshape(height, width)
    tokens = patchify(field, p)
    assert tokens.shape == (6, 16)
    # token 1 is the second patch of the first (southernmost) patch row
    np.testing.assert_array_equal(tokens[1].reshape(p, p), field[0:4, 4:8])
    # token 3 starts the second patch row
    np.testing.assert_array_equal(tokens[3].reshape(p, p), field[4:8, 0:4])
    np.testing.assert_array_equal(unpatchify(tokens, p, (height, width)), field)


def test_roundtrip_exact_numpy_and_torch():
    rng = np.random.default_rng(0)
    fields = rng.standard_normal((3, 2, 16, 32)).astype(np.float32)
    for p in (1, 2, 4, 8, 16):
        tokens = patchify(fields, p)
        assert tokens.shape == (3, 2, (16 // p) * (32 // p), p * p)
        np.testing.assert_array_equal(unpatchify(tokens, p, (16, 32)), fields)
    as_tensor = torch.from_numpy(fields)
    assert torch.equal(unpatchify(patchify(as_tensor, 4), 4, (16, 32)), as_tensor)
    assert torch.equal(patchify(as_tensor, 4), torch.from_numpy(np.ascontiguousarray(patchify(fields, 4))))


def test_bad_patch_size_names_config_key_and_grid():
    with pytest.raises(SeqvitError, match=r"tokenize\.patch_sizes.*32 x 64"):
        patchify(np.zeros((32, 64)), 3)
    with pytest.raises(SeqvitError, match="tokenize.patch_sizes"):
        unpatchify(np.zeros((8, 16)), 5, (32, 64))


def test_token_weights_mean_one_and_layout():
    grid = named_grid("5.625deg")
    weights = token_weights(grid.lat, grid.shape, 4)
    assert weights.shape == (128, 16)
    assert weights.mean() == pytest.approx(1.0, abs=1e-6)
    # the first token holds the four southernmost rows, four pixels each
    expected = np.repeat(latitude_weights(grid.lat)[:4], 4)
    np.testing.assert_allclose(weights[0], expected, rtol=1e-6)
    # a latitude stripe (contiguous token segment) keeps the global weights
    np.testing.assert_allclose(weights[:16].mean(), latitude_weights(grid.lat)[:4].mean(), rtol=1e-6)


def _noise_fields(folder, years):
    """Regridded files of Gaussian noise (12 times a year) and stats.nc under folder/regridded."""
    return write_regridded(
        folder / "regridded", CFG, years, times_per_year=12, field="noise", seed=1, stats=((280.0, 5.0), (250.0, 3.0))
    )


CFG = {
    "data": {"single_level": ["t2m"], "pressure_level": ["t"], "levels": [850]},
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
}


def test_tokenize_writes_contract_store(tmp_path):
    paths, stats_path = _noise_fields(tmp_path, [2015, 2016])
    out = tmp_path / "tokens" / "p4.zarr"
    tokenize(CFG, paths, stats_path, 4, out)
    store = open_tokens(out)
    assert store["tokens"].dims == ("time", "channel", "token", "pixel")
    assert store["tokens"].shape == (24, 2, 8, 16)
    assert store["tokens"].dtype == np.float32
    assert list(store["channel"].values) == ["t2m", "t_850"]
    assert store.attrs["patch_size"] == 4 and list(store.attrs["grid_shape"]) == [8, 16]
    assert len(store.attrs["latitude"]) == 8 and len(store.attrs["longitude"]) == 16
    with xr.open_dataset(paths[0]) as raw:
        expected = (raw["t2m"].values - 280.0) / 5.0
    restored = unpatchify(store["tokens"].values[:12, 0], 4, (8, 16))
    np.testing.assert_allclose(restored, expected, rtol=1e-5, atol=1e-5)
    assert not list(out.parent.glob(".*tmp"))  # no temporary left behind


def test_tokenize_rejects_bad_patch_size(tmp_path):
    paths, stats_path = _noise_fields(tmp_path, [2015])
    with pytest.raises(SeqvitError, match="tokenize.patch_sizes"):
        tokenize(CFG, paths, stats_path, 3, tmp_path / "p3.zarr")
    assert not (tmp_path / "p3.zarr").exists()


def test_loader_pairs_inputs_and_targets_by_time(tmp_path):
    paths, stats_path = _noise_fields(tmp_path, [2015, 2016])
    out = tmp_path / "p4.zarr"
    tokenize(CFG, paths, stats_path, 4, out)
    tokens = open_tokens(out)["tokens"].values
    evaluation = ForecastPairs(out, CFG, "val", [6, 24])
    # 12 val times at 6 h spacing: inits valid for a 24 h lead are the first 8
    assert len(evaluation.init_times) == 8 and len(evaluation) == 16
    x, lead, y = evaluation[8 + 2]  # second lead (24 h), third init
    np.testing.assert_array_equal(x.numpy(), tokens[12 + 2])
    np.testing.assert_array_equal(y.numpy(), tokens[12 + 2 + 4])
    assert float(lead) == 24.0
