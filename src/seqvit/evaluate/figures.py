"""Evaluation figures: RMSE against lead time, and truth/forecast/error maps for one case.

Figures are drawn on matplotlib Figure objects with the Agg canvas (no pyplot, no display), and
saved atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from seqvit.data.grids import lat_bounds, lon_bounds
from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

_UNITS = {
    "t2m": "K",
    "t": "K",
    "z": "m² s⁻²",
    "u": "m s⁻¹",
    "v": "m s⁻¹",
    "u10": "m s⁻¹",
    "v10": "m s⁻¹",
    "q": "kg kg⁻¹",
    "msl": "Pa",
    "sp": "Pa",
}
_LONG_NAMES = {
    "t2m": "2 m temperature",
    "t": "temperature",
    "z": "geopotential",
    "u": "zonal wind",
    "v": "meridional wind",
}
BASELINE_NAMES = ("climatology", "persistence", "linear")
# Baselines in the sequence-length figure: the lead's colour, darkened or lightened, and a line
# style of their own, so that two baselines with similar scores stay apart.
SEQLEN_BASELINE_LINES = {"persistence": ("--", -0.45), "climatology": (":", 0.5), "linear": ("-.", 0.0)}


def shade(color, amount: float) -> tuple:
    """`color` mixed towards black (amount < 0) or white (amount > 0) by |amount|."""
    rgb = np.array(to_rgb(color))
    target = 1.0 if amount > 0 else 0.0
    return tuple(float(c) for c in rgb + (target - rgb) * abs(amount))


def channel_units(channel: str) -> str:
    """Physical units of a channel name such as t2m or t_850 ('' when unknown)."""
    return _UNITS.get(channel, _UNITS.get(channel.partition("_")[0], ""))


def channel_label(channel: str) -> str:
    var, _, level = channel.partition("_")
    if channel in _LONG_NAMES:
        return f"{channel} ({_LONG_NAMES[channel]})"
    if level.isdigit() and var in _LONG_NAMES:
        return f"{channel} ({_LONG_NAMES[var]}, {level} hPa)"
    return channel


def _save(fig: Figure, path: Path, dpi: int = 150) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise SeqvitError(f"{path}: figure path needs an extension such as .png or .pdf")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")  # tmp has no usable suffix
    return path


def rmse_vs_lead(metrics_df: pd.DataFrame, out_png, metric: str = "rmse") -> tuple[Path, Path]:
    """One panel per variable, one line per model: `metric` against lead time. Writes PNG and PDF."""
    needed = {"model", "variable", "lead_hours", metric}
    if not needed <= set(metrics_df.columns):
        raise SeqvitError(f"metrics table lacks columns {sorted(needed - set(metrics_df.columns))} for the RMSE figure")
    if metrics_df.empty:
        raise SeqvitError("metrics table is empty: nothing to plot; check that predictions were given to evaluate")
    variables = list(dict.fromkeys(metrics_df["variable"]))
    models = list(dict.fromkeys(metrics_df["model"]))
    ncols = min(len(variables), 3)
    nrows = int(np.ceil(len(variables) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colors = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, variable in zip(axes, variables):
        rows = metrics_df[metrics_df["variable"] == variable]
        for model in models:
            line = rows[rows["model"] == model].sort_values("lead_hours")
            if line.empty:
                continue
            baseline = model in BASELINE_NAMES
            ax.plot(
                line["lead_hours"],
                line[metric],
                marker="s" if baseline else "o",
                linestyle="--" if baseline else "-",
                linewidth=1.4 if baseline else 2.2,
                color=colors[model],
                label=model,
            )
        units = channel_units(variable)
        ax.set_title(channel_label(variable))
        ax.set_xlabel("lead time [h]")
        ax.set_ylabel(f"{metric.upper()} [{units}]" if units else metric.upper())
        ax.set_xticks(sorted(rows["lead_hours"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in axes[len(variables) :]:
        ax.set_visible(False)
    # One legend for all panels, below them, so it never hides a line.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), frameon=False)
    out_png = Path(out_png)
    return _save(fig, out_png), _save(fig, out_png.with_suffix(".pdf"))


def maps_png(truth, forecast, out_png, model: str = "forecast", title: str = "") -> Path:
    """Truth, forecast and forecast-minus-truth maps of one (latitude, longitude) field."""
    for name, field in (("truth", truth), ("forecast", forecast)):
        if tuple(field.dims) != ("latitude", "longitude"):
            raise SeqvitError(f"maps: {name} must be a (latitude, longitude) DataArray, got dims {field.dims}")
    lat = truth["latitude"].values
    lon = truth["longitude"].values
    lat_edges, lon_edges = lat_bounds(lat), lon_bounds(lon)
    channel = str(truth["channel"].values) if "channel" in truth.coords else ""
    units = channel_units(channel)
    truth_values = np.asarray(truth.values, dtype=np.float64)
    forecast_values = np.asarray(forecast.values, dtype=np.float64)
    error = forecast_values - truth_values
    low, high = np.nanpercentile(np.concatenate([truth_values.ravel(), forecast_values.ravel()]), [1, 99])
    # A few large local errors should not wash out the rest of the error map.
    error_max = float(np.nanpercentile(np.abs(error), 99)) or float(np.nanmax(np.abs(error))) or 1.0

    fig = Figure(figsize=(15, 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        ("truth", truth_values, "RdYlBu_r", low, high),
        (f"{model} forecast", forecast_values, "RdYlBu_r", low, high),
        ("forecast − truth", error, "RdBu_r", -error_max, error_max),
    ]
    for ax, (label, values, cmap, vmin, vmax) in zip(axes, panels):
        mesh = ax.pcolormesh(lon_edges, lat_edges, values, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
        ax.set_title(label)
        ax.set_xlabel("longitude [°E]")
        ax.set_aspect("equal")
        ax.set_xlim(lon_edges[0], lon_edges[-1])
        ax.set_ylim(-90, 90)
        ax.set_xticks(np.arange(0, 361, 90))
        ax.set_yticks(np.arange(-90, 91, 45))
        bar = fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.85, pad=0.02, extend="both")
        bar.set_label(f"{channel} [{units}]" if units else channel)
    axes[0].set_ylabel("latitude [°N]")
    if title:
        fig.suptitle(title)
    return _save(fig, out_png)


def error_maps_png(truth, forecasts: dict, out_png, title: str = "", ncols: int = 4) -> Path:
    """The truth and each run's forecast-minus-truth map of one case, every error on one colour scale.

    forecasts: {run name: (latitude, longitude) DataArray}, in the order the panels are drawn.
    """
    fields = {"truth": truth, **forecasts}
    for name, field in fields.items():
        if tuple(field.dims) != ("latitude", "longitude"):
            raise SeqvitError(f"maps: {name} must be a (latitude, longitude) DataArray, got dims {field.dims}")
    lat_edges, lon_edges = lat_bounds(truth["latitude"].values), lon_bounds(truth["longitude"].values)
    channel = str(truth["channel"].values) if "channel" in truth.coords else ""
    units = channel_units(channel)
    truth_values = np.asarray(truth.values, dtype=np.float64)
    errors = {name: np.asarray(f.values, dtype=np.float64) - truth_values for name, f in forecasts.items()}
    low, high = np.nanpercentile(truth_values, [1, 99])
    # One scale for every error map, so that the runs compare; a few large local errors do not set it.
    stacked = np.abs(np.stack(list(errors.values()))) if errors else np.zeros(1)
    error_max = float(np.nanpercentile(stacked, 99)) or float(np.nanmax(stacked)) or 1.0

    ncols = max(1, min(ncols, len(fields)))
    nrows = int(np.ceil(len(fields) / ncols))
    fig = Figure(figsize=(4.6 * ncols, 2.9 * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    truth_mesh = error_mesh = None
    for ax, (name, values) in zip(axes, [("truth", truth_values), *errors.items()]):
        is_truth = name == "truth"
        mesh = ax.pcolormesh(
            lon_edges,
            lat_edges,
            values,
            cmap="RdYlBu_r" if is_truth else "RdBu_r",
            vmin=low if is_truth else -error_max,
            vmax=high if is_truth else error_max,
            shading="flat",
        )
        if is_truth:
            truth_mesh = mesh
        else:
            error_mesh = mesh
        ax.set_title("truth" if is_truth else f"{name} − truth", fontsize=10)
        ax.set_aspect("equal")
        ax.set_xlim(lon_edges[0], lon_edges[-1])
        ax.set_ylim(-90, 90)
        ax.set_xticks(np.arange(0, 361, 90))
        ax.set_yticks(np.arange(-90, 91, 45))
    for ax in axes[len(fields) :]:
        ax.set_visible(False)
    label = f"{channel} [{units}]" if units else channel
    visible = [ax for ax in axes[: len(fields)]]
    if truth_mesh is not None:
        fig.colorbar(truth_mesh, ax=visible, orientation="vertical", shrink=0.8, extend="both", label=f"truth, {label}")
    if error_mesh is not None:
        fig.colorbar(error_mesh, ax=visible, orientation="vertical", shrink=0.8, extend="both", label=f"error, {label}")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def rmse_vs_seqlen(long: pd.DataFrame, change: pd.DataFrame, baselines: pd.DataFrame, out_png) -> tuple[Path, Path]:
    """Headline RMSE against sequence length (log2 axis), one panel per variable, a line per lead.

    Baselines (which have no sequence length) are drawn as thin horizontal lines in shades of the
    lead's colour, each with its own line style (SEQLEN_BASELINE_LINES); the titles give the relative
    change from the shortest to the longest sequence.
    """
    out_png = Path(out_png)
    if long.empty:
        fig = Figure(figsize=(5, 3), layout="constrained")
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no ViT runs to compare", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, out_png), _save(fig, out_png.with_suffix(".pdf"))
    variables = list(dict.fromkeys(long["variable"]))
    leads = sorted(long["lead_hours"].unique())
    ncols = min(len(variables), 3)
    nrows = int(np.ceil(len(variables) / ncols))
    fig = Figure(figsize=(4.8 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lengths = sorted(long["seq_len"].unique())
    patch_of = dict(zip(long["seq_len"], long["patch_size"]))
    for ax, variable in zip(axes, variables):
        notes = []
        for i, lead in enumerate(leads):
            line = long[(long["variable"] == variable) & (long["lead_hours"] == lead)].sort_values("seq_len")
            ch = change[(change["variable"] == variable) & (change["lead_hours"] == lead)]
            pct = float(ch["change_pct"].iloc[0]) if len(ch) else float("nan")
            if not np.isnan(pct):
                if "change_low_pct" in ch.columns:  # the bootstrap interval of the change
                    low, high = float(ch["change_low_pct"].iloc[0]), float(ch["change_high_pct"].iloc[0])
                    notes.append(f"{lead} h: {pct:+.1f}% [{low:+.1f}, {high:+.1f}]")
                else:
                    notes.append(f"{lead} h: {pct:+.1f}%")
            ax.plot(line["seq_len"], line["rmse"], marker="o", linewidth=2.2, color=f"C{i}", label=f"ViT, {lead} h")
            if "rmse_low" in line.columns:
                ax.fill_between(line["seq_len"], line["rmse_low"], line["rmse_high"], color=f"C{i}", alpha=0.2)
            for model, (style, amount) in SEQLEN_BASELINE_LINES.items():
                b = baselines[
                    (baselines["model"] == model)
                    & (baselines["variable"] == variable)
                    & (baselines["lead_hours"] == lead)
                ]
                if len(b):
                    ax.axhline(
                        float(b["rmse"].iloc[0]),
                        color=shade(f"C{i}", amount),
                        linestyle=style,
                        linewidth=1.3,
                        label=f"{model}, {lead} h",
                    )
        units = channel_units(variable)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths)
        ax.set_xticklabels([f"{n}\n(p={patch_of[n]})" for n in lengths])
        ax.minorticks_off()
        ax.set_title(channel_label(variable))
        ax.set_xlabel("sequence length [tokens]")
        ax.set_ylabel(f"RMSE [{units}]" if units else "RMSE")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if notes:  # in the title, where it hides no line
            ax.set_title(f"{channel_label(variable)}\nRMSE change shortest → longest: {', '.join(notes)}", fontsize=10)
    for ax in axes[len(variables) :]:
        ax.set_visible(False)
    # One legend for all panels, below them, so it never hides a line.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False, fontsize=8)
    return _save(fig, out_png), _save(fig, out_png.with_suffix(".pdf"))


def loss_curves(runs: dict, out_png) -> tuple[Path, Path]:
    """Training and validation loss against step for each run ({label: metrics.csv DataFrame}).

    Training loss is drawn thin, validation loss (where logged) thick with markers; log y axis.
    """
    out_png = Path(out_png)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, df) in enumerate(runs.items()):
        if not {"step", "loss"} <= set(df.columns):
            raise SeqvitError(f"training log of {label} lacks columns step and loss (has {list(df.columns)})")
        ax.plot(df["step"], df["loss"], color=f"C{i}", linewidth=0.9, alpha=0.7, label=f"{label} train")
        if "val_loss" in df.columns:
            val = df.dropna(subset=["val_loss"])
            if len(val):
                ax.plot(
                    val["step"], val["val_loss"], color=f"C{i}", linewidth=2.2, marker="o", label=f"{label} validation"
                )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (latitude-weighted MSE, normalized)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, out_png), _save(fig, out_png.with_suffix(".pdf"))
