"""A stand-in for the Copernicus CDS retrieve API on 127.0.0.1, with injectable faults.

It speaks the protocol that cdsapi 0.7.7 (through ecmwf-datastores-client) uses against the
current CDS, as recorded in the project's notes on the CDS API:

    GET  {api}/catalogue/v1/messages
    GET  {api}/retrieve/v1/processes/{dataset}
    POST {api}/retrieve/v1/processes/{dataset}/execution   {"inputs": {...}} -> 201, job with a monitor link
    GET  {api}/retrieve/v1/jobs/{id}                        status: accepted | running | successful | failed
    GET  {api}/retrieve/v1/jobs/{id}/results                asset {href, file:size, type, file:checksum}
    HEAD/GET /download/{id}.nc|.zip                         the file (Range requests allowed)

Authentication is the PRIVATE-TOKEN header: a wrong token gets 401 "Authentication failed".
The files it serves are ERA5 netCDF in the layout the CDS writes today (valid_time,
pressure_level descending, latitude 90 -> -90, longitude from 0, scalar number, expver along
time), or a zip of stepType-instant.nc and stepType-accum.nc when instantaneous and
accumulated variables are mixed. It is deliberately independent of seqvit's own code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import xarray as xr

SHORT_NAMES = {
    "reanalysis-era5-single-levels": {
        "2m_temperature": ("t2m", "instant", "K"),
        "10m_u_component_of_wind": ("u10", "instant", "m s**-1"),
        "mean_sea_level_pressure": ("msl", "instant", "Pa"),
        "total_precipitation": ("tp", "accum", "m"),
        "toa_incident_solar_radiation": ("tisr", "accum", "J m**-2"),
    },
    "reanalysis-era5-pressure-levels": {
        "temperature": ("t", "instant", "K"),
        "geopotential": ("z", "instant", "m**2 s**-2"),
        "u_component_of_wind": ("u", "instant", "m s**-1"),
        "v_component_of_wind": ("v", "instant", "m s**-1"),
    },
}


class Faults:
    """What the server does wrong, set by a test before (or during) a download."""

    def __init__(self):
        self.http = {}  # endpoint -> deque of HTTP statuses to answer before behaving
        self.retry_after: float | None = None  # Retry-After header (seconds) sent with injected faults
        self.delays = {}  # endpoint -> deque of seconds to stall before answering
        self.truncate_downloads = 0  # next n downloads send half the file, then drop the connection
        self.corrupt_downloads = 0  # next n downloads send garbage of the right size
        self.stall_download: threading.Event | None = None  # send half, then wait for this event
        self.drop_time_steps = 0  # files lack their last n time steps
        self.empty_field: tuple[str, int] | None = None  # (short name, time index) entirely NaN
        self.era5t_from: str | None = None  # time steps from this date carry expver 0005
        self.max_fields: int | None = None  # larger requests: 403 cost limits exceeded
        self.licence_accepted = True
        self.fail_jobs = 0  # next n jobs end in status failed


class FakeCds:
    def __init__(self, token: str = "0f8c1e2d-test-token-5a7b"):
        self.token = token
        self.faults = Faults()
        self.jobs: dict[str, dict] = {}
        self.calls: list[tuple] = []  # (method, endpoint, status, range header)
        self.download_started = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def root(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.root}/api"

    def start(self) -> FakeCds:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.faults.stall_download is not None:
            self.faults.stall_download.set()
        self._server.shutdown()
        self._server.server_close()

    # fault helpers
    def fail(self, endpoint: str, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next `times` calls to endpoint (process, execution, job, results, download) with
        `status`, and a Retry-After header when given."""
        self.faults.http.setdefault(endpoint, deque()).extend([status] * times)
        self.faults.retry_after = retry_after

    def delay(self, endpoint: str, seconds: float, times: int = 1) -> None:
        self.faults.delays.setdefault(endpoint, deque()).extend([seconds] * times)

    def count(self, endpoint: str, method: str | None = None, status: int | None = None) -> int:
        return sum(
            1
            for m, e, s, _ in self.calls
            if e == endpoint and (method is None or m == method) and (status is None or s == status)
        )

    def range_requests(self) -> list[str]:
        return [r for m, e, s, r in self.calls if e == "download" and r]

    # data
    def make_file(self, dataset: str, inputs: dict) -> tuple[bytes, str]:
        """The delivery for a request: (bytes, extension)."""
        names = SHORT_NAMES[dataset]
        # MARS order: east-west (longitude) increment first, then north-south
        dlon, dlat = [float(v) for v in inputs.get("grid", [0.25, 0.25])]
        north, west, south, east = [float(v) for v in inputs.get("area", [90, 0, -90, 360 - dlon])]
        lat = north - dlat * np.arange(int(math.floor((north - south) / dlat + 1e-6)) + 1)
        lon = west + dlon * np.arange(int(math.floor((east - west) / dlon + 1e-6)) + 1)
        stamps = []
        for year in inputs["year"]:
            for month in inputs["month"]:
                for day in inputs["day"]:
                    for clock in inputs["time"]:
                        try:
                            stamps.append(dt.datetime(int(year), int(month), int(day), int(clock[:2])))
                        except ValueError:  # 31 February: the CDS skips impossible dates
                            pass
        stamps.sort()
        if self.faults.drop_time_steps:
            stamps = stamps[: -self.faults.drop_time_steps]
        times = np.array(stamps, dtype="datetime64[ns]")
        levels = [float(v) for v in inputs.get("pressure_level", [])]
        levels.sort(reverse=True)
        expver = np.array(["0001"] * len(times))
        if self.faults.era5t_from:
            expver[times >= np.datetime64(self.faults.era5t_from)] = "0005"
        streams: dict[str, dict] = {}
        for position, cds_name in enumerate(inputs["variable"]):
            short, step_type, units = names[cds_name]
            shape = (len(times), *([len(levels)] if levels else []), len(lat), len(lon))
            hours = (times - times[0]).astype("timedelta64[h]").astype(np.float32) if len(times) else np.zeros(0)
            field = (
                250.0 + 20.0 * np.cos(np.deg2rad(lat))[:, None] + 3.0 * np.sin(np.deg2rad(lon))[None, :] + position
            ).astype(np.float32)
            values = np.broadcast_to(field, shape).copy()
            values += hours.reshape((-1,) + (1,) * (len(shape) - 1)) * 0.01
            if self.faults.empty_field and self.faults.empty_field[0] == short:
                values[self.faults.empty_field[1]] = np.nan
            dims = ("valid_time", *(["pressure_level"] if levels else []), "latitude", "longitude")
            attrs = {
                "units": units,
                "long_name": cds_name.replace("_", " "),
                "standard_name": "unknown",
                "GRIB_stepType": step_type,
            }
            streams.setdefault(step_type, {})[short] = xr.Variable(dims, values, attrs)
        files = {}
        for step_type, variables in streams.items():
            coords = {
                "number": xr.Variable((), np.int64(0)),
                "valid_time": xr.Variable("valid_time", times),
                "latitude": xr.Variable("latitude", lat, {"units": "degrees_north"}),
                "longitude": xr.Variable("longitude", lon, {"units": "degrees_east"}),
                "expver": xr.Variable("valid_time", expver),
            }
            if levels:
                coords["pressure_level"] = xr.Variable("pressure_level", np.array(levels), {"units": "hPa"})
            ds = xr.Dataset(variables, coords=coords, attrs={"Conventions": "CF-1.7", "institution": "ECMWF"})
            files[step_type] = _netcdf_bytes(ds)
        if len(files) == 1:
            return next(iter(files.values())), "nc"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for step_type, payload in files.items():
                archive.writestr(f"data_stream-oper_stepType-{step_type}.nc", payload)
        return buffer.getvalue(), "zip"


def _netcdf_bytes(ds: xr.Dataset) -> bytes:
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "data.nc")
        encoding = {"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}}
        ds.to_netcdf(path, engine="netcdf4", encoding=encoding)
        with open(path, "rb") as handle:
            return handle.read()


def _handler_for(server: FakeCds):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

        def log_message(self, *args):  # quiet
            pass

        # ---- plumbing ----
        def _endpoint(self) -> tuple[str, dict]:
            path = self.path.split("?", 1)[0]
            patterns = [
                ("messages", r"^/api/catalogue/v1/messages$"),
                ("process", r"^/api/retrieve/v1/processes/(?P<dataset>[^/]+)$"),
                ("execution", r"^/api/retrieve/v1/processes/(?P<dataset>[^/]+)/execution$"),
                ("results", r"^/api/retrieve/v1/jobs/(?P<job>[^/]+)/results$"),
                ("job", r"^/api/retrieve/v1/jobs/(?P<job>[^/]+)$"),
                ("download", r"^/download/(?P<job>[^/.]+)\.(?P<ext>nc|zip)$"),
            ]
            for name, pattern in patterns:
                match = re.match(pattern, path)
                if match:
                    return name, match.groupdict()
            return "unknown", {}

        def _send_json(self, status: int, body: dict, endpoint: str, headers: dict | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self._record(endpoint, status)

        def _error(self, status: int, title: str, detail: str, endpoint: str) -> None:
            self._send_json(
                status, {"type": "about:blank", "title": title, "status": status, "detail": detail}, endpoint
            )

        def _record(self, endpoint: str, status: int) -> None:
            with server._lock:
                server.calls.append((self.command, endpoint, status, self.headers.get("Range")))

        def _injected(self, endpoint: str) -> bool:
            delays = server.faults.delays.get(endpoint)
            if delays:
                time.sleep(delays.popleft())
            queue = server.faults.http.get(endpoint)
            if queue:
                status = queue.popleft()
                titles = {
                    429: "Too Many Requests",
                    500: "Internal Server Error",
                    502: "Bad Gateway",
                    503: "Service Unavailable",
                    504: "Gateway Timeout",
                }
                headers = {"Retry-After": f"{server.faults.retry_after:g}"} if server.faults.retry_after else None
                body = {
                    "type": "about:blank",
                    "title": titles.get(status, "error"),
                    "status": status,
                    "detail": "injected fault",
                }
                self._send_json(status, body, endpoint, headers)
                return True
            return False

        def _authorized(self, endpoint: str) -> bool:
            if self.headers.get("PRIVATE-TOKEN") == server.token:
                return True
            self._error(401, "Authentication failed", "the API token is not valid", endpoint)
            return False

        def _job_document(self, job: dict) -> dict:
            base = f"{server.url}/retrieve/v1/jobs/{job['id']}"
            doc = {
                "processID": job["dataset"],
                "type": "process",
                "jobID": job["id"],
                "status": job["status"],
                "created": job["created"],
                "updated": job["created"],
                "links": [{"href": base, "rel": "self", "type": "application/json"}],
                "metadata": {"log": []},
            }
            if job["status"] in ("successful", "failed"):
                doc["links"].append({"href": f"{base}/results", "rel": "results"})
            return doc

        # ---- verbs ----
        def do_GET(self):
            self._get(head=False)

        def do_HEAD(self):
            self._get(head=True)

        def do_POST(self):
            endpoint, args = self._endpoint()
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if endpoint != "execution":
                return self._error(404, "Not Found", self.path, endpoint)
            if self._injected(endpoint) or not self._authorized(endpoint):
                return
            dataset = args["dataset"]
            if dataset not in SHORT_NAMES:
                return self._error(404, "Not Found", f"process {dataset} not found", endpoint)
            if not server.faults.licence_accepted:
                return self._error(
                    403,
                    "required licences not accepted",
                    f"required licences not accepted: please accept the licence of {dataset}",
                    endpoint,
                )
            inputs = body.get("inputs", {})
            unknown = [v for v in inputs.get("variable", []) if v not in SHORT_NAMES[dataset]]
            if unknown:
                return self._error(
                    400,
                    "invalid request",
                    f"Request has not produced a valid combination of values, please check your selection. variable: {unknown}",
                    endpoint,
                )
            fields = (
                len(inputs["variable"])
                * max(1, len(inputs.get("pressure_level", [])))
                * len(inputs["day"])
                * len(inputs["time"])
                * len(inputs["month"])
                * len(inputs["year"])
            )
            if server.faults.max_fields is not None and fields > server.faults.max_fields:
                return self._error(
                    403, "cost limits exceeded", "Your request is too large, please reduce your selection.", endpoint
                )
            job = {
                "id": str(uuid.uuid4()),
                "dataset": dataset,
                "inputs": inputs,
                "status": "accepted",
                "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                "fail": False,
            }
            if server.faults.fail_jobs:
                server.faults.fail_jobs -= 1
                job["fail"] = True
            with server._lock:
                server.jobs[job["id"]] = job
            doc = self._job_document(job)
            doc["links"].append({"href": f"{server.url}/retrieve/v1/jobs/{job['id']}", "rel": "monitor"})
            self._send_json(201, doc, endpoint)

        def _get(self, head: bool):
            endpoint, args = self._endpoint()
            if endpoint == "messages":
                return self._send_json(200, {"messages": []}, endpoint)
            if endpoint == "process":
                if self._injected(endpoint):
                    return
                if args["dataset"] not in SHORT_NAMES:
                    return self._error(404, "Not Found", f"process {args['dataset']} not found", endpoint)
                return self._send_json(200, {"id": args["dataset"], "title": args["dataset"], "links": []}, endpoint)
            if endpoint in ("job", "results"):
                if self._injected(endpoint) or not self._authorized(endpoint):
                    return
                job = server.jobs.get(args["job"])
                if job is None:
                    return self._error(404, "Not Found", f"job {args['job']} not found", endpoint)
                if endpoint == "job":
                    if job["status"] in ("accepted", "running"):
                        job["status"] = "failed" if job["fail"] else "successful"
                    return self._send_json(200, self._job_document(job), endpoint)
                if job["status"] == "failed":  # the CDS answers 400 with the reason of the failure
                    return self._send_json(
                        400,
                        {
                            "type": "job results failed",
                            "title": "The job has failed",
                            "detail": "injected failure",
                            "traceback": "Traceback (most recent call last):\n  ...\nMarsError: no data for 2018-01",
                        },
                        endpoint,
                    )
                payload, ext = self._payload(job)
                asset = {
                    "type": "application/zip" if ext == "zip" else "application/netcdf",
                    "href": f"{server.root}/download/{job['id']}.{ext}",
                    "file:size": len(payload),
                    "file:checksum": hashlib.md5(payload).hexdigest(),
                }
                return self._send_json(200, {"asset": {"value": asset}}, endpoint)
            if endpoint == "download":
                return self._download(args, head)
            self._error(404, "Not Found", self.path, endpoint)

        def _payload(self, job: dict) -> tuple[bytes, str]:
            if "payload" not in job:
                job["payload"] = server.make_file(job["dataset"], job["inputs"])
            return job["payload"]

        def _download(self, args: dict, head: bool):
            endpoint = "download"
            if not head and self._injected(endpoint):
                return
            job = server.jobs.get(args["job"])
            if job is None:
                return self._error(404, "Not Found", "no such file", endpoint)
            payload, ext = self._payload(job)
            start = 0
            ranged = self.headers.get("Range")
            if ranged and not head:
                start = int(re.match(r"bytes=(\d+)-", ranged).group(1))
            body = payload[start:]
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            self.end_headers()
            self._record(endpoint if not head else "download-head", status)
            if head:
                return
            faults = server.faults
            if faults.corrupt_downloads:
                faults.corrupt_downloads -= 1
                self.wfile.write(b"\0garbage" * (len(body) // 8) + b"\0" * (len(body) % 8))
                return
            if faults.truncate_downloads or faults.stall_download is not None:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                server.download_started.set()
                if faults.stall_download is not None:
                    faults.stall_download.wait(30)
                else:
                    faults.truncate_downloads -= 1
                self.close_connection = True
                return
            server.download_started.set()
            self.wfile.write(body)

    return Handler


def summary(server: FakeCds) -> Counter:
    return Counter((m, e, s) for m, e, s, _ in server.calls)
