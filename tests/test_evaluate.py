"""The evaluate stage end to end on a tiny grid: tables, figures, and refusal of mismatched inputs."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import stamp_lineage
from seqvit import lineage
from seqvit.errors import SeqvitError
from seqvit.evaluate import baselines, report

LAT = np.array([-67.5, -22.5, 22.5, 67.5])
LON = np.arange(8) * 45.0
HOURS = [0, 6, 12, 18]
CHANNELS = ["t2m", "t_850"]
CFG = {
    "experiment": "unit",
    "data": {"years": [2003], "hours": HOURS, "single_level": ["t2m"], "pressure_level": ["t"], "levels": [850]},
    "splits": {"train": [2001], "val": [2002], "test": [2003]},
    "evaluate": {
        "variables": CHANNELS,
        "lead_hours": [6, 24],
        "bootstrap": {"resamples": 200, "confidence": 0.9, "seed": 0},
    },
}
FORECAST_ATTRS = {lineage.ATTR: lineage.dumps(lineage.forecast(CFG))}


@pytest.fixture
def setup(tmp_path):
    """One test year of smooth random fields, a flat climatology, and two baselines already written."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2003-01-01", "2003-03-31 18:00", freq="6h")
    shape = (len(times), len(LAT), len(LON))
    t2m = 280 + np.cumsum(rng.normal(size=shape), axis=0) * 0.3
    t850 = 270 + np.cumsum(rng.normal(size=shape), axis=0) * 0.3
    coords = {"time": times, "latitude": LAT, "longitude": LON}
    single = xr.Dataset({"t2m": (("time", "latitude", "longitude"), t2m.astype(np.float32))}, coords=coords)
    pressure = xr.Dataset(
        {"t": (("time", "level", "latitude", "longitude"), t850[:, None].astype(np.float32))},
        coords={**coords, "level": [850]},
    )
    paths = []
    for group, ds in (("single-levels", single), ("pressure-levels", pressure)):
        path = tmp_path / "regridded" / group / "2003.nc"
        path.parent.mkdir(parents=True)
        ds.to_netcdf(path)
        paths.append(path)
    clim_values = np.broadcast_to(np.array([280.0, 270.0])[:, None, None, None, None], (2, 366, 4, len(LAT), len(LON)))
    clim = tmp_path / "stats" / "climatology.nc"
    clim.parent.mkdir()
    xr.Dataset(
        {"climatology": (("channel", "dayofyear", "hour", "latitude", "longitude"), clim_values.astype(np.float32))},
        coords={"channel": CHANNELS, "dayofyear": np.arange(1, 367), "hour": HOURS, "latitude": LAT, "longitude": LON},
    ).to_netcdf(clim)
    stamp_lineage(paths, lineage.regridded(CFG))
    stamp_lineage(clim, lineage.climatology(CFG))
    predictions = {}
    for name in ("persistence", "climatology"):
        predictions[name] = baselines.run_baseline(
            CFG, name, paths, None, clim, tmp_path / "predictions" / f"{name}.nc"
        )
    return tmp_path, paths, clim, predictions


def write_shifted_truth(path, reference_nc, paths, offset):
    """A 'model' whose forecast is the truth at the valid time plus `offset` (K)."""
    from seqvit.data.fields import open_channels

    with xr.open_dataset(reference_nc) as ds:
        template = ds["forecast"].load()
    truth = open_channels(paths, CHANNELS)
    inits = pd.DatetimeIndex(template["time"].values)
    pieces = [
        truth.sel(time=inits + pd.Timedelta(hours=int(h))).assign_coords(time=inits.values) + offset
        for h in template["lead_hours"].values
    ]
    forecast = xr.concat(pieces, dim=pd.Index(template["lead_hours"].values, name="lead_hours"))
    return baselines.write_predictions(forecast.transpose(*template.dims), path, "vit-p4", FORECAST_ATTRS)


def test_evaluate_writes_tables_and_figures(setup, capsys):
    root, paths, clim, predictions = setup
    vit = write_shifted_truth(root / "predictions" / "vit-p4.nc", predictions["persistence"], paths, offset=1.0)
    out = root / "eval"
    table = report.evaluate(CFG, {"vit-p4": vit, **predictions}, paths, clim, out)

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == [
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
    # every interval holds its estimate; a forecast off by exactly 1 K everywhere has no spread to show
    assert (metrics["rmse_low"] <= metrics["rmse"] + 1e-12).all() and (
        metrics["rmse"] <= metrics["rmse_high"] + 1e-12
    ).all()
    persistence_rows = metrics[metrics["model"] == "persistence"]
    assert (persistence_rows["rmse_high"] > persistence_rows["rmse_low"]).all()
    assert len(metrics) == 3 * 2 * 2 and (metrics["run"] == "unit").all()
    pd.testing.assert_frame_equal(metrics, table, check_dtype=False)
    vit_rows = metrics[metrics["model"] == "vit-p4"]
    np.testing.assert_allclose(vit_rows[["rmse", "bias", "mse", "rmse_mean_per_time"]].values, 1.0, rtol=1e-5)
    assert (vit_rows["acc"] > 0.9).all()
    assert (metrics["n_times"] == len(pd.date_range("2003-01-01", "2003-03-30 18:00", freq="6h"))).all()
    persistence = metrics[metrics["model"] == "persistence"].set_index(["variable", "lead_hours"])["rmse"]
    assert persistence["t2m", 24] > persistence["t2m", 6] > 0  # a random walk drifts further in 24 h

    wide = pd.read_csv(out / "rmse_table.csv")
    assert list(wide.columns) == ["model", "t2m_6h", "t2m_24h", "t_850_6h", "t_850_24h"]
    assert list(wide["model"]) == ["vit-p4", "persistence", "climatology"]
    for name in ("rmse_vs_lead.png", "rmse_vs_lead.pdf", "maps.png", "per_time.nc"):
        assert (out / name).stat().st_size > 1000, name
    with xr.open_dataset(out / "per_time.nc") as ds:
        assert ds["mse"].dims == ("model", "lead_hours", "time", "channel")
    printed = capsys.readouterr().out
    assert "vit-p4" in printed and "t_850_24h" in printed
    assert not list(out.glob(".*.tmp"))


def test_mismatched_predictions_raise_naming_the_file(setup):
    root, paths, clim, predictions = setup
    with xr.open_dataset(predictions["persistence"]) as ds:
        shorter = ds["forecast"].isel(time=slice(1, None)).load()
    stale = baselines.write_predictions(shorter, root / "predictions" / "vit-p4.nc", "vit-p4", FORECAST_ATTRS)
    with pytest.raises(SeqvitError, match=r"vit-p4\.nc.*'time'"):
        report.evaluate(CFG, {**predictions, "vit-p4": stale}, paths, clim, root / "eval")

    with xr.open_dataset(predictions["persistence"]) as ds:
        one_channel = ds["forecast"].sel(channel=["t2m"]).load()
    stale = baselines.write_predictions(one_channel, root / "predictions" / "vit-p8.nc", "vit-p8", FORECAST_ATTRS)
    with pytest.raises(SeqvitError, match=r"vit-p8\.nc.*'channel'"):
        report.evaluate(CFG, {**predictions, "vit-p8": stale}, paths, clim, root / "eval")
    assert not (root / "eval" / "metrics.csv").exists()

    with pytest.raises(SeqvitError, match="not found"):
        report.evaluate(CFG, {"vit-p4": root / "missing.nc"}, paths, clim, root / "eval")


def test_seqlen_figure_draws_each_baseline_in_its_own_colour_and_style(monkeypatch, tmp_path):
    from matplotlib.colors import to_hex

    from seqvit.evaluate import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, dpi=150: drawn.append(fig) or path)
    long = pd.DataFrame(
        [
            {"variable": "t2m", "lead_hours": 6, "seq_len": n, "patch_size": p, "rmse": r}
            for n, p, r in ((32, 8, 1.5), (128, 4, 1.2))
        ]
    )
    change = pd.DataFrame([{"variable": "t2m", "lead_hours": 6, "change_pct": -20.0}])
    # persistence and climatology with nearly the same score: the case where they were indistinguishable
    baselines = pd.DataFrame(
        [
            {"model": m, "variable": "t2m", "lead_hours": 6, "rmse": r}
            for m, r in (("climatology", 2.0), ("persistence", 2.01), ("linear", 1.8))
        ]
    )
    figures.rmse_vs_seqlen(long, change, baselines, tmp_path / "seqlen.png")
    lines = {line.get_label(): line for line in drawn[0].axes[0].get_lines()}
    look = {
        name: (to_hex(lines[name].get_color()), lines[name].get_linestyle())
        for name in ("ViT, 6 h", "climatology, 6 h", "persistence, 6 h", "linear, 6 h")
    }
    # every line its own style, the ones the caption (workflow/report/rmse_vs_seqlen.rst) names
    assert {name: style for name, (_, style) in look.items()} == {
        "ViT, 6 h": "-",
        "persistence, 6 h": "--",
        "climatology, 6 h": ":",
        "linear, 6 h": "-.",
    }
    colors = [look[name][0] for name in ("ViT, 6 h", "climatology, 6 h", "persistence, 6 h")]
    assert len(set(colors)) == 3  # and the two similar baselines their own shades of the lead's colour
