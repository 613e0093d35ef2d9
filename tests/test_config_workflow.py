"""Snakemake refuses a bad config as the CLI does: with seqvit's message, before any job runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def dry_run(configfile: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(cwd),
        "--configfile",
        str(configfile),
        "-n",
        "--quiet",
        "rules",
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_good_config_plans_every_stage(demo_cfg, tmp_path):
    demo_cfg["results"] = "results"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(demo_cfg))
    proc = dry_run(path, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Building DAG" in out and "train" in out and "evaluate" in out


@pytest.mark.parametrize(
    "change, filename, message",
    [
        (
            {"splits": {"val": [2018]}},
            "config.yaml",
            "config keys splits.val and splits.test: year(s) [2018] are in both",
        ),
        ({"train": {"lrr": 0.1}}, "config.yaml", "config key train.lrr: unknown; did you mean train.lr?"),
        (
            {"train": {"lead_hours": [6, 9]}},
            "config.yaml",
            "config key train.lead_hours: [9] h are not multiples of 6 h",
        ),
        ({"splits": {"test": [2019]}}, "config.yaml", "config key splits.test: year(s) [2019] are not in data.years"),
        ({"results": "my results"}, "config.yaml", "config key results 'my results': contains ' '"),
    ],
)
def test_snakemake_refuses_a_bad_config_before_any_job(demo_cfg, tmp_path, change, filename, message):
    demo_cfg["results"] = "results"
    for section, value in change.items():
        if isinstance(value, dict):
            demo_cfg[section].update(value)
        else:
            demo_cfg[section] = value
    path = tmp_path / filename
    path.write_text(yaml.safe_dump(demo_cfg))
    proc = dry_run(path, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert message in out and str(path) in out, out[-3000:]
    assert "Traceback" not in out and "Failed validating" not in out  # seqvit's message, no schema dump
    assert "Building DAG" not in out  # refused while reading the Snakefile: no job was even planned
    assert not (tmp_path / "results").exists() and not (tmp_path / "my results").exists()
