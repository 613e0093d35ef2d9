"""Plan the full ERA5 download of the paper's data and time the DAG Snakemake builds for it.

    .venv/bin/python benchmarks/plan_download.py [--config config/era5-5.625deg.yaml]

Prints the number of CDS requests (= raw files = download jobs) for netCDF and for GRIB
deliveries, the fields and uncompressed volume they cover, how long planning takes, and how
long `snakemake -n` takes to build the whole DAG for the config (goal: under 30 s). Nothing is
sent to the CDS and nothing is written outside a temporary directory.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 30.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "era5-5.625deg.yaml"))
    args = parser.parse_args(argv)

    from seqvit.config import load_config
    from seqvit.data.sources.plan import plan_requests

    cfg = load_config(args.config)
    data = cfg["data"]
    print(
        f"config {args.config}: years {min(data['years'])}-{max(data['years'])}, {len(data['hours'])} hours a day, "
        f"{len(data.get('single_level', []))} single-level + {len(data.get('pressure_level', []))} pressure-level "
        f"variables on {len(data.get('levels', []))} levels"
    )
    for data_format in ("netcdf", "grib"):
        variant = copy.deepcopy(cfg)
        if data_format != cfg["source"].get("data_format", "netcdf"):
            variant["source"].pop("max_fields", None)  # the other format's default limit
        variant["source"]["data_format"] = data_format
        start = time.perf_counter()
        requests = plan_requests(variant)
        elapsed = time.perf_counter() - start
        per_group = Counter(r.group for r in requests)
        fields = sum(r.fields for r in requests)
        lat, lon = requests[0].expected_grid()
        volume = fields * lat.size * lon.size * 4 / 1e12
        print(
            f"  {data_format:<6}: {len(requests):>5} requests ({', '.join(f'{g} {n}' for g, n in per_group.items())}), "
            f"largest {max(r.fields for r in requests):,} fields, {fields:,} fields in all, "
            f"{volume:.1f} TB as float32 on a {lat.size} x {lon.size} grid; planned in {elapsed:.2f} s"
        )
    planned = len(plan_requests(cfg))

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory(prefix="seqvit-dag-") as workdir:
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(ROOT / "Snakefile"),
            "--directory",
            workdir,
            "--configfile",
            str(Path(args.config).resolve()),
            "-n",
            "--quiet",
            "rules",
        ]
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
        return 1
    counts = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", proc.stdout + proc.stderr, re.MULTILINE))
    downloads = int(counts.get("download", 0))
    print(
        f"snakemake -n: {counts.get('total', '?')} jobs, of them {downloads} downloads "
        f"({'one per request' if downloads == planned else f'EXPECTED {planned}'}); "
        f"DAG built in {elapsed:.1f} s = {elapsed / GOAL_S:.2f} x the {GOAL_S:.0f} s goal"
    )
    return 0 if downloads == planned and elapsed < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
