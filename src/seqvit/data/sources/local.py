"""ERA5 files the user already has: a directory of netCDF (CDS or cfgrib layout), CDS zips or GRIB.

Files may be cut any way (per month, per year, per variable). An index of what each file holds
(variables, levels, months) is built once and cached in raw/manifest/local-index.json, keyed by
each file's size and modification time. Each month of a variable group is then assembled from
the files that hold it into one raw file in the CDS layout and verified like a download: every
configured variable at every configured level and time step, no field entirely missing. A time
step found in two files is an error, not a choice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from seqvit.data import era5
from seqvit.data.sources import state
from seqvit.data.sources.commit import commit
from seqvit.data.sources.verify import expectation_for
from seqvit.data.sources.writer import write_cds_netcdf
from seqvit.errors import SeqvitError

LOG = logging.getLogger("seqvit.download")
SUFFIXES = (".nc", ".nc4", ".netcdf", ".zip", ".grib", ".grb", ".grib2", ".grb2")
INDEX_VERSION = 1


class LocalSource:
    kind = "local"

    def __init__(self, cfg: dict, raw_dir, log: logging.Logger = LOG):
        source = cfg.get("source") or {}
        if not source.get("path"):
            raise SeqvitError("config key source.path is missing: the directory that holds your ERA5 files")
        self.root = Path(os.path.expanduser(str(source["path"])))
        self.pattern = str(source.get("pattern") or "**/*")
        self.raw_dir = Path(raw_dir)
        self.log = log
        self._index: dict | None = None

    # ---- index ----------------------------------------------------------------------------

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            raise SeqvitError(f"config key source.path: {self.root} is not a directory")
        found = sorted(p for p in self.root.glob(self.pattern) if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not found:
            raise SeqvitError(
                f"{self.root}: no ERA5 files matching {self.pattern!r} (suffixes {', '.join(SUFFIXES)}); "
                "check source.path and source.pattern"
            )
        return found

    def index(self) -> dict:
        """{path: {size, mtime_ns, variables: {name: [levels]}, months: ["YYYY-MM"]}} for every file."""
        if self._index is not None:
            return self._index
        cache = self.raw_dir / "manifest" / "local-index.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(cache.with_suffix(".lock")):  # concurrent jobs wait for one scan
            saved = state.read_json(cache) or {}
            entries = (
                saved.get("files", {})
                if saved.get("version") == INDEX_VERSION and saved.get("root") == str(self.root)
                else {}
            )
            fresh, changed = {}, False
            for path in self.files():
                stat = path.stat()
                key = str(path)
                old = entries.get(key)
                if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
                    fresh[key] = old
                    continue
                fresh[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, **_describe(path)}
                changed = True
            if changed or set(fresh) != set(entries):
                state.write_json(cache, {"version": INDEX_VERSION, "root": str(self.root), "files": fresh})
        self._index = fresh
        return fresh

    # ---- one month ------------------------------------------------------------------------

    def fetch(self, request) -> dict:
        started = state.now()
        month = f"{request.year}-{request.month:02d}"
        wanted = set(request.variables)
        sources = [
            Path(path)
            for path, entry in self.index().items()
            if month in entry["months"] and wanted & set(entry["variables"])
        ]
        if not sources:
            raise SeqvitError(
                f"{self.root}: no file holds {sorted(wanted)} in {month} ({request.group}); "
                "add the files or drop that month from the config"
            )
        times = request.times()
        final = request.path(self.raw_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent) as tmp:
            work = Path(tmp)
            opened, pieces = [], []
            owner: dict[tuple[str, np.datetime64], Path] = {}
            try:
                for number, path in enumerate(sources):
                    members_dir = work / f"file{number}"
                    members_dir.mkdir()
                    members = era5.open_members(path, members_dir)
                    opened += members
                    for member in members:
                        piece = self._select(era5.canonicalize(member, str(path)), request, times, path)
                        if piece is None:
                            continue
                        for name in piece.data_vars:
                            for when in piece["time"].values.astype("datetime64[ns]"):
                                if (name, when) in owner:
                                    raise SeqvitError(
                                        f"{name} at {pd.Timestamp(when):%Y-%m-%d %H:%M} is in both {owner[(name, when)]} "
                                        f"and {path}; keep one of them (or narrow source.pattern)"
                                    )
                                owner[(name, when)] = path
                        pieces.append(piece)
                for name in request.variables:
                    have = np.array([w for (n, w) in owner if n == name], dtype="datetime64[ns]")
                    lacking = np.setdiff1d(times, have)
                    if lacking.size:
                        raise SeqvitError(
                            f"{self.root}: no file holds {name} at {lacking.size} of the {times.size} time steps of "
                            f"{request.label()} (first {pd.Timestamp(lacking[0]):%Y-%m-%d %H:%M}); "
                            "add the files or drop those dates from the config"
                        )
                candidate = work / "month.nc"
                write_cds_netcdf(
                    candidate,
                    pieces,
                    history=f"seqvit: {request.label()} assembled from {len(sources)} local files under {self.root}",
                )
            finally:
                for member in opened:
                    member.close()
            record = {
                "source": "local",
                "files": [{"path": str(p), "size": self.index()[str(p)]["size"]} for p in sorted({*owner.values()})],
                "times": {"started": started, "downloaded": state.now()},
            }
            return commit(request, self.raw_dir, candidate, expectation_for(request), record)

    @staticmethod
    def _select(ds, request, times, path):
        names = [n for n in request.variables if n in ds.data_vars]
        if not names:
            return None
        ds = ds[names]
        mask = np.isin(ds["time"].values.astype("datetime64[ns]"), times)
        if not mask.any():
            return None
        ds = ds.isel(time=np.flatnonzero(mask))
        if request.levels:
            if "level" not in ds.dims:
                raise SeqvitError(
                    f"{path}: {names} have no pressure levels, but the config lists them as pressure-level variables"
                )
            missing = sorted(set(request.levels) - set(int(v) for v in ds["level"].values))
            if missing:
                raise SeqvitError(f"{path}: lacks the levels {missing} hPa of {names} (config key data.levels)")
            ds = ds.sel(level=list(request.levels))
        elif "level" in ds.dims:
            raise SeqvitError(
                f"{path}: {names} have pressure levels, but the config lists them as single-level variables"
            )
        return ds


def _describe(path: Path) -> dict:
    """What one file holds (reads coordinates only)."""
    with tempfile.TemporaryDirectory(prefix="seqvit-index-") as work:
        members = era5.open_members(path, work)
        try:
            variables: dict[str, list[int]] = {}
            months: set[str] = set()
            for member in members:
                # coordinates only: canonicalize would read the data of files with an expver dimension
                time_name = next((n for n in ("valid_time", "time") if n in member.variables), None)
                if time_name is None:
                    raise SeqvitError(
                        f"{path}: no time coordinate (valid_time or time); not an ERA5 file seqvit can read"
                    )
                level_name = next((n for n in ("pressure_level", "isobaricInhPa", "level") if n in member.dims), None)
                levels = [int(v) for v in member[level_name].values] if level_name else []
                for name, da in member.data_vars.items():
                    if {"latitude", "longitude"} <= set(da.dims) or {"lat", "lon"} <= set(da.dims):
                        variables[str(name)] = sorted(set(variables.get(str(name), [])) | set(levels))
                stamps = np.asarray(member[time_name].values).astype("datetime64[ns]").ravel()
                months |= set(pd.DatetimeIndex(stamps[~np.isnat(stamps)]).strftime("%Y-%m"))
        finally:
            for member in members:
                member.close()
    return {"variables": variables, "months": sorted(months)}


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
