"""What a download leaves on disk besides the data: manifests, pending CDS jobs, locks.

raw/manifest/{group}/{year}/{stem}.json          the manifest of a verified file (written just
                                                  before the file is renamed into place)
raw/manifest/{group}/{year}/{stem}.pending.json  CDS request ids submitted but not yet fetched,
                                                  so a killed download resumes the same job
                                                  instead of queueing a new one
raw/manifest/{group}/{year}/{stem}.lock          held while a process works on the file
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path

MANIFEST_VERSION = 1


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def sha256_file(path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # a damaged side file is as good as none: the data is fetched again


def is_verified(request, raw_dir, lineage: dict | None = None) -> bool:
    """The file is in place and its manifest says it was verified for exactly this request (and,
    given `lineage`, fetched from the source that lineage names)."""
    data = request.path(raw_dir)
    manifest = read_json(request.manifest_path(raw_dir))
    if manifest is None or not data.exists():
        return False
    # A manifest from before lineages were recorded names no source: kept (download() adds the
    # lineage), rather than fetching terabytes again.
    if lineage is not None and manifest.get("lineage", lineage) != lineage:
        return False
    return manifest.get("request") == request.to_json() and manifest.get("size") == data.stat().st_size


def adopt_lineage(request, raw_dir, lineage: dict) -> None:
    """Record `lineage` in a verified file's manifest that has none yet (written before lineages were)."""
    path = request.manifest_path(raw_dir)
    manifest = read_json(path)
    if manifest is not None and "lineage" not in manifest:
        write_json(path, {**manifest, "lineage": lineage})


@contextlib.contextmanager
def target_lock(request, raw_dir):
    """Exclusive right to work on one raw file; released by the OS even if the process is killed."""
    lock_path = request.manifest_path(raw_dir).with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SeqvitError(
                    f"{request.path(raw_dir)}: another seqvit download is working on it (lock {lock_path}); "
                    "wait for that process to finish, or stop it and rerun"
                ) from None
            raise
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete what a killed run left beside `final` (only call while holding its lock)."""
    removed: list[Path] = []
    if not final.parent.exists():
        return removed
    for leftover in final.parent.glob(f".{final.name}.*.tmp"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


class PendingJobs:
    """Request ids of CDS jobs submitted for one raw file (one per part), kept across runs."""

    def __init__(self, request, raw_dir):
        self.path = request.manifest_path(raw_dir).with_suffix(".pending.json")
        self.request = request.to_json()
        saved = read_json(self.path)
        self.jobs: dict[str, str] = dict(saved["jobs"]) if saved and saved.get("request") == self.request else {}

    @staticmethod
    def key(part) -> str:
        return json.dumps({"days": list(part.days), "hours": list(part.hours)}, sort_keys=True)

    def get(self, part) -> str | None:
        return self.jobs.get(self.key(part))

    def set(self, part, request_id: str) -> None:
        self.jobs[self.key(part)] = request_id
        write_json(self.path, {"request": self.request, "jobs": self.jobs, "updated": now()})

    def forget(self, part) -> None:
        if self.jobs.pop(self.key(part), None) is not None:
            write_json(self.path, {"request": self.request, "jobs": self.jobs, "updated": now()})

    def clear(self) -> None:
        self.jobs = {}
        self.path.unlink(missing_ok=True)
