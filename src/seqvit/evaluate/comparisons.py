"""Comparisons across the runs of a sweep: repeats over seeds, window against full attention, the map case.

A ViT run is named by seqvit.layout (vit-p8, vit-win-p8, either with -s<seed> under train.seeds);
runs that differ only in their seed form a *family* (vit-p8). Every score of a family is the mean
over its seeds, and its bootstrap interval comes from the mean over seeds in each resample of the
evaluate stage (the same init-time resamples for every run, so comparisons stay paired).

Outputs (written by the evaluate stage):
    seeds_summary.csv    one row per (family, variable, lead): n seeds, RMSE mean, std (ddof 1; empty
                         with one seed), min and max over seeds, and the bootstrap interval of the mean
    windows_vs_full.csv  one row per (patch size, variable, lead) that has both attention patterns:
                         RMSE of full and window attention (seed means), the change full -> window in
                         percent (negative: window attention has the lower error), its paired bootstrap
                         interval and whether that interval excludes zero
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from seqvit.errors import SeqvitError
from seqvit.evaluate import uncertainty
from seqvit.layout import RUN_NAME, parse_run

SEEDS_COLUMNS = ["family", "variable", "lead_hours", "n", "rmse_mean", "rmse_std", "rmse_min", "rmse_max"]
WINDOWS_COLUMNS = [
    "patch_size",
    "seq_len",
    "variable",
    "lead_hours",
    "n_seeds",
    "rmse_full",
    "rmse_window",
    "change_pct",
    "change_low_pct",
    "change_high_pct",
    "change_significant",
]


def family(model: str) -> str:
    """The model without its seed (vit-p8-s1 -> vit-p8); baselines are their own family."""
    return parse_run(model).family if RUN_NAME.match(str(model)) else str(model)


def seed_mean_rmse_samples(per_time: dict, models, channel: str, lead: int, draws) -> np.ndarray:
    """The RMSE of each resample, averaged over the runs `models` (the seeds of one family)."""
    samples = [
        uncertainty.rmse_samples(per_time[model, int(lead)]["mse"].sel(channel=channel).values, draws)
        for model in models
    ]
    return np.mean(samples, axis=0)


def seeds_summary(metrics_df: pd.DataFrame, per_time: dict | None = None, draws=None) -> pd.DataFrame:
    """Mean and spread over seeds of every family's RMSE (a family without seeds has n = 1)."""
    df = metrics_df.assign(family=metrics_df["model"].map(family))
    rows = []
    for (fam, variable, lead), group in df.groupby(["family", "variable", "lead_hours"], sort=False):
        rmse = group["rmse"].astype(float)
        row = {
            "family": fam,
            "variable": variable,
            "lead_hours": int(lead),
            "n": len(rmse),
            "rmse_mean": float(rmse.mean()),
            "rmse_std": float(rmse.std(ddof=1)) if len(rmse) > 1 else np.nan,
            "rmse_min": float(rmse.min()),
            "rmse_max": float(rmse.max()),
        }
        if per_time is not None and draws is not None:
            samples = seed_mean_rmse_samples(per_time, group["model"], str(variable), int(lead), draws)
            low, high = uncertainty.interval(samples, draws)
            row.update(rmse_low=float(low), rmse_high=float(high))
        rows.append(row)
    columns = SEEDS_COLUMNS + (["rmse_low", "rmse_high"] if per_time is not None and draws is not None else [])
    return pd.DataFrame(rows, columns=columns)


def paired_change(per_time: dict, models_from, models_to, channel: str, lead: int, draws) -> tuple[float, float]:
    """Interval of the relative change (percent) of the seed-mean RMSE from one family to another."""
    rmse_from = seed_mean_rmse_samples(per_time, models_from, channel, lead, draws)
    rmse_to = seed_mean_rmse_samples(per_time, models_to, channel, lead, draws)
    low, high = uncertainty.interval(uncertainty.relative_change_samples(rmse_from, rmse_to), draws)
    return float(low), float(high)


def windows_vs_full(metrics_df: pd.DataFrame, seq_len_of, per_time: dict | None = None, draws=None) -> pd.DataFrame:
    """Full against window attention at equal sequence length (seq_len_of: patch size -> tokens)."""
    vit = metrics_df[metrics_df["model"].astype(str).str.match(RUN_NAME)]
    runs = {model: parse_run(model) for model in dict.fromkeys(vit["model"])}
    rows = []
    for p in dict.fromkeys(run.patch_size for run in runs.values()):
        full = [m for m, r in runs.items() if r.patch_size == p and not r.window]
        window = [m for m, r in runs.items() if r.patch_size == p and r.window]
        if not full or not window:
            continue
        if len(full) != len(window):
            raise SeqvitError(
                f"patch size {p}: {len(full)} full-attention runs but {len(window)} window runs; "
                "every run needs both (rerun the workflow with the same train.seeds for both)"
            )
        for (variable, lead), group in vit.groupby(["variable", "lead_hours"], sort=False):
            rmse_full = float(group[group["model"].isin(full)]["rmse"].mean())
            rmse_window = float(group[group["model"].isin(window)]["rmse"].mean())
            row = {
                "patch_size": p,
                "seq_len": int(seq_len_of(p)),
                "variable": variable,
                "lead_hours": int(lead),
                "n_seeds": len(full),
                "rmse_full": rmse_full,
                "rmse_window": rmse_window,
                "change_pct": 100.0 * (rmse_window - rmse_full) / rmse_full,
                "change_low_pct": np.nan,
                "change_high_pct": np.nan,
                "change_significant": np.nan,
            }
            if per_time is not None and draws is not None:
                low, high = paired_change(per_time, full, window, str(variable), int(lead), draws)
                row.update(change_low_pct=low, change_high_pct=high, change_significant=bool(high < 0 or low > 0))
            rows.append(row)
    return pd.DataFrame(rows, columns=WINDOWS_COLUMNS)


MAP_CASE_RULE = (
    "the test initialisation whose RMSE (longest-sequence full-attention run, mean MSE over its seeds) "
    "is the median over the test initialisations (the lower of the two middle ones when their number is even)"
)


def median_case(mse_per_time: np.ndarray) -> int:
    """Index of the time whose RMSE is the (lower) median: rows are runs (averaged), columns times."""
    rmse = np.sqrt(np.mean(np.atleast_2d(np.asarray(mse_per_time, dtype=np.float64)), axis=0))
    if not np.all(np.isfinite(rmse)):
        raise SeqvitError("map case: the per-time RMSE of the reference run is not finite; check its predictions")
    order = np.argsort(rmse, kind="stable")
    return int(order[(len(rmse) - 1) // 2])


def map_reference(models) -> list[str]:
    """The runs the map case is chosen by: the full-attention family with the smallest patch size."""
    runs = {m: parse_run(m) for m in models if RUN_NAME.match(str(m))}
    full = {m: r for m, r in runs.items() if not r.window}
    if not full:
        return []
    smallest = min(r.patch_size for r in full.values())
    return [m for m, r in full.items() if r.patch_size == smallest]
