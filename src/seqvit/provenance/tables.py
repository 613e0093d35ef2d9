"""LaTeX booktabs tables of the results (\\usepackage{booktabs}), written from eval/*.csv.

Each table's caption says which RMSE reduction it shows: the headline (square root of the mean
latitude-weighted MSE over the test initialization times) or the mean of per-time RMSE.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from seqvit.io import atomic_path

_UNITS = {
    "t2m": "K",
    "t": "K",
    "z": "m$^2$\\,s$^{-2}$",
    "u": "m\\,s$^{-1}$",
    "v": "m\\,s$^{-1}$",
    "u10": "m\\,s$^{-1}$",
    "v10": "m\\,s$^{-1}$",
    "q": "kg\\,kg$^{-1}$",
    "msl": "Pa",
    "sp": "Pa",
}


def _escape(text) -> str:
    out = str(text)
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("$", "\\$")):
        out = out.replace(a, b)
    return out


def _units(channel: str) -> str:
    return _UNITS.get(channel, _UNITS.get(channel.partition("_")[0], ""))


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    return f"{value:.{digits}f}"


def booktabs(header: list[str], rows: list[list[str]], caption: str, label: str, align: str | None = None) -> str:
    """A complete table environment with \\toprule, \\midrule and \\bottomrule."""
    align = align or ("l" + "r" * (len(header) - 1))
    lines = [
        "\\begin{table}[htbp]",
        "  \\centering",
        f"  \\caption{{{caption}}}",
        f"  \\label{{{label}}}",
        f"  \\begin{{tabular}}{{{align}}}",
        "    \\toprule",
        "    " + " & ".join(header) + " \\\\",
        "    \\midrule",
        *["    " + " & ".join(row) + " \\\\" for row in rows],
        "    \\bottomrule",
        "  \\end{tabular}",
        "\\end{table}",
        "",
    ]
    return "\n".join(lines)


def metric_table(metrics_df: pd.DataFrame, column: str, caption: str, label: str, digits: int = 2) -> str:
    """Models as rows, (variable, lead) as columns, values of `column` from metrics.csv."""
    variables = list(dict.fromkeys(metrics_df["variable"]))
    leads = sorted(int(h) for h in metrics_df["lead_hours"].unique())
    header = ["Model"] + [f"{_escape(v)} {h}\\,h" for v in variables for h in leads]
    rows = []
    for model in dict.fromkeys(metrics_df["model"]):
        sel = metrics_df[metrics_df["model"] == model]
        row = [_escape(model)]
        for v in variables:
            for h in leads:
                cell = sel[(sel["variable"] == v) & (sel["lead_hours"] == h)][column]
                row.append(_fmt(float(cell.iloc[0]) if len(cell) else float("nan"), digits))
        rows.append(row)
    return booktabs(header, rows, caption, label)


def seqlen_table(change: pd.DataFrame, caption: str, label: str) -> str:
    """One row per (variable, lead): RMSE at each sequence length and the relative change."""
    rmse_cols = [c for c in change.columns if c.startswith("rmse_L")]

    def head(col: str) -> str:
        n, p = col[len("rmse_L") :].split("_p")
        return f"$L={n}$ ($p={p}$)"

    with_ci = "change_low_pct" in change.columns
    header = (
        ["Variable", "Lead"] + [head(c) for c in rmse_cols] + ["Change [\\%]"] + (["95\\% interval"] if with_ci else [])
    )

    def interval(r) -> list[str]:
        if not with_ci:
            return []
        if pd.isna(r["change_low_pct"]):
            return ["--"]
        return [f"[{float(r['change_low_pct']):+.1f}, {float(r['change_high_pct']):+.1f}]"]

    rows = [
        [_escape(r["variable"]), f"{int(r['lead_hours'])}\\,h"]
        + [_fmt(float(r[c]), 3) for c in rmse_cols]
        + [("--" if pd.isna(r["change_pct"]) else f"{float(r['change_pct']):+.1f}")]
        + interval(r)
        for _, r in change.iterrows()
    ]
    return booktabs(header, rows, caption, label)


def units_text(variables) -> str:
    """' Units: t2m and t\\_850 in K, z\\_500 in m$^2$...' for a caption (each variable has its own units)."""
    by_unit: dict[str, list[str]] = {}
    for v in dict.fromkeys(variables):
        by_unit.setdefault(_units(v) or "", []).append(_escape(v))
    parts = [
        f"{' and '.join(vs) if len(vs) < 3 else ', '.join(vs[:-1]) + ' and ' + vs[-1]} in {unit}"
        for unit, vs in by_unit.items()
        if unit
    ]
    return f" Units: {'; '.join(parts)}." if parts else ""


def write_tables(eval_dir, out_dir, test_years, n_times: int | None = None, climatology_years=None) -> list[Path]:
    """rmse.tex, rmse_mean_per_time.tex, acc.tex, bias.tex and sequence_length.tex under out_dir.

    climatology_years: the years of the climatology the ACC anomalies are taken against (None: the
    training years, the default of stats.climatology_years).
    """
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    metrics_df = pd.read_csv(eval_dir / "metrics.csv")
    years = ", ".join(str(y) for y in test_years)
    n = f" ({n_times} initialization times)" if n_times else ""
    unit_text = units_text(metrics_df["variable"])
    clim = f"the years {', '.join(str(y) for y in climatology_years)}" if climatology_years else "the training years"
    specs = {
        "rmse.tex": (
            "rmse",
            f"Headline RMSE: square root of the mean latitude-weighted MSE over the test "
            f"initialization times of {years}{n}. Lower is better.{unit_text}",
            "tab:rmse",
            2,
        ),
        "rmse_mean_per_time.tex": (
            "rmse_mean_per_time",
            f"RMSE as the mean over the test initialization "
            f"times of {years}{n} of the per-time latitude-weighted RMSE (the second "
            f"reduction).{unit_text}",
            "tab:rmse-mean-per-time",
            2,
        ),
        "acc.tex": (
            "acc",
            f"Uncentred anomaly correlation coefficient against the day-of-year and hour climatology of "
            f"{clim}, mean over the test initialization times of {years}. Higher is better.",
            "tab:acc",
            3,
        ),
        "bias.tex": (
            "bias",
            f"Latitude-weighted mean error (forecast minus truth), mean over the test "
            f"initialization times of {years}.{unit_text}",
            "tab:bias",
            2,
        ),
    }
    written = []
    for name, (column, caption, label, digits) in specs.items():
        written.append(_write(out_dir / name, metric_table(metrics_df, column, caption, label, digits)))
    change_path = eval_dir / "seqlen_change.csv"
    if change_path.exists():
        change = pd.read_csv(change_path)
        caption = (
            "Headline RMSE of the ViT against sequence length $L$ (tokens per sample, patch size $p$) on the test "
            f"years {years}, and the relative change from the shortest to the longest sequence "
            "(negative: the longer sequence has the lower error). Every run saw the same number of training samples."
        )
        written.append(_write(out_dir / "sequence_length.tex", seqlen_table(change, caption, "tab:sequence-length")))
    return written


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return path
