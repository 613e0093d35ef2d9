"""Writing raw files in the CDS netCDF layout, streaming in time slabs.

Used where a delivery is not already one CDS-layout netCDF file: the members of a zip (instant +
accumulated variables), GRIB, the parts of a request the CDS found too large, and the
WeatherBench2 and local sources. Data is copied a slab of time steps at a time, so a 0.25 deg
month never has to fit in memory.
"""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import xarray as xr

from seqvit.errors import SeqvitError

SLAB_BYTES = 128 * 2**20
_COORD_ATTRS = {
    "number": {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"},
    "valid_time": {
        "long_name": "time",
        "standard_name": "time",
        "units": "seconds since 1970-01-01",
        "calendar": "proleptic_gregorian",
    },
    "pressure_level": {
        "long_name": "pressure",
        "units": "hPa",
        "positive": "down",
        "stored_direction": "decreasing",
        "standard_name": "air_pressure",
    },
    "latitude": {
        "units": "degrees_north",
        "standard_name": "latitude",
        "long_name": "latitude",
        "stored_direction": "decreasing",
    },
    "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
}
_GLOBAL_ATTRS = {"Conventions": "CF-1.7", "institution": "European Centre for Medium-Range Weather Forecasts"}
_SKIP_ATTRS = {"_FillValue", "missing_value", "coordinates", "scale_factor", "add_offset"}


def _plain_attr(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def write_cds_netcdf(
    path,
    pieces: list[xr.Dataset],
    expver: dict | None = None,
    history: str = "",
    compress: bool = True,
) -> None:
    """Write canonical datasets (lazy is fine) as one netCDF file in the CDS layout.

    `pieces` may split the data by variable (instant / accumulated), by time (request parts) or
    both; every variable must be given exactly once at each of the file's time steps (nothing is
    padded). `expver` maps time (datetime64) to "0001"/"0005"; without it the coordinate is left
    out rather than guessed.
    """
    path = Path(path)
    if not pieces:
        raise SeqvitError(f"{path}: nothing to write")
    first = pieces[0]
    lat = first["latitude"].values.astype(np.float64)
    lon = first["longitude"].values.astype(np.float64)
    levels = None
    variables: dict[str, dict] = {}
    for piece in pieces:
        if not (np.array_equal(piece["latitude"].values, lat) and np.array_equal(piece["longitude"].values, lon)):
            raise SeqvitError(f"{path}: the parts to combine are on different grids")
        if "level" in piece.dims:
            piece_levels = piece["level"].values.astype(np.int64)
            if levels is not None and not np.array_equal(levels, piece_levels):
                raise SeqvitError(f"{path}: the parts to combine hold different pressure levels")
            levels = piece_levels
        for name, da in piece.data_vars.items():
            variables.setdefault(str(name), {"attrs": dict(da.attrs), "level": "level" in da.dims})
    times = np.unique(np.concatenate([piece["time"].values.astype("datetime64[ns]") for piece in pieces]))
    seconds = times.astype("datetime64[s]")
    if not np.array_equal(seconds.astype("datetime64[ns]"), times):
        raise SeqvitError(f"{path}: time steps are not whole seconds")

    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.setncatts({**_GLOBAL_ATTRS, **({"history": history} if history else {})})
        nc.createDimension("valid_time", times.size)
        if levels is not None:
            nc.createDimension("pressure_level", levels.size)
        nc.createDimension("latitude", lat.size)
        nc.createDimension("longitude", lon.size)
        number = nc.createVariable("number", "i8", ())
        number.setncatts(_COORD_ATTRS["number"])
        number.assignValue(0)
        valid_time = nc.createVariable("valid_time", "i8", ("valid_time",))
        valid_time.setncatts(_COORD_ATTRS["valid_time"])
        valid_time[:] = seconds.astype(np.int64)
        if levels is not None:
            level_var = nc.createVariable("pressure_level", "f8", ("pressure_level",))
            level_var.setncatts(_COORD_ATTRS["pressure_level"])
            level_var[:] = levels[::-1].astype(np.float64)
        lat_var = nc.createVariable("latitude", "f8", ("latitude",))
        lat_var.setncatts(_COORD_ATTRS["latitude"])
        lat_var[:] = lat[::-1]
        lon_var = nc.createVariable("longitude", "f8", ("longitude",))
        lon_var.setncatts(_COORD_ATTRS["longitude"])
        lon_var[:] = lon
        coordinates = "number"
        if expver is not None:
            missing = [t for t in times if t not in expver]
            if missing:
                raise SeqvitError(f"{path}: no expver known for {len(missing)} time steps")
            expver_var = nc.createVariable("expver", str, ("valid_time",))
            expver_var.setncatts({"long_name": "experiment version"})
            expver_var[:] = np.array([str(expver[t]) for t in times], dtype=object)
            coordinates = "number expver"

        for name, info in variables.items():
            dims = (
                ("valid_time", "pressure_level", "latitude", "longitude")
                if info["level"]
                else (
                    "valid_time",
                    "latitude",
                    "longitude",
                )
            )
            chunks = (1, 1, lat.size, lon.size) if info["level"] else (1, lat.size, lon.size)
            var = nc.createVariable(
                name,
                "f4",
                dims,
                zlib=compress,
                complevel=1,
                shuffle=compress,
                chunksizes=chunks,
                fill_value=np.float32(np.nan),
            )
            var.setncatts({k: _plain_attr(v) for k, v in info["attrs"].items() if k not in _SKIP_ATTRS})
            var.setncattr("coordinates", coordinates)
            written = np.zeros(times.size, dtype=bool)
            for piece in pieces:
                if name not in piece.data_vars:
                    continue
                _copy(piece[name], var, times, written, path, name)
            if not written.all():
                first_gap = np.datetime_as_string(times[np.flatnonzero(~written)[0]], unit="h")
                raise SeqvitError(
                    f"{path}: variable {name!r} is missing at {(~written).sum()} time steps (first {first_gap}); "
                    "the parts do not cover the same times"
                )


def _copy(da: xr.DataArray, var, times: np.ndarray, written: np.ndarray, path: Path, name: str) -> None:
    da = da.transpose("time", ..., "latitude", "longitude")
    positions = np.searchsorted(times, da["time"].values.astype("datetime64[ns]"))
    if np.any(written[positions]):
        raise SeqvitError(f"{path}: variable {name!r} is given twice for some time steps")
    step_bytes = max(1, int(np.prod(da.shape[1:])) * 8)
    slab = max(1, SLAB_BYTES // step_bytes)
    for start in range(0, positions.size, slab):
        stop = min(positions.size, start + slab)
        values = np.asarray(da.isel(time=slice(start, stop)).values, dtype=np.float32)
        values = values[..., ::-1, :]  # latitude north to south
        if values.ndim == 4:
            values = values[:, ::-1]  # pressure levels descending
        where = positions[start:stop]
        if where[-1] - where[0] == stop - start - 1:  # contiguous: one write
            var[where[0] : where[-1] + 1] = values
        else:
            for offset, position in enumerate(where):
                var[position] = values[offset]
        written[where] = True
