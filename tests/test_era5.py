"""Reading ERA5 files in the current CDS layout and the older cfgrib layout into one layout."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from seqvit.data.era5 import open_raw
from seqvit.errors import SeqvitError


def cds_file(path, start="2018-01-01", steps=4, lat=np.linspace(90, -90, 5), lon=np.arange(0, 360, 45.0)):
    """A pressure-level file as the CDS delivers netCDF today."""
    time = pd.date_range(start, periods=steps, freq="6h")
    levels = np.array([850.0, 500.0])  # descending, as delivered
    rng = np.random.default_rng(0)
    t = rng.normal(270, 5, (steps, 2, len(lat), len(lon))).astype(np.float32)
    ds = xr.Dataset(
        {"t": (("valid_time", "pressure_level", "latitude", "longitude"), t, {"units": "K"})},
        coords={
            "valid_time": time,
            "pressure_level": levels,
            "latitude": lat,
            "longitude": lon,
            "number": 0,
            "expver": ("valid_time", ["0001"] * steps),
        },
    )
    ds.to_netcdf(path)
    return ds


def test_cds_layout_becomes_canonical(tmp_path):
    src = cds_file(tmp_path / "a.nc")
    ds = open_raw([tmp_path / "a.nc"])
    assert list(ds["t"].dims) == ["time", "level", "latitude", "longitude"]
    assert list(ds["level"].values) == [500, 850]
    assert np.all(np.diff(ds["latitude"].values) > 0)
    assert "number" not in ds.variables and "expver" not in ds.variables
    np.testing.assert_array_equal(ds["t"].sel(level=850).values, src["t"].sel(pressure_level=850.0).values[:, ::-1, :])


def test_months_are_concatenated_in_time(tmp_path):
    cds_file(tmp_path / "02.nc", start="2018-02-01")
    cds_file(tmp_path / "01.nc", start="2018-01-01")
    ds = open_raw([tmp_path / "02.nc", tmp_path / "01.nc"])
    assert ds.sizes["time"] == 8 and pd.DatetimeIndex(ds["time"].values).is_monotonic_increasing


def test_cfgrib_style_names(tmp_path):
    src = cds_file(tmp_path / "a.nc").rename({"valid_time": "time", "pressure_level": "isobaricInhPa"})
    src.drop_vars(["expver"]).to_netcdf(tmp_path / "old.nc")
    ds = open_raw(tmp_path / "old.nc")
    assert list(ds["t"].dims) == ["time", "level", "latitude", "longitude"]


def test_longitudes_from_minus_180_are_wrapped(tmp_path):
    cds_file(tmp_path / "a.nc", lon=np.arange(-180, 180, 45.0))
    ds = open_raw(tmp_path / "a.nc")
    assert ds["longitude"].values.min() >= 0 and np.all(np.diff(ds["longitude"].values) > 0)


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"not a netcdf file")
    with pytest.raises(SeqvitError, match="broken.nc"):
        open_raw(bad)
    with pytest.raises(SeqvitError, match="missing.nc: file not found"):
        open_raw(tmp_path / "missing.nc")
