"""Regridding raw files into canonical files, streamed over time chunks.

One thread reads (netCDF/HDF5 is not thread-safe) while a worker regrids the previous chunk with
seqvit.data.regrid's weights, so memory stays at a few chunks (under 1 GB for 0.25 deg) whatever
the length of the input. The output is written to a temporary file and renamed into place.
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
from seqvit.data.grids import Grid, named_grid
from seqvit.data.regrid import (
    COORD_ATTRS,
    Regridder,
    check_method,
    keep_attr,
    lat_lon_last,
)
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

# Working memory for one chunk of source data (float32 read + float64 copy), and the size of one
# uncompressed on-disk chunk of the output. 0.25 deg hourly pressure-level data then runs in
# well under 1 GB.
_CHUNK_BYTES = 256 * 2**20
_DISK_CHUNK_BYTES = 4 * 2**20


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

        variables = {str(name): lat_lon_last(da, str(name)) for name, da in first.canonical.data_vars.items()}
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
        {**COORD_ATTRS["time"], "units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian"}
    )
    epoch = np.datetime64("1970-01-01T00:00:00", "ns")
    time[:] = ((times.astype("datetime64[ns]") - epoch) // np.timedelta64(1, "s")).astype(np.int64)

    if "level" in first.dims:
        levels = first["level"].values.astype(np.int64)
        nc.createDimension("level", levels.size)
        level = nc.createVariable("level", "i8", ("level",))
        level.setncatts(COORD_ATTRS["level"])
        level[:] = levels
    for coord, values in (("latitude", grid.lat), ("longitude", grid.lon)):
        nc.createDimension(coord, values.size)
        var = nc.createVariable(coord, "f8", (coord,))
        var.setncatts(COORD_ATTRS[coord])
        var[:] = values

    for name, da in variables.items():
        sizes = dict(zip(da.dims, da.shape))
        chunks = tuple(disk_chunk if d == "time" else sizes[d] for d in da.dims[:-2]) + grid.shape
        var = nc.createVariable(
            name, "f4", da.dims, zlib=True, complevel=1, shuffle=True, chunksizes=chunks, fill_value=np.float32(np.nan)
        )
        # Writes are whole chunks, so a cache of one chunk is enough (the default holds 64 MB per variable).
        var.set_var_chunk_cache(size=int(np.prod(chunks)) * 4 + 2**20)
        var.setncatts({k: v for k, v in da.attrs.items() if keep_attr(k)})
        if method == "conservative":
            var.setncattr("cell_methods", "area: mean")
