"""ERA5 from a WeatherBench2 zarr store (gs://weatherbench2/datasets/era5/..., or a local copy).

The stores name variables in long form (`2m_temperature`, `geopotential`), use dims time,
level (hPa), latitude (ascending), longitude (0..360) in some order, and are already on their
target grid (e.g. 64x32 equiangular = seqvit's 5.625deg, so regridding is an identity). Each
month of a variable group becomes one raw file in the CDS layout, verified like a download.
Reading gs:// needs gcsfs (pip install 'seqvit[gcs]'); anonymous access is the default.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from seqvit.data import era5
from seqvit.data.sources import state
from seqvit.data.sources.commit import commit
from seqvit.data.sources.variables import VARIABLES
from seqvit.data.sources.verify import expectation_for
from seqvit.data.sources.writer import write_cds_netcdf
from seqvit.errors import SeqvitError

LOG = logging.getLogger("seqvit.download")
PUBLIC_STORE = "gs://weatherbench2/datasets/era5/1959-2023_01_10-6h-64x32_equiangular_conservative.zarr"


class WeatherBench2Source:
    kind = "weatherbench2"

    def __init__(self, cfg: dict, raw_dir, log: logging.Logger = LOG):
        source = cfg.get("source") or {}
        self.store = str(source.get("store") or "")
        if not self.store:
            raise SeqvitError(f"config key source.store is missing: the WeatherBench2 zarr store, e.g. {PUBLIC_STORE}")
        self.storage_options = source.get("storage_options")
        self.names = dict(source.get("variable_names") or {})
        self.raw_dir = Path(raw_dir)
        self.log = log
        self._ds: xr.Dataset | None = None

    def open(self) -> xr.Dataset:
        if self._ds is not None:
            return self._ds
        remote = "://" in self.store
        options = self.storage_options
        if remote:
            protocol = self.store.split("://", 1)[0]
            if protocol in ("gs", "gcs") and importlib.util.find_spec("gcsfs") is None:
                raise SeqvitError(
                    f"source.store {self.store} is on Google Cloud Storage, which needs gcsfs: "
                    "pip install 'seqvit[gcs]' (or copy the store and set source.store to its local path)"
                )
            if options is None and protocol in ("gs", "gcs"):
                options = {"token": "anon"}  # the WeatherBench2 bucket is public
        elif not Path(self.store).exists():
            raise SeqvitError(f"config key source.store: {self.store} does not exist")
        try:
            self._ds = xr.open_zarr(self.store, storage_options=options, chunks=None, decode_timedelta=True)
        except Exception as exc:
            raise SeqvitError(f"source.store {self.store}: cannot be opened as a zarr store ({exc})") from exc
        return self._ds

    def store_name(self, group: str, short: str) -> str:
        if short in self.names:
            return str(self.names[short])
        variable = VARIABLES.get((group, short))
        if variable is None:
            raise SeqvitError(
                f"no WeatherBench2 name known for {short!r}; give it as source.variable_names.{short}: <name in the store>"
            )
        return variable.wb2

    def fetch(self, request) -> dict:
        ds = self.open()
        started = state.now()
        names = {short: self.store_name(request.group, short) for short in request.variables}
        absent = [f"{store_name} ({short})" for short, store_name in names.items() if store_name not in ds.data_vars]
        if absent:
            raise SeqvitError(
                f"{self.store}: holds no variable {', '.join(absent)}; it has {sorted(map(str, ds.data_vars))} "
                "(map names with source.variable_names)"
            )
        want = request.times()
        have = ds["time"].values.astype("datetime64[ns]")
        lacking = np.setdiff1d(want, have)
        if lacking.size:
            step = f"{(have[1] - have[0]) / np.timedelta64(1, 'h'):g} hours" if have.size > 1 else "(one time step)"
            raise SeqvitError(
                f"{self.store}: lacks {lacking.size} time steps of {request.label()} "
                f"(first {np.datetime_as_string(lacking[0], unit='m')}); the store covers "
                f"{np.datetime_as_string(have[0], unit='m')} to {np.datetime_as_string(have[-1], unit='m')} every {step}: "
                "adjust data.years and data.hours"
            )
        pieces = {}
        for short, store_name in names.items():
            da = ds[store_name].sel(time=want)
            if request.levels:
                if "level" not in da.dims:
                    raise SeqvitError(
                        f"{self.store}: {store_name} has no level dimension, but {short} is a pressure-level variable"
                    )
                missing = sorted(set(request.levels) - set(int(v) for v in da["level"].values))
                if missing:
                    raise SeqvitError(
                        f"{self.store}: {store_name} lacks the levels {missing} hPa (config key data.levels)"
                    )
                da = da.sel(level=list(request.levels))
            pieces[short] = da.drop_vars([c for c in da.coords if c not in da.dims])
        canonical = era5.canonicalize(xr.Dataset(pieces), self.store)
        grid = (canonical["latitude"].values, canonical["longitude"].values)
        final = request.path(self.raw_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent) as work:
            candidate = Path(work) / "month.nc"
            write_cds_netcdf(
                candidate,
                [canonical],
                history=f"seqvit: {request.label()} from the WeatherBench2 store {self.store}",
            )
            record = {
                "source": "weatherbench2",
                "store": self.store,
                "store_variables": names,
                "times": {"started": started, "downloaded": state.now()},
            }
            return commit(request, self.raw_dir, candidate, expectation_for(request, grid), record)
