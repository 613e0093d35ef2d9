"""Embedded ERA5-like source: a small atmosphere that needs no credentials and no GPU.

`synthesize(cfg, raw_dir)` writes raw_dir/{group}/{year}/{month:02d}.nc in exactly the layout of
the netCDF the Copernicus CDS delivers today, so every later stage treats it like real ERA5;
`raw_paths(cfg, raw_dir)` lists those files (the Snakefile's outputs).

The fields come from seqvit.data.atmosphere (a barotropic flow on a channel with advected
temperatures, a surface layer and geostrophic heights: see that module).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import xarray as xr

from seqvit import lineage
from seqvit.data.atmosphere import SynthSettings, simulate
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

GROUPS = ("single-levels", "pressure-levels")

# ERA5 metadata as the CDS netCDF carries it (cfgrib names; units in ecCodes spelling).
VARIABLE_ATTRS = {
    "t2m": {
        "GRIB_paramId": 167,
        "GRIB_name": "2 metre temperature",
        "GRIB_shortName": "2t",
        "GRIB_units": "K",
        "GRIB_typeOfLevel": "surface",
        "GRIB_cfName": "unknown",
        "GRIB_cfVarName": "t2m",
        "long_name": "2 metre temperature",
        "units": "K",
        "standard_name": "unknown",
    },
    "t": {
        "GRIB_paramId": 130,
        "GRIB_name": "Temperature",
        "GRIB_shortName": "t",
        "GRIB_units": "K",
        "GRIB_typeOfLevel": "isobaricInhPa",
        "GRIB_cfName": "air_temperature",
        "GRIB_cfVarName": "t",
        "long_name": "Temperature",
        "units": "K",
        "standard_name": "air_temperature",
    },
    "z": {
        "GRIB_paramId": 129,
        "GRIB_name": "Geopotential",
        "GRIB_shortName": "z",
        "GRIB_units": "m**2 s**-2",
        "GRIB_typeOfLevel": "isobaricInhPa",
        "GRIB_cfName": "geopotential",
        "GRIB_cfVarName": "z",
        "long_name": "Geopotential",
        "units": "m**2 s**-2",
        "standard_name": "geopotential",
    },
    "u": {
        "GRIB_paramId": 131,
        "GRIB_name": "U component of wind",
        "GRIB_shortName": "u",
        "GRIB_units": "m s**-1",
        "GRIB_typeOfLevel": "isobaricInhPa",
        "GRIB_cfName": "eastward_wind",
        "GRIB_cfVarName": "u",
        "long_name": "U component of wind",
        "units": "m s**-1",
        "standard_name": "eastward_wind",
    },
    "v": {
        "GRIB_paramId": 132,
        "GRIB_name": "V component of wind",
        "GRIB_shortName": "v",
        "GRIB_units": "m s**-1",
        "GRIB_typeOfLevel": "isobaricInhPa",
        "GRIB_cfName": "northward_wind",
        "GRIB_cfVarName": "v",
        "long_name": "V component of wind",
        "units": "m s**-1",
        "standard_name": "northward_wind",
    },
}
SINGLE_LEVEL_VARIABLES = ("t2m",)
PRESSURE_LEVEL_VARIABLES = ("t", "z", "u", "v")
LEVEL_RANGE_HPA = (100.0, 1000.0)  # log-pressure extrapolation from 850/500 stays plausible here

_GLOBAL_ATTRS = {
    "GRIB_centre": "ecmf",
    "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
    "GRIB_subCentre": 0,
    "Conventions": "CF-1.7",
    "institution": "European Centre for Medium-Range Weather Forecasts",
}


# --------------------------------------------------------------------------------------------
# Configuration


def _int_list(value, key: str, low: int, high: int) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SeqvitError(f"config key '{key}' must be a non-empty list of integers, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not low <= item <= high:
            raise SeqvitError(f"config key '{key}': {item!r} is not an integer in [{low}, {high}]")
        out.append(int(item))
    if len(set(out)) != len(out):
        raise SeqvitError(f"config key '{key}' lists a value twice: {value!r}")
    return tuple(sorted(out))


def settings_from_config(cfg: dict) -> SynthSettings:
    """Read and check the keys the synthetic source uses (see config/README.md)."""
    source = cfg.get("source") or {}
    data = cfg.get("data") or {}
    if "data" not in cfg:
        raise SeqvitError("config has no 'data' section; copy it from config/config.yaml")

    seed = source.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SeqvitError(f"config key 'source.seed' must be a non-negative integer, got {seed!r}")
    nlat = source.get("nlat", 65)
    nlon = source.get("nlon", 128)
    if isinstance(nlat, bool) or not isinstance(nlat, (int, np.integer)) or nlat < 9 or nlat % 2 == 0:
        raise SeqvitError(
            f"config key 'source.nlat' must be an odd integer >= 9 (latitudes 90..-90 with "
            f"poles and the equator), got {nlat!r}; the demo uses 65"
        )
    if isinstance(nlon, bool) or not isinstance(nlon, (int, np.integer)) or nlon < 16 or nlon % 2:
        raise SeqvitError(f"config key 'source.nlon' must be an even integer >= 16, got {nlon!r}; the demo uses 128")
    spinup = source.get("spinup_days", 100)
    if isinstance(spinup, bool) or not isinstance(spinup, (int, float)) or spinup < 0:
        raise SeqvitError(f"config key 'source.spinup_days' must be a number >= 0, got {spinup!r}")

    years = _int_list(data.get("years"), "data.years", 1, 9999)
    months = _int_list(data.get("months", list(range(1, 13))), "data.months", 1, 12)
    hours = _int_list(data.get("hours"), "data.hours", 0, 23)

    single = data.get("single_level") or []
    pressure = data.get("pressure_level") or []
    for key, names, supported in (
        ("data.single_level", single, SINGLE_LEVEL_VARIABLES),
        ("data.pressure_level", pressure, PRESSURE_LEVEL_VARIABLES),
    ):
        if not isinstance(names, (list, tuple)):
            raise SeqvitError(f"config key '{key}' must be a list of ERA5 short names, got {names!r}")
        unknown = [n for n in names if n not in supported]
        if unknown:
            raise SeqvitError(
                f"config key '{key}': the synthetic source cannot make {unknown}; "
                f"it supports {list(supported)} (use source.kind cds for other variables)"
            )
        if len(set(names)) != len(names):
            raise SeqvitError(f"config key '{key}' lists a variable twice: {names!r}")
    if not single and not pressure:
        raise SeqvitError("config keys 'data.single_level' and 'data.pressure_level' are both empty")

    levels: tuple[float, ...] = ()
    if pressure:
        raw_levels = data.get("levels")
        if not isinstance(raw_levels, (list, tuple)) or not raw_levels:
            raise SeqvitError(f"config key 'data.levels' must list pressure levels in hPa, got {raw_levels!r}")
        for level in raw_levels:
            if (
                isinstance(level, bool)
                or not isinstance(level, (int, float))
                or not (LEVEL_RANGE_HPA[0] <= level <= LEVEL_RANGE_HPA[1])
            ):
                raise SeqvitError(
                    f"config key 'data.levels': {level!r} hPa is outside what the synthetic source "
                    f"makes ({LEVEL_RANGE_HPA[0]:g}..{LEVEL_RANGE_HPA[1]:g} hPa)"
                )
        if len(set(raw_levels)) != len(raw_levels):
            raise SeqvitError(f"config key 'data.levels' lists a level twice: {raw_levels!r}")
        levels = tuple(sorted((float(v) for v in raw_levels), reverse=True))

    return SynthSettings(
        seed=int(seed),
        nlat=int(nlat),
        nlon=int(nlon),
        spinup_days=float(spinup),
        years=years,
        months=months,
        hours=hours,
        single_level=tuple(single),
        pressure_level=tuple(pressure),
        levels=levels,
    )


def _groups(settings: SynthSettings) -> list[str]:
    return [g for g, names in zip(GROUPS, (settings.single_level, settings.pressure_level)) if names]


def raw_paths(cfg: dict, raw_dir: str | Path) -> list[Path]:
    """The files `synthesize` writes, in the order it returns them (group, year, month)."""
    settings = settings_from_config(cfg)
    raw_dir = Path(raw_dir)
    return [
        raw_dir / group / str(year) / f"{month:02d}.nc"
        for group in _groups(settings)
        for year in settings.years
        for month in settings.months
    ]


def _dataset(
    group: str, times: list[dt.datetime], arrays: dict[str, np.ndarray], settings: SynthSettings
) -> xr.Dataset:
    """One month of one group, exactly in the CDS netCDF layout."""
    latitude = settings.latitude
    longitude = settings.longitude
    coords = {
        "number": xr.Variable(
            (), np.int64(0), {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"}
        ),
        "valid_time": xr.Variable(
            "valid_time", np.array(times, dtype="datetime64[ns]"), {"long_name": "time", "standard_name": "time"}
        ),
        "latitude": xr.Variable(
            "latitude",
            latitude,
            {
                "units": "degrees_north",
                "standard_name": "latitude",
                "long_name": "latitude",
                "stored_direction": "decreasing",
            },
        ),
        "longitude": xr.Variable(
            "longitude", longitude, {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}
        ),
        "expver": xr.Variable("valid_time", np.array(["0001"] * len(times), dtype=str)),
    }
    if group == "pressure-levels":
        coords["pressure_level"] = xr.Variable(
            "pressure_level",
            np.array(settings.levels, dtype=np.float64),
            {
                "long_name": "pressure",
                "units": "hPa",
                "positive": "down",
                "stored_direction": "decreasing",
                "standard_name": "air_pressure",
            },
        )
        dims: tuple[str, ...] = ("valid_time", "pressure_level", "latitude", "longitude")
    else:
        dims = ("valid_time", "latitude", "longitude")
    grid_attrs = {
        "GRIB_dataType": "an",
        "GRIB_stepType": "instant",
        "GRIB_gridType": "regular_ll",
        "GRIB_Nx": settings.nlon,
        "GRIB_Ny": settings.nlat,
        "GRIB_iDirectionIncrementInDegrees": 360.0 / settings.nlon,
        "GRIB_jDirectionIncrementInDegrees": 180.0 / (settings.nlat - 1),
        "GRIB_latitudeOfFirstGridPointInDegrees": 90.0,
        "GRIB_latitudeOfLastGridPointInDegrees": -90.0,
        "GRIB_longitudeOfFirstGridPointInDegrees": 0.0,
        "GRIB_longitudeOfLastGridPointInDegrees": float(longitude[-1]),
    }
    data_vars = {
        name: xr.Variable(dims, values, {**grid_attrs, **VARIABLE_ATTRS[name]}) for name, values in arrays.items()
    }
    attrs = dict(_GLOBAL_ATTRS)
    attrs["history"] = (
        f"seqvit synthetic ERA5-like source (seed {settings.seed}, grid {settings.nlat}x{settings.nlon}), "
        "written in the CDS netCDF layout"
    )
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _encoding(ds: xr.Dataset) -> dict:
    encoding = {
        "valid_time": {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"},
    }
    for name in ds.data_vars:
        # uncompressed: zlib (level 1) saves a third of the demo's 1.75 GB but adds ~0.5 s a file,
        # half as much again as generating the data
        encoding[str(name)] = {"dtype": "float32"}
    return encoding


def _write_month(path: Path, ds: xr.Dataset) -> None:
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))


def synthesize(cfg: dict, raw_dir: str | Path, progress: bool = True) -> list[Path]:
    """Generate the embedded ERA5-like data set into raw_dir/{group}/{year}/{month:02d}.nc.

    Streams month by month (memory holds one month). Deterministic for cfg['source']['seed'].
    Returns the paths written, in the order of `raw_paths`.
    """
    settings = settings_from_config(cfg)
    raw_dir = Path(raw_dir)
    made_by = lineage.dumps(lineage.raw(cfg))
    groups = _groups(settings)
    group_variables = {"single-levels": settings.single_level, "pressure-levels": settings.pressure_level}
    written: dict[tuple[str, int, int], Path] = {}

    def flush(year: int, month: int, times: list, buffers: dict) -> None:
        for group in groups:
            arrays = {
                name: np.ascontiguousarray(np.stack(buffers[name])[..., ::-1, :], dtype=np.float32)
                for name in group_variables[group]
            }
            path = raw_dir / group / str(year) / f"{month:02d}.nc"
            ds = _dataset(group, times, arrays, settings)
            ds.attrs[lineage.ATTR] = made_by
            _write_month(path, ds)
            written[(group, year, month)] = path

    current = None
    times: list[dt.datetime] = []
    buffers: dict[str, list] = {}
    for when, fields in simulate(settings, progress=progress):
        key = (when.year, when.month)
        if key != current:
            if current is not None:
                flush(*current, times, buffers)
            current, times = key, []
            buffers = {name: [] for name in fields}
        times.append(when)
        for name, values in fields.items():
            buffers[name].append(values.astype(np.float32))
    if current is not None:
        flush(*current, times, buffers)

    expected = raw_paths(cfg, raw_dir)
    missing = [p for p in expected if p not in written.values()]
    if missing:  # cannot happen unless the calendar logic is wrong; never hand back a partial set
        raise SeqvitError(f"synthetic source did not write {missing[0]} (and {len(missing) - 1} more)")
    return expected
