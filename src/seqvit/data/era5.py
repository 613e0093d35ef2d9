"""Reading ERA5 files as the CDS delivers them into the one canonical layout.

Canonical: dims (time, level, latitude, longitude); latitude ascending, longitude in [0, 360),
levels in hPa ascending; no ensemble `number` or `expver` coordinates.

Deliveries read: netCDF as the CDS writes it today (`valid_time`, `pressure_level`, scalar
`number`, `expver` along time with ERA5 "0001" and ERA5T "0005" mixed in recent months); a zip
of `...stepType-instant.nc` and `...stepType-accum.nc` when a request mixes instantaneous and
accumulated variables; GRIB through cfgrib (optional: pip install 'seqvit[grib]'); and older
files with cfgrib names (`time`, `isobaricInhPa`) or an `expver` dimension.
"""

from __future__ import annotations

import tempfile
import zipfile
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


def _cfgrib_valid_time(ds: xr.Dataset) -> xr.Dataset:
    """cfgrib keeps the analysis/forecast `time` beside `valid_time` (= time + step); use the valid time."""
    if "valid_time" not in ds.variables or "time" not in ds.variables:
        return ds
    valid = ds["valid_time"]
    if valid.dims == ("time", "step"):  # accumulations in GRIB: forecast base times x steps
        ds = ds.stack(_valid=("time", "step"))
        valid_times = ds["valid_time"].values
        ds = ds.drop_vars(["time", "step", "_valid", "valid_time"]).rename({"_valid": "time"})
        ds = ds.assign_coords(time=("time", valid_times)).transpose("time", ...)
        # the (base time, step) hypercube holds valid times outside the delivery as all-missing
        # rows; dropping them is safe because verification demands every requested time step
        present = None
        for da in ds.data_vars.values():
            if "time" in da.dims:
                any_value = da.notnull().any([d for d in da.dims if d != "time"])
                present = any_value if present is None else present | any_value
        return ds if present is None else ds.isel(time=np.flatnonzero(present.values))
    if valid.dims == ("time",):
        return ds.drop_vars("valid_time").assign_coords(time=("time", valid.values, ds["time"].attrs))
    if valid.dims == () and "time" not in ds.dims:  # one time step: cfgrib squeezes the dimension
        return ds.drop_vars("time").expand_dims("valid_time")
    return ds


def _collapse_expver(ds: xr.Dataset) -> xr.Dataset:
    """Older CDS netCDF of months mixing ERA5 and ERA5T have an `expver` dimension (1 and 5) with
    each time step filled in one of them; keep ERA5 (final) where both hold data."""
    if "expver" not in ds.dims:
        return ds
    order = sorted(ds["expver"].values.tolist(), key=lambda v: int(v))
    combined = ds.sel(expver=order[0], drop=True)
    for value in order[1:]:
        combined = combined.combine_first(ds.sel(expver=value, drop=True))
    return combined


def canonicalize(ds: xr.Dataset, source: str = "dataset") -> xr.Dataset:
    ds = _collapse_expver(_cfgrib_valid_time(ds))
    ds = ds.rename({k: v for k, v in _RENAMES.items() if k in ds.variables or k in ds.dims})
    for needed in ("time", "latitude", "longitude"):
        if needed not in ds.dims:
            raise SeqvitError(
                f"{source}: no '{needed}' dimension (found {sorted(map(str, ds.dims))}); "
                "expected an ERA5 netCDF file as the CDS delivers it"
            )
    ds = ds.drop_vars([v for v in ("number", "expver", "step", "surface") if v in ds.variables])
    if "level" in ds.dims:
        ds = ds.assign_coords(level=ds["level"].values.astype(np.int64)).sortby("level")
    ds = ds.assign_coords(longitude=np.mod(ds["longitude"].values, 360.0))
    return ds.sortby(["latitude", "longitude"])


_MAGIC = {
    b"CDF\x01": "netcdf",
    b"CDF\x02": "netcdf",
    b"CDF\x05": "netcdf",
    b"\x89HDF": "netcdf",
    b"PK\x03\x04": "zip",
    b"GRIB": "grib",
}
GRIB_HINT = "reading GRIB needs cfgrib and the ecCodes library: pip install 'seqvit[grib]'"


def detect_format(path) -> str:
    """'netcdf', 'zip', 'grib' or 'unknown', from the first bytes of the file."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return _MAGIC.get(head, "unknown")


def _open_netcdf(path: Path, source: str) -> xr.Dataset:
    try:
        return xr.open_dataset(path)
    except Exception as exc:  # the message of netCDF4/h5netcdf alone rarely names the file
        raise SeqvitError(f"{source}: cannot be read as netCDF ({exc}); delete it and fetch it again") from exc


def _open_grib(path: Path, source: str) -> list[xr.Dataset]:
    try:
        import cfgrib
    except ImportError:
        raise SeqvitError(f"{source}: is GRIB; {GRIB_HINT}") from None
    try:
        # one hypercube per compatible set of messages (e.g. instantaneous and accumulated)
        return list(cfgrib.open_datasets(str(path), backend_kwargs={"indexpath": ""}))
    except Exception as exc:
        raise SeqvitError(f"{source}: cannot be read as GRIB ({exc}); delete it and fetch it again") from exc


def open_members(path, workdir) -> list[xr.Dataset]:
    """Open a delivery lazily in its own layout: one dataset for netCDF, one per member of a
    zip (extracted into `workdir`, which must exist and outlive the datasets), one per
    hypercube of a GRIB file."""
    path = Path(path)
    if not path.exists():
        raise SeqvitError(f"{path}: file not found")
    kind = detect_format(path)
    if kind == "netcdf":
        return [_open_netcdf(path, str(path))]
    if kind == "grib":
        return _open_grib(path, str(path))
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = sorted(n for n in archive.namelist() if not n.endswith("/"))
                if not names:
                    raise SeqvitError(f"{path}: the zip archive is empty; delete it and fetch it again")
                members = []
                for index, name in enumerate(names):
                    target = Path(workdir) / f"member{index}{Path(name).suffix}"
                    with archive.open(name) as src, open(target, "wb") as dst:
                        while chunk := src.read(1 << 24):
                            dst.write(chunk)
                    member_kind = detect_format(target)
                    label = f"{path} (member {name})"
                    if member_kind == "netcdf":
                        members.append(_open_netcdf(target, label))
                    elif member_kind == "grib":
                        members += _open_grib(target, label)
                    else:
                        raise SeqvitError(f"{label}: neither netCDF nor GRIB; delete {path} and fetch it again")
                return members
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise SeqvitError(f"{path}: damaged zip archive ({exc}); delete it and fetch it again") from exc
    raise SeqvitError(f"{path}: neither netCDF, zip nor GRIB (starts with other bytes); delete it and fetch it again")


def merge_members(members: list[xr.Dataset], source: str = "dataset") -> xr.Dataset:
    """Canonical dataset from the members of one delivery (instantaneous + accumulated)."""
    parts = [canonicalize(member, source) for member in members]
    if len(parts) == 1:
        return parts[0]
    try:
        return xr.merge(parts, join="exact", compat="override", combine_attrs="drop_conflicts")
    except ValueError as exc:
        raise SeqvitError(
            f"{source}: its parts cover different times or grids ({exc}); delete it and fetch it again"
        ) from exc


def expver_counts(ds: xr.Dataset) -> dict[str, int]:
    """How many time steps come from each ERA5 experiment version ("0001" ERA5, "0005" ERA5T)."""
    if "expver" not in ds.variables or "expver" in ds.dims:
        return {}
    values, counts = np.unique(np.asarray(ds["expver"].values).astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def open_raw(paths) -> xr.Dataset:
    """Open ERA5 files (netCDF, a CDS zip, GRIB; one or many months of one variable group) canonically."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise SeqvitError("no input files given")
    parts = []
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="seqvit-era5-") as workdir:
            members = open_members(path, workdir)
            try:
                parts.append(merge_members([m.load() for m in members], str(path)))
            finally:
                for member in members:
                    member.close()
    ds = (
        parts[0]
        if len(parts) == 1
        else xr.concat(parts, dim="time", data_vars="minimal", coords="minimal", compat="override", join="exact")
    )
    return ds.sortby("time")
