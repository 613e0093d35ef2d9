"""Named regular lat-lon grids (WeatherBench conventions) and their cell-area weights.

Where the cell centres are (docs/grids.md has the full comparison):

- 5.625deg (32 x 64), 2.8125deg (64 x 128), 1.40625deg (128 x 256): latitude centres half a cell
  off the poles (-90 + d/2 + k d), longitude centres from 0. The grids of WeatherBench's data
  (and CDO's r64x32, r128x64, r256x128); 5.625deg is WeatherBench2's 64x32 "equiangular without
  poles" grid.
- 1deg (181 x 360) and 0.25deg (721 x 1440): the ERA5 grids, latitude points at -90 + k d, the
  poles included; 0.25deg is WeatherBench2's native 1440x721.

Cells: edges midway between centres (longitude periodic), latitude edges clipped to +-90, so a
grid with points at the poles has half cells there. Cell area ~ sin(north) - sin(south); the
same cells serve conservative regridding, latitude weights and global means (CDO agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqvit.errors import SeqvitError


@dataclass(frozen=True)
class Grid:
    name: str
    lat: np.ndarray  # cell centres, ascending
    lon: np.ndarray  # cell centres, from 0

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.lat), len(self.lon)


# Grids without poles as cell centres: latitude centres sit half a cell off the poles, as in
# WeatherBench's 5.625/2.8125/1.40625 deg data. The 1 and 0.25 deg grids are the ERA5 ones,
# whose latitude points include the poles (cells at the poles are half cells).
# 0.25deg-nopoles: the 0.25 deg grid of cells without pole points (720 x 1440), whose sides the
# patch sizes of the long-sequence runs divide (720 x 1440 / 1 x 1 patches = 1,036,800 tokens).
_EQUIANGULAR = {"5.625deg": 5.625, "2.8125deg": 2.8125, "1.40625deg": 1.40625, "0.25deg-nopoles": 0.25}
_WITH_POLES = {"1deg": 1.0, "0.25deg": 0.25}


def named_grid(name: str) -> Grid:
    if name in _EQUIANGULAR:
        d = _EQUIANGULAR[name]
        nlat = int(round(180 / d))
        lat = -90 + d / 2 + d * np.arange(nlat)
    elif name in _WITH_POLES:
        d = _WITH_POLES[name]
        lat = -90 + d * np.arange(int(round(180 / d)) + 1)
    else:
        known = ", ".join([*_EQUIANGULAR, *_WITH_POLES])
        raise SeqvitError(f"unknown grid {name!r} (config key 'grid'); use one of: {known}")
    lon = d * np.arange(int(round(360 / d)))
    return Grid(name, lat.astype(np.float64), lon.astype(np.float64))


def lat_bounds(lat: np.ndarray) -> np.ndarray:
    """Cell edges between latitude centres, clipped to the poles (works either order)."""
    lat = np.asarray(lat, dtype=np.float64)
    mid = (lat[:-1] + lat[1:]) / 2
    first = lat[0] - (mid[0] - lat[0])
    last = lat[-1] + (lat[-1] - mid[-1])
    return np.clip(np.concatenate([[first], mid, [last]]), -90.0, 90.0)


def lon_bounds(lon: np.ndarray) -> np.ndarray:
    """Cell edges between longitude centres of a periodic, regular grid."""
    lon = np.asarray(lon, dtype=np.float64)
    mid = (lon[:-1] + lon[1:]) / 2
    step = lon[1] - lon[0]
    return np.concatenate([[lon[0] - step / 2], mid, [lon[-1] + step / 2]])


def latitude_weights(lat: np.ndarray) -> np.ndarray:
    """WeatherBench2 cell-area weights: sin(upper edge) - sin(lower edge), normalized to mean 1."""
    edges = np.deg2rad(lat_bounds(lat))
    area = np.abs(np.diff(np.sin(edges)))
    return area / area.mean()
