"""The Snakemake report's captions (workflow/report/*.rst) follow the config: variables, units, years."""

from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from docutils.core import publish_parts

from seqvit.evaluate import figures

REPORT = Path(__file__).resolve().parents[1] / "workflow" / "report"


def render(name: str, cfg: dict) -> str:
    """The caption as Snakemake renders it (Jinja with its settings, then reStructuredText), as text."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake.report's settings
    text = env.from_string((REPORT / name).read_text()).render(snakemake=SimpleNamespace(config=cfg))
    parts = publish_parts(text, writer="html", settings_overrides={"report_level": 2, "halt_level": 2})
    assert "system-message" not in parts["body"], parts["body"]
    return " ".join(text.replace("``", "").split())


def test_rmse_table_caption_gives_each_variables_units(demo_cfg):
    demo_cfg["evaluate"]["variables"] = ["t2m", "t_850", "z_500"]
    caption = render("rmse_table.rst", demo_cfg)
    assert "kelvin" not in caption
    assert "t2m in K, t_850 in K, z_500 in m² s⁻²." in caption


@pytest.mark.parametrize("channel", [*figures._UNITS, "t_850", "z_500", "u_250", "q_700", "tcwv"])
def test_rmse_table_caption_units_are_those_of_the_figures(demo_cfg, channel):
    demo_cfg["evaluate"]["variables"] = [channel]
    expected = figures.channel_units(channel) or "its own units"
    assert f"{channel} in {expected}." in render("rmse_table.rst", demo_cfg)


@pytest.mark.parametrize(
    "variables, shown",
    [
        (["t2m", "t_850", "z_500"], "t2m"),  # report._maps shows t2m when it is scored ...
        (["z_500", "t_850"], "z_500"),  # ... else the first variable
        (["t_850"], "t_850"),
        (["msl"], "msl"),
    ],
)
def test_maps_caption_names_the_variable_shown(demo_cfg, variables, shown):
    demo_cfg["evaluate"]["variables"] = variables
    demo_cfg["evaluate"]["lead_hours"] = [6, 72, 24]
    caption = render("maps.rst", demo_cfg)
    assert f"forecast error of {figures.channel_label(shown)} at the longest lead time, 72 h." in caption
    if shown != "t2m":
        assert "2 m temperature" not in caption


def test_captions_take_baselines_and_climatology_years_from_the_config(demo_cfg):
    assert (
        "the baselines climatology, persistence, linear (linear: a regression fitted on the training years)."
        in render("rmse_vs_lead.rst", demo_cfg)
    )
    demo_cfg["evaluate"]["baselines"] = ["persistence"]
    demo_cfg["stats"] = {"climatology_years": [2013, 2014]}
    assert "the baselines persistence. Lower" in render("rmse_vs_lead.rst", demo_cfg)
    assert "against the baselines persistence." in render("workflow.rst", demo_cfg)
    assert "climatology of the years [2013, 2014]" in render("metrics.rst", demo_cfg)
    del demo_cfg["stats"]
    assert f"climatology of the years {demo_cfg['splits']['train']}" in render("metrics.rst", demo_cfg)
