"""WeatherBench2 and local sources, and the readers behind them: every source ends in the same
verified CDS-layout raw files that regrid reads."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from seqvit.data import era5
from seqvit.data.grids import named_grid
from seqvit.data.regrid_files import regrid_files
from seqvit.data.sources import download, find_request
from seqvit.data.sources.verify import Expectation, VerificationError, verify_file
from seqvit.data.sources.writer import write_cds_netcdf
from seqvit.errors import SeqvitError
from seqvit.layout import Layout

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [250, 500, 850]  # ascending, as WeatherBench2 stores them


def field(times, shape, offset):
    """Deterministic values that differ in every time step and grid point."""
    hours = (pd.DatetimeIndex(times) - pd.Timestamp("2018-01-01")).total_seconds().values / 3600
    base = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) / 100
    return (offset + base[None] + hours.reshape((-1,) + (1,) * len(shape)) / 10).astype(np.float32)


# ---- WeatherBench2 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wb2_store(tmp_path_factory):
    """A zarr store laid out like gs://weatherbench2/datasets/era5/...-6h-64x32_equiangular_conservative.zarr:
    long names, dims (time, [level,] longitude, latitude), latitude ascending, 6-hourly, zarr v2."""
    grid = named_grid("5.625deg")
    times = pd.date_range("2018-01-01", "2018-02-28T18:00", freq="6h")
    shape2 = (grid.lon.size, grid.lat.size)
    shape3 = (len(LEVELS), grid.lon.size, grid.lat.size)
    ds = xr.Dataset(
        {
            "2m_temperature": (("time", "longitude", "latitude"), field(times, shape2, 250)),
            "temperature": (("time", "level", "longitude", "latitude"), field(times, shape3, 200)),
            "geopotential": (("time", "level", "longitude", "latitude"), field(times, shape3, 5000)),
            "10m_u_component_of_wind": (("time", "longitude", "latitude"), field(times, shape2, 0)),
        },
        coords={"time": times, "level": np.array(LEVELS, dtype=np.int64), "latitude": grid.lat, "longitude": grid.lon},
    )
    path = tmp_path_factory.mktemp("wb2") / "1959-2023_01_10-6h-64x32_equiangular_conservative.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path, ds


@pytest.fixture
def wb2_cfg(demo_cfg, tmp_path, wb2_store):
    cfg = demo_cfg
    cfg["results"] = str(tmp_path / "results")
    cfg["source"] = {"kind": "weatherbench2", "store": str(wb2_store[0])}
    cfg["data"].update(
        years=[2018],
        months=[1, 2],
        hours=[0, 6, 12, 18],
        single_level=["t2m"],
        pressure_level=["t", "z"],
        levels=[850, 500],
    )
    return cfg


def test_weatherbench2_store_becomes_verified_raw_files_and_regrids_as_identity(wb2_cfg, wb2_store, tmp_path):
    _, store = wb2_store
    outcome = download(wb2_cfg, None, Layout(wb2_cfg).raw_dir)
    assert sorted(outcome.values()) == ["fetched"] * 4
    layout = Layout(wb2_cfg)
    record = json.loads(find_request(wb2_cfg, "pressure-levels/2018/02").manifest_path(layout.raw_dir).read_text())
    assert record["source"] == "weatherbench2" and record["store_variables"] == {
        "t": "temperature",
        "z": "geopotential",
    }
    assert record["content"]["time_steps"] == 28 * 4 and record["content"]["grid"] == [32, 64]

    raw = xr.open_dataset(layout.raw("pressure-levels", 2018, 1))  # the CDS layout regrid expects
    assert list(raw["t"].dims) == ["valid_time", "pressure_level", "latitude", "longitude"]
    assert list(raw["pressure_level"].values) == [850.0, 500.0] and raw["latitude"].values[0] > 0
    raw.close()

    for group, names in (
        ("single-levels", {"t2m": "2m_temperature"}),
        ("pressure-levels", {"t": "temperature", "z": "geopotential"}),
    ):
        out = tmp_path / f"{group}.nc"
        regrid_files(layout.raw_year(group, 2018), out, "5.625deg", "conservative")
        with xr.open_dataset(out) as regridded:
            for short, long in names.items():
                expected = store[long].sel(time=regridded["time"].values)
                if "level" in expected.dims:
                    expected = expected.sel(level=[500, 850]).transpose("time", "level", "latitude", "longitude")
                else:
                    expected = expected.transpose("time", "latitude", "longitude")
                np.testing.assert_array_equal(regridded[short].values, expected.values)  # identity, bit for bit
    assert download(wb2_cfg, None, Layout(wb2_cfg).raw_dir) == {key: "kept" for key in outcome}


def test_weatherbench2_gaps_and_names_are_clear_errors(wb2_cfg):
    wb2_cfg["data"]["hours"] = [0, 3]
    with pytest.raises(SeqvitError, match=r"lacks 31 time steps of single-levels 2018-01 .* every 6 hours.*data.hours"):
        download(wb2_cfg, ["single-levels/2018/01"], Layout(wb2_cfg).raw_dir)
    wb2_cfg["data"].update(hours=[0], single_level=["msl"])
    with pytest.raises(SeqvitError, match=r"holds no variable mean_sea_level_pressure \(msl\).*source.variable_names"):
        download(wb2_cfg, ["single-levels/2018/01"], Layout(wb2_cfg).raw_dir)
    wb2_cfg["source"]["variable_names"] = {"msl": "10m_u_component_of_wind"}  # a mapping is honoured
    assert download(wb2_cfg, ["single-levels/2018/01"], Layout(wb2_cfg).raw_dir) == {"single-levels/2018/01": "fetched"}
    assert not list(Layout(wb2_cfg).raw_dir.rglob("*.tmp"))


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_public_store_without_gcsfs_says_what_to_install(wb2_cfg):
    wb2_cfg["source"]["store"] = (
        "gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32_equiangular_conservative.zarr"
    )
    with pytest.raises(SeqvitError, match=r"needs gcsfs: pip install 'seqvit\[gcs\]'"):
        download(wb2_cfg, ["single-levels/2018/01"], Layout(wb2_cfg).raw_dir)


# ---- local files ---------------------------------------------------------------------------------

LAT = np.linspace(90, -90, 5)
LON = np.arange(0, 360, 45.0)


def cds_dataset(names, times, levels=None, expver="0001", offset=0.0):
    """Data variables in the current CDS netCDF layout."""
    dims = ("valid_time", *(["pressure_level"] if levels else []), "latitude", "longitude")
    shape = (*([len(levels)] if levels else []), LAT.size, LON.size)
    coords = {
        "valid_time": times,
        "latitude": LAT,
        "longitude": LON,
        "number": 0,
        "expver": ("valid_time", [expver] * len(times)),
    }
    if levels:
        coords["pressure_level"] = np.array(sorted(levels, reverse=True), dtype=float)
    data = {name: (dims, field(times, shape, offset + 10 * i), {"units": "K"}) for i, name in enumerate(names)}
    return xr.Dataset(data, coords=coords)


def write_nc(ds, path):
    ds.to_netcdf(
        path,
        encoding={"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}}
        if "valid_time" in ds
        else None,
    )


@pytest.fixture
def local_dir(tmp_path):
    """ERA5 files cut and formatted several ways, as people keep them."""
    folder = tmp_path / "era5"
    (folder / "sfc").mkdir(parents=True)
    (folder / "pl").mkdir()
    jan = pd.date_range("2018-01-01", "2018-01-31T12:00", freq="12h")
    feb = pd.date_range("2018-02-01", "2018-02-28T12:00", freq="12h")
    # t2m of January: current CDS netCDF; of February: a CDS zip with an accumulated member
    write_nc(cds_dataset(["t2m"], jan, offset=250), folder / "sfc" / "t2m_201801.nc")
    instant = folder / "instant.nc"
    accum = folder / "accum.nc"
    write_nc(cds_dataset(["t2m"], feb, offset=250), instant)
    write_nc(cds_dataset(["tp"], feb, offset=0), accum)
    with zipfile.ZipFile(folder / "sfc" / "201802.zip", "w") as archive:
        archive.write(instant, "data_stream-oper_stepType-instant.nc")
        archive.write(accum, "data_stream-oper_stepType-accum.nc")
    instant.unlink()
    accum.unlink()
    # t of January: older CDS netCDF with an expver dimension (ERA5 to the 20th, ERA5T after)
    both = cds_dataset(["t"], jan, levels=[500, 850], offset=200).drop_vars("expver")
    era5_part = both.where(both["valid_time"] < np.datetime64("2018-01-21"))
    era5t_part = both.where(both["valid_time"] >= np.datetime64("2018-01-21"))
    old = xr.concat([era5_part, era5t_part], dim=xr.DataArray([1, 5], dims="expver", name="expver"))
    old = old.transpose("valid_time", "expver", ...).rename(valid_time="time")
    old.to_netcdf(folder / "pl" / "t_201801_era5_era5t.nc")
    # t of February: cfgrib-style names (time, isobaricInhPa), levels ascending
    cfgrib_style = cds_dataset(["t"], feb, levels=[500, 850], offset=200).drop_vars("expver")
    cfgrib_style.rename(valid_time="time", pressure_level="isobaricInhPa").sortby("isobaricInhPa").to_netcdf(
        folder / "pl" / "t_201802_cfgrib.nc"
    )
    (folder / "README.txt").write_text("not data")
    return folder


@pytest.fixture
def local_cfg(demo_cfg, tmp_path, local_dir):
    cfg = demo_cfg
    cfg["results"] = str(tmp_path / "results")
    cfg["source"] = {"kind": "local", "path": str(local_dir)}
    cfg["data"].update(
        years=[2018], months=[1, 2], hours=[0, 12], single_level=["t2m"], pressure_level=["t"], levels=[500, 850]
    )
    return cfg


def test_local_files_of_every_layout_become_verified_raw_files(local_cfg, local_dir):
    assert sorted(download(local_cfg, None, Layout(local_cfg).raw_dir).values()) == ["fetched"] * 4
    layout = Layout(local_cfg)
    jan = pd.date_range("2018-01-01", "2018-01-31T12:00", freq="12h")
    t2m = era5.open_raw(layout.raw_year("single-levels", 2018))
    assert t2m.sizes["time"] == 62 + 56 and sorted(t2m.data_vars) == ["t2m"]
    np.testing.assert_array_equal(t2m["t2m"].sel(time=jan).values, field(jan, (5, 8), 250)[:, ::-1, :])
    t = era5.open_raw(layout.raw_year("pressure-levels", 2018))
    expected = field(jan, (2, 5, 8), 200)  # levels 850, 500 as written; latitude north to south
    np.testing.assert_array_equal(
        t["t"].sel(time=jan, level=850).values, expected[:, 0, ::-1, :]
    )  # ERA5 and ERA5T joined
    assert not np.isnan(t["t"].values).any()
    record = json.loads(find_request(local_cfg, "pressure-levels/2018/01").manifest_path(layout.raw_dir).read_text())
    assert record["source"] == "local" and [Path(f["path"]).name for f in record["files"]] == ["t_201801_era5_era5t.nc"]
    assert json.loads((layout.raw_dir / "manifest" / "local-index.json").read_text())["files"]  # scanned once, cached


def test_local_duplicates_and_gaps_are_errors_that_name_the_files(local_cfg, local_dir):
    shutil.copy(local_dir / "sfc" / "t2m_201801.nc", local_dir / "t2m_201801_copy.nc")
    with pytest.raises(SeqvitError, match=r"t2m at 2018-01-01 00:00 is in both .*t2m_201801.*copy.nc"):
        download(local_cfg, ["single-levels/2018/01"], Layout(local_cfg).raw_dir)
    (local_dir / "t2m_201801_copy.nc").unlink()
    (local_dir / "sfc" / "201802.zip").unlink()
    with pytest.raises(SeqvitError, match=r"no file holds \['t2m'\] in 2018-02"):
        download(local_cfg, ["single-levels/2018/02"], Layout(local_cfg).raw_dir)
    local_cfg["data"]["hours"] = [0, 6, 12]
    with pytest.raises(SeqvitError, match=r"no file holds t2m at 31 of the 93 time steps of single-levels 2018-01"):
        download(local_cfg, ["single-levels/2018/01"], Layout(local_cfg).raw_dir)
    assert not list(Layout(local_cfg).raw_dir.rglob("*.nc"))


def test_snakemake_runs_the_download_jobs(local_cfg, tmp_path):
    """The download rule end to end: one job per file, the CLI it calls, its outputs."""
    local_cfg["data"].update(months=[1], years=[2016, 2017, 2018])  # a valid experiment: three split years
    local_cfg["splits"] = {"train": [2016], "val": [2017], "test": [2018]}
    local_cfg["train"]["lead_hours"] = local_cfg["evaluate"]["lead_hours"] = [12]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(local_cfg))
    targets = [str(p) for p in Layout(local_cfg).raw_all() if p.parent.name == "2018"]  # the year on disk
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(path),
            "--cores",
            "2",
            *targets,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 of 2 steps (100%) done" in proc.stdout + proc.stderr
    for request_id in ("single-levels/2018/01", "pressure-levels/2018/01"):
        request = find_request(local_cfg, request_id)
        assert json.loads(request.manifest_path(Layout(local_cfg).raw_dir).read_text())["file"] == request.relpath()


# ---- readers and checks ----------------------------------------------------------------------


def test_open_raw_reads_a_cds_zip_of_instant_and_accumulated_members(tmp_path):
    times = pd.date_range("2018-01-01", periods=4, freq="6h")
    write_nc(cds_dataset(["t2m"], times), tmp_path / "i.nc")
    write_nc(cds_dataset(["tp"], times), tmp_path / "a.nc")
    with zipfile.ZipFile(tmp_path / "delivery.nc", "w") as archive:  # the CDS names it .nc all the same
        archive.write(tmp_path / "i.nc", "data_stream-oper_stepType-instant.nc")
        archive.write(tmp_path / "a.nc", "data_stream-oper_stepType-accum.nc")
    ds = era5.open_raw(tmp_path / "delivery.nc")
    assert sorted(ds.data_vars) == ["t2m", "tp"] and ds.sizes["time"] == 4 and ds["latitude"].values[0] == -90


def test_cfgrib_shaped_datasets_become_canonical():
    times = pd.date_range("2018-01-01", periods=3, freq="6h")
    instant = xr.Dataset(
        {"t": (("time", "isobaricInhPa", "latitude", "longitude"), np.ones((3, 2, 5, 8), "f4"))},
        coords={
            "time": times,
            "step": np.timedelta64(0, "ns"),
            "isobaricInhPa": [850.0, 500.0],
            "latitude": LAT,
            "longitude": LON,
            "valid_time": ("time", times.values),
            "number": 0,
        },
    )
    ds = era5.canonicalize(instant)
    assert list(ds["t"].dims) == ["time", "level", "latitude", "longitude"] and list(ds["level"].values) == [500, 850]
    # accumulations: forecast base times x steps, with valid times outside the delivery left empty
    base = pd.to_datetime(["2017-12-31T18:00", "2018-01-01T06:00"])
    steps = pd.to_timedelta(np.arange(1, 13), "h")
    valid = base.values[:, None] + steps.values[None, :]
    inside = (valid >= np.datetime64("2018-01-01T00:00")) & (valid <= np.datetime64("2018-01-01T12:00"))
    values = np.where(inside[..., None, None], 1.0, np.nan).astype("f4") * np.ones((1, 1, 5, 8), "f4")
    accum = xr.Dataset(
        {"tp": (("time", "step", "latitude", "longitude"), values)},
        coords={
            "time": base,
            "step": steps,
            "latitude": LAT,
            "longitude": LON,
            "valid_time": (("time", "step"), valid),
        },
    )
    ds = era5.canonicalize(accum)
    assert list(ds["tp"].dims) == ["time", "latitude", "longitude"]
    np.testing.assert_array_equal(ds["time"].values, pd.date_range("2018-01-01", "2018-01-01T12:00", freq="h").values)
    one_step = instant.isel(time=0)
    assert era5.canonicalize(one_step).sizes["time"] == 1


@pytest.mark.skipif(importlib.util.find_spec("cfgrib") is not None, reason="cfgrib is installed")
def test_grib_without_cfgrib_says_what_to_install(tmp_path):
    (tmp_path / "a.grib").write_bytes(b"GRIB" + b"\0" * 100)
    with pytest.raises(SeqvitError, match=r"a.grib: is GRIB; reading GRIB needs cfgrib .*seqvit\[grib\]"):
        era5.open_raw(tmp_path / "a.grib")


def test_verification_names_what_is_wrong(tmp_path):
    times = pd.date_range("2018-01-01", periods=4, freq="6h")
    canonical = era5.canonicalize(cds_dataset(["t"], times, levels=[500, 850]))
    path = tmp_path / "f.nc"
    write_cds_netcdf(path, [canonical], expver={t: "0001" for t in times.values.astype("datetime64[ns]")})
    good = Expectation(("t",), (500, 850), times.values.astype("datetime64[ns]"), LAT, LON)
    assert verify_file(path, good)["time_steps"] == 4
    cases = [
        (Expectation(("t", "z"), (500, 850), good.times), r"holds no variable z"),
        (Expectation(("t",), (500, 700, 850), good.times), r"missing \[700\] hPa"),
        (Expectation(("t",), (500, 850), good.times[:3]), r"holds 1 time steps that were not requested"),
        (
            Expectation(("t",), (500, 850), good.times, np.linspace(90, -90, 9), LON),
            r"latitude has 5 points .* expected 9",
        ),
    ]
    for expected, message in cases:
        with pytest.raises(VerificationError, match=message):
            verify_file(path, expected)
    (tmp_path / "cut.nc").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(VerificationError) as info:
        verify_file(tmp_path / "cut.nc", good)
    assert info.value.unreadable
