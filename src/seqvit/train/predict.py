"""Forecasts of a trained ViT on the test split, in physical units (contract format 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from seqvit import lineage
from seqvit.data.loader import ForecastPairs
from seqvit.data.stats import channel_stats
from seqvit.data.tokenize import store_identity, unpatchify
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.model.vit import build_model

PREDICT_BATCH = 64
log = logging.getLogger(__name__)


def load_model(run_dir):
    """(model in eval mode, saved metadata) from run_dir/model.pt."""
    path = Path(run_dir) / "model.pt"
    if not path.exists():
        raise SeqvitError(f"{path}: no trained model; run `seqvit train` for this patch size first")
    saved = torch.load(path, weights_only=False)
    model = build_model(saved["model_config"], len(saved["channels"]), saved["patch_size"], saved["grid_shape"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved


def check_trained_on(cfg: dict, run_dir, tokens_path, saved: dict) -> None:
    """Refuse a model trained on another tokens store than the one it is to forecast from."""
    made_by, store_id = store_identity(tokens_path)
    lineage.check(tokens_path, made_by, lineage.tokens(cfg, int(saved["patch_size"])), "tokens store")
    trained_on = (saved.get("tokens") or {}).get("store_id")
    if trained_on != store_id:
        raise SeqvitError(
            f"{Path(run_dir) / 'model.pt'}: trained on another tokens store than {tokens_path} (store id {trained_on} "
            f"then, {store_id} now: the store was rewritten after training); retrain it (seqvit train, or let "
            "snakemake rerun the train job)"
        )


def _check_leads(cfg: dict, run_dir, saved: dict, lead_hours: list[int]) -> list[int]:
    """The leads of lead_hours the model was not trained on; an error unless evaluate.extrapolate_leads."""
    trained = saved.get("lead_hours")
    if trained is None:  # a model.pt that does not record them: nothing to compare with
        log.warning("%s: does not record its training lead times; lead times not checked", Path(run_dir) / "model.pt")
        return []
    trained = [int(h) for h in trained]
    untrained = [h for h in lead_hours if h not in trained]
    if not untrained:
        return []
    if not (cfg.get("evaluate") or {}).get("extrapolate_leads", False):
        raise SeqvitError(
            f"{Path(run_dir) / 'model.pt'}: trained on lead times {trained} h, not {untrained} h (config key "
            "evaluate.lead_hours); add them to train.lead_hours and retrain, remove them from evaluate.lead_hours, "
            "or set evaluate.extrapolate_leads: true to forecast them anyway"
        )
    log.warning(
        "%s: trained on lead times %s h; forecasting %s h by extrapolation (evaluate.extrapolate_leads)",
        Path(run_dir) / "model.pt",
        trained,
        untrained,
    )
    return untrained


@torch.no_grad()
def predict(cfg: dict, run_dir, tokens_path, stats_path, out_nc) -> None:
    model, saved = load_model(run_dir)
    check_trained_on(cfg, run_dir, tokens_path, saved)
    lineage.check_netcdf(stats_path, lineage.stats(cfg), "statistics file")
    torch.set_num_threads(int(cfg.get("train", {}).get("threads", 1)))
    patch_size = int(saved["patch_size"])
    lead_hours = [int(h) for h in cfg["evaluate"]["lead_hours"]]
    extrapolated = _check_leads(cfg, run_dir, saved, lead_hours)
    test_set = ForecastPairs(tokens_path, cfg, "test", lead_hours)
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
        attrs={
            "model": f"vit-p{patch_size}",
            "units": "physical units of each channel (denormalized)",
            lineage.ATTR: lineage.dumps(lineage.forecast(cfg)),
        },
    )
    if extrapolated:  # evaluate.extrapolate_leads: say which leads the model never trained on
        out.attrs["extrapolated_leads"] = np.array(extrapolated, dtype=np.int64)
    with atomic_path(out_nc) as tmp:
        out.to_netcdf(tmp, engine="netcdf4")
