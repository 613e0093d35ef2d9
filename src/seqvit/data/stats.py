"""Normalization statistics and climatology, from the training years only.

stats.nc: mean and standard deviation per channel over every time step of the training years
and every grid point (unweighted, population std), accumulated in float64 and merged chunk by
chunk with the parallel update of Chan, Golub and LeVeque (1979), so streaming over time does
not lose precision.

climatology.nc: the mean per channel, day of year (1..366) and hour of day, as WeatherBench2
computes it (weatherbench2 utils.compute_hourly_stat): for each hour, the samples of each day of
year are averaged over the years and over a 61-day triangular window along the day of year
that wraps around the year end; in years without 29 February day 366 repeats day 365. Sums and
counts per (day of year, hour) are accumulated in float64 and smoothed once at the end. The
years are the config key stats.climatology_years, by default splits.train; they may include
years outside every split (WeatherBench2 uses 1990-2019), never a validation or test year.

Both files are CF netCDF4 with coordinates, per-channel units (the auxiliary coordinate
`channel_units`, since one variable holds channels of different units) and a history attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from seqvit import lineage
from seqvit.data.fields import channel_names, open_channels
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

DAYS_OF_YEAR = 366
WINDOW_DAYS = 61  # WeatherBench2's climatology window
_CHUNK_BYTES = 64 * 2**20  # float32 input per update (float64 copies double it)


def triangular_window(window_days: int = WINDOW_DAYS) -> np.ndarray:
    """WeatherBench2 weights: linear from 0 at both ends to 1 in the middle (61 days: offsets -30..30)."""
    if window_days % 2 != 1:
        raise SeqvitError(f"climatology window must be an odd number of days, got {window_days}")
    half = window_days // 2
    return 1.0 - np.abs(np.arange(-half, half + 1)) / half


def _circular_smoother(window_days: int = WINDOW_DAYS) -> np.ndarray:
    """(366, 366) matrix whose row d holds the window weights of the days around d, wrapping around."""
    weights = triangular_window(window_days)
    half = window_days // 2
    offset = (np.arange(DAYS_OF_YEAR)[None, :] - np.arange(DAYS_OF_YEAR)[:, None] + DAYS_OF_YEAR // 2) % DAYS_OF_YEAR
    offset -= DAYS_OF_YEAR // 2  # signed distance from day d to day j, in (-183, 183]
    return np.where(np.abs(offset) <= half, weights[np.clip(offset + half, 0, window_days - 1)], 0.0)


class _Moments:
    """Streaming per-channel count, mean and sum of squared deviations (float64)."""

    def __init__(self, n_channels: int):
        self.count = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def update(self, values: np.ndarray) -> None:
        """values: (time, channel, latitude, longitude)."""
        chunk = values.astype(np.float64)
        n = chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
        if n == 0:
            return
        mean = chunk.mean(axis=(0, 2, 3))
        chunk -= mean[None, :, None, None]
        m2 = np.einsum("tcyx,tcyx->c", chunk, chunk)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count)


class _Climatology:
    """Sums and counts per (day of year, hour), then the smoothed mean."""

    def __init__(self, n_channels: int, hours, shape: tuple[int, int]):
        self.hours = [int(h) for h in hours]
        self.shape = shape
        self.sums = np.zeros((n_channels, DAYS_OF_YEAR * len(self.hours), *shape))
        self.counts = np.zeros(DAYS_OF_YEAR * len(self.hours))

    def slots(self, times: pd.DatetimeIndex) -> np.ndarray:
        hours = times.hour.values
        off = ~np.isin(hours, self.hours) | (times.minute.values != 0) | (times.second.values != 0)
        if off.any():
            shown = sorted({t.strftime("%H:%M") for t in times[off][:1000]})[:5]
            raise SeqvitError(
                f"regridded data has times at {', '.join(shown)}, not among data.hours {self.hours}; "
                "list every hour of the data in the config key data.hours"
            )
        hour_index = np.zeros(24, dtype=np.int64)
        hour_index[self.hours] = np.arange(len(self.hours))
        return (times.day_of_year.values - 1) * len(self.hours) + hour_index[hours]

    def update(self, times: pd.DatetimeIndex, values: np.ndarray) -> None:
        slots = self.slots(times)
        by_channel = values.transpose(1, 0, 2, 3)
        self._add(slots, by_channel)
        # As WeatherBench2 does, a year without 29 February fills day 366 with its day 365, so
        # every day of year gets one sample per year.
        dec31 = (times.day_of_year.values == 365) & ~times.is_leap_year
        if dec31.any():
            self._add(slots[dec31] + len(self.hours), by_channel[:, dec31])

    def _add(self, slots: np.ndarray, by_channel: np.ndarray) -> None:
        if np.unique(slots).size == slots.size:
            self.sums[:, slots] += by_channel
        else:  # repeated slots (several years in one chunk) need an unbuffered add
            # numpy's stub omits the tuple of slices/arrays that ufunc.at accepts as indices
            np.add.at(self.sums, (slice(None), slots), by_channel)  # type: ignore[arg-type]
        np.add.at(self.counts, slots, 1)

    def smoothed(self) -> np.ndarray:
        """(channel, dayofyear, hour, latitude, longitude) float32."""
        n_hours = len(self.hours)
        smoother = _circular_smoother()
        counts = smoother @ self.counts.reshape(DAYS_OF_YEAR, n_hours)
        # Days with no training data within the window (a config restricted to some months) stay
        # NaN; climatology_at refuses them, so nothing downstream uses an undefined value.
        counts = np.where(counts > 0, counts, np.nan)
        out = np.empty((self.sums.shape[0], DAYS_OF_YEAR, n_hours, *self.shape), dtype=np.float32)
        for channel in range(self.sums.shape[0]):
            sums = smoother @ self.sums[channel].reshape(DAYS_OF_YEAR, -1)
            out[channel] = (sums.reshape(DAYS_OF_YEAR, n_hours, -1) / counts[:, :, None]).reshape(out.shape[1:])
        return out


def _years_by_file(paths, units: dict[str, str] | None = None) -> dict[Path, set[int]]:
    """The years each file holds; fills `units` with the units attribute of each variable."""
    years = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise SeqvitError(f"{path}: regridded file not found; run the regrid stage first")
        with xr.open_dataset(path) as ds:
            if "time" not in ds.dims:
                raise SeqvitError(f"{path}: no 'time' dimension; expected a regridded file in the canonical layout")
            years[path] = set(pd.DatetimeIndex(ds["time"].values).year.tolist())
            if units is not None:
                for name, da in ds.data_vars.items():
                    units.setdefault(str(name), str(da.attrs.get("units", "")))
    return years


def _channel_units(channels, units: dict[str, str]) -> list[str]:
    """Units per channel from the variables' units ("t_850" has the units of "t")."""
    return [units.get(channel, units.get(channel.partition("_")[0], "")) for channel in channels]


def climatology_years(cfg: dict) -> list[int]:
    """Years of the climatology: config key stats.climatology_years, by default splits.train.

    Validation and test years are refused: a climatology that has seen them would leak the
    evaluation data into the climatology baseline and the ACC anomalies.
    """
    configured = (cfg.get("stats") or {}).get("climatology_years")
    years = sorted({int(y) for y in (configured if configured else cfg["splits"]["train"])})
    splits = cfg.get("splits") or {}
    held_out = {int(y) for split in ("val", "test") for y in (splits.get(split) or [])}
    leaking = sorted(held_out.intersection(years))
    if leaking:
        raise SeqvitError(
            f"config key stats.climatology_years = {years} includes {leaking}, which are validation or test years "
            "(splits.val, splits.test); the climatology must not see them: drop those years"
        )
    return years


def compute_stats(cfg: dict, regridded_paths, stats_out=None, clim_out=None) -> None:
    """Write stats.nc (mean, std per channel over the training years) and/or climatology.nc
    (over stats.climatology_years); each reads only the years it needs.

    Two outputs, two Snakemake jobs: a change of the climatology years must not renormalize the
    tokens and retrain every model.
    """
    if stats_out is None and clim_out is None:
        raise SeqvitError("compute_stats: nothing to write; give stats_out, clim_out or both")
    channels = channel_names(cfg)
    for path in regridded_paths:
        lineage.check_netcdf(path, lineage.regridded(cfg), "regridded file")
    hours = cfg["data"].get("hours")
    if not hours:
        raise SeqvitError("config key data.hours is missing; list the hours of day of the data, e.g. [0, 6, 12, 18]")
    if not (cfg.get("splits") or {}).get("train"):
        raise SeqvitError("config key splits.train is missing or empty; list the training years, e.g. [2015, 2016]")
    train_years = sorted(int(y) for y in cfg["splits"]["train"])
    clim_years = climatology_years(cfg)
    units: dict[str, str] = {}
    years_by_file = _years_by_file(regridded_paths, units)
    found = sorted(set().union(*years_by_file.values()))
    missing = [year for year in train_years if year not in found]
    if missing:  # statistics from part of the training split would be silently different
        raise SeqvitError(
            f"config key splits.train = {train_years}: no data for {missing}; the regridded files hold the years "
            f"{found}; regrid those years (list them in data.years) or change splits.train"
        )
    missing = [year for year in clim_years if year not in found]
    if missing:
        raise SeqvitError(
            f"config key stats.climatology_years = {clim_years}: no data for {missing}; the regridded files hold "
            f"the years {found}; regrid those years (list them in data.years) or change stats.climatology_years"
        )
    wanted = sorted((set(train_years) if stats_out else set()) | (set(clim_years) if clim_out else set()))

    moments = _Moments(len(channels))
    climatology: _Climatology | None = None
    grid = None
    for year in wanted:  # one year at a time keeps memory to one year of fields
        files = [path for path, years in years_by_file.items() if year in years]
        fields = open_channels(files, channels)
        times = pd.DatetimeIndex(fields["time"].values)
        keep = times.year == year
        times = times[keep]
        if times.has_duplicates:
            raise SeqvitError(
                f"time {times[times.duplicated()][0]} appears twice in the regridded files of {year}: {files}"
            )
        lat_lon = (fields["latitude"].values, fields["longitude"].values)
        if grid is None:
            grid = lat_lon
            climatology = _Climatology(len(channels), hours, (lat_lon[0].size, lat_lon[1].size))
        elif not all(np.array_equal(a, b) for a, b in zip(grid, lat_lon)):
            raise SeqvitError(f"regridded files of {year} are on another grid than earlier years: {files}")
        values = fields.values if keep.all() else fields.values[keep]
        del fields
        step = max(1, _CHUNK_BYTES // max(values[:1].nbytes, 1))
        for start in range(0, len(times), step):
            chunk = values[start : start + step]
            if stats_out and year in train_years:
                moments.update(chunk)
            if clim_out and year in clim_years:
                if climatology is None:  # created with the grid, from the first year read
                    raise RuntimeError("compute_stats: no climatology accumulator before the first chunk")
                climatology.update(times[start : start + step], chunk)

    if stats_out:
        _write_stats(cfg, moments, channels, units, train_years, clim_years, found, stats_out)
    if clim_out:
        _write_climatology(cfg, climatology, grid, channels, units, train_years, clim_years, clim_out)


def _channel_coords(channels, units) -> tuple[dict, dict]:
    channel_units = _channel_units(channels, units)
    same_units = {"units": channel_units[0]} if len(set(channel_units)) == 1 and channel_units[0] else {}
    channel_coords = {
        "channel": ("channel", np.array(channels, dtype=object), {"long_name": "variable, or variable_level (hPa)"}),
        "channel_units": ("channel", np.array(channel_units, dtype=object), {"long_name": "units of each channel"}),
    }
    return channel_coords, same_units


def _write_stats(cfg, moments, channels, units, train_years, clim_years, found, stats_out) -> None:
    if moments.count == 0:
        raise SeqvitError(
            f"config key splits.train = {train_years}: no time steps of those years in the regridded files (found {found})"
        )
    if np.any(moments.std == 0):
        flat = [c for c, s in zip(channels, moments.std) if s == 0]
        raise SeqvitError(
            f"channels {flat} are constant over the training years; normalizing them would divide by zero"
        )
    channel_coords, same_units = _channel_coords(channels, units)
    attrs = {"Conventions": "CF-1.8", "train_years": train_years, lineage.ATTR: lineage.dumps(lineage.stats(cfg))}
    stats = xr.Dataset(
        {
            "mean": (
                "channel",
                moments.mean,
                {"long_name": "mean over the training years and all grid points", **same_units},
            ),
            "std": (
                "channel",
                moments.std,
                {"long_name": "standard deviation (population) over the same samples", **same_units},
            ),
        },
        coords=channel_coords,
        attrs={
            **attrs,
            "samples_per_channel": moments.count,
            "history": f"seqvit stats: mean and std over the training years {train_years}",
        },
    )
    with atomic_path(stats_out) as tmp:
        stats.to_netcdf(tmp, format="NETCDF4")


def _write_climatology(cfg, climatology, grid, channels, units, train_years, clim_years, clim_out) -> None:
    channel_coords, same_units = _channel_coords(channels, units)
    attrs = {
        "Conventions": "CF-1.8",
        "train_years": train_years,
        "climatology_years": clim_years,
        lineage.ATTR: lineage.dumps(lineage.climatology(cfg)),
    }
    lat, lon = grid
    clim = xr.Dataset(
        {
            "climatology": (
                ("channel", "dayofyear", "hour", "latitude", "longitude"),
                climatology.smoothed(),
                {
                    "long_name": f"mean by day of year and hour of day over the years {clim_years}",
                    "smoothing": f"{WINDOW_DAYS}-day triangular window along day of year, circular (WeatherBench2)",
                    **same_units,
                },
            )
        },
        coords={
            **channel_coords,
            "dayofyear": ("dayofyear", np.arange(1, DAYS_OF_YEAR + 1), {"long_name": "day of year", "units": "1"}),
            "hour": (
                "hour",
                np.array(climatology.hours, dtype=np.int64),
                {"long_name": "hour of day (UTC)", "units": "hours"},
            ),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}),
        },
        attrs={
            **attrs,
            "history": f"seqvit stats: climatology over the years {clim_years}, {WINDOW_DAYS}-day triangular window",
        },
    )
    plane_bytes = len(climatology.hours) * lat.size * lon.size * 4
    encoding = {
        "climatology": {
            "zlib": True,
            "complevel": 1,
            "chunksizes": (
                1,
                max(1, min(DAYS_OF_YEAR, 2**20 // plane_bytes)),
                len(climatology.hours),
                lat.size,
                lon.size,
            ),
        }
    }
    with atomic_path(clim_out) as tmp:
        clim.to_netcdf(tmp, format="NETCDF4", encoding=encoding)


# ---- readers used by later stages ----------------------------------------------------------


def load_stats(path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mean, std, channels) from stats.nc; mean and std are float64 arrays over channels."""
    path = Path(path)
    if not path.exists():
        raise SeqvitError(f"{path}: statistics file not found; run `seqvit stats` first")
    with xr.open_dataset(path) as ds:
        for name in ("mean", "std"):
            if name not in ds or ds[name].dims != ("channel",):
                raise SeqvitError(f"{path}: no variable {name!r}(channel); rerun `seqvit stats`")
        return (
            ds["mean"].values.astype(np.float64),
            ds["std"].values.astype(np.float64),
            [str(c) for c in ds["channel"].values],
        )


def channel_stats(path, channels) -> tuple[np.ndarray, np.ndarray]:
    """Training-years mean and std of `channels`, float64 arrays in that order."""
    mean, std, stat_channels = load_stats(path)
    missing = [c for c in channels if c not in stat_channels]
    if missing:
        raise SeqvitError(f"{path}: no statistics for channels {missing}; rerun `seqvit stats` with the current config")
    order = [stat_channels.index(c) for c in channels]
    mean, std = mean[order].astype(np.float64), std[order].astype(np.float64)
    if np.any(~np.isfinite(std)) or np.any(std <= 0):
        raise SeqvitError(f"{path}: std must be positive and finite for every channel (got {dict(zip(channels, std))})")
    return mean, std


def load_climatology(path) -> xr.DataArray:
    """climatology(channel, dayofyear, hour, latitude, longitude), loaded into memory."""
    path = Path(path)
    if not path.exists():
        raise SeqvitError(f"{path}: climatology file not found; run `seqvit stats` first")
    with xr.open_dataset(path) as ds:
        if "climatology" not in ds:
            raise SeqvitError(f"{path}: no variable 'climatology'; rerun `seqvit stats`")
        clim = ds["climatology"].load()
    # Only the channel names travel on: forecasts and fields carry no units coordinate to align with.
    clim = clim.drop_vars([name for name in ("channel_units",) if name in clim.coords])
    return clim.assign_coords(channel=[str(c) for c in clim["channel"].values])


def climatology_at(clim: xr.DataArray, times) -> xr.DataArray:
    """The climatology for each of `times`: (time, channel, latitude, longitude)."""
    times = pd.DatetimeIndex(np.asarray(times).ravel())
    available = [int(h) for h in clim["hour"].values]
    missing = sorted(set(times.hour) - set(available))
    if missing or np.any(times.minute) or np.any(times.second):
        raise SeqvitError(
            f"climatology has hours {available}; times at other hours ({missing or 'not on the hour'}) "
            "have no climatology (config key data.hours)"
        )
    hour_position = {h: i for i, h in enumerate(available)}
    day_positions = xr.DataArray(times.day_of_year.values - 1, dims="time")
    hour_positions = xr.DataArray([hour_position[h] for h in times.hour], dims="time")
    out = clim.isel(dayofyear=day_positions, hour=hour_positions).drop_vars(["dayofyear", "hour"])
    undefined = np.isnan(out.isel(channel=0, latitude=0, longitude=0).values)
    if undefined.any():
        first = times[undefined][0]
        raise SeqvitError(
            f"climatology: no training data within {WINDOW_DAYS // 2} days of {first:%m-%d %H}h (day-of-year "
            f"{first.day_of_year}); the training years and months (config keys splits.train, data.months) must "
            "cover the dates evaluated"
        )
    return out.assign_coords(time=times.values).transpose("time", "channel", "latitude", "longitude")
