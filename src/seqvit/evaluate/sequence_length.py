"""The sequence-length experiment: ViT RMSE against the number of tokens per sample.

A full-attention ViT run named ``vit-p{P}`` (``vit-p{P}-s{seed}`` under train.seeds) cuts the (nlat x nlon) grid into (nlat/P) x (nlon/P) patches, so its
sequence length (tokens per sample after variable aggregation) is (nlat/P) * (nlon/P). Every run
is scored by the evaluate stage on the same test cases; this module only rearranges those scores.
Window-attention runs (vit-win-p{P}) are left out here: seqvit.evaluate.comparisons sets them against
full attention at equal sequence length. With seeds, a sequence length's RMSE is the mean over its
seeds (and its interval that of the mean: seqvit.evaluate.comparisons).

Outputs (written by :func:`write_sequence_length`):
    rmse_vs_seqlen.csv   long: model, patch_size, seq_len, variable, lead_hours, rmse, rmse_mean_per_time,
                         and the RMSE's bootstrap interval (rmse_low, rmse_high) where metrics.csv has it;
                         one row per run, with a seed column under train.seeds
    seqlen_change.csv    wide: one row per (variable, lead), the headline RMSE of each sequence length,
                         and the relative change from the shortest to the longest sequence in percent
                         (negative = the longest sequence has the lower error) with its paired
                         bootstrap interval (change_low_pct, change_high_pct; seqvit.evaluate.uncertainty)
                         and whether that interval excludes zero (change_significant)
    rmse_vs_seqlen.png (+ .pdf)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

_VIT = re.compile(r"^vit-p(\d+)(?:-s(\d+))?$")
LONG_COLUMNS = ["model", "patch_size", "seq_len", "variable", "lead_hours", "rmse", "rmse_mean_per_time"]
INTERVAL_COLUMNS = ["rmse_low", "rmse_high"]


def sequence_length(nlat: int, nlon: int, patch_size: int) -> int:
    """Tokens per sample for a (nlat x nlon) grid cut into patch_size x patch_size patches."""
    if nlat % patch_size or nlon % patch_size:
        raise SeqvitError(f"patch size {patch_size} does not divide the {nlat} x {nlon} grid; choose a divisor")
    return (nlat // patch_size) * (nlon // patch_size)


def rmse_by_sequence_length(metrics_df: pd.DataFrame, nlat: int, nlon: int) -> pd.DataFrame:
    """The ViT rows of metrics.csv with patch size and sequence length, shortest sequence first."""
    rows = []
    for _, row in metrics_df.iterrows():
        match = _VIT.match(str(row["model"]))
        if not match:
            continue
        p = int(match.group(1))
        rows.append(
            {
                "model": row["model"],
                **({"seed": int(match.group(2))} if match.group(2) else {}),
                "patch_size": p,
                "seq_len": sequence_length(nlat, nlon, p),
                "variable": row["variable"],
                "lead_hours": int(row["lead_hours"]),
                "rmse": float(row["rmse"]),
                "rmse_mean_per_time": float(row["rmse_mean_per_time"]),
                **{c: float(row[c]) for c in INTERVAL_COLUMNS if c in row.index},
            }
        )
    seeded = any("seed" in row for row in rows)
    columns = LONG_COLUMNS[:1] + ["seed"] * seeded + LONG_COLUMNS[1:]
    columns += [c for c in INTERVAL_COLUMNS if c in metrics_df.columns]
    long = pd.DataFrame(rows, columns=columns)
    return long.sort_values(["variable", "lead_hours", "seq_len"], kind="stable").reset_index(drop=True)


def relative_change(long: pd.DataFrame, per_time: dict | None = None, draws=None) -> pd.DataFrame:
    """Wide table: headline RMSE per sequence length and change shortest -> longest in percent.

    With a single sequence length the change is NaN (nothing to compare); never extrapolated.
    per_time and draws (the evaluate stage's per-time scores and bootstrap resamples) add the
    change's interval, paired resample by resample.
    """
    from seqvit.evaluate import comparisons

    if long.empty:
        return pd.DataFrame(columns=["variable", "lead_hours", "change_pct"])
    lengths = sorted(long["seq_len"].unique())
    patch_of = dict(zip(long["seq_len"], long["patch_size"]))
    variables = list(dict.fromkeys(long["variable"]))
    out = []
    for variable in variables:
        for lead in sorted(long.loc[long["variable"] == variable, "lead_hours"].unique()):
            rows = long[(long["variable"] == variable) & (long["lead_hours"] == lead)]
            sel = rows.groupby("seq_len")["rmse"].mean()  # the mean over seeds, where there are several
            row = {"variable": variable, "lead_hours": int(lead)}
            for n in lengths:
                row[f"rmse_L{n}_p{patch_of[n]}"] = float(sel.get(n, np.nan))
            shortest, longest = sel.get(lengths[0], np.nan), sel.get(lengths[-1], np.nan)
            row["change_pct"] = 100.0 * (longest - shortest) / shortest if len(lengths) > 1 else np.nan
            if per_time is not None and draws is not None and len(lengths) > 1:
                models_of = rows.groupby("seq_len")["model"].apply(list)
                low, high = comparisons.paired_change(
                    per_time, models_of[lengths[0]], models_of[lengths[-1]], variable, int(lead), draws
                )
                row.update(change_low_pct=low, change_high_pct=high, change_significant=bool(high < 0 or low > 0))
            out.append(row)
    return pd.DataFrame(out)


def write_sequence_length(
    metrics_df: pd.DataFrame, nlat: int, nlon: int, out_dir, per_time: dict | None = None, draws=None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write rmse_vs_seqlen.csv, seqlen_change.csv and the figure (PNG + PDF) under out_dir.

    per_time, draws: see relative_change (without them the change has no interval).
    """
    from seqvit.evaluate import figures

    out_dir = Path(out_dir)
    long = rmse_by_sequence_length(metrics_df, nlat, nlon)
    wide = relative_change(long, per_time, draws)
    for frame, name in ((long, "rmse_vs_seqlen.csv"), (wide, "seqlen_change.csv")):
        with atomic_path(out_dir / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    baselines = metrics_df[~metrics_df["model"].astype(str).str.match(r"^vit-")]
    figures.rmse_vs_seqlen(seed_means(long, per_time, draws), wide, baselines, out_dir / "rmse_vs_seqlen.png")
    return long, wide


def seed_means(long: pd.DataFrame, per_time: dict | None = None, draws=None) -> pd.DataFrame:
    """One row per sequence length: the mean RMSE over seeds and the interval of that mean (the
    long table itself where no sequence length has more than one run)."""
    keys = ["variable", "lead_hours", "seq_len", "patch_size"]
    if long.empty or not long.duplicated(keys).any():
        return long
    from seqvit.evaluate import comparisons, uncertainty

    rows = []
    for (variable, lead, n, p), group in long.groupby(keys, sort=False):
        row = {"variable": variable, "lead_hours": lead, "seq_len": n, "patch_size": p}
        row["rmse"] = float(group["rmse"].mean())
        if per_time is not None and draws is not None:
            samples = comparisons.seed_mean_rmse_samples(per_time, group["model"], str(variable), int(lead), draws)
            row["rmse_low"], row["rmse_high"] = (float(v) for v in uncertainty.interval(samples, draws))
        rows.append(row)
    return pd.DataFrame(rows)
