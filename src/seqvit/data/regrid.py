"""Regridding between regular global lat-lon grids: first-order conservative and bilinear.

Both methods are separable on a rectilinear grid, so each is a pair of small weight matrices,
one for latitude (target x source rows) and one for longitude, applied to the last two axes of
any array. Leading dimensions (time, level) just stream through.

Conservative: the value of a target cell is the area-weighted mean of the source cells it
overlaps, with the source taken as constant on each of its cells. On the sphere the area of a
lat-lon cell is proportional to (sin(upper) - sin(lower)) * (east - west), so latitude overlaps
are measured in sin(latitude) and longitude overlaps in degrees, periodically. This preserves the
spherical-area-weighted global mean exactly (up to rounding).
"""

from __future__ import annotations

import os
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from seqvit.data import era5
from seqvit.data.grids import Grid, lat_bounds, lon_bounds, named_grid
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

METHODS = ("conservative", "bilinear")

# Working memory for one chunk of source data (float32 read + float64 copy), and the size of one
# uncompressed on-disk chunk of the output. 0.25 deg hourly pressure-level data then runs in
# well under 1 GB.
_CHUNK_BYTES = 256 * 2**20
_DISK_CHUNK_BYTES = 4 * 2**20

# Tolerance for "regularly spaced": coordinates stored as float32 round at ~1e-5 deg near 90,
# while Gaussian latitudes deviate from even spacing by far more.
_SPACING_RTOL = 1e-4
_SPACING_ATOL = 1e-4  # degrees

_COORD_ATTRS = {
    "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude", "axis": "Y"},
    "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude", "axis": "X"},
    "level": {
        "units": "hPa",
        "standard_name": "air_pressure",
        "long_name": "pressure level",
        "positive": "down",
        "axis": "Z",
    },
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise SeqvitError(
            f"unknown regrid method {method!r} (option --method / config key regrid.method); "
            f"choose one of: {', '.join(METHODS)}"
        )


def check_regular(lat, lon, source: str = "input") -> None:
    """Raise unless (lat, lon) is a regular lat-lon grid, ascending, global in longitude."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    hint = "regrid needs a regular global lat-lon grid (ERA5 / WeatherBench layout); convert the data first"
    if lat.ndim != 1 or lon.ndim != 1 or lat.size < 2 or lon.size < 2:
        raise SeqvitError(f"{source}: latitude/longitude must be 1-D with at least 2 points each; {hint}")
    if np.any(np.abs(lat) > 90 + 1e-9):
        raise SeqvitError(f"{source}: latitudes outside [-90, 90] (from {lat.min()} to {lat.max()}); {hint}")
    for name, values in (("latitude", lat), ("longitude", lon)):
        step = np.diff(values)
        if np.any(step <= 0):
            raise SeqvitError(f"{source}: {name} is not strictly ascending (duplicate points?); {hint}")
        if np.ptp(step) > _SPACING_RTOL * step.mean() + _SPACING_ATOL:
            raise SeqvitError(
                f"{source}: {name} is not regularly spaced (steps from {step.min():.6g} to {step.max():.6g} deg; "
                f"a Gaussian or reduced grid?); {hint}"
            )
    lon_step = (lon[-1] - lon[0]) / (lon.size - 1)
    if abs(lon.size * lon_step - 360.0) > _SPACING_RTOL * 360.0:
        raise SeqvitError(
            f"{source}: longitudes {lon[0]}..{lon[-1]} (step {lon_step:.6g}) do not cover the globe "
            f"periodically; {hint}"
        )


def _normalized_rows(overlap: np.ndarray, method: str, what: str) -> np.ndarray:
    total = overlap.sum(axis=1, keepdims=True)
    if np.any(total <= 0):  # never divide by zero into NaN
        raise SeqvitError(f"{method} regridding: some target {what} cells overlap no source cell")
    return overlap / total


def conservative_weights(src_lat, src_lon, dst_lat, dst_lon) -> tuple[np.ndarray, np.ndarray]:
    """Latitude (n_dst_lat, n_src_lat) and longitude (n_dst_lon, n_src_lon) overlap-weight matrices.

    Rows sum to 1. Cell edges are midway between centres; latitude edges are clipped to the
    poles, so a source grid that has points at the poles has half cells there.
    """
    src_edges = np.deg2rad(lat_bounds(src_lat))
    dst_edges = np.deg2rad(lat_bounds(dst_lat))
    lower = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    upper = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    # sin is increasing on [-pi/2, pi/2], so the overlap in sin(lat) is sin(upper) - sin(lower).
    lat_overlap = np.clip(np.sin(upper) - np.sin(lower), 0.0, None)
    dst_measure = np.diff(np.sin(dst_edges))
    covered = lat_overlap.sum(axis=1)
    gaps = np.flatnonzero(covered < dst_measure * (1 - 1e-9))
    if gaps.size:
        raise SeqvitError(
            f"conservative regridding: target latitude cells centred at {np.asarray(dst_lat)[gaps][:4].tolist()} "
            "are not fully covered by the source grid; the source must be global in latitude"
        )

    src_lon_edges = lon_bounds(src_lon)
    dst_lon_edges = lon_bounds(dst_lon)
    lon_overlap = np.zeros((len(dst_lon), len(src_lon)))
    # Both edge sets lie within one period of [-step, 360]; shifting the source by -360, 0, +360
    # catches every wrap-around overlap.
    for shift in (-360.0, 0.0, 360.0):
        lo = np.maximum(dst_lon_edges[:-1, None], src_lon_edges[None, :-1] + shift)
        hi = np.minimum(dst_lon_edges[1:, None], src_lon_edges[None, 1:] + shift)
        lon_overlap += np.clip(hi - lo, 0.0, None)
    return (
        _normalized_rows(lat_overlap, "conservative", "latitude"),
        _normalized_rows(lon_overlap, "conservative", "longitude"),
    )


def bilinear_weights(src_lat, src_lon, dst_lat, dst_lon) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation matrices: linear in latitude (clamped beyond the outermost source latitude),
    periodic linear in longitude."""
    src_lat = np.asarray(src_lat, dtype=np.float64)
    src_lon = np.asarray(src_lon, dtype=np.float64)
    dst_lat = np.asarray(dst_lat, dtype=np.float64)
    dst_lon = np.asarray(dst_lon, dtype=np.float64)

    lat_w = np.zeros((dst_lat.size, src_lat.size))
    clamped = np.clip(dst_lat, src_lat[0], src_lat[-1])
    below = np.clip(np.searchsorted(src_lat, clamped, side="right") - 1, 0, src_lat.size - 2)
    frac = (clamped - src_lat[below]) / (src_lat[below + 1] - src_lat[below])
    rows = np.arange(dst_lat.size)
    lat_w[rows, below] += 1.0 - frac
    lat_w[rows, below + 1] += frac

    n = src_lon.size
    step = 360.0 / n
    position = np.mod(dst_lon - src_lon[0], 360.0) / step
    west = np.floor(position).astype(np.int64)
    frac = position - west
    lon_w = np.zeros((dst_lon.size, n))
    rows = np.arange(dst_lon.size)
    lon_w[rows, west % n] += 1.0 - frac
    lon_w[rows, (west + 1) % n] += frac
    return lat_w, lon_w


def _banded(dense: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise nonzeros of a weight matrix as (column index, weight) arrays of shape (rows, width).

    Columns are mapped through `order` (sorted position -> position in the caller's array), so
    the weights apply to data in whatever coordinate order it is stored. Short rows are padded
    with zero weights.
    """
    counts = (dense != 0).sum(axis=1)
    width = max(int(counts.max()), 1)
    index = np.zeros((dense.shape[0], width), dtype=np.intp)
    weight = np.zeros((dense.shape[0], width))
    for row in range(dense.shape[0]):
        (cols,) = np.nonzero(dense[row])
        index[row, : cols.size] = order[cols]
        weight[row, : cols.size] = dense[row, cols]
    return index, weight


def _contract(values: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """sum_k values[..., index[j, k], ...] * weight[j, k] along `axis`, in float64."""
    shape = [1] * values.ndim
    shape[axis] = index.shape[0]
    out = None
    for k in range(index.shape[1]):
        term = np.take(values, index[:, k], axis=axis) * weight[:, k].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


class Regridder:
    """Weights from one source grid to `grid`, applied to the last two axes (latitude, longitude).

    The source coordinates may be stored in any order (ERA5 latitudes run north to south,
    longitudes may run from -180): the weights are computed on the sorted grid and then mapped
    to the stored order, so data never has to be reordered. Only the nonzero band of each
    weight matrix is applied, which keeps 0.25 deg -> 5.625 deg cheap.
    """

    def __init__(self, src_lat, src_lon, grid: Grid, method: str = "conservative", source: str = "input"):
        check_method(method)
        src_lat = np.asarray(src_lat, dtype=np.float64)
        src_lon = np.mod(np.asarray(src_lon, dtype=np.float64), 360.0)
        lat_order = np.argsort(src_lat, kind="stable")
        lon_order = np.argsort(src_lon, kind="stable")
        check_regular(src_lat[lat_order], src_lon[lon_order], source)
        self.grid = grid
        self.method = method
        self.src_shape = (src_lat.size, src_lon.size)
        make = conservative_weights if method == "conservative" else bilinear_weights
        # Dense matrices over the SORTED source coordinates (for inspection and tests).
        self.lat_weights, self.lon_weights = make(src_lat[lat_order], src_lon[lon_order], grid.lat, grid.lon)
        self._lat_band = _banded(self.lat_weights, lat_order)
        self._lon_band = _banded(self.lon_weights, lon_order)

    def __call__(self, values: np.ndarray, what: str = "data") -> np.ndarray:
        """Regrid (..., n_lat, n_lon) values stored in the source order; float64 sums, float32 result."""
        values = np.asarray(values)
        if values.shape[-2:] != self.src_shape:
            raise SeqvitError(f"{what}: grid shape {values.shape[-2:]} differs from the source grid {self.src_shape}")
        # Latitude first: gathering whole rows is cheap, and it halves the data for the next step.
        out = _contract(values, *self._lat_band, axis=values.ndim - 2)
        out = _contract(out, *self._lon_band, axis=values.ndim - 1).astype(np.float32)
        if not np.isfinite(out).all():
            raise SeqvitError(
                f"{what}: the input holds NaN or infinite values; regrid does not handle missing data "
                "(fill or mask them before regridding)"
            )
        return out


def _lat_lon_last(da: xr.DataArray, name: str) -> xr.DataArray:
    if "latitude" not in da.dims or "longitude" not in da.dims:
        raise SeqvitError(
            f"variable {name!r} has dims {da.dims} without latitude/longitude; regrid expects only gridded "
            "fields (canonical layout: time, level, latitude, longitude)"
        )
    return da.transpose(..., "latitude", "longitude")


def _coordinate_arrays(grid: Grid) -> dict[str, xr.DataArray]:
    return {
        "latitude": xr.DataArray(grid.lat, dims="latitude", attrs=_COORD_ATTRS["latitude"]),
        "longitude": xr.DataArray(grid.lon, dims="longitude", attrs=_COORD_ATTRS["longitude"]),
    }


# GRIB keys that CDS files carry and that describe the SOURCE grid; they are wrong after regridding.
_SOURCE_GRID_KEYS = ("Nx", "Ny", "grid", "Grid", "Direction", "Scans", "Points", "NV")


def _keep_attr(key: str) -> bool:
    if key in ("_FillValue", "missing_value", "coordinates"):
        return False
    return not (key.startswith("GRIB_") and any(part in key for part in _SOURCE_GRID_KEYS))


def regrid(ds: xr.Dataset, grid: Grid, method: str = "conservative") -> xr.Dataset:
    """Regrid every variable of a canonical dataset onto `grid` (in memory); float32 data."""
    check_method(method)
    regridder = Regridder(ds["latitude"].values, ds["longitude"].values, grid, method)
    out = {}
    for name, da in ds.data_vars.items():
        da = _lat_lon_last(da, name)
        values = regridder(da.values, what=f"variable {name!r}")
        out[name] = xr.Variable(da.dims, values, attrs={k: v for k, v in da.attrs.items() if _keep_attr(k)})
    coords = {k: v for k, v in ds.coords.items() if "latitude" not in v.dims and "longitude" not in v.dims}
    coords.update(_coordinate_arrays(grid))
    return xr.Dataset(out, coords=coords, attrs=dict(ds.attrs))


# ---- files ---------------------------------------------------------------------------------


class _Source:
    """One input file: its canonical view (names, coordinates, attributes; lazy) and a reader
    for time slices of a variable in the file's own order (no reordering copies)."""

    def __init__(self, path: Path):
        if not path.exists():
            raise SeqvitError(f"{path}: file not found")
        try:
            self.raw = xr.open_dataset(path)
        except Exception as exc:  # the backend's message alone rarely names the file
            raise SeqvitError(f"{path}: cannot be read as netCDF ({exc}); delete it and fetch it again") from exc
        self.path = path
        self.canonical = era5.canonicalize(self.raw, str(path))  # lazy: only coordinates are read
        # canonicalize renames dims but never transposes, so dims pair up by position.
        self.dim_names = {}
        for name in self.canonical.data_vars:
            self.dim_names.update(zip(self.raw[name].dims, self.canonical[name].dims))
        self.raw_dim = {canonical: raw for raw, canonical in self.dim_names.items()}
        self.times = self.canonical["time"].values  # canonicalize keeps the file's time order
        if "level" in self.raw_dim:
            self.level_order = np.argsort(self.raw[self.raw_dim["level"]].values.astype(np.int64), kind="stable")

    def lat_lon(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude as stored in the file."""
        return self.raw[self.raw_dim["latitude"]].values, self.raw[self.raw_dim["longitude"]].values

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """values[start:stop] of `name` with axes (time, [level,] latitude, longitude); the level
        axis is sorted ascending, latitude/longitude stay in file order."""
        variable = self.raw[name].variable
        dims = [self.dim_names[d] for d in variable.dims]
        key = tuple(slice(start, stop) if d == "time" else slice(None) for d in dims)
        values = np.asarray(variable[key].values)
        wanted = ["time", *(["level"] if "level" in dims else []), "latitude", "longitude"]
        values = np.transpose(values, [dims.index(d) for d in wanted])
        if "level" in dims:
            values = values[:, self.level_order]
        return values

    def close(self) -> None:
        self.raw.close()


def _check_same_grid(first: _Source, other: _Source) -> None:
    a, b = first.canonical, other.canonical
    if sorted(a.data_vars) != sorted(b.data_vars):
        raise SeqvitError(
            f"{other.path}: variables {sorted(b.data_vars)} differ from {sorted(a.data_vars)} in {first.path}; "
            "give the files of one variable group only"
        )
    for coord in ("latitude", "longitude", "level"):
        if (coord in a.coords) != (coord in b.coords) or (
            coord in a.coords and not np.array_equal(a[coord].values, b[coord].values)
        ):
            raise SeqvitError(f"{other.path}: {coord} differs from {first.path}; all inputs must share one grid")
    if not all(np.array_equal(x, y) for x, y in zip(first.lat_lon(), other.lat_lon())):
        raise SeqvitError(f"{other.path}: latitude/longitude order differs from {first.path}; all inputs must share one grid")


def _time_chunks(n_times: int, in_bytes_per_step: int, out_bytes_per_step: int) -> tuple[int, int]:
    """(read chunk, write block) lengths in time steps.

    A read chunk bounds the source data in memory; a write block is one on-disk chunk of the
    output (about _DISK_CHUNK_BYTES), so HDF5 compresses each chunk once. Fine source grids
    are read in several chunks per block; coarse ones in one.
    """
    read = max(1, min(n_times, _CHUNK_BYTES // max(in_bytes_per_step, 1)))
    block = max(1, min(n_times, _DISK_CHUNK_BYTES // max(out_bytes_per_step, 1)))
    return min(read, block), block


def regrid_files(inputs, output, grid_name: str, method: str) -> None:
    """Regrid CDS-layout files (months of one variable group) into one canonical CF netCDF file.

    Streams over time chunks: only one chunk of source data is in memory at a time. The result
    is what ``regrid(era5.open_raw(inputs), named_grid(grid_name), method)`` gives, written as
    compressed netCDF4.
    """
    check_method(method)
    grid = named_grid(grid_name)
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    if not paths:
        raise SeqvitError("regrid: no input files given")
    output = Path(output)

    sources: list[_Source] = []
    try:
        for path in paths:
            sources.append(_Source(path))
        sources.sort(key=lambda src: src.times.min() if src.times.size else np.datetime64("NaT"))
        first = sources[0]
        for other in sources[1:]:
            _check_same_grid(first, other)
        regridder = Regridder(*first.lat_lon(), grid, method, str(first.path))

        times = np.concatenate([src.times for src in sources])
        if times.size == 0:
            raise SeqvitError(f"{first.path}: no time steps in the inputs")
        steps = np.diff(times)
        if np.any(steps <= np.timedelta64(0)):
            owners = [str(src.path) for src in sources for _ in range(src.times.size)]
            bad = int(np.flatnonzero(steps <= np.timedelta64(0))[0])
            raise SeqvitError(
                f"time {pd.Timestamp(times[bad + 1])} is repeated or out of order ({owners[bad]}, {owners[bad + 1]}); "
                "give each month once, each file sorted by time"
            )
        # Where each global time index lives: (source index, index inside that source).
        owner = np.concatenate([np.full(src.times.size, i) for i, src in enumerate(sources)])
        local = np.concatenate([np.arange(src.times.size) for src in sources])

        variables = {name: _lat_lon_last(da, name) for name, da in first.canonical.data_vars.items()}
        for name, da in variables.items():
            if da.dims[0] != "time":
                raise SeqvitError(f"{first.path}: variable {name!r} has dims {da.dims}; expected time first")
        per_step_in = sum(int(np.prod(da.shape[1:])) for da in variables.values()) * 12  # float32 + float64
        per_step_out = max(int(np.prod(da.shape[1:-2])) for da in variables.values()) * int(np.prod(grid.shape)) * 4
        read_chunk, block = _time_chunks(times.size, per_step_in, per_step_out)

        def regridded(name: str, start: int, stop: int) -> np.ndarray:
            pieces = []
            for index in np.unique(owner[start:stop]):
                mine = local[start:stop][owner[start:stop] == index]
                src = sources[index]
                values = src.read(name, int(mine[0]), int(mine[-1]) + 1)
                pieces.append(regridder(values, what=f"{src.path}: variable {name!r}"))
            return np.concatenate(pieces, axis=0)

        with atomic_path(output) as tmp:
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
                _define_output(nc, first.canonical, variables, grid, times, block, method, len(paths))
                for start in range(0, times.size, block):
                    stop = min(start + block, times.size)
                    for name in variables:
                        nc.variables[name][start:stop] = np.concatenate(
                            [regridded(name, s, min(s + read_chunk, stop)) for s in range(start, stop, read_chunk)]
                        )
                    # Close inputs as soon as they are consumed: each open file keeps its own
                    # decompressed-chunk cache, which would otherwise grow with the file count.
                    for index in np.unique(owner[start:stop]):
                        if index < owner[stop - 1] or stop == times.size:
                            sources[index].close()
    finally:
        for src in sources:
            src.close()


def _define_output(nc, first: xr.Dataset, variables, grid: Grid, times, disk_chunk: int, method: str, n_files: int):
    nc.setncatts({k: v for k, v in first.attrs.items() if k not in ("history", "_NCProperties")})
    nc.setncattr("Conventions", "CF-1.8")
    nc.setncattr("history", f"seqvit regrid --grid {grid.name} --method {method} from {n_files} files")

    nc.createDimension("time", times.size)
    time = nc.createVariable("time", "i8", ("time",))
    time.setncatts({**_COORD_ATTRS["time"], "units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian"})
    epoch = np.datetime64("1970-01-01T00:00:00", "ns")
    time[:] = ((times.astype("datetime64[ns]") - epoch) // np.timedelta64(1, "s")).astype(np.int64)

    if "level" in first.dims:
        levels = first["level"].values.astype(np.int64)
        nc.createDimension("level", levels.size)
        level = nc.createVariable("level", "i8", ("level",))
        level.setncatts(_COORD_ATTRS["level"])
        level[:] = levels
    for coord, values in (("latitude", grid.lat), ("longitude", grid.lon)):
        nc.createDimension(coord, values.size)
        var = nc.createVariable(coord, "f8", (coord,))
        var.setncatts(_COORD_ATTRS[coord])
        var[:] = values

    for name, da in variables.items():
        sizes = dict(zip(da.dims, da.shape))
        chunks = tuple(disk_chunk if d == "time" else sizes[d] for d in da.dims[:-2]) + grid.shape
        var = nc.createVariable(
            name, "f4", da.dims, zlib=True, complevel=1, shuffle=True, chunksizes=chunks, fill_value=np.float32(np.nan)
        )
        # Writes are whole chunks, so a cache of one chunk is enough (the default holds 64 MB per variable).
        var.set_var_chunk_cache(size=int(np.prod(chunks)) * 4 + 2**20)
        var.setncatts({k: v for k, v in da.attrs.items() if _keep_attr(k)})
        if method == "conservative":
            var.setncattr("cell_methods", "area: mean")
