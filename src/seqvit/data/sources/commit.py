"""The last step of every source: verify a candidate file, record it, rename it into place."""

from __future__ import annotations

import os
from pathlib import Path

from seqvit.data.sources import state
from seqvit.data.sources.verify import Expectation, verify_file
from seqvit.io import atomic_path


def commit(
    request, raw_dir, candidate: Path, expectation: Expectation, record: dict, summary: dict | None = None
) -> dict:
    """Move `candidate` into the request's raw file if it verifies; return the manifest written.

    `summary` is the result of verify_file on exactly this candidate when the caller has just
    verified it (a multi-GB file is then not scanned twice). The manifest is written before the
    data file is renamed into place, so a data file present always has its manifest. On any
    failure the candidate is deleted and nothing changes.
    """
    final = request.path(raw_dir)
    with atomic_path(final) as tmp:
        os.replace(candidate, tmp)
        if summary is None:
            summary = verify_file(tmp, expectation, label=request.id, target=final)
        manifest = {
            "manifest_version": state.MANIFEST_VERSION,
            "file": request.relpath(),
            "request": request.to_json(),
            "size": tmp.stat().st_size,
            "sha256": state.sha256_file(tmp),
            "content": summary,
            **record,
        }
        manifest.setdefault("times", {})["verified"] = state.now()
        state.write_json(request.manifest_path(raw_dir), manifest)
    return manifest
