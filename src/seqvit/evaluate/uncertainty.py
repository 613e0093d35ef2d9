"""Confidence intervals for the scores: a circular block bootstrap over test initialisation times.

Forecast errors at nearby initialisation times are correlated (weather persists for days, and a
6-hourly series samples it four times a day), so resampling single times would understate the
spread. The bootstrap resamples blocks of consecutive init times instead (circular: the series
wraps, so every time is equally likely to be drawn; arch.bootstrap.CircularBlockBootstrap).

Block length: the automatic choice of Politis & White (2004, with the correction of Patton,
Politis & White 2009; arch.bootstrap.optimal_block_length) for the circular bootstrap of the
mean, computed on every per-time series the intervals are built from (MSE and ACC of every model,
variable and lead) and the largest taken, so that one set of resampled indices serves every
score. Using the same indices for every model makes comparisons paired: the interval of a change
(say the RMSE of the longest sequence against the shortest) comes from the change in each
resample, so errors that all models share (a hard week) cancel.

RMSE in a resample is the square root of the mean of the resampled per-time MSE (the headline
definition), ACC the mean of the resampled per-time ACC. Intervals are percentile intervals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from seqvit.errors import SeqvitError


@dataclass(frozen=True)
class Resamples:
    """Index arrays [resamples, n_times] of a circular block bootstrap, shared by every score."""

    indices: np.ndarray
    block: int
    confidence: float

    @property
    def quantiles(self) -> tuple[float, float]:
        tail = (1.0 - self.confidence) / 2.0
        return tail, 1.0 - tail


def block_length(series: np.ndarray) -> int:
    """Block length that covers the autocorrelation of every series (rows: series, columns: time)."""
    from arch.bootstrap import optimal_block_length

    series = np.atleast_2d(np.asarray(series, dtype=np.float64))
    n_times = series.shape[1]
    if n_times < 8:
        raise SeqvitError(f"{n_times} test init times are too few for a bootstrap interval; evaluate more test times")
    lengths = []
    for row in series:
        if not np.all(np.isfinite(row)) or np.ptp(row) == 0:
            continue  # a constant or undefined series has no autocorrelation to cover
        lengths.append(float(optimal_block_length(row)["circular"].iloc[0]))
    block = int(np.ceil(max(lengths, default=1.0)))
    return int(min(max(block, 1), n_times // 2))  # at least two blocks fit in the series


def resample(n_times: int, block: int, resamples: int, confidence: float, seed: int) -> Resamples:
    """`resamples` index arrays of a circular block bootstrap with blocks of `block` times."""
    from arch.bootstrap import CircularBlockBootstrap

    if not 0.0 < confidence < 1.0:
        raise SeqvitError(f"config key evaluate.bootstrap.confidence: {confidence} must lie between 0 and 1")
    bootstrap = CircularBlockBootstrap(block, np.arange(n_times), seed=int(seed))
    indices = np.stack([positional[0] for positional, _ in bootstrap.bootstrap(int(resamples))])
    return Resamples(indices=indices, block=int(block), confidence=float(confidence))


def resampled_means(values: np.ndarray, draws: Resamples) -> np.ndarray:
    """Mean over time in every resample: values [..., time] -> [..., resamples] (NaN times left out)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(values.shape[:-1] + (len(draws.indices),))
    with warnings.catch_warnings():  # a score undefined at every time (ACC of climatology) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, idx in enumerate(draws.indices):
            out[..., k] = np.nanmean(values[..., idx], axis=-1)
    return out


def interval(samples: np.ndarray, draws: Resamples) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the last axis (the resamples)."""
    low, high = draws.quantiles
    return np.quantile(samples, low, axis=-1), np.quantile(samples, high, axis=-1)


def rmse_samples(mse_per_time: np.ndarray, draws: Resamples) -> np.ndarray:
    """Headline RMSE (sqrt of the time-mean MSE) in every resample: [..., time] -> [..., resamples]."""
    return np.sqrt(resampled_means(mse_per_time, draws))


def relative_change_samples(rmse_from: np.ndarray, rmse_to: np.ndarray) -> np.ndarray:
    """Change from one model to another in percent, resample by resample (paired)."""
    return 100.0 * (rmse_to - rmse_from) / rmse_from


def draws_for(per_time: dict, settings: dict) -> Resamples:
    """One set of resamples for every score of the evaluate stage.

    per_time: {(model, lead): Dataset with mse and acc [time, channel]} (evaluate's per-time
    scores, on the same init times); settings: config section evaluate.bootstrap.
    """
    series = []
    for ds in per_time.values():
        for name in ("mse", "acc"):
            values = ds[name].transpose("channel", "time").values
            series.extend(values)
    n_times = len(series[0])
    block = block_length(np.stack(series))
    return resample(n_times, block, int(settings["resamples"]), float(settings["confidence"]), int(settings["seed"]))


def score_intervals(ds, draws: Resamples) -> dict[str, np.ndarray]:
    """Intervals of the headline RMSE and of ACC for every channel of one (model, lead)."""
    rmse_low, rmse_high = interval(rmse_samples(ds["mse"].transpose("channel", "time").values, draws), draws)
    acc_low, acc_high = interval(resampled_means(ds["acc"].transpose("channel", "time").values, draws), draws)
    return {"rmse_low": rmse_low, "rmse_high": rmse_high, "acc_low": acc_low, "acc_high": acc_high}


def change_interval(ds_from, ds_to, channel: str, draws: Resamples) -> tuple[float, float]:
    """Interval of the relative RMSE change (percent) from one model to another, paired by resample."""
    rmse_from = rmse_samples(ds_from["mse"].sel(channel=channel).values, draws)
    rmse_to = rmse_samples(ds_to["mse"].sel(channel=channel).values, draws)
    low, high = interval(relative_change_samples(rmse_from, rmse_to), draws)
    return float(low), float(high)
