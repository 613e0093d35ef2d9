"""seqvit predict forecasts only the lead times model.pt was trained on, unless extrapolation is asked for."""

import copy
import logging

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import write_regridded
from seqvit.data.tokenize import tokenize
from seqvit.errors import SeqvitError
from seqvit.train.engine import train
from seqvit.train.predict import predict

pytestmark = pytest.mark.workflow  # slow: real Snakemake runs or multi-process training

HEIGHT, WIDTH, P = 8, 16, 4
CFG = {
    "experiment": "leads",
    "data": {
        "years": [2015, 2016, 2017],
        "hours": [0, 6, 12, 18],
        "single_level": ["t2m"],
        "pressure_level": [],
        "levels": [],
    },
    "splits": {"train": [2015], "val": [2016], "test": [2017]},
    "model": {"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2, "dropout": 0.0},
    "train": {
        "lead_hours": [6],
        "batch_size": 4,
        "steps": 2,
        "lr": 0.003,
        "weight_decay": 0.05,
        "warmup_steps": 1,
        "val_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "threads": 1,
        "seed": 0,
    },
    "evaluate": {"variables": ["t2m"], "lead_hours": [6, 12]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tokens store of 3 short 6-hourly years, its stats.nc, and a ViT trained on the 6 h lead only."""
    root = tmp_path_factory.mktemp("leads")
    paths, stats_path = write_regridded(
        root,
        CFG,
        (2015, 2016, 2017),
        height=HEIGHT,
        width=WIDTH,
        amplitude=1.0,
        pressure_level=False,
        stats=((280.0, 1.0),),
    )
    tokens_path = root / "p4.zarr"
    tokenize(CFG, paths, stats_path, P, tokens_path)
    run = root / "run"
    train(CFG, tokens_path, run, P, progress=False)
    return run, tokens_path, stats_path


def test_model_file_records_its_training_leads(trained):
    run, _, _ = trained
    assert torch.load(run / "model.pt", weights_only=False)["lead_hours"] == [6]


def test_predict_refuses_leads_the_model_was_not_trained_on(trained, tmp_path):
    run, tokens_path, stats_path = trained
    out = tmp_path / "vit-p4.nc"
    with pytest.raises(SeqvitError) as info:
        predict(CFG, run, tokens_path, stats_path, out)
    message = str(info.value)
    assert str(run / "model.pt") in message and "[6] h, not [12] h" in message
    assert "evaluate.extrapolate_leads: true" in message and "train.lead_hours" in message
    assert not out.exists()


def test_extrapolation_on_request_warns_and_is_recorded(trained, tmp_path, caplog):
    run, tokens_path, stats_path = trained
    cfg = copy.deepcopy(CFG)
    cfg["evaluate"]["extrapolate_leads"] = True
    out = tmp_path / "vit-p4.nc"
    with caplog.at_level(logging.WARNING, logger="seqvit.train.predict"):
        predict(cfg, run, tokens_path, stats_path, out)
    assert any("extrapolation" in r.getMessage() and "[12]" in r.getMessage() for r in caplog.records)
    with xr.open_dataset(out) as ds:
        assert ds["lead_hours"].values.tolist() == [6, 12]
        assert np.atleast_1d(ds.attrs["extrapolated_leads"]).tolist() == [12]


def test_trained_leads_only_need_no_flag_and_record_nothing(trained, tmp_path):
    run, tokens_path, stats_path = trained
    cfg = copy.deepcopy(CFG)
    cfg["evaluate"]["lead_hours"] = [6]
    out = tmp_path / "vit-p4.nc"
    predict(cfg, run, tokens_path, stats_path, out)
    with xr.open_dataset(out) as ds:
        assert ds["lead_hours"].values.tolist() == [6] and "extrapolated_leads" not in ds.attrs
