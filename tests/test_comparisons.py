"""Runs of a sweep against each other: seeds, window against full attention, the map case (hand-worked values)."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from seqvit.config import load_configs
from seqvit.errors import SeqvitError
from seqvit.evaluate import comparisons
from seqvit.evaluate.sequence_length import relative_change, rmse_by_sequence_length
from seqvit.evaluate.uncertainty import Resamples
from seqvit.layout import Layout, parse_run

# Three resamples of four init times: all the first, all the last, each once.
DRAWS = Resamples(indices=np.array([[0, 0, 0, 0], [3, 3, 3, 3], [0, 1, 2, 3]]), block=1, confidence=0.999999)


def scores(mse) -> xr.Dataset:
    """Per-time scores of one (model, lead) as the evaluate stage keeps them (time, channel)."""
    mse = np.asarray(mse, dtype=float)[:, None]
    return xr.Dataset(
        {"mse": (("time", "channel"), mse), "acc": (("time", "channel"), np.zeros_like(mse))},
        coords={"channel": ["t2m"]},
    )


def metrics_rows(rmse: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [{"model": m, "variable": "t2m", "lead_hours": 24, "rmse": r, "rmse_mean_per_time": r} for m, r in rmse.items()]
    )


def test_seeds_summary_mean_spread_and_the_interval_of_the_mean():
    table = metrics_rows({"vit-p8-s1": 2.0, "vit-p8-s2": 3.0, "vit-p8-s3": 4.0, "persistence": 5.0})
    out = comparisons.seeds_summary(table).set_index("family")
    assert out.loc["vit-p8", ["n", "rmse_mean", "rmse_std", "rmse_min", "rmse_max"]].tolist() == [3, 3.0, 1.0, 2.0, 4.0]
    assert out.loc["persistence", "n"] == 1 and np.isnan(out.loc["persistence", "rmse_std"])

    # seed 1: MSE 1, 4, 9, 16 over the four times; seed 2: 4 throughout. RMSE of the mean over seeds
    # per resample: (1 + 2) / 2 = 1.5, (4 + 2) / 2 = 3, (sqrt(7.5) + 2) / 2; the interval spans 1.5 .. 3.
    per_time = {("vit-p8-s1", 24): scores([1, 4, 9, 16]), ("vit-p8-s2", 24): scores([4, 4, 4, 4])}
    table = metrics_rows({"vit-p8-s1": np.sqrt(7.5), "vit-p8-s2": 2.0})
    row = comparisons.seeds_summary(table, per_time, DRAWS).iloc[0]
    assert row["rmse_low"] == pytest.approx(1.5, abs=1e-4) and row["rmse_high"] == pytest.approx(3.0, abs=1e-4)
    assert row["rmse_std"] == pytest.approx(np.std([np.sqrt(7.5), 2.0], ddof=1))


def test_windows_against_full_attention_at_equal_sequence_length():
    # one seed: RMSE 2 (MSE 4) full, 1.5 (MSE 2.25) window at every time: -25 %, interval [-25, -25]
    per_time = {("vit-p8", 24): scores([4] * 4), ("vit-win-p8", 24): scores([2.25] * 4)}
    table = metrics_rows({"vit-p8": 2.0, "vit-win-p8": 1.5, "vit-p16": 2.5, "linear": 3.0})
    out = comparisons.windows_vs_full(table, lambda p: {8: 32, 16: 8}[p], per_time, DRAWS)
    assert len(out) == 1  # p16 has no window run: nothing to compare
    row = out.iloc[0]
    assert (row["patch_size"], row["seq_len"], row["n_seeds"]) == (8, 32, 1)
    assert (row["rmse_full"], row["rmse_window"]) == (2.0, 1.5)
    assert row["change_pct"] == pytest.approx(-25.0)
    assert row["change_low_pct"] == pytest.approx(-25.0) and row["change_high_pct"] == pytest.approx(-25.0)
    assert row["change_significant"]

    # two seeds: full 2 and 4 (mean 3), window 1 and 2 (mean 1.5): -50 %
    table = metrics_rows({"vit-p8-s1": 2.0, "vit-p8-s2": 4.0, "vit-win-p8-s1": 1.0, "vit-win-p8-s2": 2.0})
    row = comparisons.windows_vs_full(table, lambda p: 32).iloc[0]
    assert row["n_seeds"] == 2 and row["rmse_full"] == 3.0 and row["change_pct"] == pytest.approx(-50.0)
    assert np.isnan(row["change_low_pct"])  # no per-time scores given: no interval

    with pytest.raises(SeqvitError, match="train.seeds"):
        comparisons.windows_vs_full(metrics_rows({"vit-p8-s1": 2.0, "vit-p8-s2": 4.0, "vit-win-p8-s1": 1.0}), len)


def test_sequence_length_change_uses_the_mean_over_seeds_and_leaves_window_runs_out():
    # p8 (32 tokens): seeds 2 and 4 -> 3; p4 (128 tokens): 1 and 2 -> 1.5; change -50 %
    table = metrics_rows({"vit-p8-s1": 2.0, "vit-p8-s2": 4.0, "vit-p4-s1": 1.0, "vit-p4-s2": 2.0, "vit-win-p4-s1": 0.1})
    long = rmse_by_sequence_length(table, 32, 64)
    assert sorted(long["model"]) == ["vit-p4-s1", "vit-p4-s2", "vit-p8-s1", "vit-p8-s2"]
    assert sorted(long["seed"]) == [1, 1, 2, 2]
    wide = relative_change(long).iloc[0]
    assert (wide["rmse_L32_p8"], wide["rmse_L128_p4"]) == (3.0, 1.5) and wide["change_pct"] == pytest.approx(-50.0)


def test_map_case_is_the_median_init_of_the_longest_sequence_full_run():
    # RMSE per time 3, 1, 2, 5: ordered 1, 2, 3, 5; the lower middle one, 2, is time 2
    assert comparisons.median_case(np.array([[9, 1, 4, 25]])) == 2
    assert comparisons.median_case(np.array([4, 1, 9])) == 0  # RMSE 2, 1, 3: median 2 at time 0
    # two seeds: their mean MSE decides (times 1 and 0 swap places under the mean)
    assert comparisons.median_case(np.array([[1, 9, 16], [1, 1, 16]])) == 1
    names = ["vit-p16", "vit-p8-s1", "vit-p8-s2", "vit-win-p8-s1", "persistence"]
    assert comparisons.map_reference(names) == ["vit-p8-s1", "vit-p8-s2"]
    assert comparisons.map_reference(["persistence"]) == []


def test_run_names_folders_and_settings_from_the_layout():
    cfg = load_configs(["config/config.yaml"], ["parallel.runs={}", "sweep.window.window_size=2", "train.seeds=[1,2]"])
    lay = Layout(cfg)
    names = lay.model_names()
    assert names[:2] == ["vit-p16-s1", "vit-p16-s2"] and names[-1] == "vit-win-p4-s2" and len(names) == 12
    assert lay.run_dir("vit-win-p8-s1") == lay.root / "train" / "win-p8-s1"
    assert lay.run_dir(8) == lay.root / "train" / "p8"  # a patch size alone: the unseeded full run
    run = lay.run_config("vit-win-p8-s2")
    assert (run["model"]["attention_pattern"], run["model"]["window_size"], run["train"]["seed"]) == ("window", 2, 2)
    assert lay.run_config("vit-p8-s1")["model"]["attention_pattern"] == "full"
    assert cfg["model"].get("window_size") is None  # the config itself is left as it was
    assert parse_run("vit-win-p4").window and parse_run("vit-p4-s3").seed == 3
    with pytest.raises(SeqvitError, match="vit-p8-s1"):
        lay.run("vit-p8")  # seeds are set: the runs are named with them
    lay.check_sweep()

    plain = Layout(load_configs(["config/config.yaml"]))
    assert plain.model_names() == ["vit-p16", "vit-p8", "vit-p4"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["parallel.runs={}", "sweep.window.window_size=3"], "sweep.window.window_size: 3 does not divide"),
        (["parallel.runs={4: {sp: 2}}", "sweep.window.window_size=2"], "parallel.sp: 1"),
    ],
)
def test_window_runs_that_cannot_train_are_refused_naming_the_key(overrides, message):
    lay = Layout(load_configs(["config/config.yaml"], overrides))
    with pytest.raises(SeqvitError, match=message):
        lay.check_sweep()
