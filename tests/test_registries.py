"""One list per extension point; the schema, the CLI and the rules agree with it."""

import inspect
import re
from pathlib import Path

import pytest

from seqvit.cli import build_parser
from seqvit.config import load_schema
from seqvit.data.grids import named_grid
from seqvit.data.regrid import METHODS as REGRID_METHODS
from seqvit.data.sources import source_class
from seqvit.data.sources.plan import DOWNLOADERS, KINDS
from seqvit.evaluate.baselines import BASELINES
from seqvit.model.attention import BACKENDS
from seqvit.model.window import PATTERNS
from seqvit.parallel.groups import SP_METHODS
from seqvit.parallel.methods import METHODS

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
    assert list(KINDS) == ["synthetic", *DOWNLOADERS]
    for kind in DOWNLOADERS:  # each registered class implements the Source interface
        cls = source_class(kind)
        assert cls.kind == kind
        assert list(inspect.signature(cls.fetch).parameters)[:2] == ["self", "request"], kind
        assert list(inspect.signature(cls.__init__).parameters)[:4] == ["self", "cfg", "raw_dir", "log"], kind


def test_sequence_parallel_methods_and_kernels():
    assert list(SP_METHODS) == SCHEMA["parallel"]["properties"]["sp_method"]["enum"]
    assert list(SP_METHODS) == list(METHODS)  # every method has its class in parallel/methods.py
    assert list(BACKENDS) == SCHEMA["model"]["properties"]["attention"]["enum"]
    assert list(PATTERNS) == SCHEMA["model"]["properties"]["attention_pattern"]["enum"]


def test_regrid_methods():
    assert list(REGRID_METHODS) == SCHEMA["regrid"]["properties"]["method"]["enum"] == cli_choices("regrid", "--method")


@pytest.mark.parametrize("name", SCHEMA["grid"]["enum"])
def test_every_grid_the_schema_allows_exists(name):
    assert named_grid(name).name == name


def test_methods_text_describes_every_baseline_and_method():
    from seqvit.provenance.methods import _BASELINE_TEXT, _SP_METHODS

    assert set(_BASELINE_TEXT) == set(BASELINES) and set(_SP_METHODS) == set(SP_METHODS)


def model_layer_leaks(root: Path = ROOT / "src" / "seqvit") -> list[str]:
    """The data/ and parallel/ modules that the modules under model/ import, directly or through others."""
    from seqvit.provenance.code import import_closure

    modules = [".".join(path.relative_to(root).with_suffix("").parts) for path in (root / "model").glob("*.py")]
    modules = [name.removesuffix(".__init__") for name in modules]
    assert "model.vit" in modules and "model.attention" in modules
    return [m for m in import_closure(*modules) if m.split(".")[0] in ("data", "parallel")]


def test_the_model_depends_on_neither_the_data_nor_the_parallel_layer():
    leaks = model_layer_leaks()
    assert not leaks, f"model/ imports {leaks}; the model layer must not depend on data/ or parallel/"


@pytest.mark.parametrize(
    "line, module",
    [("from seqvit.parallel import groups", "parallel.groups"), ("import seqvit.data.grids", "data.grids")],
)
def test_the_layering_check_sees_a_forbidden_import(tmp_path, monkeypatch, line, module):
    """The check above finds an import of parallel/ or data/ added to a model module (in a copy of the package)."""
    import shutil

    from seqvit.provenance import code

    package = tmp_path / "seqvit"
    shutil.copytree(ROOT / "src" / "seqvit", package, ignore=shutil.ignore_patterns("__pycache__"))
    attention = package / "model" / "attention.py"
    attention.write_text(attention.read_text() + f"\n\ndef _late():\n    {line}  # noqa\n")
    monkeypatch.setattr(code, "PACKAGE", package)
    code.import_closure.cache_clear()
    try:
        assert module in model_layer_leaks(package)
    finally:
        code.import_closure.cache_clear()
