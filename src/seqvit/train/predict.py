"""Forecasts of a trained ViT on the test split, in physical units (contract format 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from seqvit.data.loader import ForecastPairs
from seqvit.data.stats import channel_stats
from seqvit.data.tokenize import unpatchify
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.model.vit import build_model

PREDICT_BATCH = 64


def load_model(run_dir):
    """(model in eval mode, saved metadata) from run_dir/model.pt."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise SeqvitError(f"{path}: no trained model; run `seqvit train` for this patch size first")
    saved = torch.load(path, weights_only=False)
    model = build_model(saved["model_config"], len(saved["channels"]), saved["patch_size"], saved["grid_shape"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


@torch.no_grad()
def predict(cfg: dict, run_dir, tokens_path, stats_path, out_nc) -> None:
    model, saved = load_model(run_dir)
    torch.set_num_threads(int(cfg.get("train", {}).get("threads", 1)))
    patch_size = int(saved["patch_size"])
    lead_hours = [int(h) for h in cfg["evaluate"]["lead_hours"]]
    test_set = ForecastPairs(tokens_path, cfg, "test", lead_hours, random_lead=False)
    if test_set.channels != list(saved["channels"]) or test_set.patch_size != patch_size:
        raise SeqvitError(
            f"{tokens_path}: store has channels {test_set.channels} and patch size {test_set.patch_size}, "
            f"but {run_dir}/model.pt was trained on {saved['channels']} with patch size {patch_size}"
        )
    variables = list(cfg["evaluate"]["variables"])
    missing = [v for v in variables if v not in test_set.channels]
    if missing:
        raise SeqvitError(f"config key evaluate.variables: {missing} are not model channels {test_set.channels}")
    keep = [test_set.channels.index(v) for v in variables]
    mean, std = channel_stats(stats_path, variables)
    mean = mean.astype(np.float32)[None, :, None, None]
    std = std.astype(np.float32)[None, :, None, None]

    n_init = len(test_set.init_times)
    height, width = test_set.grid_shape
    forecast = np.empty((len(lead_hours), n_init, len(variables), height, width), dtype=np.float32)
    # Items are ordered lead-major: item = lead_position * n_init + init_position.
    for start in range(0, len(test_set), PREDICT_BATCH):
        index = np.arange(start, min(start + PREDICT_BATCH, len(test_set)))
        x, lead, _ = test_set.batch(index)
        state = x + model(x, lead)
        fields_norm = unpatchify(state[:, keep].numpy(), patch_size, test_set.grid_shape)
        forecast[index // n_init, index % n_init] = fields_norm * std + mean

    out = xr.Dataset(
        {"forecast": (("lead_hours", "time", "channel", "latitude", "longitude"), forecast)},
        coords={
            "lead_hours": np.array(lead_hours, dtype=np.int64),
            "time": test_set.init_times.values,
            "channel": np.array(variables, dtype=str),
            "latitude": test_set.latitude,
            "longitude": test_set.longitude,
        },
        attrs={"model": f"vit-p{patch_size}", "units": "physical units of each channel (denormalized)"},
    )
    with atomic_path(out_nc) as tmp:
        out.to_netcdf(tmp, engine="netcdf4")
