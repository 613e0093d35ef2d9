import copy
import csv
import json
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from conftest import write_regridded
from seqvit.data.tokenize import tokenize, unpatchify
from seqvit.errors import SeqvitError
from seqvit.train.checkpoint import StopRequest
from seqvit.train.engine import lr_factor, train
from seqvit.train.predict import predict

HEIGHT, WIDTH, P = 8, 16, 4
CFG = {
    "experiment": "tiny",
    "data": {"single_level": ["t2m"], "pressure_level": ["t"], "levels": [850]},
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
    "model": {"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0},
    "train": {
        "lead_hours": [6, 24],
        "batch_size": 4,
        "steps": 12,
        "lr": 0.003,
        "weight_decay": 0.01,
        "warmup_steps": 3,
        "val_every": 6,
        "checkpoint_every": 4,
        "log_every": 2,
        "threads": 1,
        "seed": 0,
    },
    "evaluate": {"variables": ["t2m"], "lead_hours": [6, 24]},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny tokens store: a warm band drifting east over 3 short years, plus stats.nc."""
    root = tmp_path_factory.mktemp("tiny")
    paths, stats_path = write_regridded(root, CFG, (2015, 2016, 2017), height=HEIGHT, width=WIDTH)
    tokens_path = root / "p4.zarr"
    tokenize(CFG, paths, stats_path, P, tokens_path)
    return tokens_path, stats_path


def read_metrics(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)


def test_train_writes_outputs_and_resumes_bit_identically(store, tmp_path):
    tokens_path, _ = store
    launcher_variables = {k for k in os.environ if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    whole = train(CFG, tokens_path, tmp_path / "whole", P, progress=False)
    assert whole.exists() and (tmp_path / "whole" / "best.pt").exists()
    # what DeepSpeed needed in the environment is gone: a later srun or torchrun must not inherit a world of 1
    assert {k for k in os.environ if k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == launcher_variables
    assert (tmp_path / "whole" / "checkpoints" / "latest").read_text() == "step00000012"
    assert list((tmp_path / "whole" / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_metrics(tmp_path / "whole" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"step", "loss", "val_loss", "lr", "samples_per_s", "tokens_per_s", "tflops", "mfu", "elapsed_s"} <= set(
        rows[0]
    )
    assert [r["val_loss"] != "" for r in rows] == [False, False, True, False, False, True]
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)
    for row in rows:  # 8 tokens a sample: tokens/s is samples/s x 8; MFU a fraction of the measured peak
        assert float(row["tokens_per_s"]) == pytest.approx(8 * float(row["samples_per_s"]))
        assert 0 < float(row["mfu"]) < 1 and float(row["tflops"]) > 0

    # interrupted after step 5 (between two metrics rows, off the checkpoint interval), then run again
    assert train(CFG, tokens_path, tmp_path / "split", P, progress=False, stop_at_step=5) is None
    assert not (tmp_path / "split" / "model.pt").exists()
    assert len(read_metrics(tmp_path / "split" / "metrics.csv")) == 2
    resumed = train(CFG, tokens_path, tmp_path / "split", P, progress=False)

    a, b = torch.load(whole, weights_only=False), torch.load(resumed, weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    assert a["channels"] == ["t2m", "t_850"] and a["patch_size"] == P and a["grid_shape"] == [HEIGHT, WIDTH]
    split_rows = read_metrics(tmp_path / "split" / "metrics.csv")
    for key in ("step", "loss", "val_loss", "lr"):
        assert [r[key] for r in split_rows] == [r[key] for r in rows]
    # the two newest checkpoints are kept
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step*")) == [
        "step00000008",
        "step00000012",
    ]


def test_resume_after_a_crash_between_checkpoints(store, tmp_path):
    """A run killed after step 7 restarts from the step-4 checkpoint (kill simulated by stop + rewind)."""
    tokens_path, _ = store
    cfg = copy.deepcopy(CFG)
    cfg["train"]["steps"] = 8
    run = tmp_path / "run"
    train(cfg, tokens_path, run, P, progress=False, stop_at_step=4)
    train(cfg, tokens_path, run, P, progress=False, stop_at_step=7)
    # as if the process died before its next checkpoint: the step-7 one never completed
    (run / "checkpoints" / "latest").write_text("step00000004")
    shutil.rmtree(run / "checkpoints" / "step00000007")
    resumed = torch.load(train(cfg, tokens_path, run, P, progress=False), weights_only=False)
    whole = torch.load(train(cfg, tokens_path, tmp_path / "whole", P, progress=False), weights_only=False)
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == [2, 4, 6, 8]


def test_resume_refuses_a_checkpoint_of_other_settings(store, tmp_path):
    tokens_path, _ = store
    run = tmp_path / "run"
    train(CFG, tokens_path, run, P, progress=False, stop_at_step=4)
    changed = copy.deepcopy(CFG)
    changed["train"]["lr"] = 0.01
    with pytest.raises(
        SeqvitError,
        match=r"run.json: the checkpoints .* were written with other settings \(train\.lr: 0\.003 in the file, 0\.01 in the config\)",
    ):
        train(changed, tokens_path, run, P, progress=False)
    harmless = copy.deepcopy(CFG)
    harmless["train"]["val_every"] = 4  # bookkeeping only: resuming is fine
    assert train(harmless, tokens_path, run, P, progress=False).exists()


def test_a_checkpoint_of_other_training_code_is_not_resumed(store, tmp_path, monkeypatch, caplog):
    """An edit of the training code reruns training in the workflow: the old code's final
    checkpoint must be set aside, not resumed (it may not even load)."""
    import logging

    from seqvit.train import engine

    tokens_path, _ = store
    run = tmp_path / "run"
    train(CFG, tokens_path, run, P, progress=False)
    monkeypatch.setattr(engine, "stage_hash", lambda *modules: "edited-code")
    with pytest.raises(SeqvitError, match=r"other settings \(code: "):
        train(CFG, tokens_path, run, P, progress=False)
    with caplog.at_level(logging.INFO):
        assert train(CFG, tokens_path, run, P, progress=False, restart_if_changed=True).exists()
    assert (run / "checkpoints.previous").is_dir() and "resumed from step" not in caplog.text
    assert json.loads((run / "checkpoints" / "run.json").read_text())["code"] == "edited-code"


def _losses(run):
    return np.array([float(r["loss"]) for r in read_metrics(run / "metrics.csv")])


def test_gradient_accumulation_and_activation_checkpointing_keep_the_loss_curve(store, tmp_path):
    tokens_path, _ = store
    train(CFG, tokens_path, tmp_path / "plain", P, progress=False)
    for name, extra in {
        "accumulate": {"grad_accumulation": 2},
        "recompute": {"activation_checkpointing": True},
    }.items():
        cfg = copy.deepcopy(CFG)
        cfg["train"].update(extra)
        train(cfg, tokens_path, tmp_path / name, P, progress=False)
        np.testing.assert_allclose(_losses(tmp_path / name), _losses(tmp_path / "plain"), rtol=1e-5, err_msg=name)
    bad = copy.deepcopy(CFG)
    bad["train"]["grad_accumulation"] = 3
    with pytest.raises(SeqvitError, match="train.grad_accumulation: 3 must be at least 1 and divide the 4 samples"):
        train(bad, tokens_path, tmp_path / "bad", P, progress=False)


def test_bf16_training_learns_and_saves_fp32_weights(store, tmp_path):
    tokens_path, _ = store
    cfg = copy.deepcopy(CFG)
    cfg["train"].update(precision="bf16", grad_clip=1.0, steps=24, val_every=12)
    saved = torch.load(train(cfg, tokens_path, tmp_path / "bf16", P, progress=False), weights_only=False)
    fp32 = copy.deepcopy(CFG)
    fp32["train"].update(grad_clip=1.0, steps=24, val_every=12)
    train(fp32, tokens_path, tmp_path / "fp32", P, progress=False)
    losses, reference = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
    np.testing.assert_allclose(losses, reference, rtol=0.05)  # bf16 keeps about 3 significant digits
    assert saved["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in saved["state_dict"].values())


def test_stop_request_catches_slurm_signals_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert not stop.pending(distributed=False)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.pending(distributed=False) and stop.name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_train_rejects_store_of_other_patch_size(store, tmp_path):
    tokens_path, _ = store
    with pytest.raises(SeqvitError, match="patch size"):
        train(CFG, tokens_path, tmp_path / "run", 2, progress=False)


def test_predict_writes_contract_layout(store, tmp_path):
    tokens_path, stats_path = store
    run = tmp_path / "run"
    train(CFG, tokens_path, run, P, progress=False)
    out = tmp_path / "predictions" / "vit-p4.nc"
    predict(CFG, run, tokens_path, stats_path, out)
    with xr.open_dataset(out) as ds:
        forecast = ds["forecast"].load()
        assert ds.attrs["model"] == "vit-p4"
    assert forecast.dims == ("lead_hours", "time", "channel", "latitude", "longitude")
    assert forecast.dtype == np.float32
    assert forecast["lead_hours"].values.tolist() == [6, 24]
    assert forecast["channel"].values.tolist() == ["t2m"]
    # 16 test times 6 h apart: init times valid for a 24 h lead are the first 12
    expected_times = pd.date_range("2017-01-01", periods=12, freq="6h")
    assert pd.DatetimeIndex(forecast["time"].values).equals(expected_times)
    assert forecast.shape == (2, 12, 1, HEIGHT, WIDTH)
    # physical units: values around the 280 K mean, not normalized ones
    assert 260 < float(forecast.mean()) < 300 and np.isfinite(forecast.values).all()

    # a zero head predicts zero tendency: the forecast must be the init state, denormalized
    saved = torch.load(run / "model.pt", weights_only=False)
    saved["state_dict"]["head.weight"].zero_()
    saved["state_dict"]["head.bias"].zero_()
    torch.save(saved, run / "model.pt")
    predict(CFG, run, tokens_path, stats_path, out)
    with xr.open_dataset(out) as ds:
        persistence = ds["forecast"].values
    with xr.open_zarr(tokens_path, consolidated=False) as tokens:
        init_tokens = tokens["tokens"].sel(time=expected_times, channel="t2m").values
    expected = unpatchify(init_tokens, P, (HEIGHT, WIDTH)) * 7.0 + 280.0
    for lead in range(2):
        np.testing.assert_allclose(persistence[lead, :, 0], expected, rtol=0, atol=1e-4)

    bad = copy.deepcopy(CFG)
    bad["evaluate"]["variables"] = ["q_700"]
    with pytest.raises(SeqvitError, match="evaluate.variables"):
        predict(bad, run, tokens_path, stats_path, tmp_path / "bad.nc")
