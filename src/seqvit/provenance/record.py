"""What the provenance bundle records besides the results: the environment (git, packages,
hardware), Snakemake's job records and benchmarks, and the guard that keeps credentials out.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib.metadata as im
import json
import os
import platform
import re
import socket
import subprocess
import urllib.parse
from pathlib import Path

from seqvit.errors import SeqvitError

# The workflow's main Snakefile, set by the workflow for the provenance stage (seqvit provenance)
SNAKEFILE_ENV = "SEQVIT_SNAKEFILE"

PACKAGES = [
    "seqvit",
    "snakemake",
    "torch",
    "numpy",
    "xarray",
    "pandas",
    "netCDF4",
    "zarr",
    "scipy",
    "scikit-learn",
    "matplotlib",
    "cdsapi",
    "rocrate",
    "roc-validator",
    "deepspeed",
    "pyyaml",
]


# ---------------------------------------------------------------- secrets


def known_secrets() -> list[str]:
    """The CDS key(s) this process could see, to make sure none is ever written."""
    secrets = []
    if os.environ.get("CDSAPI_KEY"):
        secrets.append(os.environ["CDSAPI_KEY"].strip())
    rc = Path(os.environ.get("CDSAPI_RC", os.path.expanduser("~/.cdsapirc")))
    try:
        for line in rc.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "key" and value.strip():
                secrets.append(value.strip())
    except OSError:
        pass
    return [s for s in secrets if len(s) >= 6]


def check_no_secret(text: str, where: str, secrets: list[str]) -> None:
    for secret in secrets:
        if secret in text or (len(secret) >= 16 and secret[: len(secret) // 2] in text):
            raise SeqvitError(f"{where}: would contain the CDS key; refusing to write it (report this as a bug)")


# ---------------------------------------------------------------- environment


def sha256_path(path: Path) -> tuple[str, int]:
    """sha256 and size of a file; of a directory, the sha256 over its files' relative paths and sha256."""
    path = Path(path)
    if path.is_dir():
        digest, size = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h, n = sha256_path(f)
            digest.update(f"{f.relative_to(path).as_posix()}\0{h}\n".encode())
            size += n
        return digest.hexdigest(), size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), path.stat().st_size


_URL_SCHEMES = ("https", "http", "ssh", "git", "git+ssh", "ssh+git")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:(?!//)\S+$")  # git@github.com:owner/repo.git


def public_remote(url: str | None) -> str | None:
    """A git remote as a URL others can use, with no credential; None for a local path or file:// URL."""
    url = (url or "").strip()
    if _SCP_LIKE.match(url):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in _URL_SCHEMES or not host:
        return None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    # an https user name may be a token (https://TOKEN@host/...); an ssh user name without password is not
    ssh = parts.scheme.lower() in ("ssh", "git+ssh", "ssh+git")
    user = userinfo if ssh and userinfo and ":" not in userinfo else ""
    netloc = f"{user}@{hostport}" if user else hostport
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))  # a query may carry a token too


def git_state(repo: Path) -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    head = git("rev-parse", "HEAD")
    if head.returncode:
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=no")
    remote = public_remote(git("config", "--get", "remote.origin.url").stdout)
    return {
        "commit": head.stdout.strip(),
        "dirty": bool(status.stdout.strip()),
        "changed_files": [line[3:] for line in status.stdout.splitlines()],
        "remote": remote or None,
    }


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = im.version(name)
        except im.PackageNotFoundError:
            continue
    return out


def hardware(record_host: bool = False) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpus = None
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            gpus = f"{len(names)} x {names[0]}"
    except Exception:
        pass
    out = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": mem_gb,
        "gpus": gpus,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }
    if record_host:
        out["host"] = socket.gethostname()
    return out


def environment(workflow_dir: Path, record_hosts: bool = False) -> dict:
    """Python, package versions, hardware and the git state of the workflow's checkout."""
    return {
        "python": platform.python_version(),
        "packages": package_versions(),
        "hardware": hardware(record_hosts),
        "git": git_state(workflow_dir),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- Snakemake job records


def _decode_key(metadata_dir: Path, path: Path) -> str:
    parts = path.relative_to(metadata_dir).parts
    b64 = "".join(p[1:] if p.startswith("@") else p for p in parts)
    return base64.urlsafe_b64decode(b64.encode()).decode()


def snakemake_jobs(snakemake_dir: Path, results_root: Path, workdir: Path | None = None) -> list[dict]:
    """One dict per job that produced files under results_root and whose outputs still exist.

    Snakemake keeps one record per output file; the outputs of one job share rule, job hash and
    end time (their start times differ by microseconds; the earliest is the job's). Sorted by start.
    """
    workdir = Path(workdir or Path.cwd()).resolve()
    metadata_dir = Path(snakemake_dir) / "metadata"
    if not metadata_dir.is_dir():
        raise SeqvitError(
            f"{metadata_dir}: no Snakemake job records; run the workflow with Snakemake first "
            "(or pass --snakemake-dir, the .snakemake folder of the working directory it ran in)"
        )
    root = (workdir / results_root).resolve()
    jobs: dict = {}
    for record_path in sorted(p for p in metadata_dir.rglob("*") if p.is_file()):
        try:
            output = _decode_key(metadata_dir, record_path)
            record = json.loads(record_path.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        out_abs = (workdir / output).resolve()
        if record.get("incomplete") or not out_abs.exists() or root not in out_abs.parents:
            continue
        # Snakemake stamps each output's start a few microseconds apart; the end time is the job's.
        key = (record.get("rule"), record.get("job_hash"), record.get("endtime"))
        job = jobs.setdefault(key, {**record, "output": []})
        job["output"].append(output)
        if record.get("starttime") and (not job.get("starttime") or record["starttime"] < job["starttime"]):
            job["starttime"] = record["starttime"]
    return sorted(jobs.values(), key=lambda j: (j.get("starttime") or 0, j.get("rule") or ""))


def benchmark_for(job: dict, workdir: Path) -> dict | None:
    """The job's benchmark row (the workflow writes logs/X.log beside benchmarks/X.tsv)."""
    import pandas as pd

    for log in job.get("log") or []:
        if "/logs/" not in log and not log.startswith("logs/"):
            continue
        bench = Path(workdir) / (
            log.replace("/logs/", "/benchmarks/", 1) if "/logs/" in log else "benchmarks/" + log[5:]
        )
        bench = bench.with_suffix(".tsv")
        if bench.exists():
            row = pd.read_csv(bench, sep="\t").iloc[-1].to_dict()
            return {
                k: (None if pd.isna(v) else v)
                for k, v in row.items()
                if k in ("s", "max_rss", "max_vms", "cpu_time", "mean_load")
            }
    return None


def iso_time(ts) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds") if ts else None
