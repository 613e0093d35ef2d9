"""ERA5 variables by the names each source gives them.

The config names variables by the short name the CDS netCDF uses (``t2m``, ``z``); the CDS
request wants the long name (``2m_temperature``), WeatherBench2 stores use their own long names.
Accumulated variables matter because the CDS delivers a zip of two netCDF files when a request
mixes them with instantaneous ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqvit.errors import SeqvitError

SINGLE = "single-levels"
PRESSURE = "pressure-levels"


@dataclass(frozen=True)
class Variable:
    short: str  # name in the CDS netCDF and in the config
    cds: str  # name in a CDS request
    wb2: str  # name in the WeatherBench2 ERA5 zarr stores
    group: str
    accumulated: bool = False


_TABLE = [
    Variable("t2m", "2m_temperature", "2m_temperature", SINGLE),
    Variable("d2m", "2m_dewpoint_temperature", "2m_dewpoint_temperature", SINGLE),
    Variable("u10", "10m_u_component_of_wind", "10m_u_component_of_wind", SINGLE),
    Variable("v10", "10m_v_component_of_wind", "10m_v_component_of_wind", SINGLE),
    Variable("msl", "mean_sea_level_pressure", "mean_sea_level_pressure", SINGLE),
    Variable("sp", "surface_pressure", "surface_pressure", SINGLE),
    Variable("tcwv", "total_column_water_vapour", "total_column_water_vapour", SINGLE),
    Variable("skt", "skin_temperature", "skin_temperature", SINGLE),
    Variable("sst", "sea_surface_temperature", "sea_surface_temperature", SINGLE),
    Variable("tp", "total_precipitation", "total_precipitation", SINGLE, accumulated=True),
    Variable("tisr", "toa_incident_solar_radiation", "toa_incident_solar_radiation", SINGLE, accumulated=True),
    Variable("z", "geopotential", "geopotential", PRESSURE),
    Variable("t", "temperature", "temperature", PRESSURE),
    Variable("u", "u_component_of_wind", "u_component_of_wind", PRESSURE),
    Variable("v", "v_component_of_wind", "v_component_of_wind", PRESSURE),
    Variable("q", "specific_humidity", "specific_humidity", PRESSURE),
    Variable("r", "relative_humidity", "relative_humidity", PRESSURE),
    Variable("w", "vertical_velocity", "vertical_velocity", PRESSURE),
    Variable("vo", "vorticity", "vorticity", PRESSURE),
    Variable("d", "divergence", "divergence", PRESSURE),
]
VARIABLES: dict[tuple[str, str], Variable] = {(v.group, v.short): v for v in _TABLE}
CONFIG_KEY = {SINGLE: "data.single_level", PRESSURE: "data.pressure_level"}


def lookup(group: str, short: str) -> Variable:
    try:
        return VARIABLES[(group, short)]
    except KeyError:
        known = sorted(v.short for v in _TABLE if v.group == group)
        raise SeqvitError(
            f"config key {CONFIG_KEY[group]}: {short!r} is not an ERA5 {group} variable seqvit knows; "
            f"use one of {known} (short names as in the CDS netCDF files)"
        ) from None
