"""ERA5 from the Copernicus Climate Data Store, through the `cdsapi` client, unattended.

`cdsapi` (0.7.7) hands personal-access-token keys to ecmwf-datastores-client, which submits a
job, polls its status and downloads the result (resuming a dropped transfer with a Range request
and checking the announced size). Around it this module adds what an unattended multi-decade
download needs:

* credentials found the way cdsapi finds them (CDSAPI_URL/CDSAPI_KEY, CDSAPI_RC, ~/.cdsapirc),
  with one-line errors for missing, old-style (UID:KEY) and rejected keys, licences not
  accepted, unknown datasets and invalid requests; the key never reaches a log, an exception or
  a manifest;
* bounded retries: the client's own fixed-interval retries are kept short (source.retry), and
  whole fetches are retried with exponential backoff and jitter, then fail naming the request;
* a request the CDS finds too large is halved in time and the halves fetched and joined;
* submitted job ids are kept on disk (state.PendingJobs), so a killed download resumes the same
  job instead of queueing again;
* every delivery is normalized to one CDS-layout netCDF file (a zip of instantaneous and
  accumulated members, GRIB) and verified before it is renamed into place (commit.commit).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import importlib.util
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from seqvit.data import era5
from seqvit.data.sources import state
from seqvit.data.sources.commit import commit
from seqvit.data.sources.verify import VerificationError, expectation_for, verify_file
from seqvit.data.sources.writer import write_cds_netcdf
from seqvit.errors import SeqvitError

LOG = logging.getLogger("seqvit.download")

CDS_URL = "https://cds.climate.copernicus.eu/api"
PROFILE_URL = "https://cds.climate.copernicus.eu/profile"
STATUS_URL = "https://status.ecmwf.int"
RETRIABLE_STATUS = {408, 429, 500, 502, 503, 504}
_HOW_TO_CREATE = (
    f"create ~/.cdsapirc with the two lines 'url: {CDS_URL}' and 'key: <personal access token>' "
    f"(the token is on your CDS profile page, {PROFILE_URL}, after logging in), "
    "or set the environment variables CDSAPI_URL and CDSAPI_KEY"
)


# ---- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try before giving up on one request (config section source.retry; defaults in the schema).

    The client itself tries each HTTP call client_retry_max times (default 1: not again), so that
    every fault comes back here, where waits start short (backoff_s), double up to backoff_max_s,
    honour the server's Retry-After, and stop after `attempts` fetches; a job already submitted is
    resumed, never submitted twice.
    """

    attempts: int  # whole fetches of one request (submit or resume, wait, download)
    backoff_s: float  # wait before the second attempt; doubles each time
    backoff_max_s: float
    client_retry_max: int  # tries of each HTTP call inside the cdsapi client
    client_sleep_max: float  # the longest pause between status polls of a running job
    timeout_s: float  # per HTTP call


def retry_settings(cfg: dict) -> RetrySettings:
    from seqvit.config import load_schema

    schema = load_schema()["properties"]["source"]["properties"]["retry"]["properties"]
    raw = (cfg.get("source") or {}).get("retry") or {}
    values: dict[str, Any] = {}  # int or float, as the schema types each key
    for key, spec in schema.items():
        value = raw.get(key, spec["default"])
        wanted = int if spec["type"] == "integer" else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < (1 if wanted is int else 0):
            raise SeqvitError(
                f"config key source.retry.{key} must be a {'positive integer' if wanted is int else 'number >= 0'}"
            )
        if wanted is int and not float(value).is_integer():
            raise SeqvitError(f"config key source.retry.{key} must be an integer")
        values[key] = wanted(value)
    unknown = sorted(set(raw) - set(schema))
    if unknown:
        raise SeqvitError(f"config key source.retry.{unknown[0]} is unknown; known: {sorted(schema)}")
    return RetrySettings(**values)


def backoff_delay(settings: RetrySettings, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempt` + 1: exponential, capped, with jitter (half to full)."""
    ceiling = min(settings.backoff_max_s, settings.backoff_s * 2 ** max(0, attempt - 1))
    return rng.uniform(ceiling / 2, ceiling)


# ---- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    url: str
    key: str = field(repr=False)
    origin: str  # where they came from, for messages (never the key itself)

    def __repr__(self) -> str:
        return f"Credentials(url={self.url!r}, key=<hidden>, origin={self.origin!r})"


def find_credentials() -> Credentials:
    """URL and key exactly as cdsapi reads them, checked for the current CDS."""
    import cdsapi.api

    rc = os.environ.get("CDSAPI_RC", os.path.expanduser("~/.cdsapirc"))
    try:
        url, key, _verify = cdsapi.api.get_url_key_verify(None, None, None)
    except Exception:
        raise SeqvitError(
            f"no CDS credentials (no CDSAPI_URL/CDSAPI_KEY, and {rc} is missing or incomplete): {_HOW_TO_CREATE}"
        ) from None
    from_env = os.environ.get("CDSAPI_KEY") is not None and os.environ.get("CDSAPI_KEY") == key
    origin = "CDSAPI_KEY" if from_env else rc
    key = key.strip()
    if not key or not url:
        raise SeqvitError(f"the CDS credentials in {origin} are empty: {_HOW_TO_CREATE}")
    if ":" in key:
        raise SeqvitError(
            f"the CDS key in {origin} has the old UID:KEY form, which the current CDS rejects; replace it with "
            f"your personal access token from {PROFILE_URL} (and set url: {CDS_URL})"
        )
    if re.search(r"/api/v2/?$", url):
        raise SeqvitError(f"the CDS url in {origin} ({url}) is the retired CDS API; set url: {CDS_URL}")
    return Credentials(url=url.rstrip("/"), key=key, origin=origin)


class Redactor:
    """Replaces the key (whole or its longer fragments) in any text that may reach a user."""

    def __init__(self, secret: str):
        self.secret = secret

    def __call__(self, text) -> str:
        text = str(text)
        if self.secret and self.secret in text:
            text = text.replace(self.secret, "<key hidden>")
        return text


# ---- errors the fetch loop acts on ------------------------------------------------------------


class _Transient(Exception):
    """Worth another try after a pause (429, 5xx, timeouts, dropped connections, bad size)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # the server's Retry-After, in seconds


class _TooLarge(Exception):
    """The CDS refuses the request's cost: split it."""


def _http_details(exc) -> tuple[int | None, str, str]:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    title = detail = ""
    if response is not None:
        try:
            body = response.json()
            if isinstance(body, dict):
                title = str(body.get("title") or "")
                detail = str(body.get("detail") or "")
        except Exception:
            pass
    if not title:
        title = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return status, title, detail


def _retry_after_seconds(exc) -> float | None:
    """The Retry-After header of an HTTP error in seconds (delta-seconds or an HTTP date), if any."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def _failure_reason(exc) -> str:
    """The CDS's own account of a failed job: title, detail and the end of its traceback."""
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else None
    except Exception:
        body = None
    if not isinstance(body, dict):
        return str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
    parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
    traceback = str(body.get("traceback") or "").strip().splitlines()
    if traceback:
        parts.append("; ".join(line.strip() for line in traceback[-3:]))
    return ": ".join(parts) or str(exc)


# ---- the client -------------------------------------------------------------------------------


class CdsSource:
    """Fetch requests from the CDS into verified raw files."""

    kind = "cds"

    def __init__(
        self, cfg: dict, raw_dir, log: logging.Logger = LOG, rng: random.Random | None = None, sleep=time.sleep
    ):
        self.raw_dir = Path(raw_dir)
        self.retry = retry_settings(cfg)
        if (cfg.get("source") or {}).get("data_format") == "grib" and importlib.util.find_spec("cfgrib") is None:
            raise SeqvitError(f"config key source.data_format is grib, and {era5.GRIB_HINT}; or use data_format netcdf")
        self.log = log
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.credentials = find_credentials()  # before anything is sent: a clear error if missing
        self.redact = Redactor(self.credentials.key)
        self._client = None

    # the cdsapi client, created on first use (creating it already talks to the CDS)
    @property
    def client(self):
        if self._client is None:
            import cdsapi

            client = cdsapi.Client(
                url=self.credentials.url,
                key=self.credentials.key,
                quiet=False,
                debug=self.log.isEnabledFor(logging.DEBUG),
                progress=False,
                timeout=self.retry.timeout_s,
                retry_max=self.retry.client_retry_max,
                sleep_max=self.retry.client_sleep_max,
                wait_until_complete=False,
                info_callback=self._relay(logging.INFO),
                warning_callback=self._relay(logging.WARNING),
                error_callback=self._relay(logging.ERROR),
                debug_callback=self._relay(logging.DEBUG),
            )
            if not hasattr(client, "client"):  # the legacy class would speak the retired API
                raise SeqvitError(
                    f"cdsapi chose its legacy client for the key in {self.credentials.origin}; use a personal access token"
                )
            self._client = client
        return self._client

    def _relay(self, level: int):
        def relay(message, *args, **_kwargs):
            try:
                text = str(message) % args if args else str(message)
            except (TypeError, ValueError):
                text = " ".join(str(part) for part in (message, *args))
            self.log.log(level, "cds: %s", self.redact(text))

        return relay

    # one raw file
    def fetch(self, request) -> dict:
        started = state.now()
        final = request.path(self.raw_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        pending = state.PendingJobs(request, self.raw_dir)
        with tempfile.TemporaryDirectory(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent) as tmp:
            work = Path(tmp)
            parts = self._fetch_parts(request, work, pending)
            if len(parts) == 1:
                candidate, summary = parts[0]["path"], parts[0].pop("summary")
            else:
                candidate, summary = self._join(request, parts, work), None
            record = {
                "source": "cds",
                "dataset": request.dataset,
                "cds_url": self.credentials.url,
                "parts": [{k: v for k, v in part.items() if k not in ("path", "summary")} for part in parts],
                "times": {"started": started, "downloaded": max(p["downloaded"] for p in parts)},
            }
            manifest = commit(
                request, self.raw_dir, candidate, expectation_for(request, request.expected_grid()), record, summary
            )
        pending.clear()
        return manifest

    def _fetch_parts(self, request, work: Path, pending) -> list[dict]:
        queue = [request]
        done: list[dict] = []
        while queue:
            part = queue.pop(0)
            try:
                done.append(self._obtain(part, Path(tempfile.mkdtemp(prefix="part", dir=work)), pending))
            except _TooLarge as exc:
                halves = part.halves()
                if halves is None:
                    raise SeqvitError(
                        f"CDS request {request.id}: the CDS finds even one time step too large ({exc}); "
                        "request fewer variables or levels per group"
                    ) from None
                self.log.warning(
                    "%s: the CDS says the request is too large (%s); splitting it into %s and %s",
                    part.label(),
                    exc,
                    halves[0].label(),
                    halves[1].label(),
                )
                queue[0:0] = list(halves)
        return done

    def _obtain(self, part, work: Path, pending) -> dict:
        """Fetch one part, normalized and verified; a damaged download is fetched again."""
        expected = expectation_for(part, part.expected_grid())
        for attempt in range(1, self.retry.attempts + 1):
            delivered = work / "delivery"
            info = self._fetch_with_retries(part, delivered, pending)
            try:
                info["delivered"] = {
                    "format": era5.detect_format(delivered),
                    "size": delivered.stat().st_size,
                    "sha256": state.sha256_file(delivered),
                }
                path = self._normalize(delivered, work, part)
                summary = verify_file(
                    path, expected, label=f"CDS request {part.id} ({part.label()})", target=part.path(self.raw_dir)
                )
            except VerificationError as exc:
                if not exc.unreadable:
                    pending.forget(part)  # the next run asks again: the CDS may have the data by then
                    raise
                if attempt == self.retry.attempts:
                    raise
                delay = backoff_delay(self.retry, attempt, self.rng)
                self.log.warning(
                    "%s; fetching it again in %.0f s (attempt %d of %d)", exc, delay, attempt + 1, self.retry.attempts
                )
                self.sleep(delay)
                continue
            return {"path": path, "summary": summary, "label": part.label(), "cds_request": part.cds_request(), **info}
        raise AssertionError("unreachable")

    def _fetch_with_retries(self, part, target: Path, pending) -> dict:
        last = ""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return self._fetch_once(part, target, pending)
            except _Transient as exc:
                last = str(exc)
                if attempt == self.retry.attempts:
                    break
                delay = backoff_delay(self.retry, attempt, self.rng)
                if exc.retry_after is not None:  # the server knows best, within our bound
                    delay = min(max(delay, exc.retry_after), self.retry.backoff_max_s)
                self.log.warning(
                    "CDS request %s (%s): %s; trying again in %.0f s (attempt %d of %d)",
                    part.id,
                    part.label(),
                    last,
                    delay,
                    attempt + 1,
                    self.retry.attempts,
                )
                self.sleep(delay)
        raise SeqvitError(
            f"CDS request {part.id} ({part.label()}) failed {self.retry.attempts} times; last error: {last}. "
            f"The CDS may be busy or down ({STATUS_URL}): rerun the same command later "
            "(verified files are kept, only missing ones are fetched)"
        )

    def _fetch_once(self, part, target: Path, pending) -> dict:
        import requests
        from ecmwf.datastores.processing import DownloadError, ProcessingFailedError

        info: dict = {}
        remote = None
        try:
            remote = self._resume(part, pending)
            if remote is None:
                info["submitted"] = state.now()
                remote = self.client.retrieve(part.dataset, part.cds_request())
                pending.set(part, remote.request_id)
            else:
                info["resumed"] = state.now()
            info["request_id"] = remote.request_id
            results = remote.get_results()
            target.unlink(missing_ok=True)
            results.download(str(target))
            info["downloaded"] = state.now()
            info["cds_size"] = results.content_length
            checksum = results.asset.get("file:checksum")
            if checksum:
                info["cds_checksum"] = checksum
            return info
        except requests.HTTPError as exc:
            # The client asks for the results of a failed job and gets 400 with the CDS's reason in
            # the body: a failed job, not an invalid request (that is refused at submission).
            if remote is not None and self._job_status(remote) in ("failed", "rejected"):
                raise self._failed_job(part, pending, _failure_reason(exc)) from None
            raise self._classify(exc, part) from None
        except ProcessingFailedError as exc:
            raise self._failed_job(part, pending, str(exc)) from None
        except DownloadError as exc:
            raise _Transient(self.redact(str(exc))) from None
        except AssertionError as exc:  # multiurl checks the received size with an assert
            if "size" not in str(exc).lower():
                raise
            raise _Transient(f"download incomplete: {self.redact(str(exc))}") from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"connection problem ({type(exc).__name__}: {self.redact(str(exc))[:300]})") from None

    @staticmethod
    def _job_status(remote) -> str | None:
        try:
            return remote.status
        except Exception:  # the status itself could not be read: not known to have failed
            return None

    def _failed_job(self, part, pending, reason: str) -> Exception:
        """A job that ended failed: submitted anew (a bounded number of times), with the CDS's reason."""
        message = self.redact(reason).strip().replace("\n", " | ")
        pending.forget(part)  # a failed job stays failed: submit anew next time
        if re.search(r"cost limit|too large", message, re.IGNORECASE):
            return _TooLarge(message)
        return _Transient(f"the CDS job failed: {message}")

    def _resume(self, part, pending):
        """The job submitted for `part` by an earlier run, if the CDS still has it in a usable state."""
        import requests

        job_id = pending.get(part)
        if not job_id:
            return None
        try:
            remote = self.client.client.get_remote(job_id)
            status = remote.status
        except requests.HTTPError as exc:
            if getattr(exc.response, "status_code", None) in (404, 410):
                self.log.info("CDS job %s of %s is gone; submitting the request again", job_id, part.id)
                pending.forget(part)
                return None
            raise
        if status in ("failed", "rejected", "dismissed", "deleted"):
            self.log.info("CDS job %s of %s is %s; submitting the request again", job_id, part.id, status)
            pending.forget(part)
            return None
        self.log.info("resuming CDS job %s of %s (%s)", job_id, part.id, status)
        return remote

    def _classify(self, exc, part) -> Exception:
        status, title, detail = _http_details(exc)
        title, detail = self.redact(title), self.redact(detail).replace("\n", " ")
        said = f"{status} {title}" + (f": {detail}" if detail else "")
        lowered = f"{title} {detail}".lower()
        if status == 401:
            return SeqvitError(
                f"the CDS rejected the API key from {self.credentials.origin} ({status} {title}); copy the current "
                f"personal access token from {PROFILE_URL} into it (key: <token>, url: {CDS_URL})"
            )
        if status == 403 and ("licence" in lowered or "license" in lowered):
            return SeqvitError(
                f"the CDS account has not accepted the licence of {part.dataset} ({said}); accept it once at "
                f"https://cds.climate.copernicus.eu/datasets/{part.dataset}?tab=download (Terms of use), then rerun"
            )
        if status in (403, 413) and ("cost" in lowered or "too large" in lowered or "limit" in lowered):
            return _TooLarge(said)
        if status == 404:
            return SeqvitError(
                f"the CDS has no dataset {part.dataset!r} ({said}); the ERA5 datasets are "
                "reanalysis-era5-single-levels and reanalysis-era5-pressure-levels"
            )
        if status in (400, 422):
            return SeqvitError(
                f"the CDS refused request {part.id} as invalid ({said}); check data.single_level, "
                f"data.pressure_level and data.levels against the download form of {part.dataset}"
            )
        if status is None or status in RETRIABLE_STATUS:
            return _Transient(said, _retry_after_seconds(exc))
        return SeqvitError(f"the CDS answered {said} to request {part.id} ({part.label()})")

    # ---- normalizing deliveries -------------------------------------------------------------

    def _normalize(self, delivered: Path, work: Path, part) -> Path:
        """One CDS-layout netCDF file from whatever the CDS delivered (kept as is when it is one)."""
        kind = era5.detect_format(delivered)
        if kind == "netcdf":
            return delivered
        members_dir = work / "members"
        members_dir.mkdir(exist_ok=True)
        try:
            members = era5.open_members(delivered, members_dir)
        except SeqvitError as exc:
            raise VerificationError(str(exc), unreadable=kind != "grib") from exc
        try:
            normalized = work / "normalized.nc"
            write_cds_netcdf(
                normalized,
                [era5.canonicalize(member, str(delivered)) for member in members],
                expver=_expver_by_time(members),
                history=f"seqvit: {kind} delivery of CDS request {part.id} ({part.label()}) written as one netCDF file",
            )
        finally:
            for member in members:
                member.close()
        delivered.unlink()
        shutil.rmtree(members_dir, ignore_errors=True)
        return normalized

    def _join(self, request, parts: list[dict], work: Path) -> Path:
        datasets = [xr.open_dataset(part["path"]) for part in parts]
        try:
            joined = work / "joined.nc"
            write_cds_netcdf(
                joined,
                [era5.canonicalize(ds, str(part["path"])) for ds, part in zip(datasets, parts)],
                expver=_expver_by_time(datasets),
                history=f"seqvit: {len(parts)} CDS requests joined into {request.id} (the CDS found it too large at once)",
            )
        finally:
            for ds in datasets:
                ds.close()
        return joined


def _expver_by_time(datasets) -> dict | None:
    """time -> expver from datasets in the current CDS layout, or None when any lacks it."""
    mapping: dict = {}
    for ds in datasets:
        if "expver" not in ds.variables or "expver" in ds.dims:
            return None
        time_name = (
            "valid_time" if "valid_time" in ds["expver"].dims else ds["expver"].dims[0] if ds["expver"].dims else None
        )
        if time_name is None:
            return None
        for when, value in zip(
            ds[time_name].values.astype("datetime64[ns]"), np.asarray(ds["expver"].values).astype(str)
        ):
            mapping[when] = value
    return mapping
