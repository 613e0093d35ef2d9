"""Fields as channels: the (time, channel, latitude, longitude) view every model stage uses.

A channel is a single-level variable (``t2m``) or a pressure-level variable at one level
(``t_850``), in WeatherBench naming.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from seqvit.errors import SeqvitError


def channel_names(cfg: dict) -> list[str]:
    data = cfg["data"]
    names = list(data.get("single_level", []))
    for var in data.get("pressure_level", []):
        names += [f"{var}_{level}" for level in data["levels"]]
    return names


def _split_channel(name: str) -> tuple[str, int | None]:
    var, _, level = name.partition("_")
    return (var, int(level)) if level.isdigit() else (name, None)


def stack_channels(ds: xr.Dataset, channels) -> xr.DataArray:
    """Select `channels` from a canonical dataset into one float32 (time, channel, lat, lon) array."""
    pieces = []
    for name in channels:
        var, level = _split_channel(name)
        if var not in ds:
            raise SeqvitError(
                f"channel {name!r}: variable {var!r} not in the data (has {sorted(map(str, ds.data_vars))})"
            )
        da = ds[var]
        if level is not None:
            if "level" not in da.dims or level not in da["level"].values:
                raise SeqvitError(f"channel {name!r}: level {level} hPa not in the data for {var!r}")
            da = da.sel(level=level, drop=True)
        elif "level" in da.dims:
            raise SeqvitError(f"channel {name!r}: {var!r} has levels; name a level, e.g. {var}_500")
        pieces.append(da.transpose("time", "latitude", "longitude").astype(np.float32))
    out = xr.concat(pieces, dim="channel", join="exact").assign_coords(channel=list(channels))
    return out.transpose("time", "channel", "latitude", "longitude").rename("fields")


def open_channels(paths, channels) -> xr.DataArray:
    """Load `channels` from canonical netCDF files (several variable groups and years)."""
    by_group: dict[tuple, list[xr.Dataset]] = {}
    for path in sorted(Path(p) for p in paths):
        with xr.open_dataset(path) as ds:
            ds = ds.load()
        by_group.setdefault(tuple(sorted(ds.data_vars)), []).append(ds)
    merged = xr.merge(
        [xr.concat(parts, dim="time").sortby("time") for parts in by_group.values()],
        join="inner",
        compat="override",
    )
    return stack_channels(merged, channels)


def split_times(times, cfg: dict, split: str) -> np.ndarray:
    """Mask of `times` whose year belongs to cfg['splits'][split]."""
    years = cfg["splits"].get(split)
    if years is None:
        raise SeqvitError(f"config key splits.{split} is missing; list the years of the {split} split")
    return np.isin(pd.DatetimeIndex(times).year, list(years))


def init_times(times, lead_hours) -> np.ndarray:
    """Initialization times t in `times` with t + lead in `times` for every lead."""
    times = pd.DatetimeIndex(times)
    ok = np.ones(len(times), dtype=bool)
    for lead in lead_hours:
        ok &= (times + pd.Timedelta(hours=int(lead))).isin(times)
    return times[ok].values
