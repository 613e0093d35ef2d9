"""seqvit predict in chunks and under torchrun: the forecast file is the one-process forecast of the model.

The model is built and saved here with random weights (a trained head would start at zero, and
a zero head forecasts persistence whatever the attention does); the one-process forecast is
checked against the model run directly on whole token sequences read with xarray.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import yaml

import tiny_runs
from conftest import write_regridded
from seqvit.data.tokenize import store_identity, tokenize, unpatchify
from seqvit.errors import SeqvitError
from seqvit.evaluate.report import PREDICTION_DIMS
from seqvit.model.vit import build_model
from seqvit.parallel.spawn import free_port
from seqvit.train import predict as predict_module
from seqvit.train.predict import PredictionInterrupted, predict

ROOT = Path(__file__).resolve().parents[1]
P = tiny_runs.P
VARIABLES = ["t2m", "t_850"]
STATS = {"t2m": (280.0, 7.0), "t_850": (250.0, 7.0)}  # what write_regridded writes to stats.nc


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """(config, run folder with a random-weight model.pt, tokens store, stats.nc)."""
    root = tmp_path_factory.mktemp("predict")
    cfg = tiny_runs.config(root / "results")
    cfg["evaluate"]["variables"] = VARIABLES
    paths, stats = write_regridded(root, cfg, (2015, 2016, 2017), height=tiny_runs.HEIGHT, width=tiny_runs.WIDTH)
    # where `seqvit predict` looks for them (seqvit.layout)
    results = Path(cfg["results"])
    (results / "stats").mkdir(parents=True)
    stats = Path(shutil.copy(stats, results / "stats" / "stats.nc"))
    tokens = results / "tokens" / f"p{P}.zarr"
    tokenize(cfg, paths, stats, P, tokens)
    with xr.open_zarr(tokens, consolidated=False) as store:
        channels = [str(c) for c in store["channel"].values]
    torch.manual_seed(3)
    model = build_model(cfg["model"], len(channels), P, (tiny_runs.HEIGHT, tiny_runs.WIDTH))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    made_by, store_id = store_identity(tokens)
    run = results / "train" / f"p{P}"
    run.mkdir(parents=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "model_config": dict(cfg["model"]),
            "channels": channels,
            "patch_size": P,
            "grid_shape": [tiny_runs.HEIGHT, tiny_runs.WIDTH],
            "lead_hours": list(cfg["train"]["lead_hours"]),
            "precision": "fp32",
            "tokens": {"lineage": made_by, "store_id": store_id},
        },
        run / "model.pt",
    )
    return cfg, run, tokens, stats


def with_chunk(cfg: dict, chunk: int, **parallel) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["evaluate"]["predict_chunk"] = chunk
    cfg["parallel"].update(parallel)
    return cfg


@pytest.fixture(scope="module")
def whole(model_run, tmp_path_factory):
    """The one-process forecast in a single chunk (the whole test period) and its file."""
    cfg, run, tokens, stats = model_run
    out = tmp_path_factory.mktemp("whole") / "vit-p4.nc"
    predict(with_chunk(cfg, 1000), run, tokens, stats, out)
    with xr.open_dataset(out) as ds:
        return ds.load(), out


def test_one_process_forecast_is_the_model_on_whole_sequences(model_run, whole):
    cfg, run, tokens, _ = model_run
    ds, _ = whole
    forecast = ds["forecast"]
    assert forecast.dims == PREDICTION_DIMS and forecast.dtype == np.float32
    # 16 test times 6 h apart: the init times valid for a 24 h lead are the first 12
    times = pd.date_range("2017-01-01", periods=12, freq="6h")
    assert pd.DatetimeIndex(ds["time"].values).equals(times)
    assert ds["lead_hours"].values.tolist() == [6, 24] and ds["channel"].values.tolist() == VARIABLES
    assert ds.attrs["model"] == "vit-p4" and "seqvit_lineage" in ds.attrs
    saved = torch.load(run / "model.pt", weights_only=False)
    model = build_model(saved["model_config"], len(saved["channels"]), P, saved["grid_shape"]).eval()
    model.load_state_dict(saved["state_dict"])
    with xr.open_zarr(tokens, consolidated=False) as store:
        x = torch.from_numpy(store["tokens"].sel(time=times).values.astype(np.float32))
        channels = [str(c) for c in store["channel"].values]
    for lead_pos, hours in enumerate((6, 24)):
        with torch.no_grad():
            state = (x + model(x, torch.full((len(times),), float(hours)))).numpy()
        for v, name in enumerate(VARIABLES):
            mean, std = STATS[name]
            expected = unpatchify(state[:, channels.index(name)], P, saved["grid_shape"]) * std + mean
            np.testing.assert_allclose(forecast.values[lead_pos, :, v], expected, rtol=1e-6, atol=0)
    # not persistence: the random head changes the state
    assert np.abs(forecast.values[0, :, 0] - forecast.values[1, :, 0]).max() > 0.1


def test_chunked_forecast_equals_the_single_chunk(model_run, whole, tmp_path):
    cfg, run, tokens, stats = model_run
    out = tmp_path / "vit-p4.nc"
    predict(with_chunk(cfg, 5), run, tokens, stats, out)  # 12 init times: chunks of 5, 5 and 2
    with xr.open_dataset(out) as ds:
        xr.testing.assert_identical(ds.load(), whole[0])


def _failing_chunk(monkeypatch, action):
    """_Predictor.chunk runs `action` on its second call (after the first chunk is written)."""
    original, calls = predict_module._Predictor.chunk, []

    def chunk(self, first, stop, batch):
        calls.append(first)
        if len(calls) == 2:
            action()
        return original(self, first, stop, batch)

    monkeypatch.setattr(predict_module._Predictor, "chunk", chunk)
    return calls


@pytest.mark.parametrize("stop", ["error", "sigterm"])
def test_interrupted_prediction_leaves_no_forecast_file(model_run, tmp_path, monkeypatch, stop):
    cfg, run, tokens, stats = model_run
    folder = tmp_path / "predictions"
    folder.mkdir()
    fresh = folder / "vit-p4.nc"

    def fail():
        raise SeqvitError("disk full")

    action = fail if stop == "error" else lambda: os.kill(os.getpid(), signal.SIGTERM)
    calls = _failing_chunk(monkeypatch, action)
    with pytest.raises(SeqvitError, match="disk full" if stop == "error" else "SIGTERM") as info:
        predict(with_chunk(cfg, 5), run, tokens, stats, fresh)
    assert calls == [0, 5]  # stopped after the first chunk had been written
    assert stop == "error" or isinstance(info.value, PredictionInterrupted)
    assert list(folder.iterdir()) == []  # neither the forecast nor its temporary
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_failed_prediction_keeps_the_previous_file(model_run, whole, tmp_path, monkeypatch):
    cfg, run, tokens, stats = model_run
    out = tmp_path / "vit-p4.nc"
    out.write_bytes(whole[1].read_bytes())
    _failing_chunk(monkeypatch, lambda: (_ for _ in ()).throw(SeqvitError("stopped")))
    with pytest.raises(SeqvitError, match="stopped"):
        predict(with_chunk(cfg, 5), run, tokens, stats, out)
    assert out.read_bytes() == whole[1].read_bytes() and list(tmp_path.iterdir()) == [out]


def test_sequence_parallel_in_one_process_names_the_launch(model_run, tmp_path):
    cfg, run, tokens, stats = model_run
    with pytest.raises(SeqvitError, match="torchrun --nproc-per-node 2"):
        predict(cfg, run, tokens, stats, tmp_path / "vit-p4.nc", sp=2)
    assert not (tmp_path / "vit-p4.nc").exists()


def test_bad_chunk_is_refused_naming_the_key(model_run, tmp_path):
    cfg, run, tokens, stats = model_run
    with pytest.raises(SeqvitError, match="evaluate.predict_chunk"):
        predict(with_chunk(cfg, 0), run, tokens, stats, tmp_path / "vit-p4.nc")


# (world size, --sp, parallel settings): sp=2 with each method the 2-head model allows, and 2 replicas
LAYOUTS = {
    "ulysses": (2, 2, {"sp_method": "ulysses"}),
    "lss": (2, 2, {"sp_method": "lss"}),
    "ring": (2, 2, {"sp_method": "ring"}),
    "dp2": (2, 1, {}),
}


@pytest.mark.workflow  # slow: a torchrun world
def test_torchrun_prediction_equals_one_process(model_run, whole, tmp_path):
    cfg, run, tokens, stats = model_run
    predictions = [
        # chunks of 5 init times (5, 5, 2); the replicas' chunk of 1 leaves one of them nothing
        {"cfg": with_chunk(cfg, 1 if name == "dp2" else 5, **parallel), "out": str(tmp_path / f"{name}.nc"), "sp": sp}
        for name, (_, sp, parallel) in LAYOUTS.items()
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps({"run": str(run), "tokens": str(tokens), "stats": str(stats), "predictions": predictions})
    )
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
        str(ROOT / "tests" / "predicted_runs.py"),
        str(spec),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-6000:]
    reference = whole[0]
    for name in LAYOUTS:
        with xr.open_dataset(tmp_path / f"{name}.nc") as ds:
            ds = ds.load()
        xr.testing.assert_identical(ds.drop_vars("forecast"), reference.drop_vars("forecast"))
        np.testing.assert_allclose(ds["forecast"].values, reference["forecast"].values, rtol=1e-5, atol=0)
        assert np.isfinite(ds["forecast"].values).all(), name


@pytest.mark.workflow  # slow: a torchrun world
def test_cli_under_torchrun_writes_the_one_process_forecast(model_run, whole, tmp_path):
    """`seqvit predict` as the workflow's local profile launches it for sp x dp > 1 (train/slurm.seqvit_command)."""
    cfg, _, _, _ = model_run
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(with_chunk(cfg, 5, sp=2, sp_method="ulysses")))
    out = Path(cfg["results"]) / "predictions" / f"vit-p{P}.nc"
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
        "predict",
        "--config",
        str(config_file),
        "--patch-size",
        str(P),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-6000:]
    assert done.stdout.count(f"wrote {out}") == 1  # rank 0 alone reports
    with xr.open_dataset(out) as ds:
        ds = ds.load()
    xr.testing.assert_identical(ds.drop_vars("forecast"), whole[0].drop_vars("forecast"))
    np.testing.assert_allclose(ds["forecast"].values, whole[0]["forecast"].values, rtol=1e-5, atol=0)
