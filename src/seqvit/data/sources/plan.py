"""Splitting the configured ERA5 data into requests, one raw file each.

A request covers one variable group (single levels or pressure levels) and one month by
default: every configured variable, level and hour. When that would exceed the CDS cost limit
(counted in fields: variables x levels x time steps), the month is split into runs of whole
days, and a day into runs of hours if even one day is too large. Variables are never split
across files, because the regrid stage concatenates a group's files in time.

File names under raw/{group}/{year}/:  ``01.nc`` (whole month), ``01_d01-06.nc`` (days 1-6),
``01_d03_h00-11.nc`` (day 3, hours 0-11). Planning is pure arithmetic on the config (no network,
no heavy imports), so Snakemake can call it while it builds the DAG.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from seqvit.data.sources.variables import PRESSURE, SINGLE, lookup
from seqvit.errors import SeqvitError

GROUP_KEYS = {SINGLE: "single_level", PRESSURE: "pressure_level"}
DATASETS = {SINGLE: "reanalysis-era5-single-levels", PRESSURE: "reanalysis-era5-pressure-levels"}
# The sources that download ("module:class", imported only when used: each pulls in its client
# library). Each class implements seqvit.data.sources.Source. `synthetic` downloads nothing: its raw
# files come from `seqvit synth`.
DOWNLOADERS = {
    "cds": "seqvit.data.sources.cds:CdsSource",
    "weatherbench2": "seqvit.data.sources.weatherbench2:WeatherBench2Source",
    "local": "seqvit.data.sources.local:LocalSource",
}
KINDS = ("synthetic", *DOWNLOADERS)
FORMATS = ("netcdf", "grib")
# Fields per request the CDS accepts for ERA5. The CDS shows its current limits on each
# dataset's download form; netCDF requests are limited more tightly than GRIB because the
# conversion runs on their side. source.max_fields overrides these; a request the CDS still
# finds too large is halved at run time.
DEFAULT_MAX_FIELDS = {"netcdf": 12_000, "grib": 120_000}
ERA5_PRESSURE_LEVELS = (
    1,
    2,
    3,
    5,
    7,
    10,
    20,
    30,
    50,
    70,
    100,
    125,
    150,
    175,
    200,
    225,
    250,
    300,
    350,
    400,
    450,
    500,
    550,
    600,
    650,
    700,
    750,
    775,
    800,
    825,
    850,
    875,
    900,
    925,
    950,
    975,
    1000,
)
NATIVE_STEP_DEG = 0.25


@dataclass(frozen=True)
class Request:
    """One raw file: what to ask for and where it goes."""

    group: str
    year: int
    month: int
    days: tuple[int, ...]
    hours: tuple[int, ...]
    variables: tuple[str, ...]  # short names, as in the CDS netCDF
    levels: tuple[int, ...] = ()  # hPa ascending; empty for single levels
    stem: str = ""  # file name without .nc; parts split at run time keep their file's stem
    dataset: str = ""
    data_format: str = "netcdf"
    grid: tuple[float, float] | None = None  # (dlat, dlon) degrees
    area: tuple[float, float, float, float] | None = None  # N, W, S, E

    @property
    def id(self) -> str:
        return f"{self.group}/{self.year}/{self.stem}"

    def relpath(self) -> str:
        return f"{self.group}/{self.year}/{self.stem}.nc"

    def path(self, raw_dir) -> Path:
        return Path(raw_dir) / self.group / str(self.year) / f"{self.stem}.nc"

    def manifest_path(self, raw_dir) -> Path:
        return Path(raw_dir) / "manifest" / self.group / str(self.year) / f"{self.stem}.json"

    @property
    def fields(self) -> int:
        return len(self.variables) * max(1, len(self.levels)) * len(self.days) * len(self.hours)

    def label(self) -> str:
        """Human-readable span, e.g. 'pressure-levels 1979-01 days 1-6'."""
        days = f"day {self.days[0]}" if len(self.days) == 1 else f"days {self.days[0]}-{self.days[-1]}"
        text = f"{self.group} {self.year}-{self.month:02d} {days}"
        if len(self.hours) < 24 and len(self.days) == 1:
            text += f" hours {self.hours[0]:02d}-{self.hours[-1]:02d}"
        return text

    def times(self) -> np.ndarray:
        """Every time step the file must hold, ascending, datetime64[ns]."""
        stamps = [
            np.datetime64(dt.datetime(self.year, self.month, day, hour), "ns")
            for day in self.days
            for hour in self.hours
        ]
        return np.array(sorted(stamps), dtype="datetime64[ns]")

    def cds_request(self) -> dict:
        """The request as the CDS retrieve API takes it (lists of strings)."""
        # area and grid are lists of numbers
        request: dict[str, str | list[str] | list[float | int]] = {
            "product_type": ["reanalysis"],
            "variable": [lookup(self.group, name).cds for name in self.variables],
            "year": [f"{self.year}"],
            "month": [f"{self.month:02d}"],
            "day": [f"{day:02d}" for day in self.days],
            "time": [f"{hour:02d}:00" for hour in self.hours],
            "data_format": self.data_format,
            "download_format": "unarchived",
        }
        if self.levels:
            request["pressure_level"] = [str(level) for level in sorted(self.levels)]
        if self.area is not None:
            request["area"] = [_number(v) for v in self.area]
        if self.grid is not None:  # config: [dlat, dlon]; the CDS (MARS) wants east-west first
            dlat, dlon = self.grid
            request["grid"] = [_number(dlon), _number(dlat)]
        return request

    def halves(self) -> tuple[Request, Request] | None:
        """Two requests covering this one's time steps (for a request the CDS finds too large)."""
        if len(self.days) > 1:
            cut = len(self.days) // 2
            return replace(self, days=self.days[:cut]), replace(self, days=self.days[cut:])
        if len(self.hours) > 1:
            cut = len(self.hours) // 2
            return replace(self, hours=self.hours[:cut]), replace(self, hours=self.hours[cut:])
        return None

    def expected_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitudes (north to south) and longitudes (west to east) the CDS delivers for this request."""
        dlat, dlon = self.grid if self.grid is not None else (NATIVE_STEP_DEG, NATIVE_STEP_DEG)
        north, west, south, east = self.area if self.area is not None else (90.0, 0.0, -90.0, 360.0 - dlon)
        nlat = int(math.floor((north - south) / dlat + 1e-6)) + 1
        nlon = int(math.floor((east - west) / dlon + 1e-6)) + 1
        return north - dlat * np.arange(nlat), west + dlon * np.arange(nlon)

    def to_json(self) -> dict:
        """Plain description for manifests and Snakemake params."""
        out = {
            "id": self.id,
            "group": self.group,
            "year": self.year,
            "month": self.month,
            "days": list(self.days),
            "hours": list(self.hours),
            "variables": list(self.variables),
            "levels": list(self.levels),
        }
        if self.dataset:
            out.update(dataset=self.dataset, data_format=self.data_format)
        if self.grid is not None:
            out["grid"] = list(self.grid)
        if self.area is not None:
            out["area"] = list(self.area)
        return out


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


@dataclass(frozen=True)
class SourceSettings:
    kind: str
    data_format: str = "netcdf"
    grid: tuple[float, float] | None = None
    area: tuple[float, float, float, float] | None = None
    max_fields: int = DEFAULT_MAX_FIELDS["netcdf"]


def source_settings(cfg: dict) -> SourceSettings:
    source = cfg.get("source") or {}
    kind = source.get("kind", "synthetic")
    if kind not in KINDS:
        raise SeqvitError(f"config key source.kind: {kind!r} is not one of {list(KINDS)}")
    data_format = source.get("data_format", "netcdf")
    if data_format not in FORMATS:
        raise SeqvitError(f"config key source.data_format: {data_format!r} is not one of {list(FORMATS)}")
    grid = source.get("grid")
    if grid is not None:
        if not isinstance(grid, (list, tuple)) or len(grid) != 2 or not all(_positive(v) for v in grid):
            raise SeqvitError(
                f"config key source.grid must be [dlat, dlon] in degrees, e.g. [0.25, 0.25]; got {grid!r}"
            )
        grid = (float(grid[0]), float(grid[1]))
    area = source.get("area")
    if area is not None:
        if not isinstance(area, (list, tuple)) or len(area) != 4 or not all(_number_like(v) for v in area):
            raise SeqvitError(f"config key source.area must be [north, west, south, east] in degrees; got {area!r}")
        north, west, south, east = (float(v) for v in area)
        if not (-90 <= south < north <= 90) or not west < east:
            raise SeqvitError(
                f"config key source.area {area!r}: need -90 <= south < north <= 90 and west < east "
                "(order: north, west, south, east)"
            )
        area = (north, west, south, east)
    max_fields = source.get("max_fields", DEFAULT_MAX_FIELDS[data_format])
    if isinstance(max_fields, bool) or not isinstance(max_fields, int) or max_fields < 1:
        raise SeqvitError(f"config key source.max_fields must be a positive integer, got {max_fields!r}")
    return SourceSettings(kind, data_format, grid, area, max_fields)


def _number_like(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value) -> bool:
    return _number_like(value) and value > 0


def _balanced(items: tuple[int, ...], most: int) -> list[tuple[int, ...]]:
    """Consecutive runs of `items`, each at most `most` long, as even in length as possible."""
    count = math.ceil(len(items) / most)
    base, extra = divmod(len(items), count)
    runs, start = [], 0
    for index in range(count):
        size = base + (index < extra)
        runs.append(items[start : start + size])
        start += size
    return runs


def _group_variables(cfg: dict, group: str, kind: str) -> tuple[str, ...]:
    names = tuple((cfg.get("data") or {}).get(GROUP_KEYS[group]) or ())
    if len(set(names)) != len(names):
        raise SeqvitError(f"config key data.{GROUP_KEYS[group]} lists a variable twice: {list(names)}")
    if kind == "cds":
        for name in names:
            lookup(group, name)
    return names


def _levels(cfg: dict, kind: str) -> tuple[int, ...]:
    levels = (cfg.get("data") or {}).get("levels") or []
    if not levels:
        raise SeqvitError("config key data.levels is empty; list the pressure levels in hPa, e.g. [500, 850]")
    if kind == "cds":
        wrong = [level for level in levels if level not in ERA5_PRESSURE_LEVELS]
        if wrong:
            raise SeqvitError(
                f"config key data.levels: {wrong} hPa are not ERA5 pressure levels; choose from {list(ERA5_PRESSURE_LEVELS)}"
            )
    return tuple(sorted(int(level) for level in levels))


def plan_requests(cfg: dict) -> list[Request]:
    """Every request (one raw file each) for the config, ordered by group, year, month, part."""
    settings = source_settings(cfg)
    data = cfg.get("data") or {}
    years = [int(y) for y in data.get("years") or []]
    months = [int(m) for m in data.get("months", range(1, 13))]
    hours = tuple(sorted(int(h) for h in data.get("hours") or []))
    if not years or not hours:
        raise SeqvitError("config keys data.years and data.hours must each list at least one value")
    requests: list[Request] = []
    for group in (SINGLE, PRESSURE):
        variables = _group_variables(cfg, group, settings.kind)
        if not variables:
            continue
        levels = _levels(cfg, settings.kind) if group == PRESSURE else ()
        cds = settings.kind == "cds"
        template = Request(
            group=group,
            year=0,
            month=0,
            days=(),
            hours=hours,
            variables=variables,
            levels=levels,
            dataset=DATASETS[group] if cds else "",
            data_format=settings.data_format if cds else "netcdf",
            grid=settings.grid if cds else None,
            area=settings.area if cds else None,
        )
        limit = settings.max_fields if cds else None
        for year in years:
            for month in months:
                days = tuple(range(1, calendar.monthrange(year, month)[1] + 1))
                month_request = replace(template, year=year, month=month, days=days, stem=f"{month:02d}")
                requests += split_month(month_request, limit)
    return requests


def split_month(request: Request, limit: int | None) -> list[Request]:
    """The parts of a month request that each stay within `limit` fields (None: no limit)."""
    if limit is None or request.fields <= limit:
        return [request]
    per_day = request.fields // len(request.days)
    month = f"{request.month:02d}"
    if per_day <= limit:
        return [
            replace(request, days=run, stem=f"{month}_d{run[0]:02d}-{run[-1]:02d}")
            for run in _balanced(request.days, limit // per_day)
        ]
    per_step = per_day // len(request.hours)
    if per_step > limit:
        raise SeqvitError(
            f"one time step of {request.group} ({len(request.variables)} variables x {max(1, len(request.levels))} "
            f"levels = {per_step} fields) exceeds the CDS limit of {limit} fields per request; "
            "raise source.max_fields if the CDS allows more, or use source.data_format grib"
        )
    return [
        replace(request, days=(day,), hours=run, stem=f"{month}_d{day:02d}_h{run[0]:02d}-{run[-1]:02d}")
        for day in request.days
        for run in _balanced(request.hours, limit // per_step)
    ]


def find_request(cfg: dict, request_id: str) -> Request:
    for request in plan_requests(cfg):
        if request.id == request_id:
            return request
    raise SeqvitError(
        f"request {request_id!r} is not in the plan of this config; list them with "
        "`seqvit download --config C --plan` (ids look like pressure-levels/1979/01)"
    )


def describe(requests: list[Request], raw_dir) -> list[str]:
    """One line per request plus a total, for `seqvit download --plan`."""
    lines = []
    total_fields = 0
    total_bytes = 0
    for request in requests:
        total_fields += request.fields
        shape = f"{len(request.variables)} var" + (f" x {len(request.levels)} lev" if request.levels else "")
        lines.append(
            f"{request.id:<34} {request.dataset or '-':<33} {request.label():<40} {shape:<16} "
            f"{request.fields:>7} fields  -> {request.path(raw_dir)}"
        )
        if request.dataset:
            lat, lon = request.expected_grid()
            total_bytes += request.fields * lat.size * lon.size * 4
    summary = f"{len(requests)} requests, {total_fields:,} fields"
    if total_bytes:
        summary += f", about {total_bytes / 1e12:.2f} TB as uncompressed float32"
    lines.append(summary + "; nothing was sent")
    return lines
