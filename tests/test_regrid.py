"""Regridding: conservation, exactness on analytic fields, periodicity, and the file stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from seqvit.data.era5 import open_raw
from seqvit.data.grids import Grid, lat_bounds, latitude_weights, named_grid
from seqvit.data.regrid import Regridder, regrid
from seqvit.data.regrid_files import regrid_files
from seqvit.errors import SeqvitError

TARGET = named_grid("5.625deg")


def era5_like_grid(nlat: int = 65, nlon: int = 128) -> Grid:
    """ERA5 layout at 180/(nlat-1) deg: latitude points include both poles."""
    return Grid("era5-like", np.linspace(-90.0, 90.0, nlat), np.arange(nlon) * 360.0 / nlon)


def global_mean(field: np.ndarray, lat: np.ndarray) -> float:
    """Exact spherical-area-weighted mean of a cellwise-constant field on a regular lat-lon grid."""
    weights = latitude_weights(lat)[:, None] * np.ones(field.shape[-1])
    return float((field.astype(np.float64) * weights).sum() / weights.sum())


def smooth_random_field(grid: Grid, seed: int = 0) -> np.ndarray:
    """A random smooth field with mean ~1 and variations of order 1 (low-order harmonics)."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(grid.lat)[:, None]
    lon = np.deg2rad(grid.lon)[None, :]
    field = np.ones((lat.size, lon.size)) + 0.5 * np.sin(lat) + 0.8 * np.sin(lat) ** 2 - 0.6 * np.sin(lat) ** 4
    for zonal in range(1, 13):
        for power in range(zonal, zonal + 3):
            amp, phase = rng.normal(0, 0.3), rng.uniform(0, 2 * np.pi)
            field = field + amp * np.cos(lat) ** power * np.cos(zonal * lon + phase)
    return field.astype(np.float32)


def cos_cell_average(lat: np.ndarray) -> np.ndarray:
    """Mean of cos(lat) over each cell in the sin(lat) (area) measure: int cos^2 dphi / int cos dphi."""
    edges = np.deg2rad(lat_bounds(lat))
    antiderivative = edges / 2 + np.sin(2 * edges) / 4
    return np.diff(antiderivative) / np.diff(np.sin(edges))


def canonical_dataset(grid: Grid, field: np.ndarray, n_times: int = 2) -> xr.Dataset:
    data = np.broadcast_to(field, (n_times, *field.shape)).astype(np.float32)
    times = pd.date_range("2016-01-01", periods=n_times, freq="6h")
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), data, {"units": "K", "long_name": "2 metre temperature"})},
        coords={"time": times, "latitude": grid.lat, "longitude": grid.lon},
    )


def write_cds_month(path, times, grid: Grid, group: str, seed: int) -> xr.Dataset:
    """A file laid out as the CDS delivers ERA5 netCDF (latitude north->south, levels descending)."""
    rng = np.random.default_rng(seed)
    lat = grid.lat[::-1]
    coords = {
        "valid_time": times,
        "latitude": lat,
        "longitude": grid.lon,
        "number": np.int64(0),
        "expver": ("valid_time", np.array(["0001"] * len(times))),
    }
    base = 250 + 30 * np.cos(np.deg2rad(lat))[:, None] + 5 * np.sin(np.deg2rad(grid.lon))[None, :]
    if group == "pressure-levels":
        coords["pressure_level"] = np.array([850.0, 500.0])
        dims = ("valid_time", "pressure_level", "latitude", "longitude")
        shape = (len(times), 2, lat.size, grid.lon.size)
        units = {"t": "K", "z": "m2 s-2", "u": "m s-1", "v": "m s-1"}
    else:
        dims = ("valid_time", "latitude", "longitude")
        shape = (len(times), lat.size, grid.lon.size)
        units = {"t2m": "K"}
    variables = {
        name: (
            dims,
            (base + rng.standard_normal(shape)).astype(np.float32),
            {"units": unit, "long_name": name, "standard_name": name},
        )
        for name, unit in units.items()
    }
    ds = xr.Dataset(
        variables,
        coords=coords,
        attrs={"Conventions": "CF-1.7", "institution": "European Centre for Medium-Range Weather Forecasts"},
    )
    encoding = {name: {"zlib": True, "complevel": 1} for name in units}
    encoding["valid_time"] = {"units": "seconds since 1970-01-01", "dtype": "int64"}
    ds.to_netcdf(path, encoding=encoding)
    return ds


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
@pytest.mark.parametrize(
    "source", [era5_like_grid(), named_grid("1deg"), named_grid("2.8125deg")], ids=lambda g: g.name
)
def test_constant_field_stays_constant(method, source):
    ds = canonical_dataset(source, np.full(source.shape, 273.15, dtype=np.float32))
    out = regrid(ds, TARGET, method)
    assert out["t2m"].dtype == np.float32
    assert out["t2m"].shape == (2, *TARGET.shape)
    np.testing.assert_allclose(out["t2m"].values, 273.15, rtol=1e-7)
    assert out["t2m"].attrs["units"] == "K"


@pytest.mark.parametrize("source", [era5_like_grid(), named_grid("1deg")], ids=lambda g: g.name)
def test_conservative_preserves_the_global_mean(source):
    field = smooth_random_field(source)
    out = regrid(canonical_dataset(source, field, n_times=1), TARGET)["t2m"].values[0]
    before, after = global_mean(field, source.lat), global_mean(out, TARGET.lat)
    assert abs(after - before) / abs(before) < 1e-6
    # The test can fail: bilinear interpolation, which is not conservative, misses by far more.
    bilinear = regrid(canonical_dataset(source, field, n_times=1), TARGET, "bilinear")["t2m"].values[0]
    assert abs(global_mean(bilinear, TARGET.lat) - before) / abs(before) > 3e-6


@pytest.mark.parametrize("fine", ["2.8125deg", "1.40625deg"])
def test_conservative_is_exact_for_cell_averages_of_cos_lat(fine):
    """Source cells nested in the target cells: the regridded cell averages of cos(lat) are the
    exact target cell averages (first-order conservative is exact for nested cells)."""
    source = named_grid(fine)
    field = np.repeat(cos_cell_average(source.lat)[:, None], source.lon.size, axis=1)
    out = Regridder(source.lat, source.lon, TARGET)(field)
    expected = cos_cell_average(TARGET.lat)[:, None]
    assert np.abs(out - expected).max() < 1e-6


def test_conservative_cos_lat_on_era5_grid_is_first_order_accurate():
    """ERA5 cells straddle the 5.625 deg cell edges; treating a source cell as constant then errs
    most near the poles, where the cells are smallest (measured: 6e-3 at 2.8125 deg, 3.5e-4 at 1 deg)."""
    errors = []
    for source in (era5_like_grid(), named_grid("1deg")):
        field = np.repeat(cos_cell_average(source.lat)[:, None], source.lon.size, axis=1)
        out = Regridder(source.lat, source.lon, TARGET)(field)
        errors.append(np.abs(out - cos_cell_average(TARGET.lat)[:, None]).max())
    assert errors[0] < 1e-2 and errors[1] < 1e-3 and errors[1] < errors[0] / 5


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_longitude_shift_by_one_target_cell_shifts_the_result(method):
    source = era5_like_grid()
    lon = np.deg2rad(source.lon)
    profile = np.cos(lon) + 0.4 * np.sin(3 * lon) + 0.2 * (source.lon > 300)
    field = (np.cos(np.deg2rad(source.lat))[:, None] * profile[None, :]).astype(np.float32)
    shifted = np.roll(field, 2, axis=1)  # 2 source cells = 5.625 deg = one target cell
    regridder = Regridder(source.lat, source.lon, TARGET, method)
    np.testing.assert_allclose(regridder(shifted), np.roll(regridder(field), 1, axis=1), atol=1e-6)


def test_conservative_wraps_around_longitude_zero():
    source = era5_like_grid()
    field = np.zeros(source.shape)
    field[:, -1] = 1.0  # the source cell [355.78, 358.59] deg
    out = Regridder(source.lat, source.lon, TARGET)(field)
    # Target cell 0 spans [357.19, 362.81] deg and the last one [351.56, 357.19]: half each.
    np.testing.assert_allclose(out[:, 0], 0.25, atol=1e-7)
    np.testing.assert_allclose(out[:, -1], 0.25, atol=1e-7)
    np.testing.assert_allclose(out[:, 1:-1], 0.0, atol=1e-7)


def test_bilinear_is_exact_for_a_field_linear_in_latitude():
    source, target = named_grid("2.8125deg"), named_grid("1deg")  # the target has poles, the source not
    field = np.repeat((3.0 + 0.02 * source.lat)[:, None], source.lon.size, axis=1)
    out = Regridder(source.lat, source.lon, target, "bilinear")(field)
    inside = np.abs(target.lat) <= source.lat.max()
    np.testing.assert_allclose(
        out[inside], (3.0 + 0.02 * target.lat[inside])[:, None] * np.ones(target.lon.size), rtol=1e-6
    )
    # Beyond the outermost source latitude the value is clamped to it.
    clamped = 3.0 + 0.02 * np.sign(target.lat[~inside]) * source.lat.max()
    np.testing.assert_allclose(out[~inside], np.broadcast_to(clamped[:, None], out[~inside].shape), rtol=1e-6)


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
def test_same_grid_is_the_identity(method):
    source = era5_like_grid()
    field = smooth_random_field(source)
    out = Regridder(source.lat, source.lon, source, method)(field)
    np.testing.assert_array_equal(out, field)


def test_regrid_accepts_north_to_south_latitudes():
    source = era5_like_grid()
    field = smooth_random_field(source)
    ds = canonical_dataset(source, field)
    flipped = ds.isel(latitude=slice(None, None, -1))
    np.testing.assert_array_equal(regrid(flipped, TARGET)["t2m"].values, regrid(ds, TARGET)["t2m"].values)


def test_regrid_files_writes_the_canonical_layout(tmp_path):
    source = era5_like_grid()
    raw = tmp_path / "raw"
    raw.mkdir()
    paths = []
    for month in (1, 2):
        times = pd.date_range(f"2016-{month:02d}-01", periods=6, freq="6h")
        paths.append(raw / f"{month:02d}.nc")
        write_cds_month(paths[-1], times, source, "pressure-levels", seed=month)
    out_dir = tmp_path / "regridded"
    output = out_dir / "2016.nc"
    regrid_files(paths[::-1], output, "5.625deg", "conservative")  # order of inputs does not matter

    assert sorted(p.name for p in out_dir.iterdir()) == ["2016.nc"]  # no temporary left behind
    with xr.open_dataset(output) as ds:
        ds.load()
    assert dict(ds.sizes) == {"time": 12, "level": 2, "latitude": 32, "longitude": 64}
    assert list(ds.data_vars) == ["t", "z", "u", "v"]
    for name in ds.data_vars:
        assert ds[name].dims == ("time", "level", "latitude", "longitude")
        assert ds[name].dtype == np.float32
        assert ds[name].attrs["units"] in ("K", "m2 s-2", "m s-1")
        assert ds[name].encoding["zlib"] and 1 <= ds[name].encoding["complevel"] <= 4
    assert ds["level"].values.tolist() == [500, 850] and ds["level"].dtype == np.int64
    np.testing.assert_array_equal(ds["latitude"].values, TARGET.lat)
    np.testing.assert_array_equal(ds["longitude"].values, TARGET.lon)
    assert ds["latitude"].attrs["units"] == "degrees_north" and ds["latitude"].attrs["standard_name"] == "latitude"
    assert ds["longitude"].attrs["units"] == "degrees_east" and ds["longitude"].attrs["standard_name"] == "longitude"
    assert pd.DatetimeIndex(ds["time"].values).is_monotonic_increasing
    assert "number" not in ds.variables and "expver" not in ds.variables
    assert ds.attrs["history"] == "seqvit regrid --grid 5.625deg --method conservative from 2 files"
    assert ds.attrs["institution"] == "European Centre for Medium-Range Weather Forecasts"

    # Streaming from files gives exactly what regridding the opened data in memory gives.
    expected = regrid(open_raw(paths), TARGET, "conservative")
    for name in ds.data_vars:
        np.testing.assert_array_equal(ds[name].values, expected[name].values)


def test_regrid_files_single_level_bilinear(tmp_path):
    source = era5_like_grid()
    path = tmp_path / "01.nc"
    write_cds_month(path, pd.date_range("2015-01-01", periods=4, freq="6h"), source, "single-levels", seed=0)
    output = tmp_path / "out" / "2015.nc"
    regrid_files([path], output, "5.625deg", "bilinear")
    with xr.open_dataset(output) as ds:
        assert ds["t2m"].dims == ("time", "latitude", "longitude")
        assert "level" not in ds.dims
        assert ds.attrs["history"] == "seqvit regrid --grid 5.625deg --method bilinear from 1 files"
        np.testing.assert_array_equal(ds["t2m"].values, regrid(open_raw([path]), TARGET, "bilinear")["t2m"].values)


def test_unknown_method_names_the_option_and_choices(tmp_path):
    source = era5_like_grid()
    ds = canonical_dataset(source, smooth_random_field(source))
    with pytest.raises(
        SeqvitError, match="method.*'nearest'.*conservative, bilinear|'nearest'.*--method.*conservative, bilinear"
    ):
        regrid(ds, TARGET, "nearest")
    path = tmp_path / "01.nc"
    write_cds_month(path, pd.date_range("2015-01-01", periods=2, freq="6h"), source, "single-levels", seed=0)
    with pytest.raises(SeqvitError, match="conservative, bilinear"):
        regrid_files([path], tmp_path / "out.nc", "5.625deg", "nearest")
    assert not (tmp_path / "out.nc").exists()


def test_irregular_grid_is_rejected():
    lat = np.sort(np.concatenate([np.linspace(-90, 90, 30), [1.3]]))
    lon = np.arange(64) * 5.625
    with pytest.raises(SeqvitError, match="latitude is not regularly spaced"):
        Regridder(lat, lon, TARGET)
    with pytest.raises(SeqvitError, match="do not cover the globe"):
        Regridder(np.linspace(-90, 90, 33), np.arange(60) * 5.625, TARGET)


def test_missing_values_raise_and_leave_no_file(tmp_path):
    source = era5_like_grid()
    paths = []
    for month in (1, 2):
        paths.append(tmp_path / f"{month:02d}.nc")
        ds = write_cds_month(
            paths[-1], pd.date_range(f"2015-{month:02d}-01", periods=2, freq="6h"), source, "single-levels", month
        )
    ds["t2m"][1, 3, 3] = np.nan
    ds.to_netcdf(paths[-1], mode="w")
    output = tmp_path / "out" / "2015.nc"
    with pytest.raises(SeqvitError, match="NaN"):
        regrid_files(paths, output, "5.625deg", "conservative")
    assert not output.parent.exists() or list(output.parent.iterdir()) == []


# ---- identity, other file layouts ------------------------------------------------------------


@pytest.mark.parametrize("method", ["conservative", "bilinear"])
@pytest.mark.parametrize("name", ["5.625deg", "0.25deg"])
def test_named_grid_onto_itself_is_a_copy(tmp_path, name, method):
    """0.25deg -> 0.25deg (ERA5, stored north to south) and 5.625deg -> 5.625deg change no value."""
    grid = named_grid(name)
    path = tmp_path / "01.nc"
    source = write_cds_month(path, pd.date_range("2016-01-01", periods=2, freq="6h"), grid, "single-levels", seed=3)
    regridder = Regridder(source["latitude"].values, source["longitude"].values, grid, method)
    assert regridder.is_identity
    output = tmp_path / "out.nc"
    regrid_files([path], output, name, method)
    with xr.open_dataset(output) as ds:
        np.testing.assert_array_equal(ds["latitude"].values, grid.lat)
        np.testing.assert_array_equal(ds["t2m"].values, source["t2m"].values[:, ::-1, :])  # ascending latitude


def test_coordinates_rounded_to_float32_still_give_the_identity():
    grid = named_grid("1.40625deg")
    lat = grid.lat.astype(np.float32).astype(np.float64) + 2e-6  # stored coarsely, as some files do
    regridder = Regridder(lat[::-1], grid.lon.astype(np.float32), grid)
    assert regridder.is_identity
    field = smooth_random_field(grid)
    np.testing.assert_array_equal(regridder(field[::-1]), field)


def test_a_different_grid_is_not_mistaken_for_the_identity():
    grid = named_grid("5.625deg")
    assert not Regridder(grid.lat, grid.lon + 0.01, grid).is_identity
    assert not Regridder(np.linspace(-90, 90, 33), grid.lon, grid).is_identity


def write_legacy_cds_month(path, times, grid: Grid, seed: int) -> xr.Dataset:
    """The netCDF the CDS delivered before 2024 (grib_to_netcdf): dims time, level, latitude,
    longitude; levels ascending int32 in millibars; data packed as int16 with scale_factor and
    add_offset; time as hours since 1900. Returns the decoded data."""
    rng = np.random.default_rng(seed)
    lat = grid.lat[::-1]
    values = (
        250 + 30 * np.cos(np.deg2rad(lat))[:, None] + rng.standard_normal((len(times), 2, lat.size, grid.lon.size))
    ).astype(np.float32)
    ds = xr.Dataset(
        {"t": (("time", "level", "latitude", "longitude"), values, {"units": "K", "long_name": "Temperature"})},
        coords={
            "time": times,
            "level": (
                "level",
                np.array([500, 850], dtype=np.int32),
                {"units": "millibars", "long_name": "pressure_level"},
            ),
            "latitude": ("latitude", lat, {"units": "degrees_north"}),
            "longitude": ("longitude", grid.lon, {"units": "degrees_east"}),
        },
        attrs={"Conventions": "CF-1.6", "history": "2023-01-01 00:00:00 GMT by grib_to_netcdf-2.25.1"},
    )
    low, high = float(values.min()), float(values.max())
    scale = (high - low) / (2**16 - 4)  # packed values stay clear of the fill value -32767
    encoding = {
        "t": {"dtype": "int16", "scale_factor": scale, "add_offset": (high + low) / 2, "_FillValue": np.int16(-32767)},
        "time": {"units": "hours since 1900-01-01 00:00:00.0", "dtype": "int32"},
    }
    ds.to_netcdf(path, format="NETCDF3_64BIT", encoding=encoding)
    with xr.open_dataset(path) as decoded:
        return decoded.load()


def test_legacy_cds_layout_packed_int16(tmp_path):
    source = era5_like_grid()
    path = tmp_path / "legacy.nc"
    decoded = write_legacy_cds_month(path, pd.date_range("2016-01-01", periods=3, freq="6h"), source, seed=4)
    output = tmp_path / "out.nc"
    regrid_files([path], output, "5.625deg", "conservative")
    with xr.open_dataset(output) as ds:
        assert ds["t"].dims == ("time", "level", "latitude", "longitude")
        assert ds["level"].values.tolist() == [500, 850]
        expected = Regridder(decoded["latitude"].values, decoded["longitude"].values, TARGET)(decoded["t"].values)
        np.testing.assert_array_equal(ds["t"].values, expected)
        assert ds.attrs["history"].splitlines() == [
            "seqvit regrid --grid 5.625deg --method conservative from 1 files",
            "2023-01-01 00:00:00 GMT by grib_to_netcdf-2.25.1",
        ]


def test_cfgrib_layout(tmp_path):
    """Names as cfgrib writes them: time (with valid_time beside it), isobaricInhPa, step, surface."""
    source = era5_like_grid()
    cds = write_cds_month(
        tmp_path / "cds.nc", pd.date_range("2016-01-01", periods=3, freq="6h"), source, "pressure-levels", seed=5
    )
    cfgrib = cds.drop_vars("expver").rename({"valid_time": "time", "pressure_level": "isobaricInhPa"})
    cfgrib = cfgrib.assign_coords(step=np.timedelta64(0, "ns"), surface=0.0, valid_time=("time", cfgrib["time"].values))
    cfgrib.to_netcdf(tmp_path / "cfgrib.nc")
    for path in ("cds.nc", "cfgrib.nc"):
        regrid_files([tmp_path / path], tmp_path / f"out-{path}", "5.625deg", "conservative")
    with xr.open_dataset(tmp_path / "out-cds.nc") as a, xr.open_dataset(tmp_path / "out-cfgrib.nc") as b:
        assert b["t"].dims == ("time", "level", "latitude", "longitude")
        np.testing.assert_array_equal(a["time"].values, b["time"].values)
        for name in ("t", "z", "u", "v"):
            np.testing.assert_array_equal(a[name].values, b[name].values)


def test_expver_dimension_is_collapsed_era5_first(tmp_path):
    """Older CDS months mixing ERA5 (expver 1) and ERA5T (expver 5) along an expver dimension."""
    source = era5_like_grid()
    times = pd.date_range("2016-01-01", periods=4, freq="6h")
    cds = write_cds_month(tmp_path / "cds.nc", times, source, "single-levels", seed=6)
    final = cds["t2m"].values
    stacked = np.stack([final, final + 50.0])  # (expver, time, lat, lon)
    stacked[0, 2:] = np.nan  # ERA5 ends after two steps, ERA5T holds the rest
    preliminary_only = final + 50.0
    old = xr.Dataset(
        {"t2m": (("expver", "time", "latitude", "longitude"), stacked.astype(np.float32), {"units": "K"})},
        coords={
            "expver": [1, 5],
            "time": times,
            "latitude": cds["latitude"].values,
            "longitude": cds["longitude"].values,
        },
    )
    old.to_netcdf(tmp_path / "expver.nc")
    output = tmp_path / "out.nc"
    regrid_files([tmp_path / "expver.nc"], output, "5.625deg", "conservative")
    regridder = Regridder(cds["latitude"].values, cds["longitude"].values, TARGET)
    with xr.open_dataset(output) as ds:
        assert ds["t2m"].dims == ("time", "latitude", "longitude") and "expver" not in ds.variables
        np.testing.assert_array_equal(ds["t2m"].values[:2], regridder(final[:2]))
        np.testing.assert_array_equal(ds["t2m"].values[2:], regridder(preliminary_only[2:]))
        np.testing.assert_array_equal(
            ds["t2m"].values, regrid(open_raw([tmp_path / "expver.nc"]), TARGET)["t2m"].values
        )


def test_zip_or_grib_input_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "delivery.nc"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(SeqvitError, match="delivery.nc: is a ZIP file; regrid reads netCDF"):
        regrid_files([path], tmp_path / "out.nc", "5.625deg", "conservative")


def test_single_time_step_squeezed_by_cfgrib(tmp_path):
    """cfgrib drops the time dimension of a one-step file (time and valid_time become scalars);
    read through the canonical view, with longitudes from -180 to check the order is restored."""
    source = era5_like_grid()
    cds = write_cds_month(tmp_path / "cds.nc", pd.date_range("2016-01-01", periods=1), source, "single-levels", seed=7)
    shifted = cds.roll(longitude=64, roll_coords=True)
    shifted = shifted.assign_coords(longitude=np.mod(shifted["longitude"].values + 180, 360) - 180)  # -180 .. 177.1875
    squeezed = shifted.isel(valid_time=0).drop_vars("expver").rename({"valid_time": "time"})
    squeezed = squeezed.assign_coords(valid_time=squeezed["time"].values)
    assert squeezed["t2m"].dims == ("latitude", "longitude")
    squeezed.to_netcdf(tmp_path / "squeezed.nc")
    for name in ("cds.nc", "squeezed.nc"):
        regrid_files([tmp_path / name], tmp_path / f"out-{name}", "5.625deg", "conservative")
    with xr.open_dataset(tmp_path / "out-cds.nc") as a, xr.open_dataset(tmp_path / "out-squeezed.nc") as b:
        np.testing.assert_array_equal(a["time"].values, b["time"].values)
        np.testing.assert_array_equal(b["t2m"].values, a["t2m"].values)


def test_streaming_in_small_chunks_across_file_boundaries(tmp_path, monkeypatch):
    """Read chunks of 5 steps and output blocks of 7 that straddle the monthly files give exactly
    the in-memory result (the reader runs one chunk ahead of the regridding)."""
    import seqvit.data.regrid_files as regrid_module

    source = era5_like_grid()
    step_in = source.shape[0] * source.shape[1] * 2 * 12  # two levels, float32 + float64 per point
    monkeypatch.setattr(regrid_module, "_CHUNK_BYTES", 5 * step_in)
    monkeypatch.setattr(regrid_module, "_DISK_CHUNK_BYTES", 7 * 2 * TARGET.shape[0] * TARGET.shape[1] * 4)
    paths = []
    for month, steps in ((1, 9), (2, 4), (3, 11)):
        paths.append(tmp_path / f"{month:02d}.nc")
        write_cds_month(
            paths[-1], pd.date_range(f"2016-{month:02d}-01", periods=steps, freq="6h"), source, "pressure-levels", month
        )
    output = tmp_path / "out.nc"
    regrid_files(paths, output, "5.625deg", "conservative")
    expected = regrid(open_raw(paths), TARGET, "conservative")
    with xr.open_dataset(output) as ds:
        assert ds["t"].encoding["chunksizes"][0] == 7
        for name in ("t", "z", "u", "v"):
            np.testing.assert_array_equal(ds[name].values, expected[name].values)
