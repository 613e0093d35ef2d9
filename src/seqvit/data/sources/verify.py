"""Checking a raw file against its request before any later stage may see it.

A file passes when it opens, holds every requested variable at every requested level and time
step (no more time steps, none twice) on the expected grid, and no field (one variable, level
and time step) is entirely missing. Data is scanned a slab of time steps at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from seqvit.data import era5
from seqvit.errors import SeqvitError

SLAB_BYTES = 128 * 2**20
GRID_TOLERANCE_DEG = 1e-3
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_TIME_NAMES = ("valid_time", "time")


class VerificationError(SeqvitError):
    """The file is not what was requested. `unreadable` marks damage a new download may cure
    (as opposed to content the source really delivered that way)."""

    def __init__(self, message: str, unreadable: bool = False):
        super().__init__(message)
        self.unreadable = unreadable


@dataclass(frozen=True)
class Expectation:
    variables: tuple[str, ...]
    levels: tuple[int, ...]
    times: np.ndarray  # datetime64[ns], ascending
    latitude: np.ndarray | None = None  # None: any grid (checked later by regrid)
    longitude: np.ndarray | None = None


def expectation_for(request, grid: tuple[np.ndarray, np.ndarray] | None = None) -> Expectation:
    lat, lon = grid if grid is not None else (None, None)
    return Expectation(tuple(request.variables), tuple(request.levels), request.times(), lat, lon)


def _stamp(value) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M")


def _few(values, fmt=str, limit=3) -> str:
    values = list(values)
    text = ", ".join(fmt(v) for v in values[:limit])
    return text + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _check_grid(name: str, found: np.ndarray, expected: np.ndarray | None, where: str) -> None:
    if expected is None:
        return
    found_sorted = np.sort(np.mod(found, 360.0)) if name == "longitude" else np.sort(found)
    want_sorted = np.sort(np.mod(expected, 360.0)) if name == "longitude" else np.sort(expected)
    if found_sorted.size != want_sorted.size or not np.allclose(found_sorted, want_sorted, atol=GRID_TOLERANCE_DEG):
        raise VerificationError(
            f"{where}: {name} has {found.size} points from {found.min():g} to {found.max():g}, "
            f"expected {expected.size} from {expected.min():g} to {expected.max():g}; "
            "check source.grid and source.area"
        )


def verify_file(path, expected: Expectation, label: str = "", target=None) -> dict:
    """Raise VerificationError unless `path` holds exactly what `expected` describes; return a summary."""
    # Messages name the request and the file it was to become: `path` is a temporary, gone by then.
    shown = f"for {target}" if target is not None else str(path)
    where = f"{label} ({shown})" if label else shown
    try:
        kind = era5.detect_format(path)
    except OSError as exc:
        raise VerificationError(f"{where}: cannot be read ({exc})", unreadable=True) from exc
    if kind != "netcdf":
        raise VerificationError(f"{where}: is {kind}, not netCDF", unreadable=kind == "unknown")
    try:
        ds = xr.open_dataset(path)
    except Exception as exc:
        raise VerificationError(f"{where}: does not open as netCDF ({exc})", unreadable=True) from exc
    try:
        return _verify_open(ds, expected, where)
    finally:
        ds.close()


def _verify_open(ds: xr.Dataset, expected: Expectation, where: str) -> dict:
    try:
        canonical = era5.canonicalize(ds, where)
    except SeqvitError as exc:
        raise VerificationError(str(exc)) from exc
    missing = [name for name in expected.variables if name not in canonical.data_vars]
    if missing:
        raise VerificationError(
            f"{where}: holds no variable {_few(missing)} (has {sorted(map(str, canonical.data_vars))})"
        )
    for name in expected.variables:
        has_level = "level" in canonical[name].dims
        if has_level != bool(expected.levels):
            raise VerificationError(
                f"{where}: variable {name!r} {'has' if has_level else 'lacks'} a pressure-level dimension"
            )
    if expected.levels:
        found = set(int(v) for v in canonical["level"].values)
        lacking_levels = sorted(set(expected.levels) - found)
        extra_levels = sorted(found - set(expected.levels))
        if lacking_levels or extra_levels:
            raise VerificationError(
                f"{where}: pressure levels differ from the request (missing {lacking_levels} hPa, "
                f"unexpected {extra_levels} hPa)"
            )

    times = canonical["time"].values.astype("datetime64[ns]")
    unique, counts = np.unique(times, return_counts=True)
    if np.any(counts > 1):
        raise VerificationError(f"{where}: time steps given twice: {_few(unique[counts > 1], _stamp)}")
    want = np.asarray(expected.times, dtype="datetime64[ns]")
    lacking = np.setdiff1d(want, unique)
    extra = np.setdiff1d(unique, want)
    if lacking.size:
        raise VerificationError(
            f"{where}: lacks {lacking.size} of the {want.size} requested time steps ({_few(lacking, _stamp)}); "
            "the source delivered less than asked (data not yet published, e.g. ERA5T of the last days, "
            "or a fault on its side): rerun later, or drop those dates from the config"
        )
    if extra.size:
        raise VerificationError(
            f"{where}: holds {extra.size} time steps that were not requested ({_few(extra, _stamp)})"
        )

    _check_grid("latitude", canonical["latitude"].values, expected.latitude, where)
    _check_grid("longitude", canonical["longitude"].values, expected.longitude, where)
    _scan_missing(ds, canonical, expected.variables, where)
    return {
        "variables": list(expected.variables),
        "levels": list(expected.levels),
        "time_steps": int(unique.size),
        "first_time": _stamp(unique[0]),
        "last_time": _stamp(unique[-1]),
        "grid": [int(canonical.sizes["latitude"]), int(canonical.sizes["longitude"])],
        "expver": era5.expver_counts(ds),
    }


def _scan_missing(ds: xr.Dataset, canonical: xr.Dataset, names, where: str) -> None:
    """Raise if any (variable, level, time) field is entirely NaN; reads slabs in file order."""
    for name in names:
        da = ds[name] if name in ds.data_vars and "expver" not in ds.dims else canonical[name]
        time_dim = next(d for d in _TIME_NAMES if d in da.dims)
        spatial = [d for d in da.dims if d in _LAT_NAMES + _LON_NAMES]
        step_bytes = max(1, int(np.prod([da.sizes[d] for d in da.dims if d != time_dim])) * 4)
        slab = max(1, SLAB_BYTES // step_bytes)
        chunks = da.encoding.get("chunksizes")
        if chunks and time_dim in da.dims:  # whole chunks, so none is decompressed twice
            along_time = int(chunks[da.dims.index(time_dim)])
            slab = max(1, slab // along_time) * along_time
        for start in range(0, da.sizes[time_dim], slab):
            part = da.isel({time_dim: slice(start, start + slab)})
            try:
                values = np.asarray(part.values)
            except Exception as exc:  # HDF5 errors on damaged chunks
                raise VerificationError(f"{where}: variable {name!r} cannot be read ({exc})", unreadable=True) from exc
            axes = tuple(part.dims.index(d) for d in spatial)
            empty = np.isnan(values).all(axis=axes)
            if empty.any():
                index = np.argwhere(empty)[0]
                rest = [d for d in part.dims if d not in spatial]
                at = {d: part[d].values[i] if d in part.coords else i for d, i in zip(rest, index)}
                when = _stamp(at.pop(time_dim))
                level = "".join(f" at {float(v):g} hPa" for v in at.values())
                raise VerificationError(
                    f"{where}: variable {name!r} is entirely missing at {when}{level} "
                    f"({int(empty.sum())} empty fields in this slab); the source delivered a hole"
                )
