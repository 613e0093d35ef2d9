"""Regridding against CDO: accuracy on small grids, then throughput and memory at 0.25 deg scale.

    .venv/bin/python benchmarks/regrid_vs_cdo.py [--hours 8760] [--workdir DIR] [--keep-input]
    .venv/bin/python benchmarks/regrid_vs_cdo.py --accuracy-only

1. Accuracy: ERA5-layout fields (temperature-like with noise, white noise, a field nonzero only
   poleward of 80 deg) on small grids are regridded by seqvit and by `cdo remapcon` /
   `cdo remapbil` from the same netCDF file. Prints max |seqvit - CDO| / range over all points
   and over the polar rows, for the float32 output and the float64 path, and how well the
   spherical-area-weighted global mean is kept.
2. Scale: writes one variable of hourly 0.25 deg ERA5 (721 x 1440, 4.15 MB a step; a year is
   8760 steps, 36 GB as float32) as the CDS delivers it, then runs `seqvit regrid` and
   `cdo remapcon` on that file, each writing compressed netCDF4, and prints wall time, input
   throughput, peak resident memory (of each process, from wait4), the ratio CDO time / seqvit
   time (goal: above 1, faster than CDO), and how far the two outputs differ. The input is
   deleted at the end unless --keep-input. Needs about 4.2 GB of disk per 1000 hours.

CDO runs with one thread (-P 1) unless --cdo-threads; seqvit reads in one thread and regrids in
another, so it overlaps reading with computing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvit.data.grids import Grid, latitude_weights, named_grid  # noqa: E402
from seqvit.data.regrid import Regridder, cdo_grid_description  # noqa: E402

PEAK_RSS_GOAL_GB = 3.0
HOURS_PER_YEAR = 8760
CDO_OPERATOR = {"conservative": "remapcon", "bilinear": "remapbil"}


# ---- inputs --------------------------------------------------------------------------------


def era5_grid(step: float) -> Grid:
    return Grid(
        f"era5-{step:g}deg",
        np.linspace(-90.0, 90.0, int(round(180 / step)) + 1),
        np.arange(int(round(360 / step))) * step,
    )


def sample_fields(grid: Grid) -> np.ndarray:
    """(3, lat ascending, lon) float32, as in tests/test_regrid_cdo.py."""
    rng = np.random.default_rng(1)
    lat = np.deg2rad(grid.lat)[:, None]
    lon = np.deg2rad(grid.lon)[None, :]
    temperature = (
        300.0
        - 60.0 * np.sin(lat) ** 2
        + 8.0 * np.cos(lat) ** 3 * np.cos(2 * lon + 1.0)
        + 4.0 * np.cos(lat) * np.sin(5 * lon)
        + 2.0 * rng.standard_normal(grid.shape)
    )
    noise = rng.standard_normal(grid.shape)
    polar = np.where(
        np.abs(grid.lat)[:, None] >= 80,
        5.0 * np.sign(grid.lat)[:, None] + np.cos(lon) * (90 - np.abs(grid.lat))[:, None],
        0.0,
    )
    return np.stack([temperature, noise, polar]).astype(np.float32)


def create_era5_file(path: Path, grid: Grid, n_times: int, compress: bool):
    """A CDS-layout netCDF4 file (valid_time, latitude 90 -> -90, longitude from 0), variable t2m;
    returns the open dataset's t2m variable for writing and the dataset."""
    nc = netCDF4.Dataset(path, "w", format="NETCDF4")
    nc.setncatts({"Conventions": "CF-1.7", "institution": "European Centre for Medium-Range Weather Forecasts"})
    nc.createDimension("valid_time", n_times)
    nc.createDimension("latitude", grid.lat.size)
    nc.createDimension("longitude", grid.lon.size)
    time_var = nc.createVariable("valid_time", "i8", ("valid_time",))
    time_var.setncatts(
        {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "standard_name": "time"}
    )
    start = np.datetime64("2015-01-01T00:00:00", "s").astype(np.int64)
    time_var[:] = start + 3600 * np.arange(n_times, dtype=np.int64)
    for name, values, units in (("latitude", grid.lat[::-1], "degrees_north"), ("longitude", grid.lon, "degrees_east")):
        var = nc.createVariable(name, "f8", (name,))
        var.setncatts({"units": units, "standard_name": name, "long_name": name})
        var[:] = values
    t2m = nc.createVariable(
        "t2m",
        "f4",
        ("valid_time", "latitude", "longitude"),
        chunksizes=(1, grid.lat.size, grid.lon.size),
        zlib=compress,
        complevel=1 if compress else None,
        shuffle=compress,
    )
    t2m.setncatts({"units": "K", "long_name": "2 metre temperature", "standard_name": "air_temperature"})
    return nc, t2m


def write_large_input(path: Path, n_times: int, compress: bool) -> float:
    """Hourly 0.25 deg t2m: a fixed field with noise plus a wave train moving east (cheap to make)."""
    grid = era5_grid(0.25)
    base = sample_fields(grid)[0][::-1]  # file order: north to south
    lat = np.deg2rad(grid.lat[::-1])[:, None]
    wave = (6.0 * np.cos(lat) ** 2 * np.sin(4 * np.deg2rad(grid.lon))[None, :]).astype(np.float32)
    started = time.perf_counter()
    nc, t2m = create_era5_file(path, grid, n_times, compress)
    try:
        block = 48
        for start in range(0, n_times, block):
            steps = range(start, min(start + block, n_times))
            t2m[steps.start : steps.stop] = np.stack([base + np.roll(wave, 4 * t, axis=1) for t in steps])
    finally:
        nc.close()
    return time.perf_counter() - started


# ---- running and measuring -----------------------------------------------------------------


GNU_TIME = Path("/usr/bin/time").exists()  # GNU time (Debian package time)


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run `command`; (wall seconds, peak resident memory in GB of that process).

    The peak comes from GNU time (/usr/bin/time), which forks the command itself. Without it,
    from wait4 on our own child, whose high-water mark starts at this Python process's size
    when forked (Linux keeps it across exec): then it is an upper bound.
    """
    rss_file = log.with_suffix(".maxrss")
    wrapped = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *command] if GNU_TIME else command
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(wrapped, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    kib = int(rss_file.read_text().split()[-1]) if GNU_TIME else usage.ru_maxrss  # KiB on Linux
    return wall, kib * 1024 / 1e9


def seqvit_command(inputs: list[Path], output: Path, grid: str, method: str) -> list[str]:
    code = "import sys; from seqvit.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "regrid", *map(str, inputs), str(output), "--grid", grid, "--method", method]


def cdo_command(
    cdo: str, threads: int, method: str, griddes: Path, source: Path, output: Path, float64=False
) -> list[str]:
    precision = ["-b", "F64"] if float64 else []
    compression = [] if float64 else ["-f", "nc4", "-z", "zip_1"]
    return [
        cdo,
        "-s",
        "-P",
        str(threads),
        *precision,
        *compression,
        f"{CDO_OPERATOR[method]},{griddes}",
        str(source),
        str(output),
    ]


def relative_differences(ours: np.ndarray, theirs: np.ndarray, value_range) -> tuple[float, float]:
    """(max over all points, max over the two polar rows) of |ours - theirs| / range."""
    difference = np.abs(ours.astype(np.float64) - theirs.astype(np.float64)) / value_range
    return float(difference.max()), float(difference[..., [0, -1], :].max())


def global_mean(fields: np.ndarray, lat: np.ndarray) -> np.ndarray:
    weights = latitude_weights(lat)[:, None] * np.ones(fields.shape[-1])
    return (fields.astype(np.float64) * weights).sum(axis=(-2, -1)) / weights.sum()


# ---- 1. accuracy ---------------------------------------------------------------------------


def accuracy(cdo: str, workdir: Path) -> None:
    import xarray as xr

    pairs = [
        (era5_grid(3.0), "5.625deg"),
        (era5_grid(1.0), "5.625deg"),
        (era5_grid(0.25), "5.625deg"),
        (era5_grid(0.25), "1.40625deg"),
        (era5_grid(1.0), "1.40625deg"),
        (era5_grid(3.0), "2.8125deg"),
        (named_grid("2.8125deg"), "5.625deg"),
        (era5_grid(3.0), "1deg"),
    ]
    print("1. Accuracy against CDO (max |seqvit - CDO| / field range; fields: temperature-like, noise, polar)")
    print(
        f"   {'source':>14} -> {'target':<11} {'method':<13} {'float32 all':>12} {'f32 polar':>10} {'float64 all':>12} {'f64 polar':>10}  global mean of the temperature field: relative error"
    )
    for source, target_name in pairs:
        target = named_grid(target_name)
        fields = sample_fields(source)
        path = workdir / "accuracy-source.nc"
        nc, var = create_era5_file(path, source, fields.shape[0], False)
        var[:] = fields[:, ::-1]  # north to south, as ERA5
        nc.close()
        griddes = workdir / f"{target.name}.griddes"
        griddes.write_text(cdo_grid_description(target))
        value_range = (fields.max(axis=(1, 2)) - fields.min(axis=(1, 2))).astype(np.float64)[:, None, None]
        for method in ("conservative", "bilinear"):
            out = workdir / "accuracy-cdo.nc"
            subprocess.run(cdo_command(cdo, 1, method, griddes, path, out, float64=True), check=True)
            expected = xr.load_dataset(out)["t2m"].values
            regridder = Regridder(source.lat, source.lon, target, method)
            all32, polar32 = relative_differences(regridder(fields), expected, value_range)
            all64, polar64 = relative_differences(regridder(fields, dtype=np.float64), expected, value_range)
            line = f"   {source.name:>14} -> {target_name:<11} {method:<13} {all32:12.1e} {polar32:10.1e} {all64:12.1e} {polar64:10.1e}"
            if method == "conservative":
                source_mean = global_mean(fields[0], source.lat)
                ours = abs(global_mean(regridder(fields[0]), target.lat) / source_mean - 1)
                theirs = abs(global_mean(expected[0], target.lat) / source_mean - 1)
                line += f"  seqvit {ours:.1e}, CDO {theirs:.1e}"
            print(line, flush=True)
    print("   (tolerances: conservative 1e-5, bilinear 1e-4 of the range; global mean 1e-6)\n")


# ---- 2. scale ------------------------------------------------------------------------------


def scale(cdo: str, args, workdir: Path) -> None:
    import xarray as xr

    source = workdir / "era5-0.25deg-t2m.nc"
    n_times = args.hours
    step_bytes = 721 * 1440 * 4
    print(
        f"2. Scale: {n_times} hourly steps of 0.25 deg t2m ({n_times * step_bytes / 1e9:.1f} GB as float32) -> {args.grid}, {args.method}"
    )
    free = shutil.disk_usage(workdir).free
    if free < n_times * step_bytes * 1.1:
        raise SystemExit(f"only {free / 1e9:.0f} GB free in {workdir}; use fewer --hours")
    if source.exists() and args.keep_input and netCDF4.Dataset(source).dimensions["valid_time"].size == n_times:
        print(f"   input: reusing {source}")
    else:
        seconds = write_large_input(source, n_times, args.compress_input)
        print(
            f"   input: wrote {source} ({source.stat().st_size / 1e9:.1f} GB{', zlib' if args.compress_input else ', uncompressed'}) in {seconds:.0f} s"
        )
    size_gb = n_times * step_bytes / 1e9
    griddes = workdir / f"{args.grid}.griddes"
    griddes.write_text(cdo_grid_description(named_grid(args.grid)))
    try:
        if args.measure_read:
            seconds = _read_file(source)
            print(f"   plain sequential read of the file: {seconds:.1f} s ({size_gb / seconds:.2f} GB/s)")
        ours_out, cdo_out = workdir / "seqvit.nc", workdir / "cdo.nc"
        ours_s, ours_rss = run_measured(
            seqvit_command([source], ours_out, args.grid, args.method), workdir / "seqvit.log"
        )
        print(
            f"   seqvit regrid : {ours_s:7.1f} s  {size_gb / ours_s:5.2f} GB/s input  {n_times / ours_s:6.0f} steps/s  "
            f"peak RSS {ours_rss:.2f} GB (goal < {PEAK_RSS_GOAL_GB:g} GB)",
            flush=True,
        )
        for threads in args.cdo_threads:
            cdo_s, cdo_rss = run_measured(
                cdo_command(cdo, threads, args.method, griddes, source, cdo_out), workdir / "cdo.log"
            )
            print(
                f"   cdo {CDO_OPERATOR[args.method]:<10}: {cdo_s:7.1f} s  {size_gb / cdo_s:5.2f} GB/s input  {n_times / cdo_s:6.0f} steps/s  "
                f"peak RSS {cdo_rss:.2f} GB  (-P {threads})"
            )
            print(
                f"   ratio CDO time / seqvit time: {cdo_s / ours_s:.2f}  ({'seqvit faster' if cdo_s > ours_s else 'CDO faster'}; CDO -P {threads})",
                flush=True,
            )
            if n_times < HOURS_PER_YEAR:
                factor = HOURS_PER_YEAR / n_times
                print(
                    f"   extrapolated to a year ({HOURS_PER_YEAR} steps, linear in steps): seqvit {ours_s * factor:.0f} s, CDO {cdo_s * factor:.0f} s"
                )

        with xr.open_dataset(ours_out) as ours, xr.open_dataset(cdo_out) as theirs, xr.open_dataset(source) as raw:
            picks = np.unique(np.linspace(0, n_times - 1, min(n_times, 48)).astype(int))
            expected = theirs["t2m"].isel({theirs["t2m"].dims[0]: picks}).values
            np.testing.assert_allclose(theirs["latitude"].values, named_grid(args.grid).lat, atol=1e-9)
            got = ours["t2m"].isel(time=picks).values
            inputs = raw["t2m"].isel(valid_time=picks).values
            value_range = (inputs.max(axis=(1, 2)) - inputs.min(axis=(1, 2))).astype(np.float64)[:, None, None]
            every, polar = relative_differences(got, expected, value_range)
            print(
                f"   outputs on {picks.size} sampled steps: max |seqvit - CDO| / range {every:.1e}, polar rows {polar:.1e}"
            )
            grid = named_grid(args.grid)
            kept = np.abs(global_mean(got, grid.lat) / global_mean(inputs[:, ::-1], era5_grid(0.25).lat) - 1).max()
            print(f"   global mean kept by seqvit to {kept:.1e} (relative)")
    finally:
        if not args.keep_input:
            source.unlink(missing_ok=True)
            print(f"   deleted {source}")


def _read_file(path: Path) -> float:
    """Seconds to read the file sequentially (the disk's share of any run over it)."""
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(64 * 2**20)
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hours", type=int, default=HOURS_PER_YEAR, help="hourly steps in the 0.25 deg input (default: a year)"
    )
    parser.add_argument("--grid", default="5.625deg")
    parser.add_argument("--method", default="conservative", choices=sorted(CDO_OPERATOR))
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "benchmarks" / "regrid-vs-cdo")
    parser.add_argument("--keep-input", action="store_true", help="keep (and reuse) the large input file")
    parser.add_argument("--compress-input", action="store_true", help="write the input zlib-compressed (CDS files are)")
    parser.add_argument("--cdo-threads", type=int, nargs="+", default=[1], help="CDO -P values to time, e.g. 1 2")
    parser.add_argument(
        "--no-read-baseline", dest="measure_read", action="store_false", help="skip the plain-read timing"
    )
    parser.add_argument("--accuracy-only", action="store_true")
    parser.add_argument("--scale-only", action="store_true")
    args = parser.parse_args(argv)

    cdo = shutil.which("cdo")
    if cdo is None:
        raise SystemExit("cdo not found: install the Debian package cdo (apt-get install cdo) or conda-forge cdo")
    args.workdir.mkdir(parents=True, exist_ok=True)
    reply = subprocess.run([cdo, "--version"], capture_output=True, text=True)
    version = (reply.stdout + reply.stderr).splitlines() or ["cdo (version unknown)"]
    print(f"{version[0].strip()}; numpy {np.__version__}; {os.cpu_count()} CPUs\n")
    if not args.scale_only:
        accuracy(cdo, args.workdir)
    if not args.accuracy_only:
        scale(cdo, args, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
