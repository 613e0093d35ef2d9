"""The whole workflow, run by Snakemake on a tiny configuration, as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def tiny_config(demo_cfg, results: Path) -> dict:
    cfg = demo_cfg
    cfg["results"] = str(results)
    cfg["source"].update(spinup_days=5)
    cfg["data"].update(years=[2015, 2016, 2017], months=[1])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["tokenize"]["patch_sizes"] = [8]
    cfg["model"].update(embed_dim=32, depth=1, num_heads=2)
    cfg["train"].update(steps=20, batch_size=8, warmup_steps=2, val_every=10, checkpoint_every=10)
    return cfg


def run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture
def tiny(tmp_path, demo_cfg):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(demo_cfg, tmp_path / "results")))
    base = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(cfg_path)]
    return tmp_path, base


def test_dry_run_lists_every_stage(tiny):
    workdir, base = tiny
    out = run([*base, "-n", "--quiet", "rules"], workdir)
    for rule in ["synth", "regrid", "stats", "tokenize", "train", "predict", "baseline", "evaluate", "all"]:
        assert f" {rule} " in out or f"\n{rule} " in out, out


def test_lint_is_clean(tiny):
    workdir, base = tiny
    out = run([*base, "--lint"], workdir)
    assert "lints for" not in out.lower(), out


@pytest.mark.workflow
def test_whole_workflow_runs_and_reruns_nothing(tiny):
    workdir, base = tiny
    run([*base, "--cores", "2"], workdir)
    results = workdir / "results"
    metrics = pd.read_csv(results / "eval" / "metrics.csv")
    assert {"run", "model", "variable", "lead_hours", "rmse", "acc"} <= set(metrics.columns)
    assert set(metrics["model"]) == {"vit-p8", "climatology", "persistence", "linear"}
    assert set(metrics["variable"]) == {"t2m", "t_850", "z_500"} and set(metrics["lead_hours"]) == {6, 24}
    assert metrics["rmse"].gt(0).all() and metrics["rmse"].notna().all()
    assert (results / "eval" / "rmse_vs_lead.png").stat().st_size > 0
    train_log = pd.read_csv(results / "train" / "p8" / "metrics.csv")
    assert {"step", "loss"} <= set(train_log.columns) and train_log["step"].max() == 20
    for name in ("rmse_vs_seqlen.png", "rmse_vs_seqlen.pdf", "loss_curves.png", "loss_curves.pdf", "seqlen_change.csv"):
        assert (results / "eval" / name).stat().st_size > 0, name
    # provenance: one action per job, the validator's verdict, methods and tables
    crate = json.loads((results / "provenance" / "ro-crate-metadata.json").read_text())
    actions = [e for e in crate["@graph"] if e["@type"] == "CreateAction" and e["@id"].startswith("#job-")]
    rules = {a["instrument"]["@id"].removeprefix("#rule-") for a in actions}
    assert rules == {
        "synth",
        "regrid",
        "stats",
        "climatology",
        "tokenize",
        "train",
        "predict",
        "baseline",
        "evaluate",
    }, rules
    assert all(a.get("startTime") and a.get("endTime") for a in actions)
    assert (results / "provenance" / "methods.md").exists() and (
        results / "provenance" / "tables" / "rmse.tex"
    ).exists()
    _metrics_agree_with_scores(results, metrics)

    # nothing changed: nothing reruns
    assert "Nothing to be done" in run([*base, "-n"], workdir)

    run([*base, "--report", str(results / "report.html")], workdir)
    assert (results / "report.html").stat().st_size > 10_000

    # Slurm's walltime warning mid-training: the job checkpoints and fails, Snakemake's retry resumes
    _interrupt_training_and_retry(workdir, base, results)


def _metrics_agree_with_scores(results: Path, metrics: pd.DataFrame) -> None:
    """The pipeline's weighted MSE and RMSE against an independent verification library (`scores`).

    `scores` weights by cos(latitude); on a grid whose cells lie strictly between the poles the
    cell-area weights the pipeline uses are proportional to it (sin(a + h) - sin(a - h) = 2 sin h
    cos a), so both must agree to rounding.
    """
    import numpy as np
    import xarray as xr
    from scores.continuous import mse as scores_mse
    from scores.functions import create_latitude_weights

    from seqvit.data.fields import open_channels

    truth_all = open_channels(sorted((results / "regridded").rglob("*.nc")), ["t2m", "t_850", "z_500"])
    assert np.abs(truth_all["latitude"].values).max() < 90  # the proportionality above needs no pole cell
    checked = 0
    for path in sorted((results / "predictions").glob("*.nc")):
        model = path.stem
        with xr.open_dataset(path) as ds:
            forecast = ds["forecast"].load()
        for lead in forecast["lead_hours"].values:
            inits = forecast["time"].values
            valid = inits + np.timedelta64(int(lead), "h")
            truth = truth_all.sel(time=valid).assign_coords(time=inits)
            fcst = forecast.sel(lead_hours=lead, drop=True)
            truth = truth.assign_coords(latitude=fcst["latitude"].values, longitude=fcst["longitude"].values)
            weights = create_latitude_weights(fcst["latitude"])
            per_time = scores_mse(fcst, truth, reduce_dims=["latitude", "longitude"], weights=weights)
            for channel in forecast["channel"].values:
                row = metrics[(metrics["model"] == model) & (metrics["variable"] == str(channel))]
                row = row[row["lead_hours"] == int(lead)].iloc[0]
                expected_mse = float(per_time.sel(channel=channel).mean("time"))
                assert row["mse"] == pytest.approx(expected_mse, rel=1e-9), (model, channel, lead)
                assert row["rmse"] == pytest.approx(np.sqrt(expected_mse), rel=1e-9), (model, channel, lead)
                checked += 1
    assert checked == 4 * 2 * 3, checked  # vit-p8 and three baselines, two leads, three channels


def _training_pids() -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train" in args and b"--patch-size" in args and any(a.endswith(b"seqvit") for a in args):
            pids.append(int(cmdline.parent.name))
    return pids


def _interrupt_training_and_retry(workdir, base, results):
    cfg_path = Path(base[base.index("--configfile") + 1])
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update(steps=300, val_every=100, checkpoint_every=100, log_every=5)
    longer = workdir / "longer.yaml"
    longer.write_text(yaml.safe_dump(cfg))
    command = [*base[: base.index("--configfile")], "--configfile", str(longer), "--cores", "2", "--retries", "1"]
    model = results / "train" / "p8" / "model.pt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [*command, str(model)], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics, deadline, signalled = results / "train" / "p8" / "metrics.csv", time.monotonic() + 300, []
    while time.monotonic() < deadline and proc.poll() is None and not signalled:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # header + two rows: mid-run
            for pid in _training_pids():
                os.kill(pid, signal.SIGUSR1)
                signalled.append(pid)
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert signalled, "training ended before it could be signalled"
    assert "Error in rule train" in out and "exit status 75" in out, out[-4000:]
    log = (results / "logs" / "train" / "p8.log").read_text()
    assert "resumed from step" in log, log[-3000:]
    resumed_at = int(log.split("resumed from step")[1].split()[0].rstrip(","))
    assert 0 < resumed_at < 300
    assert pd.read_csv(metrics)["step"].max() == 300 and model.exists()


@pytest.mark.workflow
def test_window_runs_and_seeds_are_trained_scored_and_compared(tmp_path, demo_cfg):
    """sweep.window and train.seeds on the tiny config: every run trained, predicted, scored, mapped."""
    cfg = tiny_config(demo_cfg, tmp_path / "results")
    cfg["sweep"] = {"window": {"window_size": 2}}  # the 4 x 8 token grid of p = 8 in 2 x 2 windows
    cfg["train"]["seeds"] = [1, 2]
    cfg["evaluate"]["baselines"] = ["persistence"]
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    results = tmp_path / "results"
    base = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile", str(cfg_path)]
    run([*base, "--cores", "2", str(results / "eval" / "metrics.csv")], tmp_path)

    runs = ["vit-p8-s1", "vit-p8-s2", "vit-win-p8-s1", "vit-win-p8-s2"]
    metrics = pd.read_csv(results / "eval" / "metrics.csv")
    assert list(dict.fromkeys(metrics["model"])) == [*runs, "persistence"]
    for tag in ("p8-s1", "p8-s2", "win-p8-s1", "win-p8-s2"):
        assert (results / "train" / tag / "model.pt").exists(), tag
    # the window runs trained with window attention, the full ones without; each with its own seed
    settings = {
        t: json.loads((results / "train" / t / "checkpoints" / "run.json").read_text()) for t in ("p8-s1", "win-p8-s2")
    }
    assert "window" in json.dumps(settings["win-p8-s2"]) and "window" not in json.dumps(settings["p8-s1"])
    assert not (results / "train" / "p8").exists()  # seeds given: no unseeded run

    windows = pd.read_csv(results / "eval" / "windows_vs_full.csv")
    assert len(windows) == 3 * 2 and set(windows["n_seeds"]) == {2} and set(windows["seq_len"]) == {32}
    by_run = metrics.set_index(["model", "variable", "lead_hours"])["rmse"]
    row = windows.iloc[0]
    key = (row["variable"], row["lead_hours"])
    full = (by_run[("vit-p8-s1", *key)] + by_run[("vit-p8-s2", *key)]) / 2
    window = (by_run[("vit-win-p8-s1", *key)] + by_run[("vit-win-p8-s2", *key)]) / 2
    assert row["rmse_full"] == pytest.approx(full) and row["rmse_window"] == pytest.approx(window)
    assert row["change_low_pct"] <= row["change_pct"] <= row["change_high_pct"]

    seeds = pd.read_csv(results / "eval" / "seeds_summary.csv").set_index(["family", "variable", "lead_hours"])
    s1, s2 = by_run[("vit-p8-s1", *key)], by_run[("vit-p8-s2", *key)]
    assert seeds.loc[("vit-p8", *key), "n"] == 2
    assert seeds.loc[("vit-p8", *key), "rmse_std"] == pytest.approx(abs(s1 - s2) / 2**0.5)  # ddof 1 of two values
    assert seeds.loc[("persistence", *key), "n"] == 1

    # the sequence-length table keeps the full-attention runs only
    assert set(pd.read_csv(results / "eval" / "rmse_vs_seqlen.csv")["model"]) == {"vit-p8-s1", "vit-p8-s2"}
    maps = pd.read_csv(results / "eval" / "maps_case.csv")
    assert list(maps["run"]) == runs and maps["init"].nunique() == 1 and "median" in maps["rule"].iloc[0]
    assert (results / "eval" / "maps.png").stat().st_size > 0
