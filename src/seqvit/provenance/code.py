"""Hashes of the package's source, so Snakemake reruns a stage when the code it runs changes.

Snakemake cannot see Python imports; each rule passes the hash of the subpackages it depends on
as a param, and a changed param reruns the job.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


def source_hash(*parts: str) -> str:
    """sha256 (first 16 hex digits) over the .py files of the named modules or subpackages."""
    digest = hashlib.sha256()
    for part in parts:
        target = PACKAGE / part
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for path in files:
            digest.update(str(path.relative_to(PACKAGE)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
