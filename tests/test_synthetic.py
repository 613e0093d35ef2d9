"""The embedded ERA5-like source: CDS layout, determinism, and fields that really move."""

import copy
import filecmp
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
import yaml
from scipy.ndimage import map_coordinates

from seqvit.data import atmosphere, synthetic
from seqvit.data.era5 import open_raw
from seqvit.errors import SeqvitError
from seqvit.layout import Layout

A = atmosphere.EARTH_RADIUS_M


def tiny(cfg, seed=0):
    """One year, two months, a 5.625 deg native grid with poles: about a second to generate."""
    cfg["source"].update(seed=seed, nlat=33, nlon=64, spinup_days=20)
    cfg["data"].update(years=[2016], months=[1, 2], hours=[0, 6, 12, 18], levels=[500, 850])
    return cfg


@pytest.fixture(scope="module")
def base_cfg():
    """The demo configuration (module scope, so the generated files can be shared)."""
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def generated(base_cfg, tmp_path_factory):
    cfg = tiny(copy.deepcopy(base_cfg))
    out = tmp_path_factory.mktemp("raw")
    paths = synthetic.synthesize(cfg, out, progress=True)
    return cfg, out, paths


def load(path, name, level=None):
    with xr.open_dataset(path) as ds:
        da = ds[name] if level is None else ds[name].sel(pressure_level=float(level))
        return da.load()


def test_spectral_derivatives_are_exact():
    channel = atmosphere._Channel(33, 64)
    y = np.deg2rad(channel.lat)[:, None] + np.pi / 2  # 0 at the south pole, pi at the north pole
    x = np.deg2rad(channel.lon)[None, :]
    even = np.cos(3 * y) * np.cos(2 * x) + 0.5 * np.cos(y)  # cosine series: zero slope at the walls
    odd = np.sin(2 * y) * np.sin(3 * x) + np.sin(y)  # sine series: zero at the walls
    coeffs_c, coeffs_s = channel.to_c(even), channel.to_s(odd[1:-1])
    np.testing.assert_allclose(channel.from_c(coeffs_c), even, atol=1e-5)
    np.testing.assert_allclose(channel.from_s(coeffs_s), odd, atol=1e-5)
    d_even_dy = (-3 * np.sin(3 * y) * np.cos(2 * x) - 0.5 * np.sin(y)) / A
    d_odd_dy = (2 * np.cos(2 * y) * np.sin(3 * x) + np.cos(y)) / A
    d_even_dx = -2 * np.cos(3 * y) * np.sin(2 * x) / A
    scale = 4 / A
    np.testing.assert_allclose(channel.from_s(channel.dy_c_to_s(coeffs_c)), d_even_dy, atol=1e-5 * scale)
    np.testing.assert_allclose(channel.from_c(channel.dy_s_to_c(coeffs_s)), d_odd_dy, atol=1e-5 * scale)
    np.testing.assert_allclose(channel.from_c(channel.ikx * coeffs_c), d_even_dx, atol=1e-5 * scale)


def test_writes_exactly_the_listed_files(generated):
    cfg, out, paths = generated
    assert paths == synthetic.raw_paths(cfg, out)
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "single-levels/2016/01.nc",
        "single-levels/2016/02.nc",
        "pressure-levels/2016/01.nc",
        "pressure-levels/2016/02.nc",
    ]
    assert all(p.is_file() for p in paths)
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


def test_layout_is_the_cds_netcdf_layout(generated):
    cfg, out, _ = generated
    with netCDF4.Dataset(out / "pressure-levels/2016/02.nc") as nc:
        assert set(nc.dimensions) == {"valid_time", "pressure_level", "latitude", "longitude"}
        time = nc["valid_time"]
        assert time.dtype == np.int64 and time.units == "seconds since 1970-01-01"
        assert time.calendar == "proleptic_gregorian"
        assert len(time) == 29 * 4  # 2016 is a leap year; 6-hourly
        assert time[1] - time[0] == 6 * 3600
        assert nc["pressure_level"].dtype == np.float64 and nc["pressure_level"].units == "hPa"
        assert list(nc["pressure_level"][:]) == [850.0, 500.0]  # descending, as delivered
        lat, lon = nc["latitude"][:], nc["longitude"][:]
        assert nc["latitude"].dtype == np.float64 and nc["longitude"].dtype == np.float64
        assert lat[0] == 90.0 and lat[-1] == -90.0 and len(lat) == 33 and np.all(np.diff(lat) < 0)
        assert lon[0] == 0.0 and lon[-1] == 360.0 - 360.0 / 64 and len(lon) == 64
        assert nc["number"].dtype == np.int64 and nc["number"].shape == () and int(nc["number"][...]) == 0
        assert nc["expver"].dtype is str and nc["expver"].dimensions == ("valid_time",)
        assert set(nc["expver"][:]) == {"0001"}
        units = {"t": "K", "z": "m**2 s**-2", "u": "m s**-1", "v": "m s**-1"}
        for name, unit in units.items():
            var = nc[name]
            assert var.dtype == np.float32
            assert var.dimensions == ("valid_time", "pressure_level", "latitude", "longitude")
            assert var.units == unit and var.long_name and var.standard_name
        assert nc.Conventions == "CF-1.7"
        assert nc.institution == "European Centre for Medium-Range Weather Forecasts"
    with netCDF4.Dataset(out / "single-levels/2016/01.nc") as nc:
        assert set(nc.variables) == {"number", "valid_time", "latitude", "longitude", "expver", "t2m"}
        assert nc["t2m"].dimensions == ("valid_time", "latitude", "longitude")
        assert nc["t2m"].dtype == np.float32 and nc["t2m"].units == "K"
        assert len(nc["valid_time"]) == 31 * 4
    ds = xr.open_dataset(out / "single-levels/2016/01.nc")
    assert str(ds["valid_time"].values[0]).startswith("2016-01-01T00:00")
    assert str(ds["valid_time"].values[-1]).startswith("2016-01-31T18:00")
    ds.close()


def test_canonical_reader_accepts_it(generated):
    _, out, _ = generated
    ds = open_raw([out / "pressure-levels/2016/02.nc", out / "pressure-levels/2016/01.nc"])
    assert list(ds["t"].dims) == ["time", "level", "latitude", "longitude"]
    assert list(ds["level"].values) == [500, 850]
    assert ds.sizes["time"] == 60 * 4 and np.all(np.diff(ds["latitude"].values) > 0)


def test_same_seed_gives_identical_files_and_another_seed_does_not(base_cfg, generated, tmp_path):
    cfg, out, paths = generated
    again = synthetic.synthesize(tiny(copy.deepcopy(base_cfg)), tmp_path / "same", progress=False)
    for first, second in zip(paths, again):
        assert filecmp.cmp(first, second, shallow=False), f"{second} differs from {first}"
    other = synthetic.synthesize(tiny(copy.deepcopy(base_cfg), seed=1), tmp_path / "other", progress=False)
    a = load(paths[2], "t", 850).values
    b = load(other[2], "t", 850).values
    assert np.sqrt(np.mean((a - b) ** 2)) > 1.0


def test_values_are_finite_and_plausible(generated):
    _, out, _ = generated
    t2m = load(out / "single-levels/2016/01.nc", "t2m").values
    with xr.open_dataset(out / "pressure-levels/2016/01.nc") as ds:
        ds = ds.load()
    for values in (t2m, ds["t"].values, ds["z"].values, ds["u"].values, ds["v"].values):
        assert np.isfinite(values).all()
    t850, t500 = ds["t"].sel(pressure_level=850.0).values, ds["t"].sel(pressure_level=500.0).values
    assert 215 < t2m.min() and t2m.max() < 315 and 265 < t2m.mean() < 295
    assert 220 < t850.min() and t850.max() < 305
    assert 210 < t500.min() and t500.max() < 285 and (t500 < t850).mean() > 0.99
    z850, z500 = ds["z"].sel(pressure_level=850.0).values, ds["z"].sel(pressure_level=500.0).values
    assert 9000 < z850.min() and z850.max() < 20000 and 13000 < z850.mean() < 16000
    assert 45000 < z500.min() and z500.max() < 62000 and 52000 < z500.mean() < 57000
    speed500 = np.hypot(ds["u"].sel(pressure_level=500.0), ds["v"].sel(pressure_level=500.0)).values
    speed850 = np.hypot(ds["u"].sel(pressure_level=850.0), ds["v"].sel(pressure_level=850.0)).values
    assert 5 < np.sqrt(np.mean(speed500**2)) < 25 and speed500.max() < 90
    assert speed850.mean() < speed500.mean()
    # tropics warm, poles cold; January: the northern high latitudes colder than the southern
    lat = ds["latitude"].values
    zonal = t2m.mean(axis=(0, 2))
    assert zonal[np.abs(lat) < 10].mean() > zonal[np.abs(lat) > 60].mean() + 20
    assert zonal[lat > 50].mean() < zonal[lat < -50].mean() - 5


def test_poles_are_single_points(generated):
    _, out, _ = generated
    t2m = load(out / "single-levels/2016/01.nc", "t2m").values
    with xr.open_dataset(out / "pressure-levels/2016/01.nc") as ds:
        for name in ("t", "z"):
            values = ds[name].values
            assert np.abs(values[..., [0, -1], :] - values[..., [0, -1], :1]).max() < 1e-3 * np.abs(values).max()
        assert np.abs(ds["u"].values[..., [0, -1], :]).max() < 1e-3
        assert np.abs(ds["v"].values[..., [0, -1], :]).max() < 1e-3
    assert np.abs(t2m[:, [0, -1], :] - t2m[:, [0, -1], :1]).max() < 1e-3


def advect(field, u, v, lat, lon, seconds):
    """Semi-Lagrangian estimate of `field` after `seconds` in the wind (u, v), on a lat-lon grid."""
    dlat = np.deg2rad(lat[0] - lat[1])  # latitude descends with the row index
    dlon = np.deg2rad(lon[1] - lon[0])
    coslat = np.maximum(np.cos(np.deg2rad(lat)), 0.05)[:, None]
    rows, cols = np.meshgrid(np.arange(len(lat)), np.arange(len(lon)), indexing="ij")
    depart_rows = rows + v * seconds / (A * dlat)  # moving north = moving to smaller row index
    depart_cols = cols - u * seconds / (A * coslat * dlon)
    depart_rows = np.clip(depart_rows, 0, len(lat) - 1)
    padded = np.concatenate([field, field[:, :3]], axis=1)  # wrap in longitude
    return map_coordinates(padded, [depart_rows, np.mod(depart_cols, len(lon))], order=3, mode="nearest")


def test_temperature_is_advected_by_the_reported_wind(generated):
    """Moving t850 along the 850 hPa wind beats persistence: the model has advection to learn."""
    _, out, _ = generated
    with xr.open_dataset(out / "pressure-levels/2016/02.nc") as ds:
        level = ds.sel(pressure_level=850.0).load()
    lat, lon = level["latitude"].values, level["longitude"].values
    t, u, v = level["t"].values, level["u"].values, level["v"].values
    band = np.abs(lat) <= 70
    lead_steps, seconds = 2, 12 * 3600
    gain = []
    for i in range(0, len(t) - lead_steps, 3):
        j = i + lead_steps
        mean_u, mean_v = 0.5 * (u[i] + u[j]), 0.5 * (v[i] + v[j])
        moved = advect(t[i], mean_u, mean_v, lat, lon, seconds)
        persistence = np.sqrt(np.mean((t[i] - t[j])[band] ** 2))
        advection = np.sqrt(np.mean((moved - t[j])[band] ** 2))
        gain.append(advection / persistence)
    assert np.mean(gain) < 0.75, f"advection error / persistence error = {np.mean(gain):.2f}"
    # and the fields do change: one day apart they differ by well over the round-off
    assert np.sqrt(np.mean((t[4:] - t[:-4])[:, band] ** 2)) > 0.8


def test_diurnal_cycle_follows_local_solar_time(generated):
    _, out, _ = generated
    t2m = load(out / "single-levels/2016/01.nc", "t2m")
    values = t2m.values.reshape(31, 4, *t2m.shape[1:])  # day, hour (0, 6, 12, 18 UTC), lat, lon
    diurnal = (values - values.mean(axis=1, keepdims=True)).mean(axis=0)
    lon = t2m["longitude"].values
    utc = np.array([0, 6, 12, 18])[:, None, None]
    expected = np.cos(2 * np.pi * (utc + lon[None, None, :] / 15 - 15) / 24) * np.ones_like(diurnal)
    strong = np.abs(diurnal).max(axis=0) > 0.5  # land points
    assert strong.mean() > 0.05
    correlation = np.corrcoef(diurnal[:, strong].ravel(), expected[:, strong].ravel())[0, 1]
    assert correlation > 0.8


def test_seasonal_cycle_is_opposite_in_the_hemispheres():
    channel = atmosphere._Channel(33, 64)
    geo = atmosphere._make_geography(channel, np.random.default_rng(0), atmosphere.Physics())
    climate = atmosphere._Climate(channel, geo, 0.3, 0.8)
    january, _ = climate.equilibrium(atmosphere._season_phase(15))
    july, _ = climate.equilibrium(atmosphere._season_phase(196))
    north, south = channel.lat > 30, channel.lat < -30
    assert (july - january)[north].mean() > 5 and (january - july)[south].mean() > 5
    land = geo.land > 0.5
    amplitude = np.abs(july - january)
    assert amplitude[north[:, None] & land].mean() > amplitude[north[:, None] & ~land].mean() + 5


@pytest.mark.parametrize(
    "section, key, value, named",
    [
        ("data", "single_level", ["msl"], "data.single_level"),
        ("data", "pressure_level", ["t", "q"], "data.pressure_level"),
        ("data", "levels", [50, 850], "data.levels"),
        ("data", "hours", [0, 25], "data.hours"),
        ("source", "nlat", 64, "source.nlat"),
        ("source", "nlon", 127, "source.nlon"),
        ("data", "months", [0], "data.months"),
    ],
)
def test_bad_config_names_the_key(base_cfg, tmp_path, section, key, value, named):
    cfg = tiny(copy.deepcopy(base_cfg))
    cfg[section][key] = value
    with pytest.raises(SeqvitError, match=named.replace(".", r"\.")):
        synthetic.synthesize(cfg, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_raw_paths_of_the_demo_config(base_cfg, tmp_path):
    paths = synthetic.raw_paths(base_cfg, tmp_path)
    assert len(paths) == 2 * 4 * 12
    assert paths[0] == tmp_path / "single-levels" / "2015" / "01.nc"
    assert paths[-1] == tmp_path / "pressure-levels" / "2018" / "12.nc"
    layout = Layout(base_cfg)  # the Snakefile's list of the rule's outputs
    assert synthetic.raw_paths(base_cfg, layout.raw_dir) == layout.raw_all()
    small = tiny(copy.deepcopy(base_cfg))
    assert synthetic.raw_paths(small, layout.raw_dir) == Layout(small).raw_all()
