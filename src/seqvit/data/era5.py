"""Reading ERA5 files as the CDS delivers them into the one canonical layout.

Canonical: dims (time, level, latitude, longitude); latitude ascending, longitude in [0, 360),
levels in hPa ascending; no ensemble `number` or `expver` coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from seqvit.errors import SeqvitError

_RENAMES = {
    "valid_time": "time",
    "pressure_level": "level",
    "isobaricInhPa": "level",
    "lat": "latitude",
    "lon": "longitude",
}


def canonicalize(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    ds = ds.rename({k: v for k, v in _RENAMES.items() if k in ds.variables or k in ds.dims})
    for needed in ("time", "latitude", "longitude"):
        if needed not in ds.dims:
            raise SeqvitError(
                f"{source}: no '{needed}' dimension (found {sorted(ds.dims)}); "
                "expected an ERA5 netCDF file as the CDS delivers it"
            )
    ds = ds.drop_vars([v for v in ("number", "expver", "step", "surface") if v in ds.variables])
    if "level" in ds.dims:
        ds = ds.assign_coords(level=ds["level"].values.astype(np.int64)).sortby("level")
    ds = ds.assign_coords(longitude=np.mod(ds["longitude"].values, 360.0))
    return ds.sortby(["latitude", "longitude"])


def open_raw(paths) -> xr.Dataset:
    """Open CDS-layout netCDF files (one or many months of one variable group) canonically."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise SeqvitError("no input files given")
    parts = []
    for path in paths:
        if not path.exists():
            raise SeqvitError(f"{path}: file not found")
        try:
            ds = xr.open_dataset(path)
        except Exception as exc:  # the message of netCDF4/h5netcdf alone rarely names the file
            raise SeqvitError(f"{path}: cannot be read as netCDF ({exc}); delete it and fetch it again") from exc
        parts.append(canonicalize(ds.load(), str(path)))
        ds.close()
    ds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override", join="exact")
    return ds.sortby("time")
