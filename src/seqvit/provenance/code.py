"""Hashes of the package's source, so Snakemake reruns a stage when the code it runs changes.

Snakemake cannot see Python imports. Each rule names the module its stage runs
(`stage_hash("data.regrid")`); the hash covers that module and every `seqvit` module it imports,
directly or through others, at the top of a file or inside a function (read from the source, so
lazy imports count too). An edit anywhere in that closure reruns the stage, and nowhere else.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    """The file of module `seqvit.a.b` (given as "a.b"): a.b.py or a/b/__init__.py; None if neither."""
    base = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(name: str) -> set[str]:
    """The seqvit modules (names relative to the package) that module `name` imports anywhere."""
    path = _module_file(name)
    found: set[str] = set()
    if path is None:
        return found
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from seqvit.data import fields` imports the module seqvit.data.fields
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == "seqvit" or target.startswith("seqvit."):
                relative = target.removeprefix("seqvit").removeprefix(".")
                if _module_file(relative) is not None:
                    found.add(relative)
                    # importing a.b.c runs the __init__ of a and a.b first
                    parts = relative.split(".")
                    found.update(".".join(parts[:k]) for k in range(1, len(parts)) if _module_file(".".join(parts[:k])))
    return found


@cache
def import_closure(*modules: str) -> tuple[str, ...]:
    """`modules` and every seqvit module they import, transitively; sorted names ("data.regrid")."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if _module_file(name) is None:
            raise ValueError(f"seqvit has no module {name!r}")
        seen.add(name)
        parts = name.split(".")  # importing a.b runs the __init__ of the package a first
        todo += [".".join(parts[:k]) for k in range(len(parts))]
        todo += sorted(_imports(name) - seen)
    return tuple(sorted(seen))


def stage_hash(*modules: str) -> str:
    """sha256 (first 16 hex digits) over the source of `modules` and their import closure."""
    digest = hashlib.sha256()
    for name in import_closure(*modules):
        path = _module_file(name)
        assert path is not None
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
