"""Raw ERA5 from a source other than the embedded one: cds, weatherbench2 or local.

    plan_requests(cfg)                   every request (= raw file) of the config, no network
    download(cfg, request_ids, raw_dir)  fetch what is missing, verify, record, rename into place

Every source ends in the same place: raw/{group}/{year}/{stem}.nc in the CDS netCDF layout,
verified against its request (seqvit.data.sources.verify), with a manifest in
raw/manifest/{group}/{year}/{stem}.json (request, CDS request ids, size, sha256, times). A file
whose manifest matches its request is never fetched again.
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol

from seqvit import lineage
from seqvit.data.sources import state
from seqvit.data.sources.plan import DOWNLOADERS, Request, describe, find_request, plan_requests, source_settings
from seqvit.errors import SeqvitError

__all__ = ["Request", "Source", "describe", "download", "find_request", "make_source", "plan_requests"]

LOG = logging.getLogger("seqvit.download")


class Source(Protocol):
    """What a downloading source implements (registered in plan.DOWNLOADERS).

    Built as cls(cfg, raw_dir, log) from the resolved config. fetch(request) writes the raw file
    of one request to request.path(raw_dir) in the CDS netCDF layout, verified against the request
    (seqvit.data.sources.verify) and put in place atomically, and returns its manifest (request,
    size, sha256, times and whatever identifies the delivery); download() adds the lineage and
    writes the manifest. A failure raises SeqvitError naming the request and the fix.
    """

    kind: str

    def fetch(self, request: Request) -> dict: ...


def source_class(kind: str) -> type:
    """The class registered for a downloading source kind."""
    if kind not in DOWNLOADERS:
        raise SeqvitError(SYNTHETIC_HINT if kind == "synthetic" else f"config key source.kind: unknown {kind!r}")
    module, name = DOWNLOADERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def make_source(cfg: dict, raw_dir, log: logging.Logger = LOG) -> Source:
    return source_class(source_settings(cfg).kind)(cfg, raw_dir, log)


SYNTHETIC_HINT = (
    "source.kind is synthetic: its raw files come from `seqvit synth`; set source.kind to cds, "
    "weatherbench2 or local to download"
)


def download(cfg: dict, request_ids, raw_dir, log: logging.Logger = LOG, source=None) -> dict[str, str]:
    """Fetch every planned request (or those named; None: all) that has no verified file yet into
    raw_dir (seqvit.layout.Layout(cfg).raw_dir in the workflow).

    Returns {request id: "fetched" | "kept"}. Stops at the first request that fails, with its
    error; files verified before it stay.
    """
    if source is None and source_settings(cfg).kind == "synthetic":
        raise SeqvitError(SYNTHETIC_HINT)
    if request_ids:
        requests = [find_request(cfg, request_id) for request_id in request_ids]
    else:
        requests = plan_requests(cfg)
    outcome: dict[str, str] = {}
    made_by = lineage.canonical(lineage.raw(cfg))
    for request in requests:
        if state.is_verified(request, raw_dir, made_by):
            log.info("%s: verified earlier, kept (%s)", request.id, request.path(raw_dir))
            state.adopt_lineage(request, raw_dir, made_by)
            outcome[request.id] = "kept"
            continue
        request.path(raw_dir).parent.mkdir(parents=True, exist_ok=True)
        with state.target_lock(request, raw_dir):
            if state.is_verified(request, raw_dir, made_by):  # another process finished it meanwhile
                outcome[request.id] = "kept"
                continue
            for leftover in state.remove_stale_temporaries(request.path(raw_dir)):
                log.info("removed %s, left by an interrupted run", leftover)
            if source is None:
                source = make_source(cfg, raw_dir, log)
            log.info("%s: fetching %s (%d fields)", request.id, request.label(), request.fields)
            manifest = source.fetch(request)
            # The source this file came from, for the stages that read it (seqvit.lineage); a
            # manifest without it (a crash just here) is not verified, so the file is fetched again.
            manifest = {**manifest, "lineage": made_by}
            state.write_json(request.manifest_path(raw_dir), manifest)
            log.info(
                "%s: verified and saved %s (%d bytes, sha256 %s)",
                request.id,
                request.path(raw_dir),
                manifest["size"],
                manifest["sha256"][:16],
            )
            outcome[request.id] = "fetched"
    return outcome
