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

Files are regridded by seqvit.data.regrid_files, streaming over time.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from seqvit.data.grids import Grid, lat_bounds, lon_bounds
from seqvit.errors import SeqvitError

METHODS = ("conservative", "bilinear")

# Tolerance for "regularly spaced": coordinates stored as float32 round at ~1e-5 deg near 90,
# while Gaussian latitudes deviate from even spacing by far more.
_SPACING_RTOL = 1e-4
_SPACING_ATOL = 1e-4  # degrees

COORD_ATTRS = {
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


def lat_lon_last(da: xr.DataArray, name: str) -> xr.DataArray:
    if "latitude" not in da.dims or "longitude" not in da.dims:
        raise SeqvitError(
            f"variable {name!r} has dims {da.dims} without latitude/longitude; regrid expects only gridded "
            "fields (canonical layout: time, level, latitude, longitude)"
        )
    return da.transpose(..., "latitude", "longitude")


def coordinate_arrays(grid: Grid) -> dict[str, xr.DataArray]:
    return {
        "latitude": xr.DataArray(grid.lat, dims="latitude", attrs=COORD_ATTRS["latitude"]),
        "longitude": xr.DataArray(grid.lon, dims="longitude", attrs=COORD_ATTRS["longitude"]),
    }


# GRIB keys that CDS files carry and that describe the SOURCE grid; they are wrong after regridding.
_SOURCE_GRID_KEYS = ("Nx", "Ny", "grid", "Grid", "Direction", "Scans", "Points", "NV")


def keep_attr(key: str) -> bool:
    if key in ("_FillValue", "missing_value", "coordinates"):
        return False
    return not (key.startswith("GRIB_") and any(part in key for part in _SOURCE_GRID_KEYS))


def regrid(ds: xr.Dataset, grid: Grid, method: str = "conservative") -> xr.Dataset:
    """Regrid every variable of a canonical dataset onto `grid` (in memory); float32 data."""
    check_method(method)
    regridder = Regridder(ds["latitude"].values, ds["longitude"].values, grid, method)
    out = {}
    for name, da in ds.data_vars.items():
        da = lat_lon_last(da, str(name))
        values = regridder(da.values, what=f"variable {name!r}")
        out[name] = xr.Variable(da.dims, values, attrs={k: v for k, v in da.attrs.items() if keep_attr(k)})
    coords = {k: v for k, v in ds.coords.items() if "latitude" not in v.dims and "longitude" not in v.dims}
    coords.update(coordinate_arrays(grid))
    return xr.Dataset(out, coords=coords, attrs=dict(ds.attrs))
