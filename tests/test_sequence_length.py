"""The sequence-length experiment: sequence lengths, the relative change, its table and figures."""

import math

import numpy as np
import pandas as pd
import pytest

from seqvit.errors import SeqvitError
from seqvit.evaluate import figures
from seqvit.evaluate.sequence_length import (
    relative_change,
    rmse_by_sequence_length,
    sequence_length,
    write_sequence_length,
)


def metrics_frame(values: dict) -> pd.DataFrame:
    """metrics.csv rows: {(model, variable, lead): rmse}."""
    rows = [
        {
            "run": "t",
            "model": m,
            "variable": v,
            "lead_hours": h,
            "rmse": r,
            "acc": 0.9,
            "bias": 0.0,
            "mse": r * r,
            "rmse_mean_per_time": r * 0.95,
            "n_times": 10,
        }
        for (m, v, h), r in values.items()
    ]
    return pd.DataFrame(rows)


def test_sequence_length_of_the_demo_sweep():
    assert [sequence_length(32, 64, p) for p in (8, 4, 2)] == [32, 128, 512]
    with pytest.raises(SeqvitError, match="does not divide"):
        sequence_length(32, 64, 3)


def test_relative_change_shortest_to_longest_by_hand():
    df = metrics_frame(
        {
            ("vit-p2", "t2m", 24): 1.2,
            ("vit-p8", "t2m", 24): 1.6,
            ("vit-p4", "t2m", 24): 1.4,
            ("vit-p8", "t2m", 6): 1.0,
            ("vit-p4", "t2m", 6): 1.0,
            ("vit-p2", "t2m", 6): 1.1,
            ("persistence", "t2m", 24): 2.0,
        }
    )
    long = rmse_by_sequence_length(df, 32, 64)
    assert set(long["model"]) == {"vit-p8", "vit-p4", "vit-p2"}  # baselines have no sequence length
    assert list(long[long["lead_hours"] == 24]["seq_len"]) == [32, 128, 512]  # shortest first
    wide = relative_change(long).set_index("lead_hours")
    assert list(wide.columns) == ["variable", "rmse_L32_p8", "rmse_L128_p4", "rmse_L512_p2", "change_pct"]
    assert wide.loc[24, "change_pct"] == pytest.approx(100 * (1.2 - 1.6) / 1.6)  # -25 %
    assert wide.loc[6, "change_pct"] == pytest.approx(10.0)  # longer sequence worse: reported as it is
    assert wide.loc[24, "rmse_L128_p4"] == pytest.approx(1.4)


def test_single_run_has_no_change():
    long = rmse_by_sequence_length(metrics_frame({("vit-p8", "t2m", 6): 1.0}), 32, 64)
    wide = relative_change(long)
    assert math.isnan(wide["change_pct"].iloc[0])


def test_write_sequence_length_files_and_figures(tmp_path):
    df = metrics_frame(
        {
            (m, v, h): r * (1 + h / 24)
            for m, r in (("vit-p8", 1.5), ("vit-p4", 1.3), ("vit-p2", 1.2), ("linear", 1.8))
            for v in ("t2m", "t_850")
            for h in (6, 24)
        }
    )
    long, wide = write_sequence_length(df, 32, 64, tmp_path)
    for name in ("rmse_vs_seqlen.csv", "seqlen_change.csv", "rmse_vs_seqlen.png", "rmse_vs_seqlen.pdf"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "rmse_vs_seqlen.pdf").read_bytes()[:4] == b"%PDF"
    back = pd.read_csv(tmp_path / "seqlen_change.csv")
    assert np.allclose(back["change_pct"], 100 * (1.2 - 1.5) / 1.5)
    assert len(long) == 12 and set(long["rmse_mean_per_time"]) <= set(df["rmse_mean_per_time"])


def test_loss_curves_png_and_pdf(tmp_path):
    runs = {
        f"p{p}": pd.DataFrame({"step": [10, 20, 30], "loss": [1.0, 0.5, 0.3], "val_loss": [np.nan, np.nan, 0.4]})
        for p in (8, 4)
    }
    png, pdf = figures.loss_curves(runs, tmp_path / "loss_curves.png")
    assert png.stat().st_size > 0 and pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(SeqvitError, match="step and loss"):
        figures.loss_curves({"bad": pd.DataFrame({"x": [1]})}, tmp_path / "bad.png")
