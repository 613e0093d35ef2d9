"""`seqvit train` under torchrun (gloo, CPU) against one process: same global batch, same loss curve."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

from conftest import stamp_lineage
from processes import descendants
from seqvit import lineage
from seqvit.config import validate
from seqvit.data.tokenize import tokenize
from seqvit.errors import SeqvitError
from seqvit.parallel.spawn import free_port
from seqvit.train.engine import train

pytestmark = pytest.mark.workflow  # slow: real Snakemake runs or multi-process training

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, P = 8, 16, 4  # 2 x 4 patches: 8 tokens
RUN_FILES = ["best.pt", "checkpoints", "metrics.csv", "model.pt", "tensorboard"]


def _config(results: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["results"] = str(results)
    cfg["data"].update(years=[2015, 2016, 2017], single_level=["t2m"], pressure_level=["t"], levels=[850])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["tokenize"]["patch_sizes"] = [P]
    cfg["parallel"] = {}  # one process unless a test asks for more (not the demo's per-run layout)
    cfg["model"] = {"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0}
    cfg["train"].update(
        lead_hours=[6, 24],
        batch_size=4,
        steps=8,
        lr=0.003,
        weight_decay=0.01,
        warmup_steps=2,
        val_every=4,
        checkpoint_every=4,
        log_every=2,
        threads=1,
        seed=0,
    )
    cfg["evaluate"] = {"variables": ["t2m"], "lead_hours": [6, 24], "baselines": ["persistence"]}
    return validate(cfg)  # with the schema's defaults, as `seqvit train` reads the config file


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
    stamp_lineage(paths, lineage.regridded(cfg))
    stamp_lineage(stats, lineage.stats(cfg))
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
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "seqvit.cli",
        "train",
        "--config",
        str(setup["config"]),
        "--patch-size",
        str(P),
        "--quiet",
    ]
    for item in sets:
        command += ["--set", item]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.parametrize(
    "nproc, sets",
    [
        (2, ("parallel.sp=2", "parallel.sp_method=ulysses")),  # P = 2
        (4, ("parallel.sp=2", "parallel.sp_method=lss")),  # P = 2 x D = 2: each replica 2 of the 4 samples
        # two levels (Ulysses over ranks {0, 1} and {2, 3}, ring between them) under ZeRO stage 2
        (4, ("parallel.sp=4", "parallel.sp_method=ulysses-ring", "parallel.sp_inner=2", "train.zero_stage=2")),
    ],
    ids=["sp2-ulysses", "sp2xdp2-lss", "sp4-ulysses-ring-zero2"],
)
def test_torchrun_matches_one_process(setup, nproc, sets):
    run = setup["run"]
    shutil.rmtree(run, ignore_errors=True)
    done = _torchrun(setup, nproc, *sets)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("wrote ") == 1, done.stdout  # only rank 0 reports (and writes)
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES

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


def _curve_cfg(setup, steps, **train):
    cfg = copy.deepcopy(setup["cfg"])
    cfg["train"].update(
        {"steps": steps, "log_every": 1, "val_every": 10, "checkpoint_every": 5, "warmup_steps": 3, **train}
    )
    return cfg


def _launch(setup, world, runs, tmp_root):
    """Run [(cfg, out_dir)] one after another in one torchrun world of `world` processes."""
    spec = tmp_root / f"spec-{world}-{len(list(tmp_root.glob('spec-*')))}.json"
    spec.write_text(
        json.dumps(
            {
                "tokens": str(setup["tokens"]),
                "patch_size": P,
                "runs": [{"cfg": cfg, "out": str(out)} for cfg, out in runs],
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(world),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(ROOT / "tests" / "train_runs.py"),
        str(spec),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-6000:]


def _losses(run, key="loss"):
    return np.array([float(r[key]) for r in _metrics(run / "metrics.csv") if r[key] != ""])


@pytest.fixture(scope="module")
def layouts(setup, tmp_path_factory):
    """20-step loss curves of one global batch on (P, D) = (1, 1), (2, 1), (1, 2), (2, 2), and ZeRO 0-3 on P=2."""
    root = tmp_path_factory.mktemp("layouts")
    cfg = _curve_cfg(setup, 20)
    runs = {"1x1": root / "1x1"}
    train(cfg, setup["tokens"], runs["1x1"], P, progress=False)
    world2 = [("2x1", {"sp": 2}, 0), ("1x2", {"sp": 1}, 0)]
    world2 += [(f"zero{stage}", {"sp": 2, "sp_method": "lss"}, stage) for stage in (0, 1, 2, 3)]
    batch = []
    for name, parallel, stage in world2:
        run_cfg = _curve_cfg(setup, 20 if name in ("2x1", "1x2") else 10, zero_stage=stage)
        run_cfg["parallel"] = parallel
        batch.append((run_cfg, root / name))
        runs[name] = root / name
    _launch(setup, 2, batch, root)
    run_cfg = _curve_cfg(setup, 20)
    run_cfg["parallel"] = {"sp": 2, "dp": 2}
    runs["2x2"] = root / "2x2"
    _launch(setup, 4, [(run_cfg, runs["2x2"])], root)
    return runs


@pytest.mark.parametrize("layout", ["2x1", "1x2", "2x2"])
def test_loss_curves_agree_across_sequence_and_data_parallel_layouts(layouts, layout):
    want, got = _losses(layouts["1x1"]), _losses(layouts[layout])
    assert len(want) == len(got) == 20
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(_losses(layouts[layout], "val_loss"), _losses(layouts["1x1"], "val_loss"), rtol=1e-5)
    assert want[-1] < 0.5 * want[0]  # it learns: the comparison is not between flat curves


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_give_the_loss_of_stage_0(layouts, stage):
    want, got = _losses(layouts["zero0"]), _losses(layouts[f"zero{stage}"])
    assert len(want) == len(got) == 10
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # ZeRO partitions the optimizer states over both ranks: every rank wrote its part
    tag = (layouts[f"zero{stage}"] / "checkpoints" / "latest").read_text()
    parts = sorted(p.name for p in (layouts[f"zero{stage}"] / "checkpoints" / tag).glob("*optim_states.pt"))
    assert len(parts) == 2, parts


def test_interrupted_by_sigusr1_and_resumed_equals_uninterrupted(setup, tmp_path):
    """Two ranks (P=2, ZeRO-2) get SIGUSR1 mid-run, checkpoint and stop; the rerun ends bit-identical."""
    cfg = _curve_cfg(setup, 60, zero_stage=2, checkpoint_every=25)
    cfg["parallel"] = {"sp": 2}
    cfg["results"] = str(tmp_path / "results")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    (tmp_path / "results" / "tokens").mkdir(parents=True)
    (tmp_path / "results" / "tokens" / f"p{P}.zarr").symlink_to(setup["tokens"])
    reference = tmp_path / "reference"
    _launch(setup, 2, [(cfg, reference)], tmp_path)

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "seqvit.cli",
        "train",
        "--config",
        str(config),
        "--patch-size",
        str(P),
        "--quiet",
    ]
    run = tmp_path / "results" / "train" / f"p{P}"
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.csv").exists() and len(_metrics(run / "metrics.csv")) >= 3:
            break
        time.sleep(0.02)
    workers = descendants(proc.pid)
    assert len(workers) > 2  # two ranks, and the processes their loaders started
    for pid in workers:  # as Slurm does: every process of the job step gets it
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "stopped by SIGUSR1 after step" in stderr, stderr[-3000:]
    stopped_at = int((run / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert 3 <= stopped_at < 60 and not (run / "model.pt").exists()

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    a = torch.load(reference / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(run / "model.pt", weights_only=False)["state_dict"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name
    want, got = _metrics(reference / "metrics.csv"), _metrics(run / "metrics.csv")
    assert [(r["step"], r["loss"], r["val_loss"]) for r in got] == [(r["step"], r["loss"], r["val_loss"]) for r in want]
