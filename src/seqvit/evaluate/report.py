"""The evaluate stage: score every prediction file against the regridded truth on the same cases.

Writes, under out_dir:
    metrics.csv       run, model, variable, lead_hours, rmse, acc, bias, mse, rmse_mean_per_time, n_times,
                      and the bootstrap interval of rmse and acc (rmse_low/high, acc_low/high; uncertainty.py)
    rmse_table.csv    one row per model, one column per variable and lead (headline RMSE)
    per_time.nc       per-time mse, bias, acc (model, lead_hours, time, channel) for later reductions
    rmse_vs_lead.png  (+ .pdf) RMSE against lead, a panel per variable
    maps.png          truth and the forecast error of every ViT run for one test case, on one colour scale
                      (the case: seqvit.evaluate.comparisons.MAP_CASE_RULE; maps_case.csv lists the panels)
    seeds_summary.csv, windows_vs_full.csv
                      repeats over seeds and window against full attention (seqvit.evaluate.comparisons)
    rmse_vs_seqlen.csv, seqlen_change.csv, rmse_vs_seqlen.png (+ .pdf)
                      the sequence-length experiment (seqvit.evaluate.sequence_length)
    loss_curves.png (+ .pdf)  training and validation loss of every ViT run (when train_logs given)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from seqvit import lineage
from seqvit.data.fields import open_channels
from seqvit.data.stats import load_climatology
from seqvit.errors import SeqvitError
from seqvit.evaluate import comparisons, figures, metrics, uncertainty
from seqvit.evaluate.baselines import climatology_for
from seqvit.evaluate.sequence_length import sequence_length, write_sequence_length
from seqvit.io import atomic_path
from seqvit.layout import RUN_NAME

METRIC_COLUMNS = [
    "run",
    "model",
    "variable",
    "lead_hours",
    "rmse",
    "acc",
    "bias",
    "mse",
    "rmse_mean_per_time",
    "n_times",
    "rmse_low",
    "rmse_high",
    "acc_low",
    "acc_high",
]
PREDICTION_DIMS = ("lead_hours", "time", "channel", "latitude", "longitude")


def _open_prediction(name: str, path: Path) -> xr.DataArray:
    """The forecast variable of predictions/{name}.nc, lazily (data stay on disk)."""
    if not path.exists():
        raise SeqvitError(
            f"{path}: prediction file of {name!r} not found; run the predict stage or baseline that writes it"
        )
    ds = xr.open_dataset(path)
    if "forecast" not in ds:
        raise SeqvitError(
            f"{path}: no variable 'forecast' (has {sorted(map(str, ds.data_vars))}); rewrite it with the predict stage"
        )
    forecast = ds["forecast"]
    if tuple(forecast.dims) != PREDICTION_DIMS:
        raise SeqvitError(
            f"{path}: forecast has dims {forecast.dims}; expected {PREDICTION_DIMS}; rewrite it with the current code"
        )
    return forecast


def _check_same_cases(reference_path: Path, reference: xr.DataArray, path: Path, forecast: xr.DataArray) -> None:
    """All models must be scored on the same init times, leads, channels and grid."""
    for coord in PREDICTION_DIMS:
        ref_values, values = reference[coord].values, forecast[coord].values
        same = ref_values.shape == values.shape and (
            np.allclose(ref_values, values)
            if np.issubdtype(values.dtype, np.floating)
            else bool(np.all(ref_values == values))
        )
        if not same:

            def show(v):
                v = [str(x) for x in v]
                return v if len(v) <= 6 else [*v[:3], "...", *v[-2:], f"({len(v)} values)"]

            raise SeqvitError(
                f"{path}: coordinate {coord!r} differs from {reference_path} ({show(values)} vs {show(ref_values)}); "
                "every prediction must cover the same init times, leads, channels and grid -- "
                "rerun the stage that wrote the stale file with the current config"
            )


def _check_config(cfg: dict, path: Path, forecast: xr.DataArray) -> None:
    section = cfg.get("evaluate") or {}
    expected_channels = [str(v) for v in section.get("variables", [])]
    expected_leads = [int(h) for h in section.get("lead_hours", [])]
    channels = [str(c) for c in forecast["channel"].values]
    leads = [int(h) for h in forecast["lead_hours"].values]
    if expected_channels and channels != expected_channels:
        raise SeqvitError(
            f"{path}: channels {channels} but config key evaluate.variables is {expected_channels}; rerun the stage that wrote it"
        )
    if expected_leads and leads != expected_leads:
        raise SeqvitError(
            f"{path}: lead hours {leads} but config key evaluate.lead_hours is {expected_leads}; rerun the stage that wrote it"
        )


def _truth_and_climatology(
    truth_all: xr.DataArray, clim: xr.DataArray, clim_path, channels, inits, lead
) -> tuple[xr.DataArray, xr.DataArray]:
    """Truth and climatology at the valid times of `lead`, labelled by init time."""
    valid = pd.DatetimeIndex(inits) + pd.Timedelta(hours=int(lead))
    have = pd.DatetimeIndex(truth_all["time"].values)
    missing = valid[~valid.isin(have)]
    if len(missing):
        raise SeqvitError(
            f"lead {lead} h: {len(missing)} valid times (first {missing[0]}) are not in the regridded files; "
            "pass the regridded files of all test years"
        )
    truth = truth_all.sel(time=valid.values).assign_coords(time=inits)
    clim_at_valid = climatology_for(clim, channels, valid, clim_path).assign_coords(time=inits)
    return truth, clim_at_valid


def rmse_table(metrics_df: pd.DataFrame) -> pd.DataFrame:
    """Wide headline-RMSE table: index model (first-seen order), columns '{variable}_{lead}h'."""
    models = list(dict.fromkeys(metrics_df["model"]))
    variables = list(dict.fromkeys(metrics_df["variable"]))
    leads = sorted(metrics_df["lead_hours"].unique())
    table = metrics_df.pivot(index="model", columns=["variable", "lead_hours"], values="rmse")
    table = table.reindex(index=models, columns=pd.MultiIndex.from_product([variables, leads]))
    table.columns = [f"{v}_{int(h)}h" for v, h in table.columns]
    table.index.name = "model"
    return table


def _write_csv(df: pd.DataFrame, path: Path, index: bool) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index)


def evaluate(
    cfg: dict, prediction_paths: dict, regridded_paths, clim_path, out_dir, train_logs: dict | None = None
) -> pd.DataFrame:
    """Score every prediction; write metrics.csv, rmse_table.csv, per_time.nc and the figures.

    train_logs: {label: path of a run's metrics.csv} for the loss-curve figure (None: no figure).
    """
    if not prediction_paths:
        raise SeqvitError("evaluate: no prediction files given; list the model runs and evaluate.baselines")
    if "experiment" not in cfg:
        raise SeqvitError("config key experiment is missing; name the run, e.g. experiment: demo")
    out_dir = Path(out_dir)
    paths = {str(name): Path(p) for name, p in prediction_paths.items()}
    names = list(paths)
    for path in paths.values():
        lineage.check_netcdf(path, lineage.forecast(cfg), "forecast file")
    for path in regridded_paths:
        lineage.check_netcdf(path, lineage.regridded(cfg), "regridded file")
    lineage.check_netcdf(clim_path, lineage.climatology(cfg), "climatology file")

    forecasts = {name: _open_prediction(name, path) for name, path in paths.items()}
    try:
        reference_name = names[0]
        reference = forecasts[reference_name]
        for name in names:
            _check_same_cases(paths[reference_name], reference, paths[name], forecasts[name])
            _check_config(cfg, paths[name], forecasts[name])
        channels = [str(c) for c in reference["channel"].values]
        leads = [int(h) for h in reference["lead_hours"].values]
        inits = reference["time"].values

        regridded_paths = [Path(p) for p in regridded_paths]
        missing = [str(p) for p in regridded_paths if not p.exists()]
        if not regridded_paths or missing:
            raise SeqvitError(
                f"evaluate: regridded files missing: {missing or 'none given'}; run the regrid stage first"
            )
        truth_all = open_channels(regridded_paths, channels)
        for coord in ("latitude", "longitude"):
            if truth_all.sizes[coord] != reference.sizes[coord] or not np.allclose(
                truth_all[coord].values, reference[coord].values
            ):
                raise SeqvitError(
                    f"{paths[reference_name]}: {coord} grid differs from the regridded files; "
                    "predictions must be on the target grid (config key grid)"
                )
        clim = load_climatology(clim_path)
        for coord in ("latitude", "longitude"):
            if clim.sizes[coord] != reference.sizes[coord] or not np.allclose(
                clim[coord].values, reference[coord].values
            ):
                raise SeqvitError(
                    f"{clim_path}: {coord} grid differs from the predictions; rerun `seqvit stats` on the target grid"
                )
        # Identical labels from here on (files may differ in the last bits), so scores align exactly.
        on_grid = {"latitude": reference["latitude"].values, "longitude": reference["longitude"].values}
        truth_all = truth_all.assign_coords(on_grid)
        clim = clim.assign_coords(on_grid)
        per_lead = {lead: _truth_and_climatology(truth_all, clim, clim_path, channels, inits, lead) for lead in leads}

        rows, per_time = [], {}
        for name in names:
            for lead in leads:
                truth, clim_at_valid = per_lead[lead]
                forecast = forecasts[name].sel(lead_hours=lead, drop=True).load().assign_coords(on_grid)
                series = metrics.per_time_scores(forecast, truth, clim_at_valid)
                per_time[name, lead] = xr.Dataset(series)
                scores = metrics.reduce_scores(series)
                mse_t = series["mse"]
                for channel in channels:
                    rows.append(
                        {
                            "run": cfg["experiment"],
                            "model": name,
                            "variable": channel,
                            "lead_hours": lead,
                            **{k: float(v.sel(channel=channel)) for k, v in scores.items()},
                            "n_times": int(mse_t.sizes["time"]),
                        }
                    )
        draws = uncertainty.draws_for(per_time, cfg["evaluate"]["bootstrap"])
        for row in rows:
            bounds = uncertainty.score_intervals(per_time[row["model"], row["lead_hours"]], draws)
            k = channels.index(row["variable"])
            row.update({key: float(values[k]) for key, values in bounds.items()})
    finally:
        for forecast in forecasts.values():
            forecast.close()

    table = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    _write_csv(table, out_dir / "metrics.csv", index=False)
    wide = rmse_table(table)
    _write_csv(wide, out_dir / "rmse_table.csv", index=True)
    _write_per_time(per_time, names, leads, out_dir / "per_time.nc", cfg["experiment"])

    figures.rmse_vs_lead(table, out_dir / "rmse_vs_lead.png")
    _maps(cfg, paths, names, channels, leads, inits, per_lead, per_time, out_dir)
    nlat, nlon = int(reference.sizes["latitude"]), int(reference.sizes["longitude"])
    _, change = write_sequence_length(table, nlat, nlon, out_dir, per_time, draws)
    seeds = comparisons.seeds_summary(table, per_time, draws)
    _write_csv(seeds, out_dir / "seeds_summary.csv", index=False)
    windows = comparisons.windows_vs_full(table, lambda p: sequence_length(nlat, nlon, p), per_time, draws)
    _write_csv(windows, out_dir / "windows_vs_full.csv", index=False)
    if train_logs is not None:
        logs = {}
        for label, path in train_logs.items():
            if not Path(path).exists():
                raise SeqvitError(f"{path}: training log of {label} not found; run the train stage first")
            logs[label] = pd.read_csv(path)
        figures.loss_curves(logs, out_dir / "loss_curves.png")

    print(
        f"Headline RMSE (sqrt of time-mean latitude-weighted MSE), run {cfg['experiment']}, {len(inits)} test init times "
        f"({100 * draws.confidence:.0f}% intervals in metrics.csv: block bootstrap, blocks of {draws.block} init times):"
    )
    print(wide.to_string(float_format=lambda x: f"{x:.3f}"))
    if not change.empty:
        print("Sequence length (ViT headline RMSE; change_pct = shortest -> longest sequence):")
        print(change.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if not windows.empty:
        print("Window against full attention (change_pct = full -> window, seed means):")
        print(windows.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return table


def _write_per_time(per_time: dict, names, leads, path: Path, run: str) -> None:
    by_model = [
        xr.concat([per_time[name, lead] for lead in leads], dim=pd.Index(leads, name="lead_hours")) for name in names
    ]
    ds = xr.concat(by_model, dim=pd.Index(names, name="model")).astype(np.float32)
    ds.attrs = {"run": run, "description": "per-time latitude-weighted scores; time is the init time"}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def _maps(cfg, paths, names, channels, leads, inits, per_lead, per_time, out_dir: Path) -> None:
    """maps.png: the error of every ViT run on one case, chosen by comparisons.MAP_CASE_RULE, and
    maps_case.csv: one row per panel (run, case, its RMSE on that case)."""
    runs = [n for n in names if RUN_NAME.match(n)] or names[:1]  # no ViT: the first model given
    channel = "t2m" if "t2m" in channels else channels[0]
    lead = max(leads)
    reference = comparisons.map_reference(names) or runs[:1]
    mse = np.stack([per_time[name, lead]["mse"].sel(channel=channel).transpose("time").values for name in reference])
    init = inits[comparisons.median_case(mse)]
    truth = per_lead[lead][0].sel(time=init, channel=channel)
    on_grid = {"latitude": truth["latitude"].values, "longitude": truth["longitude"].values}
    forecasts, rows = {}, []
    init_text = pd.Timestamp(init).strftime("%Y-%m-%d %H:%M")
    for name in runs:
        with xr.open_dataset(paths[name]) as ds:
            forecast = ds["forecast"].sel(lead_hours=lead, time=init, channel=channel).load()
        forecasts[name] = forecast.assign_coords(on_grid).drop_vars(["lead_hours", "time"])
        case_rmse = float(np.sqrt(metrics.weighted_mse(forecasts[name], truth.drop_vars("time"))))
        rows.append({"run": name, "init": init_text, "channel": channel, "lead_hours": lead, "rmse": case_rmse})
    _write_csv(pd.DataFrame(rows).assign(rule=comparisons.MAP_CASE_RULE), out_dir / "maps_case.csv", index=False)
    title = (
        f"{cfg['experiment']}: {channel} forecast error, init {init_text} UTC, lead {lead} h "
        f"({' and '.join(reference)}: median-RMSE test case)"
    )
    figures.error_maps_png(truth.drop_vars("time"), forecasts, out_dir / "maps.png", title=title)
