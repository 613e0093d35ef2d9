"""One list per extension point; the schema, the CLI and the rules agree with it."""

import re
from pathlib import Path

import pytest

from seqvit.cli import build_parser
from seqvit.config import load_schema
from seqvit.data.grids import named_grid
from seqvit.data.regrid import METHODS as REGRID_METHODS
from seqvit.data.sources.plan import KINDS
from seqvit.evaluate.baselines import BASELINES
from seqvit.parallel.attention import BACKENDS
from seqvit.parallel.groups import SP_METHODS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema()["properties"]


def cli_choices(stage: str, option: str) -> list:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[stage]
    return next(a for a in sub._actions if option in a.option_strings).choices


def wildcard_constraint(rule: str, wildcard: str) -> list[str]:
    text = "".join(path.read_text() for path in (ROOT / "workflow" / "rules").glob("*.smk"))
    body = re.search(rf"(?m)^rule {rule}:\n((?:\s{{4,}}.*\n|\n)*)", text).group(1)
    return re.search(rf'{wildcard}="([^"]+)"', body).group(1).split("|")


def test_baselines():
    assert list(BASELINES) == SCHEMA["evaluate"]["properties"]["baselines"]["items"]["enum"]
    assert list(BASELINES) == cli_choices("baseline", "--name") == wildcard_constraint("baseline", "name")
    assert SCHEMA["evaluate"]["properties"]["baselines"]["default"] == list(BASELINES)


def test_sources():
    assert list(KINDS) == SCHEMA["source"]["properties"]["kind"]["enum"]


def test_sequence_parallel_methods_and_kernels():
    assert list(SP_METHODS) == SCHEMA["parallel"]["properties"]["sp_method"]["enum"]
    assert list(BACKENDS) == SCHEMA["model"]["properties"]["attention"]["enum"]


def test_regrid_methods():
    assert list(REGRID_METHODS) == SCHEMA["regrid"]["properties"]["method"]["enum"] == cli_choices("regrid", "--method")


@pytest.mark.parametrize("name", SCHEMA["grid"]["enum"])
def test_every_grid_the_schema_allows_exists(name):
    assert named_grid(name).name == name


def test_methods_text_describes_every_baseline_and_method():
    from seqvit.provenance.methods import _BASELINE_TEXT, _SP_METHODS

    assert set(_BASELINE_TEXT) == set(BASELINES) and set(_SP_METHODS) == set(SP_METHODS)


def test_the_model_does_not_depend_on_the_data_layer():
    from seqvit.provenance.code import import_closure

    assert not [m for m in import_closure("model.vit") if m.startswith("data")]
