"""`seqvit train` under torchrun (gloo, CPU) against one process: same global batch, same loss curve."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from seqvit.data.tokenize import tokenize
from seqvit.errors import SeqvitError
from seqvit.parallel.spawn import free_port
from seqvit.train.engine import train

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, P = 8, 16, 4  # 2 x 4 patches: 8 tokens


def _config(results: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(results)
    cfg["data"].update(years=[2015, 2016, 2017], single_level=["t2m"], pressure_level=["t"], levels=[850])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["tokenize"]["patch_sizes"] = [P]
    cfg["model"] = {"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0}
    cfg["train"].update(
        lead_hours=[6, 24], batch_size=4, steps=8, lr=0.003, weight_decay=0.01, warmup_steps=2, val_every=4,
        checkpoint_every=4, log_every=2, threads=1, seed=0,
    )  # fmt: skip
    cfg["evaluate"] = {"variables": ["t2m"], "lead_hours": [6, 24], "baselines": ["persistence"]}
    return cfg


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny tokens store where `seqvit train` looks for it, the config file, and a one-process run."""
    root = tmp_path_factory.mktemp("sp")
    cfg = _config(root / "results")
    lat = -90 + 180 / HEIGHT * (np.arange(HEIGHT) + 0.5)
    lon = 360 / WIDTH * np.arange(WIDTH)
    paths = []
    for year in (2015, 2016, 2017):
        time = pd.date_range(f"{year}-01-01", periods=16, freq="6h")
        phase = np.deg2rad(lon)[None, None, :] - 0.3 * np.arange(len(time))[:, None, None]
        # a drifting wave plus a warming trend: no gradient sits near zero, where AdamW's normalized step
        # would turn rounding differences into differences of +-lr
        trend = 0.5 * np.arange(len(time))[:, None, None] * (1 + np.sin(np.deg2rad(lat)))[None, :, None]
        t2m = (280 + 10 * np.cos(np.deg2rad(lat))[None, :, None] * np.sin(phase) + trend).astype(np.float32)
        coords = {"time": time, "latitude": lat, "longitude": lon}
        single = xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m)}, coords=coords)
        levels = xr.Dataset(
            {"t": (("time", "level", "latitude", "longitude"), (t2m - 30)[:, None])}, coords={**coords, "level": [850]}
        )
        for group, ds in (("single-levels", single), ("pressure-levels", levels)):
            path = root / group / f"{year}.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(path)
            paths.append(path)
    stats = root / "stats.nc"
    xr.Dataset(
        {"mean": ("channel", [280.0, 250.0]), "std": ("channel", [7.0, 7.0])}, coords={"channel": ["t2m", "t_850"]}
    ).to_netcdf(stats)
    tokens = root / "results" / "tokens" / f"p{P}.zarr"
    tokenize(cfg, paths, stats, P, tokens)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    single_run = root / "single"
    train(cfg, tokens, single_run, P, progress=False)
    return {
        "cfg": cfg,
        "config": config_path,
        "tokens": tokens,
        "single": single_run,
        "run": root / "results" / "train" / f"p{P}",
    }


def _metrics(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _torchrun(setup, nproc, *sets):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "seqvit.cli", "train", "--config", str(setup["config"]), "--patch-size", str(P), "--quiet",
    ]  # fmt: skip
    for item in sets:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.parametrize(
    "nproc, sets",
    [
        (2, ("parallel.sp=2", "parallel.sp_method=ulysses")),  # P = 2
        (4, ("parallel.sp=2", "parallel.sp_method=lss")),  # P = 2 x D = 2: each replica 2 of the 4 samples
    ],
    ids=["sp2-ulysses", "sp2xdp2-lss"],
)
def test_torchrun_matches_one_process(setup, nproc, sets):
    run = setup["run"]
    for name in ("checkpoint.pt", "metrics.csv", "model.pt"):
        (run / name).unlink(missing_ok=True)
    done = _torchrun(setup, nproc, *sets)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("wrote ") == 1, done.stdout  # only rank 0 reports (and writes)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.csv", "model.pt"]

    single, parallel = _metrics(setup["single"] / "metrics.csv"), _metrics(run / "metrics.csv")
    assert [r["step"] for r in parallel] == [r["step"] for r in single] == ["2", "4", "6", "8"]
    for key in ("loss", "val_loss", "lr"):
        want = [float(r[key]) for r in single if r[key] != ""]
        got = [float(r[key]) for r in parallel if r[key] != ""]
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
    a = torch.load(setup["single"] / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_sp_in_one_process_names_the_launch_command(setup, tmp_path):
    cfg = copy.deepcopy(setup["cfg"])
    cfg["parallel"] = {"sp": 2}
    with pytest.raises(SeqvitError, match=r"parallel.sp: 2 needs 2 processes.*torchrun --nproc-per-node 2"):
        train(cfg, setup["tokens"], tmp_path / "run", P, progress=False)


def test_torchrun_rejects_heads_that_ulysses_cannot_split(setup):
    done = _torchrun(setup, 2, "parallel.sp=2", "model.num_heads=1")
    assert done.returncode != 0
    assert "sp must divide the head count" in done.stderr
