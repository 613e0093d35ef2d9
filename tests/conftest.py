import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo_cfg():
    """The demo configuration as a fresh dict (tests override what they need)."""
    return copy.deepcopy(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))


def stamp_lineage(paths, made_by: dict) -> None:
    """Record `made_by` (a seqvit.lineage dict) in netCDF files a test wrote by hand, as the stage
    that writes such files would."""
    import netCDF4

    from seqvit import lineage

    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        with netCDF4.Dataset(path, "a") as nc:
            nc.setncattr(lineage.ATTR, lineage.dumps(made_by))


def write_regridded(
    folder,
    cfg: dict,
    years,
    *,
    height: int = 8,
    width: int = 16,
    times_per_year: int = 16,
    field: str = "wave",
    amplitude: float = 10.0,
    trend: bool = False,
    seed: int = 0,
    pressure_level: bool = True,
    stats: tuple = ((280.0, 7.0), (250.0, 7.0)),
) -> tuple[list[Path], Path]:
    """Tiny canonical regridded files, as the regrid stage writes them, and a matching stats.nc.

    Files are folder/<group>/<year>.nc (6-hourly from 1 January, `times_per_year` steps) with t2m and,
    unless `pressure_level` is False, t at 850 hPa, on a `height` x `width` grid of cell centres;
    stats.nc gives each channel's (mean, std). Both record the lineage of `cfg`.

    field="wave": t2m is a band of `amplitude` K drifting east (plus, with `trend`, a warming that
    keeps every gradient away from zero) and t_850 = t2m - 30. field="noise": independent Gaussian
    values (t2m 280 +- 5, t_850 250 +- 3) from numpy's generator seeded with `seed`.
    """
    import numpy as np
    import pandas as pd
    import xarray as xr

    from seqvit import lineage

    folder = Path(folder)
    lat = -90 + 180 / height * (np.arange(height) + 0.5)
    lon = 360 / width * np.arange(width)
    rng = np.random.default_rng(seed)
    paths = []
    for year in years:
        time = pd.date_range(f"{year}-01-01", periods=times_per_year, freq="6h")
        steps = np.arange(times_per_year)[:, None, None]
        if field == "wave":
            phase = np.deg2rad(lon)[None, None, :] - 0.3 * steps
            t2m = 280 + amplitude * np.cos(np.deg2rad(lat))[None, :, None] * np.sin(phase)
            if trend:
                t2m = t2m + 0.5 * steps * (1 + np.sin(np.deg2rad(lat)))[None, :, None]
            t2m = t2m.astype(np.float32)
            t850 = (t2m - 30)[:, None]
        elif field == "noise":
            t2m = 280 + 5 * rng.standard_normal((times_per_year, height, width)).astype(np.float32)
            t850 = 250 + 3 * rng.standard_normal((times_per_year, 1, height, width)).astype(np.float32)
        else:
            raise ValueError(f"field {field!r}: use wave or noise")
        coords = {"time": time, "latitude": lat, "longitude": lon}
        groups = {"single-levels": xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m)}, coords=coords)}
        if pressure_level:
            groups["pressure-levels"] = xr.Dataset(
                {"t": (("time", "level", "latitude", "longitude"), t850)}, coords={**coords, "level": [850]}
            )
        for group, ds in groups.items():
            path = folder / group / f"{year}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(path)
            paths.append(path)
    channels = ["t2m", "t_850"][: len(stats)]
    stats_path = folder / "stats.nc"
    xr.Dataset(
        {"mean": ("channel", [m for m, _ in stats]), "std": ("channel", [s for _, s in stats])},
        coords={"channel": channels},
    ).to_netcdf(stats_path)
    stamp_lineage(paths, lineage.regridded(cfg))
    stamp_lineage(stats_path, lineage.stats(cfg))
    return paths, stats_path
