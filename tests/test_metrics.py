"""Metrics against hand-computed values (WeatherBench2 conventions)."""

import numpy as np
import pytest
import xarray as xr

from seqvit.data.grids import latitude_weights, named_grid
from seqvit.errors import SeqvitError
from seqvit.evaluate import metrics

# Latitudes -60, 0, 60: cell edges -90, -30, 30, 90, so sin-areas 0.5, 1, 0.5 -> weights 0.75, 1.5, 0.75.
LAT = np.array([-60.0, 0.0, 60.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])
WEIGHTS = np.array([0.75, 1.5, 0.75])


def grid_array(values, times=None):
    """(time, channel, latitude, longitude) DataArray on the 3 x 4 grid."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None, None]
    n_time = values.shape[0]
    coords = {
        "time": np.arange(n_time) if times is None else times,
        "channel": ["t2m"][: values.shape[1]] if values.shape[1] == 1 else [f"c{i}" for i in range(values.shape[1])],
        "latitude": LAT,
        "longitude": LON,
    }
    return xr.DataArray(values, dims=("time", "channel", "latitude", "longitude"), coords=coords)


def test_area_weights_mean_one_and_hand_values():
    np.testing.assert_allclose(latitude_weights(LAT), WEIGHTS)
    for name in ("5.625deg", "2.8125deg", "1deg"):
        weights = latitude_weights(named_grid(name).lat)
        assert weights.mean() == pytest.approx(1.0)
        assert weights.min() > 0


ERROR = np.array(
    [
        [2.0, 0.0, 2.0, 0.0],  # mean square 2
        [1.0, 1.0, 1.0, 1.0],  # 1
        [0.0, 0.0, 0.0, 3.0],  # 2.25
    ]
)
HAND_MSE = (0.75 * 2 + 1.5 * 1 + 0.75 * 2.25) / 3  # 1.5625


def test_weighted_mse_hand_case_xarray_and_numpy():
    truth = grid_array(np.stack([np.zeros((3, 4)), np.full((3, 4), 5.0)])[:, None])
    forecast = truth + grid_array(np.stack([ERROR, 2 * ERROR])[:, None]).values
    mse = metrics.weighted_mse(forecast, truth)
    assert mse.dims == ("time", "channel")
    np.testing.assert_allclose(mse.values[:, 0], [HAND_MSE, 4 * HAND_MSE])
    np.testing.assert_allclose(metrics.weighted_mse(forecast.values, truth.values, LAT)[:, 0], [HAND_MSE, 4 * HAND_MSE])


def test_rmse_reductions_differ_as_computed_by_hand():
    truth = grid_array(np.zeros((2, 1, 3, 4)))
    forecast = grid_array(np.stack([np.full((3, 4), 1.0), np.full((3, 4), 3.0)])[:, None])
    mse = metrics.weighted_mse(forecast, truth)
    np.testing.assert_allclose(mse.values[:, 0], [1.0, 9.0])
    assert float(metrics.rmse(mse)[0]) == pytest.approx(np.sqrt(5.0))
    assert float(metrics.mean_rmse_per_time(mse)[0]) == pytest.approx(2.0)
    # numpy input reduces over axis 0
    assert metrics.rmse(mse.values)[0] == pytest.approx(np.sqrt(5.0))


def test_bias_sign():
    truth = grid_array(np.random.default_rng(0).normal(size=(3, 1, 3, 4)))
    assert float(metrics.time_mean(metrics.weighted_bias(truth + 0.5, truth))[0]) == pytest.approx(0.5)
    assert float(metrics.time_mean(metrics.weighted_bias(truth - 2.0, truth))[0]) == pytest.approx(-2.0)
    # weighted, not a plain mean: an error only on the equator row counts double
    error = np.zeros((3, 4))
    error[1] = 1.0
    assert float(metrics.weighted_bias(truth + error, truth)[0, 0]) == pytest.approx(1.5 * 4 / 12)


def test_acc_perfect_negated_and_hand_case():
    rng = np.random.default_rng(1)
    climatology = grid_array(rng.normal(size=(2, 1, 3, 4)) + 280)
    anomaly = rng.normal(size=(2, 1, 3, 4))
    truth = climatology + anomaly
    np.testing.assert_allclose(metrics.acc_per_time(truth, truth, climatology), 1.0)
    np.testing.assert_allclose(metrics.acc_per_time(climatology - anomaly, truth, climatology), -1.0)
    # Scaling the forecast anomaly does not change the correlation.
    np.testing.assert_allclose(metrics.acc_per_time(climatology + 3 * anomaly, truth, climatology), 1.0)

    # Hand case: truth anomaly 1 everywhere, forecast anomaly 2 on the equator row only.
    # mean(w f'o') = 1.5*2*4/12 = 1, mean(w f'^2) = 1.5*4*4/12 = 2, mean(w o'^2) = 1 -> 1/sqrt(2).
    clim = grid_array(np.zeros((3, 4)))
    forecast_anomaly = np.zeros((3, 4))
    forecast_anomaly[1] = 2.0
    acc = metrics.acc_per_time(grid_array(forecast_anomaly), grid_array(np.ones((3, 4))), clim)
    assert float(acc[0, 0]) == pytest.approx(1 / np.sqrt(2))
    # Uncentred: constant anomalies of the same sign correlate perfectly.
    acc = metrics.acc_per_time(grid_array(np.full((3, 4), 3.0)), grid_array(np.ones((3, 4))), clim)
    assert float(acc[0, 0]) == pytest.approx(1.0)
    # numpy path agrees
    acc_np = metrics.acc_per_time(forecast_anomaly, np.ones((3, 4)), np.zeros((3, 4)), LAT)
    assert float(acc_np) == pytest.approx(1 / np.sqrt(2))


def test_summarize_reduces_over_time():
    truth = grid_array(np.zeros((2, 1, 3, 4)))
    forecast = grid_array(np.stack([np.full((3, 4), 1.0), np.full((3, 4), -3.0)])[:, None])
    scores = metrics.summarize(forecast, truth, truth - 1.0)
    assert float(scores["mse"][0]) == pytest.approx(5.0)
    assert float(scores["rmse"][0]) == pytest.approx(np.sqrt(5.0))
    assert float(scores["rmse_mean_per_time"][0]) == pytest.approx(2.0)
    assert float(scores["bias"][0]) == pytest.approx(-1.0)
    assert scores["n_times"] == 2


def test_mismatched_coordinates_and_bad_input_raise():
    truth = grid_array(np.zeros((2, 1, 3, 4)))
    shifted = truth.assign_coords(time=[5, 6])
    with pytest.raises(SeqvitError, match="different coordinates"):
        metrics.weighted_mse(truth, shifted)
    with pytest.raises(SeqvitError, match="lat"):
        metrics.weighted_mse(np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(SeqvitError, match="mix"):
        metrics.weighted_mse(truth, truth.values)
