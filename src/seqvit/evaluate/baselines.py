"""Reference forecasts every model has to beat: climatology, persistence and a linear regression.

Each writes predictions/{name}.nc (contract format 7): forecast(lead_hours, time, channel,
latitude, longitude) in physical units, for the init times of the test split at which every
evaluated lead is verifiable, so all models are scored on exactly the same cases.

The linear baseline ("linear") is a ridge regression, one per lead time, fitted on the training
years only. Inputs: the normalized full state at the init time (all channels of the config),
reduced to its leading principal components (fitted on the training states), plus time-of-day and
day-of-year harmonics and their products (the daily cycle's amplitude changes with the season).
Target: the normalized tendency (valid minus init) of the evaluated channels at every grid point;
predicting the tendency, not the state, is what makes a short-lead regression useful. The number of
components and the penalty are chosen on the validation years from a small grid.
"""

from __future__ import annotations

import time as wallclock
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from seqvit import lineage
from seqvit.data.fields import channel_names, init_times, open_channels, split_times
from seqvit.data.grids import latitude_weights
from seqvit.data.stats import channel_stats, climatology_at, load_climatology
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

if TYPE_CHECKING:  # imported where used: scikit-learn is slow to import
    from sklearn.linear_model import Ridge

BASELINES = ("climatology", "persistence", "linear")

# Defaults of the optional config section evaluate.linear. On the demo data the validation
# optimum is interior to this grid (256 components, relative alpha about 1).
DEFAULT_PCA_COMPONENTS = (64, 256)
# Penalty relative to n_samples * (mean variance of the retained components): 1e-4 is nearly
# least squares (exact relations are recovered), 1 halves the weight of an average component.
DEFAULT_RELATIVE_ALPHAS = (1e-4, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


# ---------------------------------------------------------------------------------------------
# Inputs shared with evaluation


def evaluation_targets(cfg: dict) -> tuple[list[str], list[int]]:
    """(variables, lead hours) scored by evaluation, from cfg['evaluate'], checked against the data channels."""
    section = cfg.get("evaluate") or {}
    variables = list(section.get("variables") or [])
    leads = [int(h) for h in (section.get("lead_hours") or [])]
    if not variables:
        raise SeqvitError("config key evaluate.variables is empty; list the channels to score, e.g. [t2m, t_850]")
    if not leads or any(h <= 0 for h in leads):
        raise SeqvitError(f"config key evaluate.lead_hours must list positive hours, e.g. [6, 24] (got {leads})")
    known = channel_names(cfg)
    unknown = [v for v in variables if v not in known]
    if unknown:
        raise SeqvitError(
            f"config key evaluate.variables: {unknown} are not channels of the data ({known}); "
            "name single-level variables as is and pressure-level ones as var_level, e.g. t_850"
        )
    return variables, leads


def evaluation_init_times(times, cfg: dict, lead_hours) -> np.ndarray:
    """Init times of the test split at which every lead in `lead_hours` lands on a test time."""
    times = pd.DatetimeIndex(times)
    test_times = times[split_times(times, cfg, "test")]
    inits = init_times(test_times, lead_hours)
    if len(inits) == 0:
        raise SeqvitError(
            f"no test init times: the test years {cfg['splits'].get('test')} (config key splits.test) "
            f"hold {len(test_times)} times, none with all leads {list(lead_hours)} h after it; "
            "check that the regridded files cover the test years"
        )
    return inits


def climatology_for(clim: xr.DataArray, channels, times, source="climatology") -> xr.DataArray:
    """Climatology (from seqvit.data.stats.load_climatology) of `channels` at `times`.

    Returns (time, channel, latitude, longitude) float32.
    """
    missing = [c for c in channels if c not in [str(v) for v in clim["channel"].values]]
    if missing:
        raise SeqvitError(f"{source}: channels {missing} missing; rerun `seqvit stats` with the current config")
    out = climatology_at(clim.sel(channel=list(channels)), pd.DatetimeIndex(times).values)
    return out.transpose("time", "channel", "latitude", "longitude").astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The three baselines, as functions of in-memory fields


def _stack_leads(per_lead: list[xr.DataArray], lead_hours, inits) -> xr.DataArray:
    # Each piece is labelled by init time, whatever time its values were taken at.
    per_lead = [piece.assign_coords(time=inits) for piece in per_lead]
    out = xr.concat(per_lead, dim=pd.Index([int(h) for h in lead_hours], name="lead_hours"), join="exact")
    return out.transpose("lead_hours", "time", "channel", "latitude", "longitude").astype(np.float32)


def persistence_forecast(fields: xr.DataArray, inits, lead_hours) -> xr.DataArray:
    """The state at the init time, for every lead."""
    at_init = fields.sel(time=inits)
    return _stack_leads([at_init] * len(lead_hours), lead_hours, inits)


def climatology_forecast(clim_path, channels, inits, lead_hours) -> xr.DataArray:
    """The climatology at the valid time (init + lead)."""
    inits = pd.DatetimeIndex(inits)
    clim = load_climatology(clim_path)
    per_lead = [climatology_for(clim, channels, inits + pd.Timedelta(hours=h), clim_path) for h in lead_hours]
    return _stack_leads(per_lead, lead_hours, inits.values)


def time_features(times) -> np.ndarray:
    """(n, 8): daily and annual harmonics and their products, for the times given."""
    times = pd.DatetimeIndex(times)
    day_angle = 2 * np.pi * (times.hour.values + times.minute.values / 60) / 24
    year_angle = 2 * np.pi * (times.day_of_year.values - 1 + times.hour.values / 24) / 365.25
    daily = [np.sin(day_angle), np.cos(day_angle)]
    annual = [np.sin(year_angle), np.cos(year_angle)]
    products = [d * a for d in daily for a in annual]
    return np.stack(daily + annual + products, axis=1)


class LinearTendency:
    """Per-lead ridge regressions of the normalized tendency on principal components + time features.

    fit() uses only the times in `train_mask` (state at init and target at valid time both in
    the training years) and picks components and penalty by the latitude-weighted MSE on the
    times in `val_mask`.
    """

    def __init__(self, pca_components=DEFAULT_PCA_COMPONENTS, relative_alphas=DEFAULT_RELATIVE_ALPHAS, seed=0):
        self.pca_components = sorted({int(k) for k in np.atleast_1d(pca_components)})
        self.relative_alphas = [float(a) for a in np.atleast_1d(relative_alphas)]
        if not self.pca_components or min(self.pca_components) < 1:
            raise SeqvitError("config key evaluate.linear.pca_components must list positive integers, e.g. [64, 256]")
        if not self.relative_alphas or min(self.relative_alphas) <= 0:
            raise SeqvitError(
                "config key evaluate.linear.relative_alphas must list positive numbers, e.g. [0.001, 0.1, 10]"
            )
        self.seed = seed
        self.models: dict[int, tuple[int, Ridge]] = {}  # lead -> (PCA components, fitted model)
        self.choices: dict[int, dict] = {}

    def fit(self, state, times, target_index, lat, lead_hours, train_mask, val_mask):
        """state: (time, channel, lat, lon) normalized float32 numpy; target_index: channels to predict."""
        from sklearn.decomposition import PCA

        times = pd.DatetimeIndex(times)
        n_times = len(times)
        flat = state.reshape(n_times, -1)
        train_positions = np.flatnonzero(train_mask)
        n_components = min(max(self.pca_components), len(train_positions) - 1, flat.shape[1])
        if n_components < 1:
            raise SeqvitError(
                f"the training split (config key splits.train) holds {len(train_positions)} times; the linear baseline needs at least 2"
            )
        self.pca = PCA(n_components=n_components, svd_solver="randomized", iterated_power=4, random_state=self.seed)
        self.pca.fit(flat[train_positions])
        self.scores = self.pca.transform(flat).astype(np.float64)
        # Unscaled component scores let the penalty shrink the weak directions most (ridge on the
        # state restricted to the leading subspace); the time features get the leading component's
        # scale so that the penalty does not suppress the daily cycle.
        self.time_scale = float(np.sqrt(self.pca.explained_variance_[0]))
        self.times = times
        self.state = state
        self.target_index = list(target_index)
        self.weights = latitude_weights(lat)[:, None]
        for lead in lead_hours:
            self._fit_lead(int(lead), train_mask, val_mask)
        return self

    def _features(self, positions, n_components):
        return np.concatenate(
            [self.scores[positions, :n_components], self.time_scale * time_features(self.times[positions])], axis=1
        )

    def _pairs(self, mask, lead):
        """Positions of init times in `mask` whose valid time is also in `mask`, and of those valid times."""
        masked_times = self.times[mask]
        inits = pd.DatetimeIndex(init_times(masked_times, [lead]))
        return self.times.get_indexer(inits), self.times.get_indexer(inits + pd.Timedelta(hours=lead))

    def _tendency(self, init_pos, valid_pos):
        x = self.state[init_pos][:, self.target_index]
        y = self.state[valid_pos][:, self.target_index]
        return (y - x).reshape(len(init_pos), -1).astype(np.float64)

    def _weighted_mse(self, predicted, actual):
        err = (predicted - actual).reshape(len(actual), len(self.target_index), *self.weights.shape[:1], -1)
        return float(np.mean(err**2 * self.weights) / self.weights.mean())

    def _fit_lead(self, lead, train_mask, val_mask):
        from sklearn.linear_model import Ridge

        train_init, train_valid = self._pairs(train_mask, lead)
        val_init, val_valid = self._pairs(val_mask, lead)
        if len(train_init) < 2:
            raise SeqvitError(
                f"lead {lead} h: fewer than 2 training pairs in the years of splits.train; add training years"
            )
        y_train = self._tendency(train_init, train_valid)
        y_val = self._tendency(val_init, val_valid) if len(val_init) else None
        candidates = [k for k in self.pca_components if k < self.scores.shape[1]] + [self.scores.shape[1]]
        best = None
        for k in candidates:
            x_train = self._features(train_init, k)
            base = len(train_init) * float(np.mean(self.pca.explained_variance_[:k]))
            for rel in self.relative_alphas:
                model = Ridge(alpha=rel * base).fit(x_train, y_train)
                if y_val is None:  # no validation years: keep the mildest penalty at the largest k
                    score = rel if k == candidates[-1] else np.inf
                else:
                    score = self._weighted_mse(model.predict(self._features(val_init, k)), y_val)
                if best is None or score < best[0]:
                    best = (score, k, rel, model)
        score, k, rel, model = best
        self.models[lead] = (k, model)
        self.choices[lead] = {"components": k, "relative_alpha": rel, "val_mse": score if y_val is not None else None}

    def predict_tendency(self, init_positions, lead) -> np.ndarray:
        """(n, n_targets, lat, lon) normalized tendency for the init times at `init_positions`."""
        k, model = self.models[int(lead)]
        pred = model.predict(self._features(init_positions, k))
        return pred.reshape(len(init_positions), len(self.target_index), *self.state.shape[2:])


def linear_forecast(
    fields: xr.DataArray, cfg: dict, mean, std, variables, inits, lead_hours, log=print
) -> xr.DataArray:
    """Fit LinearTendency on the training years of `fields` and forecast from `inits`."""
    channels = [str(c) for c in fields["channel"].values]
    times = pd.DatetimeIndex(fields["time"].values)
    mean32 = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    std32 = np.asarray(std, dtype=np.float32)[None, :, None, None]
    state = (fields.values - mean32) / std32
    section = (cfg.get("evaluate") or {}).get("linear") or {}
    model = LinearTendency(
        pca_components=section.get("pca_components", DEFAULT_PCA_COMPONENTS),
        relative_alphas=section.get("relative_alphas", DEFAULT_RELATIVE_ALPHAS),
        seed=int(section.get("seed", 0)),
    )
    target_index = [channels.index(v) for v in variables]
    model.fit(
        state,
        times,
        target_index,
        fields["latitude"].values,
        lead_hours,
        split_times(times, cfg, "train"),
        split_times(times, cfg, "val"),
    )
    init_positions = times.get_indexer(pd.DatetimeIndex(inits))
    at_init = fields.isel(time=init_positions).sel(channel=list(variables))
    target_std = np.asarray(std, dtype=np.float32)[target_index][None, :, None, None]
    per_lead = []
    for lead in lead_hours:
        choice = model.choices[int(lead)]
        log(
            f"linear baseline, lead {lead} h: {choice['components']} components, relative alpha {choice['relative_alpha']:g}, val MSE (normalized) {choice['val_mse']}"
        )
        tendency = model.predict_tendency(init_positions, lead).astype(np.float32)
        per_lead.append(at_init + tendency * target_std)
    out = _stack_leads(per_lead, lead_hours, np.asarray(inits))
    out.attrs["linear_choices"] = str({int(k): v for k, v in model.choices.items()})
    return out


# ---------------------------------------------------------------------------------------------
# Stage entry point


def write_predictions(forecast: xr.DataArray, out_nc, model_name: str, attrs: dict | None = None) -> Path:
    """Write a forecast (lead_hours, time, channel, latitude, longitude) as format 7, atomically."""
    expected = ("lead_hours", "time", "channel", "latitude", "longitude")
    if tuple(forecast.dims) != expected:
        raise SeqvitError(f"forecast for {out_nc} has dims {forecast.dims}; expected {expected}")
    ds = forecast.astype(np.float32).rename("forecast").to_dataset()
    ds = ds.assign_coords(
        lead_hours=ds["lead_hours"].values.astype(np.int64),
        channel=[str(c) for c in ds["channel"].values],
    )
    ds["forecast"].attrs = {"long_name": f"{model_name} forecast", "units": "physical units of each channel"}
    ds.attrs = {"model": model_name, **{k: str(v) for k, v in (attrs or {}).items()}}
    encoding = {"forecast": {"zlib": True, "complevel": 1, "chunksizes": (1, 1, *forecast.shape[2:])}}
    out_nc = Path(out_nc)
    with atomic_path(out_nc) as tmp:
        ds.to_netcdf(tmp, format="NETCDF4", engine="netcdf4", encoding=encoding)
    return out_nc


def run_baseline(cfg: dict, name: str, regridded_paths, stats_path, clim_path, out_nc) -> Path:
    """Compute baseline `name` (climatology | persistence | linear) and write predictions/{name}.nc."""
    if name not in BASELINES:
        raise SeqvitError(f"unknown baseline {name!r} (config key evaluate.baselines); use one of {list(BASELINES)}")
    started = wallclock.perf_counter()
    variables, leads = evaluation_targets(cfg)
    paths = [Path(p) for p in regridded_paths]
    missing = [str(p) for p in paths if not p.exists()]
    if not paths or missing:
        raise SeqvitError(
            f"baseline {name}: regridded files missing: {missing or 'none given'}; run the regrid stage first"
        )
    for path in paths:
        lineage.check_netcdf(path, lineage.regridded(cfg), "regridded file")
    if name == "linear":
        lineage.check_netcdf(stats_path, lineage.stats(cfg), "statistics file")
    if name == "climatology":
        lineage.check_netcdf(clim_path, lineage.climatology(cfg), "climatology file")
    channels = channel_names(cfg) if name == "linear" else variables
    fields = open_channels(paths, channels)
    inits = evaluation_init_times(fields["time"].values, cfg, leads)
    attrs = {
        "experiment": cfg.get("experiment", ""),
        "init_times": "test split, every lead verifiable",
        lineage.ATTR: lineage.dumps(lineage.forecast(cfg)),
    }
    if name == "persistence":
        forecast = persistence_forecast(fields, inits, leads)
    elif name == "climatology":
        forecast = climatology_forecast(clim_path, variables, inits, leads)
    else:
        mean, std = channel_stats(stats_path, channels)
        forecast = linear_forecast(fields, cfg, mean, std, variables, inits, leads)
        attrs["linear_choices"] = forecast.attrs.pop("linear_choices")
        attrs["linear_formulation"] = (
            "ridge per lead on PCA of the normalized full state + daily/annual harmonics, "
            "target normalized tendency, fitted on splits.train, penalty chosen on splits.val"
        )
    out = write_predictions(forecast, out_nc, name, attrs)
    print(
        f"baseline {name}: {len(inits)} init times x leads {leads} -> {out} ({wallclock.perf_counter() - started:.1f} s)"
    )
    return out
