"""The block bootstrap against series whose variance of the mean is known exactly."""

import numpy as np
import pytest

from seqvit.errors import SeqvitError
from seqvit.evaluate import uncertainty

PHI, N, REALIZATIONS = 0.6, 1000, 40


def ar1(rng, n: int, phi: float) -> np.ndarray:
    """A stationary AR(1) series with unit innovations (started from its stationary law)."""
    x = np.empty(n)
    x[0] = rng.standard_normal() / np.sqrt(1 - phi**2)
    noise = rng.standard_normal(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def exact_variance_of_mean(n: int, phi: float) -> float:
    """Var of the mean of n values of a stationary AR(1): (gamma_0 / n) (1 + 2 sum_k (1 - k/n) phi^k)."""
    k = np.arange(1, n)
    return (1 / (1 - phi**2)) / n * (1 + 2 * np.sum((1 - k / n) * phi**k))


def test_block_bootstrap_recovers_the_variance_of_the_mean_of_an_autocorrelated_series():
    rng = np.random.default_rng(0)
    exact = exact_variance_of_mean(N, PHI)
    block_var, iid_var, covered, blocks = [], [], 0, []
    for r in range(REALIZATIONS):
        x = ar1(rng, N, PHI)
        block = uncertainty.block_length(x[None])
        draws = uncertainty.resample(N, block, 400, 0.95, seed=r)
        means = uncertainty.resampled_means(x, draws)
        block_var.append(means.var())
        low, high = uncertainty.interval(means - x.mean(), draws)
        covered += bool(x.mean() - high <= 0.0 <= x.mean() - low)  # basic interval around the true mean 0
        iid = uncertainty.resample(N, 1, 400, 0.95, seed=r)
        iid_var.append(uncertainty.resampled_means(x, iid).var())
        blocks.append(block)
    # the known bias of a block bootstrap is a few per cent of the variance at these block lengths
    assert np.mean(block_var) / exact == pytest.approx(1.0, abs=0.2)
    # resampling single times would claim about a quarter of the true variance here: blocks matter
    assert np.mean(iid_var) / exact < 0.35
    assert covered >= 0.8 * REALIZATIONS
    assert 5 <= np.mean(blocks) <= 40  # the autocorrelation of phi = 0.6 falls to 1/e after 2 steps


def test_independent_values_get_short_blocks_and_an_interval_of_the_usual_width():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(N)
    block = uncertainty.block_length(x[None])
    assert block <= 3
    draws = uncertainty.resample(N, block, 2000, 0.95, seed=0)
    low, high = uncertainty.interval(uncertainty.resampled_means(x, draws), draws)
    assert (high - low) == pytest.approx(2 * 1.96 / np.sqrt(N), rel=0.15)


def test_paired_resamples_cancel_what_two_models_share():
    """Two error series that share a large common part: the interval of their difference is narrow."""
    rng = np.random.default_rng(2)
    shared = 10 * ar1(rng, N, 0.8) ** 2
    a, b = shared + 1.0, shared + 1.1 + 0.01 * rng.standard_normal(N)
    draws = uncertainty.resample(N, uncertainty.block_length(np.stack([a, b])), 500, 0.95, seed=0)
    change = uncertainty.relative_change_samples(uncertainty.rmse_samples(a, draws), uncertainty.rmse_samples(b, draws))
    low, high = uncertainty.interval(change, draws)
    assert 0 < low < high  # b is always worse, and pairing shows it despite the shared variability


def test_too_few_times_and_a_bad_confidence_are_refused():
    with pytest.raises(SeqvitError, match="too few"):
        uncertainty.block_length(np.arange(5.0)[None])
    with pytest.raises(SeqvitError, match="evaluate.bootstrap.confidence"):
        uncertainty.resample(100, 2, 10, 1.5, seed=0)


def test_the_sequence_length_change_comes_with_its_paired_interval(tmp_path):
    """Two ViT runs whose per-time errors share their weather: the longer sequence is 10% better each
    time (significant), and equal on a second variable up to noise (interval around zero)."""
    import pandas as pd
    import xarray as xr

    from seqvit.evaluate.sequence_length import relative_change, rmse_by_sequence_length

    rng = np.random.default_rng(3)
    times = pd.date_range("2020-01-01", periods=400, freq="6h")
    weather = 1 + ar1(rng, 400, 0.8) ** 2
    noise = 0.2 * rng.standard_normal((2, 400))

    def scores(factor):
        mse = np.stack([factor * weather, weather * (1 + noise[int(factor == 1.0)] * 0.05)], axis=1)
        return xr.Dataset(
            {"mse": (("time", "channel"), mse), "acc": (("time", "channel"), np.full((400, 2), 0.9))},
            coords={"time": times, "channel": ["t2m", "z_500"]},
        )

    per_time = {("vit-p8", 6): scores(1.0), ("vit-p4", 6): scores(0.81)}
    rows = []
    for (model, lead), ds in per_time.items():
        for channel in ("t2m", "z_500"):
            rmse = float(np.sqrt(ds["mse"].sel(channel=channel).mean()))
            rows.append(
                {"model": model, "variable": channel, "lead_hours": lead, "rmse": rmse, "rmse_mean_per_time": rmse}
            )
    draws = uncertainty.draws_for(per_time, {"resamples": 500, "confidence": 0.95, "seed": 0})
    change = relative_change(rmse_by_sequence_length(pd.DataFrame(rows), 32, 64), per_time, draws).set_index("variable")
    assert change.loc["t2m", "change_pct"] == pytest.approx(-10.0, abs=1e-9)  # sqrt(0.81) = 0.9
    assert change.loc["t2m", "change_low_pct"] == pytest.approx(-10.0, abs=1e-6)  # the same in every resample
    assert bool(change.loc["t2m", "change_significant"])
    low, high = change.loc["z_500", ["change_low_pct", "change_high_pct"]]
    assert low < change.loc["z_500", "change_pct"] < high and low < 0 < high
    assert not bool(change.loc["z_500", "change_significant"])
