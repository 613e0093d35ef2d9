"""Each rule's code hash covers every seqvit module its stage runs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from seqvit.provenance import code

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def stage_modules() -> dict[str, tuple[str, ...]]:
    """rule name -> the modules its code param hashes, read from the rule files."""
    found = {}
    for path in RULE_FILES:
        for rule, body in re.findall(r"(?m)^\s*rule (\w+):\n((?:\s{4,}.*\n|\n)*)", path.read_text()):
            match = re.search(r"code=stage_hash\(([^)]*)\)", body)
            if match:
                found[rule] = tuple(json.loads(f"[{match.group(1)}]"))
    return found


def loaded_modules(module: str) -> set[str]:
    """The seqvit modules Python loads when importing `module` (an independent account: runtime,
    not the source reading under test; lazy imports inside functions are not among them)."""
    script = f"import sys, seqvit.{module}; print('\\n'.join(m for m in sys.modules if m.startswith('seqvit')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return {name.removeprefix("seqvit").removeprefix(".") for name in out.split()}


def test_every_rule_that_runs_seqvit_code_hashes_it():
    rules = stage_modules()
    expected = {"synth", "regrid", "stats", "climatology", "tokenize", "train", "predict", "baseline"}
    assert expected | {"evaluate", "provenance"} <= set(rules), rules


@pytest.mark.parametrize("rule", sorted(stage_modules()))
def test_hash_covers_what_python_loads(rule):
    modules = stage_modules()[rule]
    covered = set(code.import_closure(*modules))
    for module in modules:
        assert loaded_modules(module) <= covered, loaded_modules(module) - covered


def test_train_hash_covers_the_data_modules_training_reads():
    covered = code.import_closure("train.engine", "train.slurm")
    assert {"data.tokenize", "data.fields", "data.grids", "data.stats", "data.loader", "lineage"} <= set(covered)


def test_lazy_imports_count_and_an_edit_changes_only_the_hashes_that_cover_it(tmp_path, monkeypatch):
    package = tmp_path / "seqvit"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("def f():\n    from seqvit.data import b  # lazy\n")
    (package / "data" / "b.py").write_text("X = 1\n")
    (package / "data" / "c.py").write_text("Y = 2\n")
    monkeypatch.setattr(code, "PACKAGE", package)
    code.import_closure.cache_clear()
    assert code.import_closure("data.a") == ("", "data", "data.a", "data.b")
    before = {m: code.stage_hash(m) for m in ("data.a", "data.c")}
    (package / "data" / "b.py").write_text("X = 2\n")
    code.import_closure.cache_clear()
    assert code.stage_hash("data.a") != before["data.a"] and code.stage_hash("data.c") == before["data.c"]
    code.import_closure.cache_clear()


def rule_commands() -> dict[str, str]:
    """rule name -> the seqvit subcommand its shell runs, read from the rule files."""
    found = {}
    for path in RULE_FILES:
        for rule, body in re.findall(r"(?m)^\s*rule (\w+):\n((?:\s{4,}.*\n|\n)*)", path.read_text()):
            match = re.search(r"seqvit(?:\}|\s)+(\w+)", body.split("shell:")[-1]) if "shell:" in body else None
            if match:
                found[rule] = match.group(1)
    return found


@pytest.mark.parametrize("rule", sorted(stage_modules()))
def test_hash_covers_the_modules_its_command_imports(rule):
    """The modules the rule's `seqvit <command>` imports (its handler's imports in cli.py) are
    hashed: a rule naming the wrong module would not rerun when the stage's code changes."""
    import ast
    import inspect

    from seqvit.cli import build_parser

    command = rule_commands().get(rule)
    if command is None:  # train: its shell starts "{params.seqvit} train"
        command = rule
    parser = build_parser()
    handler = next(a for a in parser._actions if a.dest == "command").choices[command].get_default("func")
    imported = {
        node.module.removeprefix("seqvit.")
        for node in ast.walk(ast.parse(inspect.getsource(handler).strip()))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqvit.")
    }
    covered = set(code.import_closure(*stage_modules()[rule]))
    imported -= {"config", "layout", "errors"}  # the CLI's own plumbing, not the stage's code
    assert imported <= covered, imported - covered
