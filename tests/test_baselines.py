"""Baselines on small synthetic regridded files with known answers."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import stamp_lineage
from seqvit import lineage
from seqvit.errors import SeqvitError
from seqvit.evaluate import baselines

LAT = np.array([-67.5, -22.5, 22.5, 67.5])
LON = np.arange(8) * 45.0
HOURS = [0, 6, 12, 18]


def make_cfg(leads=(6, 24), variables=("t2m",)):
    return {
        "experiment": "unit",
        "data": {
            "years": [2001, 2002, 2003],
            "hours": HOURS,
            "single_level": ["t2m"],
            "pressure_level": ["u"],
            "levels": [500],
        },
        "splits": {"train": [2001], "val": [2002], "test": [2003]},
        "evaluate": {"variables": list(variables), "lead_hours": list(leads)},
    }


def all_times():
    return pd.date_range("2001-01-01", "2003-12-31 18:00", freq="6h")


def write_regridded(root, times, t2m, u500):
    """Canonical regridded files, one per (group, year), as the regrid stage writes them."""
    times = pd.DatetimeIndex(times)
    paths = []
    for year in sorted(set(times.year)):
        sel = times.year == year
        coords = {"time": times[sel], "latitude": LAT, "longitude": LON}
        single = xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m[sel].astype(np.float32))}, coords=coords)
        pressure = xr.Dataset(
            {"u": (("time", "level", "latitude", "longitude"), u500[sel][:, None].astype(np.float32))},
            coords={**coords, "level": [500]},
        )
        for group, ds in (("single-levels", single), ("pressure-levels", pressure)):
            path = root / "regridded" / group / f"{year}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(path)
            paths.append(path)
    stamp_lineage(paths, lineage.regridded(make_cfg()))
    return paths


def write_stats(root, channels, mean, std):
    path = root / "stats" / "stats.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(
        {"mean": ("channel", np.asarray(mean, float)), "std": ("channel", np.asarray(std, float))},
        coords={"channel": channels},
    ).to_netcdf(path)
    stamp_lineage(path, lineage.stats(make_cfg()))
    return path


def write_climatology(root, channels):
    """Climatology whose value encodes its own (channel, dayofyear, hour): 1000*c + doy + hour/100."""
    c, d, h = np.meshgrid(np.arange(len(channels)), np.arange(1, 367), np.array(HOURS), indexing="ij")
    values = (1000 * c + d + h / 100)[..., None, None] * np.ones((len(LAT), len(LON)))
    path = root / "stats" / "climatology.nc"
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(
        {"climatology": (("channel", "dayofyear", "hour", "latitude", "longitude"), values.astype(np.float32))},
        coords={"channel": channels, "dayofyear": np.arange(1, 367), "hour": HOURS, "latitude": LAT, "longitude": LON},
    ).to_netcdf(path)
    stamp_lineage(path, lineage.climatology(make_cfg()))
    return path


@pytest.fixture
def simple_files(tmp_path):
    """t2m constant in time (varies in space); u500 equal to the time index."""
    times = all_times()
    pattern = 280 + np.arange(len(LAT) * len(LON)).reshape(len(LAT), len(LON))
    t2m = np.broadcast_to(pattern, (len(times), len(LAT), len(LON))).copy()
    u500 = np.broadcast_to(np.arange(len(times))[:, None, None], t2m.shape).astype(float)
    paths = write_regridded(tmp_path, times, t2m, u500)
    stats = write_stats(tmp_path, ["t2m", "u_500"], [285, 0], [5, 1])
    clim = write_climatology(tmp_path, ["t2m", "u_500"])
    return tmp_path, paths, stats, clim, pattern


def test_persistence_is_exact_and_follows_format_7(simple_files):
    root, paths, stats, clim, pattern = simple_files
    cfg = make_cfg(variables=("t2m", "u_500"))
    out = baselines.run_baseline(cfg, "persistence", paths, stats, clim, root / "predictions" / "persistence.nc")
    with xr.open_dataset(out) as ds:
        forecast = ds["forecast"].load()
    assert forecast.dims == ("lead_hours", "time", "channel", "latitude", "longitude")
    assert forecast.dtype == np.float32
    assert forecast["lead_hours"].values.tolist() == [6, 24]
    assert forecast["channel"].values.tolist() == ["t2m", "u_500"]
    inits = pd.DatetimeIndex(forecast["time"].values)
    # every test time whose +24 h is still in the test year
    assert inits[0] == pd.Timestamp("2003-01-01") and inits[-1] == pd.Timestamp("2003-12-30 18:00")
    assert len(inits) == 1460 - 4
    # Perfect on a field constant in time; equal to the init-time value of a known series.
    np.testing.assert_array_equal(
        forecast.sel(channel="t2m").values, np.broadcast_to(pattern, forecast.sel(channel="t2m").shape)
    )
    index_at_init = all_times().get_indexer(inits)
    for lead in (6, 24):
        np.testing.assert_array_equal(forecast.sel(lead_hours=lead, channel="u_500").values[:, 0, 0], index_at_init)
    assert not list(out.parent.glob(".*.tmp"))


def test_climatology_baseline_is_climatology_at_valid_time(simple_files):
    root, paths, stats, clim, _ = simple_files
    cfg = make_cfg(variables=("u_500",))
    out = baselines.run_baseline(cfg, "climatology", paths, stats, clim, root / "predictions" / "climatology.nc")
    with xr.open_dataset(out) as ds:
        forecast = ds["forecast"].load()
    inits = pd.DatetimeIndex(forecast["time"].values)
    for lead in (6, 24):
        valid = inits + pd.Timedelta(hours=lead)
        expected = 1000 * 1 + valid.day_of_year.values + valid.hour.values / 100  # u_500 is channel 1
        got = forecast.sel(lead_hours=lead, channel="u_500").values
        np.testing.assert_allclose(got[:, 2, 3], expected, rtol=1e-6)
        assert np.all(got == got[:, :1, :1])


def test_linear_recovers_known_relation_from_training_years(tmp_path):
    """t2m(t+6h) = (1-c) t2m + c*280 + a u500(t) + b sin(hour): a linear function of state and time."""
    rng = np.random.default_rng(0)
    times = all_times()
    shape = (len(times), len(LAT), len(LON))
    u500 = rng.normal(size=shape)
    a, b, c = 0.5, 1.0, 0.1
    a_test = -0.5  # the test year follows another law: a model fitted on it would not match
    sin_hour = np.sin(2 * np.pi * times.hour.values / 24)[:, None, None]
    t2m = np.empty(shape)
    t2m[0] = 280
    for i in range(len(times) - 1):
        a_now = a_test if times[i].year == 2003 else a
        t2m[i + 1] = (1 - c) * t2m[i] + c * 280 + a_now * u500[i] + b * sin_hour[i]
    paths = write_regridded(tmp_path, times, t2m, u500)
    train = times.year == 2001
    stats = write_stats(tmp_path, ["t2m", "u_500"], [t2m[train].mean(), 0], [t2m[train].std(), 1])
    clim = write_climatology(tmp_path, ["t2m", "u_500"])

    cfg = make_cfg(leads=(6,), variables=("t2m",))
    out = baselines.run_baseline(cfg, "linear", paths, stats, clim, tmp_path / "predictions" / "linear.nc")
    with xr.open_dataset(out) as ds:
        forecast = ds["forecast"].sel(lead_hours=6, channel="t2m").load()
        assert "linear_choices" in ds.attrs
    at = times.get_indexer(pd.DatetimeIndex(forecast["time"].values))
    oracle = (1 - c) * t2m[at] + c * 280 + a * u500[at] + b * sin_hour[at]
    truth = t2m[at + 1]
    assert np.abs(forecast.values - oracle).max() < 0.01
    assert np.abs(truth - oracle).mean() > 0.3  # the test year really does differ from training


def test_time_features_are_harmonics():
    feats = baselines.time_features(pd.DatetimeIndex(["2001-01-01 00:00", "2001-01-01 06:00"]))
    assert feats.shape == (2, 8)
    np.testing.assert_allclose(feats[:, 0], [0.0, 1.0], atol=1e-12)  # sin of the hour angle
    np.testing.assert_allclose(feats[:, 1], [1.0, 0.0], atol=1e-12)


def test_bad_names_raise(simple_files):
    root, paths, stats, clim, _ = simple_files
    with pytest.raises(SeqvitError, match="unknown baseline"):
        baselines.run_baseline(make_cfg(), "analogue", paths, stats, clim, root / "x.nc")
    with pytest.raises(SeqvitError, match="evaluate.variables"):
        baselines.run_baseline(make_cfg(variables=("t_850",)), "persistence", paths, stats, clim, root / "x.nc")
    cfg = make_cfg()
    cfg["splits"]["test"] = [1999]
    with pytest.raises(SeqvitError, match="no test init times"):
        baselines.run_baseline(cfg, "persistence", paths, stats, clim, root / "x.nc")
    assert not (root / "x.nc").exists()
