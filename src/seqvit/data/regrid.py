"""Regridding between regular global lat-lon grids: first-order conservative and bilinear.

Both methods are separable on a rectilinear grid, so each is a pair of small weight matrices,
one for latitude (target x source rows) and one for longitude, applied to the last two axes of
any array. Leading dimensions (time, level) just stream through.

Conservative: the value of a target cell is the area-weighted mean of the source cells it
overlaps, with the source taken as constant on each of its cells. On the sphere the area of a
lat-lon cell is proportional to (sin(upper) - sin(lower)) * (east - west), so latitude overlaps
are measured in sin(latitude) and longitude overlaps in degrees, periodically. This preserves the
spherical-area-weighted global mean exactly (up to rounding).

Cells have edges midway between centres, clipped to the poles (an ERA5 polar point has a half
cell), as CDO and WeatherBench2 take them; in float64 the results equal `cdo remapcon` and
`cdo remapbil` to about 1e-12 of the field's range (tests/test_regrid_cdo.py, docs/grids.md).

Files are streamed over time chunks: one thread reads (netCDF/HDF5 is not thread-safe) while a
worker regrids the previous chunk, so memory stays at a few chunks (under 1 GB for 0.25 deg)
whatever the length of the input.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from seqvit import lineage
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


class _Stencils:
    """One weight matrix as, for each target point, the source points it draws on (in the order
    the data is stored) and their weights.

    Sources that are contiguous in storage are a slice, so the weighted sum is one small
    matrix product over a view; others (a longitude band wrapping around 0) are an index
    array. A matrix that only picks single points with weight 1 (the identity, maybe
    reordered) is a plain gather that copies values unchanged, in their own dtype.
    """

    def __init__(self, dense: np.ndarray, order: np.ndarray):
        # `order` maps a sorted position to the position in storage.
        self.sources: list[slice | np.ndarray] = []
        self.weights: list[np.ndarray] = []
        for row in dense:
            (cols,) = np.nonzero(row)
            stored = order[cols]
            by_storage = np.argsort(stored, kind="stable")
            stored, weights = stored[by_storage], row[cols][by_storage]
            if stored.size and stored[-1] - stored[0] + 1 == stored.size:
                self.sources.append(slice(int(stored[0]), int(stored[-1]) + 1))
            else:
                self.sources.append(stored)
            self.weights.append(weights)
        self.gather = None
        if all(w.size == 1 and w[0] == 1.0 for w in self.weights):
            self.gather = np.array([s.start if isinstance(s, slice) else s[0] for s in self.sources], dtype=np.intp)

    def apply(self, values: np.ndarray, axis: int) -> np.ndarray:
        """sum_k values[..., source_jk, ...] * weight_jk along `axis` (the last or the one before)."""
        if self.gather is not None:
            return np.take(values, self.gather, axis=axis)
        last = axis == values.ndim - 1
        shape = list(values.shape)
        shape[axis] = len(self.sources)
        out = np.empty(shape)
        for j, (source, weights) in enumerate(zip(self.sources, self.weights)):
            if last:
                out[..., j] = values[..., source].astype(np.float64, copy=False) @ weights
            else:
                # (k,) @ (..., k, lon) -> (..., lon): one product per leading index, float64 sums.
                out[..., j, :] = np.matmul(weights, values[..., source, :].astype(np.float64, copy=False))
        return out


def _same_points(source: np.ndarray, target: np.ndarray) -> bool:
    """Whether sorted source points are the target points, up to float32 rounding of stored coordinates."""
    return source.shape == target.shape and bool(np.allclose(source, target, rtol=0.0, atol=1e-5))


class Regridder:
    """Weights from one source grid to `grid`, applied to the last two axes (latitude, longitude).

    The source coordinates may be stored in any order (ERA5 latitudes run north to south,
    longitudes may run from -180): the weights are computed on the sorted grid and then mapped
    to the stored order, so data never has to be reordered. Only the nonzero band of each
    weight matrix is applied, as one small float64 matrix product per target row and per
    target column, which keeps 0.25 deg -> 5.625 deg cheap (about 1 ms per time step).

    An axis whose source points are the target points (within coordinate rounding) gets the
    identity matrix, whatever the method: regridding a grid onto itself (0.25deg -> 0.25deg,
    5.625deg -> 5.625deg) copies the values bit for bit, only reordered to ascending latitude.
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
        if _same_points(src_lat[lat_order], grid.lat):
            self.lat_weights = np.eye(grid.lat.size)
        if _same_points(src_lon[lon_order], grid.lon):
            self.lon_weights = np.eye(grid.lon.size)
        self._lat_stencils = _Stencils(self.lat_weights, lat_order)
        self._lon_stencils = _Stencils(self.lon_weights, lon_order)

    @property
    def is_identity(self) -> bool:
        """True when the target grid is the source grid (the result is a reordered copy)."""
        return self._lat_stencils.gather is not None and self._lon_stencils.gather is not None

    def __call__(self, values: np.ndarray, what: str = "data", dtype=np.float32) -> np.ndarray:
        """Regrid (..., n_lat, n_lon) values stored in the source order; float64 sums, `dtype` result."""
        values = np.asarray(values)
        if values.shape[-2:] != self.src_shape:
            raise SeqvitError(f"{what}: grid shape {values.shape[-2:]} differs from the source grid {self.src_shape}")
        # Latitude first: whole rows are contiguous, and it shrinks the data for the next step.
        out = self._lat_stencils.apply(values, axis=values.ndim - 2)
        out = self._lon_stencils.apply(out, axis=values.ndim - 1).astype(dtype, copy=False)
        if not np.isfinite(out).all():
            raise SeqvitError(
                f"{what}: the input holds NaN or infinite values; regrid does not handle missing data "
                "(fill or mask them before regridding)"
            )
        return out


def cdo_grid_description(grid: Grid) -> str:
    """The grid as a CDO grid description (for `cdo remapcon,FILE`): cell centres only, so that
    CDO derives the cell bounds by its own rule (midpoints, clipped to the poles), which is
    the rule used here (docs/grids.md)."""
    step_lat = float(grid.lat[1] - grid.lat[0])
    step_lon = float(grid.lon[1] - grid.lon[0])
    lines = [
        "gridtype = lonlat",
        f"xsize = {grid.lon.size}",
        f"ysize = {grid.lat.size}",
        "xname = longitude",
        'xunits = "degrees_east"',
        "yname = latitude",
        'yunits = "degrees_north"',
        f"xfirst = {float(grid.lon[0])!r}",
        f"xinc = {step_lon!r}",
        f"yfirst = {float(grid.lat[0])!r}",
        f"yinc = {step_lat!r}",
    ]
    return "\n".join(lines) + "\n"


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
        da = _lat_lon_last(da, str(name))
        values = regridder(da.values, what=f"variable {name!r}")
        out[name] = xr.Variable(da.dims, values, attrs={k: v for k, v in da.attrs.items() if _keep_attr(k)})
    coords = {k: v for k, v in ds.coords.items() if "latitude" not in v.dims and "longitude" not in v.dims}
    coords.update(_coordinate_arrays(grid))
    return xr.Dataset(out, coords=coords, attrs=dict(ds.attrs))


# ---- files ---------------------------------------------------------------------------------


class _Source:
    """One input file: its canonical view (names, coordinates, attributes; lazy) and a reader
    for time slices of a variable in the file's own latitude/longitude order.

    Layouts read: netCDF as the CDS delivers it today (valid_time, pressure_level), the older
    CDS netCDF (time, level; packed int16 with scale_factor/add_offset, decoded here), files
    with cfgrib names (time, isobaricInhPa, step/valid_time coordinates), and older CDS files
    of months mixing ERA5 and ERA5T with an `expver` dimension (collapsed per chunk, ERA5
    first, as era5.open_raw does). Anything else that era5.canonicalize understands (cfgrib
    accumulations with a time x step hypercube, a squeezed single time step) is read through
    the canonical view, which holds the whole file in memory.
    """

    def __init__(self, path: Path):
        if not path.exists():
            raise SeqvitError(f"{path}: file not found")
        kind = era5.detect_format(path)
        if kind in ("zip", "grib"):
            raise SeqvitError(
                f"{path}: is a {kind.upper()} file; regrid reads netCDF files (seqvit download stores CDS "
                "deliveries as netCDF; convert GRIB with cfgrib or `cdo -f nc4 copy IN.grib OUT.nc` first)"
            )
        try:
            self.raw = xr.open_dataset(path)
        except Exception as exc:  # the backend's message alone rarely names the file
            raise SeqvitError(f"{path}: cannot be read as netCDF ({exc}); delete it and fetch it again") from exc
        self.path = path
        # The canonical view gives names, coordinates and attributes. With an expver dimension
        # one member is enough for that, and it keeps the view lazy (collapsing reads the data).
        view = self.raw.isel(expver=0, drop=True) if "expver" in self.raw.dims else self.raw
        self.canonical = era5.canonicalize(view, str(path))
        self.times = self.canonical["time"].values  # canonicalize keeps the file's time order
        if not self.canonical.data_vars:
            raise SeqvitError(f"{path}: holds no data variables; expected ERA5 fields such as t2m or t")
        self.mode = {str(name): self._mode(str(name)) for name in self.canonical.data_vars}
        first = str(next(iter(self.canonical.data_vars)))
        if self.mode[first] == "canonical":
            # Canonical order is sorted; the reader restores the file's order, so coordinates are the file's.
            self.file_lat, self.file_lon = (self.raw[_raw_name(self.raw, c)].values for c in ("latitude", "longitude"))
        else:
            dims = {_canonical_dim(str(d)): d for d in self.raw[first].dims}
            self.file_lat, self.file_lon = self.raw[dims["latitude"]].values, self.raw[dims["longitude"]].values

    def _mode(self, name: str) -> str:
        """'direct' (dims are renames of the canonical ones), 'expver' (plus an expver
        dimension) or 'canonical' (read through the canonical view)."""
        if name not in self.raw.data_vars:
            return "canonical"
        raw_dims = [_canonical_dim(str(d)) for d in self.raw[name].dims]
        wanted = {str(d) for d in self.canonical[name].dims}
        if sorted(raw_dims) == sorted(wanted):
            return "direct"
        if "expver" in raw_dims and sorted(d for d in raw_dims if d != "expver") == sorted(wanted):
            return "expver"
        return "canonical"

    def lat_lon(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitude and longitude as stored in the file."""
        return self.file_lat, self.file_lon

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """values[start:stop] of `name` with axes (time, [level,] latitude, longitude); the level
        axis is sorted ascending, latitude/longitude stay in file order."""
        mode = self.mode[name]
        if mode == "canonical":
            return self._read_canonical(name, start, stop)
        variable = self.raw[name].variable
        dims = [_canonical_dim(str(d)) for d in variable.dims]
        key = tuple(slice(start, stop) if d == "time" else slice(None) for d in dims)
        values = np.asarray(variable[key].values)
        if mode == "expver":
            values, dims = self._collapse_expver(values, dims)
        wanted = ["time", *(["level"] if "level" in dims else []), "latitude", "longitude"]
        values = np.transpose(values, [dims.index(d) for d in wanted])
        if "level" in dims:
            level = self.raw[_raw_name(self.raw, "level")].values.astype(np.int64)
            values = values[:, np.argsort(level, kind="stable")]
        return values

    def _collapse_expver(self, values: np.ndarray, dims: list[str]) -> tuple[np.ndarray, list[str]]:
        """Per time step, the first expver (ERA5 "1" before ERA5T "5") that holds data."""
        axis = dims.index("expver")
        versions = self.raw["expver"].values
        order = sorted(range(len(versions)), key=lambda i: int(versions[i]))
        out = np.take(values, order[0], axis=axis)
        for index in order[1:]:
            fill = np.isnan(out)
            if fill.any():
                out = np.where(fill, np.take(values, index, axis=axis), out)
        return out, [d for d in dims if d != "expver"]

    def _read_canonical(self, name: str, start: int, stop: int) -> np.ndarray:
        da = self.canonical[name].isel(time=slice(start, stop))
        values = da.transpose("time", *(["level"] if "level" in da.dims else []), "latitude", "longitude").values
        # canonicalize sorted latitude and longitude (stable sort); undo it.
        lat_order = np.argsort(self.file_lat, kind="stable")
        lon_order = np.argsort(np.mod(self.file_lon, 360.0), kind="stable")
        return values[..., np.argsort(lat_order), :][..., np.argsort(lon_order)]

    def close(self) -> None:
        self.raw.close()


def _canonical_dim(raw: str) -> str:
    return era5._RENAMES.get(raw, raw)


def _raw_name(ds: xr.Dataset, canonical: str) -> str:
    """The name a file uses for a canonical coordinate (e.g. latitude, level <- pressure_level)."""
    for name in ds.variables:
        if _canonical_dim(str(name)) == canonical:
            return str(name)
    raise SeqvitError(f"no {canonical!r} coordinate in the dataset (found {sorted(map(str, ds.variables))})")


def _check_same_grid(first: _Source, other: _Source) -> None:
    a, b = first.canonical, other.canonical
    if sorted(map(str, a.data_vars)) != sorted(map(str, b.data_vars)):
        raise SeqvitError(
            f"{other.path}: variables {sorted(map(str, b.data_vars))} differ from {sorted(map(str, a.data_vars))} in {first.path}; "
            "give the files of one variable group only"
        )
    for coord in ("latitude", "longitude", "level"):
        if (coord in a.coords) != (coord in b.coords) or (
            coord in a.coords and not np.array_equal(a[coord].values, b[coord].values)
        ):
            raise SeqvitError(f"{other.path}: {coord} differs from {first.path}; all inputs must share one grid")
    if not all(np.array_equal(x, y) for x, y in zip(first.lat_lon(), other.lat_lon())):
        raise SeqvitError(
            f"{other.path}: latitude/longitude order differs from {first.path}; all inputs must share one grid"
        )


def _time_chunks(n_times: int, in_bytes_per_step: int, out_bytes_per_step: int) -> tuple[int, int]:
    """(read chunk, write block) lengths in time steps.

    A read chunk bounds the source data in memory; a write block is one on-disk chunk of the
    output (about _DISK_CHUNK_BYTES), so HDF5 compresses each chunk once. Fine source grids
    are read in several chunks per block; coarse ones in one.
    """
    read = max(1, min(n_times, _CHUNK_BYTES // max(in_bytes_per_step, 1)))
    block = max(1, min(n_times, _DISK_CHUNK_BYTES // max(out_bytes_per_step, 1)))
    return min(read, block), block


@dataclass(frozen=True)
class _Piece:
    """Time steps [first, last) of one input file for one variable, written at `offset` into the
    output block of time steps [start, stop)."""

    start: int
    stop: int
    name: str
    source: int
    first: int
    last: int
    offset: int


def regrid_files(inputs, output, grid_name: str, method: str, raw_lineage: dict | None = None) -> None:
    """Regrid CDS-layout files (months of one variable group) into one canonical CF netCDF file.

    Streams over time chunks: only one chunk of source data is in memory at a time. The result
    is what ``regrid(era5.open_raw(inputs), named_grid(grid_name), method)`` gives, written as
    compressed netCDF4.

    raw_lineage: refuse inputs that record another source (seqvit.lineage). The output records
    the inputs' lineage with the grid and method, when every input records the same one.
    """
    check_method(method)
    grid = named_grid(grid_name)
    paths = [Path(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    if not paths:
        raise SeqvitError("regrid: no input files given")
    output = Path(output)
    found = [lineage.of_raw(path) if path.exists() else None for path in paths]
    if raw_lineage is not None:
        for path, recorded in zip(paths, found):
            if path.exists():
                lineage.check(path, recorded, raw_lineage, "raw file")
    made_by: str | None = None
    if found[0] is not None and all(f == found[0] for f in found):
        made_by = lineage.dumps({**found[0], "grid": grid_name, "regrid_method": method})

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

        variables = {str(name): _lat_lon_last(da, str(name)) for name, da in first.canonical.data_vars.items()}
        for name, da in variables.items():
            if da.dims[0] != "time":
                raise SeqvitError(f"{first.path}: variable {name!r} has dims {da.dims}; expected time first")
        per_step_in = sum(int(np.prod(da.shape[1:])) for da in variables.values()) * 12  # float32 + float64
        per_step_out = max(int(np.prod(da.shape[1:-2])) for da in variables.values()) * int(np.prod(grid.shape)) * 4
        read_chunk, block = _time_chunks(times.size, per_step_in, per_step_out)

        # What to read, in the order it is written: per output block, per variable, per read
        # chunk, per input file.
        pieces: list[_Piece] = []
        for start in range(0, times.size, block):
            stop = min(start + block, times.size)
            for name in variables:
                for chunk_start in range(start, stop, read_chunk):
                    chunk = slice(chunk_start, min(chunk_start + read_chunk, stop))
                    for index in np.unique(owner[chunk]):
                        mine = np.flatnonzero(owner[chunk] == index) + chunk_start
                        pieces.append(
                            _Piece(
                                start,
                                stop,
                                name,
                                int(index),
                                int(local[mine[0]]),
                                int(local[mine[-1]]) + 1,
                                int(mine[0]) - start,
                            )
                        )
        last_read = {piece.source: i for i, piece in enumerate(pieces)}
        completes = {(piece.start, piece.name): i for i, piece in enumerate(pieces)}

        with atomic_path(output) as tmp:
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc, ThreadPoolExecutor(max_workers=1) as pool:
                _define_output(nc, first.canonical, variables, grid, times, block, method, len(paths))
                if made_by is not None:
                    nc.setncattr(lineage.ATTR, made_by)
                block_values: dict[tuple[int, str], np.ndarray] = {}

                def store(i: int, piece: _Piece, result) -> None:
                    values = result.result()
                    key = (piece.start, piece.name)
                    if key not in block_values:
                        block_values[key] = np.empty((piece.stop - piece.start, *values.shape[1:]), dtype=np.float32)
                    block_values[key][piece.offset : piece.offset + values.shape[0]] = values
                    if completes[key] == i:
                        nc.variables[piece.name][piece.start : piece.stop] = block_values.pop(key)

                # This thread does all netCDF/HDF5 work (the library is not thread-safe); the
                # worker regrids one chunk while the next one is read.
                computing = None
                for i, piece in enumerate(pieces):
                    src = sources[piece.source]
                    values = src.read(piece.name, piece.first, piece.last)
                    if last_read[piece.source] == i:
                        # Close inputs once consumed: each open file keeps its own chunk cache.
                        src.close()
                    if computing is not None:
                        store(*computing)
                    computing = (i, piece, pool.submit(regridder, values, f"{src.path}: variable {piece.name!r}"))
                    del values
                if computing is not None:
                    store(*computing)
    finally:
        for src in sources:
            src.close()


def _define_output(nc, first: xr.Dataset, variables, grid: Grid, times, disk_chunk: int, method: str, n_files: int):
    nc.setncatts({k: v for k, v in first.attrs.items() if k not in ("history", "_NCProperties", lineage.ATTR)})
    nc.setncattr("Conventions", "CF-1.8")
    # CF history: newest line first (as CDO and NCO write it), then the input's own history.
    history = f"seqvit regrid --grid {grid.name} --method {method} from {n_files} files"
    if first.attrs.get("history"):
        history += "\n" + str(first.attrs["history"])
    nc.setncattr("history", history)

    nc.createDimension("time", times.size)
    time = nc.createVariable("time", "i8", ("time",))
    time.setncatts(
        {**_COORD_ATTRS["time"], "units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian"}
    )
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
