"""Forecast scores in WeatherBench2 conventions: computed per time step, reduced over time later.

Every function takes xarray DataArrays with ``latitude`` and ``longitude`` dimensions (any other
dimensions, e.g. time and channel, are kept) or numpy arrays whose last two axes are latitude and
longitude (then pass ``lat``). Spatial means are weighted by cell area
(:func:`seqvit.data.grids.latitude_weights`, mean 1), so a global mean counts each square
kilometre once. Arithmetic is done in float64.

Per-time scores:
    weighted_mse, weighted_bias, acc_per_time (uncentred anomaly correlation)
Reductions over time (``dim`` names the time dimension, or is an axis for numpy):
    rmse                -- sqrt(mean over times of MSE), the WeatherBench2 headline number
    mean_rmse_per_time  -- mean over times of sqrt(MSE), a second, more outlier-robust reduction
    time_mean           -- plain mean, for bias and ACC
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from seqvit.data.grids import latitude_weights
from seqvit.errors import SeqvitError

SPATIAL_DIMS = ("latitude", "longitude")


def _weights_like(x, lat):
    """Area weights shaped to broadcast against `x`."""
    if isinstance(x, xr.DataArray):
        missing = [d for d in SPATIAL_DIMS if d not in x.dims]
        if missing:
            raise SeqvitError(f"array {x.name!r} has dims {x.dims}; metrics need latitude and longitude")
        lat_values = x["latitude"].values if lat is None else np.asarray(lat)
        if lat_values.shape != (x.sizes["latitude"],):
            raise SeqvitError(f"lat has {lat_values.shape} values but the array has {x.sizes['latitude']} latitudes")
        return xr.DataArray(latitude_weights(lat_values), dims="latitude", coords={"latitude": x["latitude"]})
    if lat is None:
        raise SeqvitError("numpy input: pass lat (the latitude centres of axis -2)")
    lat = np.asarray(lat, dtype=np.float64)
    if x.ndim < 2 or x.shape[-2] != lat.size:
        raise SeqvitError(f"numpy input of shape {x.shape}: axis -2 must be latitude with {lat.size} values")
    return latitude_weights(lat)[:, None]


def _as_float64(x):
    return x.astype(np.float64) if isinstance(x, xr.DataArray) else np.asarray(x, dtype=np.float64)


def _aligned(*arrays):
    """Refuse arrays whose coordinates differ: xarray would silently intersect them otherwise."""
    if all(isinstance(a, xr.DataArray) for a in arrays):
        try:
            return xr.align(*arrays, join="exact")
        except ValueError as exc:
            raise SeqvitError(f"forecast, truth (and climatology) have different coordinates: {exc}") from exc
    if any(isinstance(a, xr.DataArray) for a in arrays):
        raise SeqvitError("pass all arrays as xarray DataArrays or all as numpy arrays, not a mix")
    return arrays


def spatial_mean(x, lat=None):
    """Area-weighted mean over latitude and longitude."""
    x = _as_float64(x)
    w = _weights_like(x, lat)
    if isinstance(x, xr.DataArray):
        return (x * w).mean(SPATIAL_DIMS) / float(w.mean())
    return (x * w).mean(axis=(-2, -1)) / w.mean()


def weighted_mse(forecast, truth, lat=None):
    """Area-weighted mean squared error per time (and per channel, ...)."""
    forecast, truth = _aligned(_as_float64(forecast), _as_float64(truth))
    return spatial_mean((forecast - truth) ** 2, lat)


def weighted_bias(forecast, truth, lat=None):
    """Area-weighted mean error (forecast minus truth) per time: positive means too warm."""
    forecast, truth = _aligned(_as_float64(forecast), _as_float64(truth))
    return spatial_mean(forecast - truth, lat)


def acc_per_time(forecast, truth, climatology, lat=None):
    """Uncentred anomaly correlation per time.

    ACC = sum w f' o' / sqrt(sum w f'^2 * sum w o'^2), anomalies f' = forecast - climatology and
    o' = truth - climatology, with the climatology at the valid time. NaN where an anomaly is
    identically zero (the correlation is undefined there).
    """
    forecast, truth, climatology = _aligned(_as_float64(forecast), _as_float64(truth), _as_float64(climatology))
    f_anom = forecast - climatology
    o_anom = truth - climatology
    covariance = spatial_mean(f_anom * o_anom, lat)
    norm = np.sqrt(spatial_mean(f_anom**2, lat) * spatial_mean(o_anom**2, lat))
    with np.errstate(invalid="ignore", divide="ignore"):
        return covariance / norm


def _reduce_time(values, dim, reducer):
    if isinstance(values, xr.DataArray):
        if dim not in values.dims:
            raise SeqvitError(f"no time dimension {dim!r} to reduce over (dims {values.dims})")
        return reducer(values, dim)
    axis = 0 if isinstance(dim, str) else dim
    return reducer(np.asarray(values, dtype=np.float64), axis)


def time_mean(values, dim="time"):
    """Mean over time (for bias and ACC)."""
    return _reduce_time(values, dim, lambda v, d: v.mean(d) if isinstance(v, xr.DataArray) else v.mean(axis=d))


def rmse(mse_per_time, dim="time"):
    """Headline RMSE: square root of the time-mean of the per-time MSE."""
    return np.sqrt(time_mean(mse_per_time, dim))


def mean_rmse_per_time(mse_per_time, dim="time"):
    """Mean over times of the per-time RMSE (never larger than :func:`rmse`)."""
    return time_mean(np.sqrt(mse_per_time), dim)


def per_time_scores(forecast, truth, climatology, lat=None) -> dict:
    """The per-time series every score reduces: weighted MSE, bias and ACC (one value per time)."""
    return {
        "mse": weighted_mse(forecast, truth, lat),
        "bias": weighted_bias(forecast, truth, lat),
        "acc": acc_per_time(forecast, truth, climatology, lat),
    }


def reduce_scores(series: dict, dim="time") -> dict:
    """Scores over `dim` from per_time_scores: mse, rmse (of the mean MSE), rmse_mean_per_time, bias, acc."""
    mse_t = series["mse"]
    return {
        "mse": time_mean(mse_t, dim),
        "rmse": rmse(mse_t, dim),
        "rmse_mean_per_time": mean_rmse_per_time(mse_t, dim),
        "bias": time_mean(series["bias"], dim),
        "acc": time_mean(series["acc"], dim),
    }


def summarize(forecast, truth, climatology, lat=None, dim="time") -> dict:
    """All scores for one forecast, reduced over `dim`: mse, rmse, rmse_mean_per_time, bias, acc, n_times."""
    n_times = (
        forecast.sizes[dim]
        if isinstance(forecast, xr.DataArray)
        else np.shape(forecast)[0 if isinstance(dim, str) else dim]
    )
    return {**reduce_scores(per_time_scores(forecast, truth, climatology, lat), dim), "n_times": n_times}
