"""Downloads from the CDS with the real cdsapi client against a local CDS stand-in, with faults.

Every fault must end in a correct, verified file or a one-line error that names the request and
the fix; nothing incomplete is ever renamed into place, and the key never leaks.
"""

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import yaml

from cds_server import FakeCds
from seqvit.cli import main
from seqvit.data import era5
from seqvit.data.sources import download, find_request, state
from seqvit.data.sources.cds import CdsSource
from seqvit.errors import SeqvitError
from seqvit.layout import Layout


@pytest.fixture
def cds(tmp_path, monkeypatch):
    server = FakeCds().start()
    monkeypatch.setenv("CDSAPI_URL", server.url)
    monkeypatch.setenv("CDSAPI_KEY", server.token)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "no-cdsapirc"))
    yield server
    server.stop()


@pytest.fixture
def cfg(demo_cfg, tmp_path):
    cfg = demo_cfg
    cfg["results"] = str(tmp_path / "results")
    cfg["source"] = {
        "kind": "cds",
        "grid": [45, 45],
        "retry": {
            "attempts": 3,
            "backoff_s": 0.01,
            "backoff_max_s": 0.02,
            "client_retry_max": 3,
            "client_sleep_max": 0.01,
            "timeout_s": 5,
        },
    }
    cfg["data"].update(years=[2018], months=[1], hours=[0, 12], single_level=["t2m", "tp"], pressure_level=["t"])
    cfg["data"]["levels"] = [500, 850]
    return cfg


SINGLE, PRESSURE = "single-levels/2018/01", "pressure-levels/2018/01"


def raw_dir(cfg):
    return Layout(cfg).raw_dir


def final(cfg, request_id):
    return find_request(cfg, request_id).path(raw_dir(cfg))


def manifest(cfg, request_id):
    return json.loads(find_request(cfg, request_id).manifest_path(raw_dir(cfg)).read_text())


def leftovers(cfg):
    return sorted(p.name for p in raw_dir(cfg).rglob("*.tmp"))


def assert_nothing_accepted(cfg, request_id):
    assert not final(cfg, request_id).exists()
    assert not find_request(cfg, request_id).manifest_path(raw_dir(cfg)).exists()
    assert leftovers(cfg) == []


def write_cfg(cfg, tmp_path):
    """`cfg` as a config file the CLI accepts: three split years (one downloaded here), 12 h leads."""
    cfg = copy.deepcopy(cfg)
    cfg["data"]["years"] = [2016, 2017, 2018]
    cfg["splits"] = {"train": [2016], "val": [2017], "test": [2018]}
    cfg["train"]["lead_hours"] = cfg["evaluate"]["lead_hours"] = [12]
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- the normal case ---------------------------------------------------------------------------


def test_fetches_verifies_records_and_never_fetches_a_verified_file_again(cds, cfg):
    assert download(cfg, None, Layout(cfg).raw_dir) == {SINGLE: "fetched", PRESSURE: "fetched"}
    single = era5.open_raw(final(cfg, SINGLE))  # delivered as a zip of instant + accum: joined
    assert sorted(single.data_vars) == ["t2m", "tp"] and single.sizes["time"] == 62
    pressure = era5.open_raw(final(cfg, PRESSURE))
    assert list(pressure["level"].values) == [500, 850] and pressure.sizes["latitude"] == 5
    assert not np.isnan(pressure["t"].values).any()

    record = manifest(cfg, PRESSURE)
    job_ids = [job for job in cds.jobs]
    assert record["parts"][0]["request_id"] in job_ids
    assert record["parts"][0]["cds_request"]["variable"] == ["temperature"]
    assert record["size"] == final(cfg, PRESSURE).stat().st_size
    assert record["sha256"] == state.sha256_file(final(cfg, PRESSURE))
    assert record["parts"][0]["delivered"]["sha256"] == record["sha256"]  # netCDF kept byte for byte
    assert manifest(cfg, SINGLE)["parts"][0]["delivered"]["format"] == "zip"
    assert {"started", "downloaded", "verified"} <= set(record["times"]) and "submitted" in record["parts"][0]
    assert record["content"]["time_steps"] == 62 and record["content"]["grid"] == [5, 8]

    calls = len(cds.calls)
    assert download(cfg, None, Layout(cfg).raw_dir) == {SINGLE: "kept", PRESSURE: "kept"}
    assert len(cds.calls) == calls  # nothing sent, not even a login
    final(cfg, SINGLE).unlink()
    assert download(cfg, None, Layout(cfg).raw_dir) == {SINGLE: "fetched", PRESSURE: "kept"}
    assert cds.count("execution", "POST") == 3 and leftovers(cfg) == []


# ---- credentials and refusals: one line, no traceback, the fix ---------------------------------


def test_missing_credentials_say_how_to_create_them(cfg, tmp_path, monkeypatch, capsys):
    for name in ("CDSAPI_URL", "CDSAPI_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "absent-rc"))
    assert main(["download", "--config", str(write_cfg(cfg, tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no CDS credentials" in err and ".cdsapirc" in err and "CDSAPI_KEY" in err and "profile" in err


def test_old_uid_key_form_is_refused_before_sending(cds, cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("CDSAPI_KEY")
    monkeypatch.delenv("CDSAPI_URL")
    rc = tmp_path / "old-cdsapirc"
    rc.write_text(f"url: {cds.url}\nkey: 123456:abcdef01-2345-6789-abcd-ef0123456789\n")
    monkeypatch.setenv("CDSAPI_RC", str(rc))
    with pytest.raises(SeqvitError, match=r"old-cdsapirc has the old UID:KEY form.*personal access token") as info:
        download(cfg, None, Layout(cfg).raw_dir)
    assert "abcdef01" not in str(info.value)
    assert cds.calls == []


def test_rejected_key(cds, cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CDSAPI_KEY", "not-the-right-token-9d1e")
    assert main(["download", "--config", str(write_cfg(cfg, tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "rejected the API key from CDSAPI_KEY (401 Authentication failed)" in err and "profile" in err
    assert "not-the-right-token" not in err
    assert_nothing_accepted(cfg, SINGLE)


def test_licence_not_accepted(cds, cfg):
    cds.faults.licence_accepted = False
    with pytest.raises(
        SeqvitError, match=r"not accepted the licence of reanalysis-era5-single-levels.*datasets/reanalysis"
    ):
        download(cfg, None, Layout(cfg).raw_dir)
    assert_nothing_accepted(cfg, SINGLE)


def test_unknown_dataset(cds, cfg):
    request = replace(find_request(cfg, SINGLE), dataset="reanalysis-era5-single-levelz")
    with pytest.raises(SeqvitError, match=r"the CDS has no dataset 'reanalysis-era5-single-levelz' \(404"):
        CdsSource(cfg, raw_dir(cfg)).fetch(request)
    assert_nothing_accepted(cfg, SINGLE)


def test_variable_the_dataset_does_not_have(cds, cfg):
    cfg["data"]["single_level"] = ["t2m", "d2m"]  # known to seqvit, not offered by this server
    with pytest.raises(
        SeqvitError, match=r"refused request single-levels/2018/01 as invalid \(400 invalid request.*2m_dewpoint"
    ):
        download(cfg, None, Layout(cfg).raw_dir)
    assert_nothing_accepted(cfg, SINGLE)


# ---- transient faults: retried, bounded -----------------------------------------------------


def test_429_then_success(cds, cfg):
    cds.fail("execution", 429)
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    assert cds.count("execution", "POST", 429) == 1 and cds.count("execution", "POST", 201) == 1
    assert era5.open_raw(final(cfg, SINGLE)).sizes["time"] == 62


def test_500_twice_then_success(cds, cfg):
    cds.fail("job", 500, times=2)
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("job", status=500) == 2 and cds.count("execution", "POST") == 1


def test_5xx_beyond_the_clients_retries_resumes_the_same_job_after_backoff(cds, cfg):
    cds.fail("results", 502, times=4)  # the client gives up after 3; seqvit waits and resumes the job
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("results", status=502) == 4 and cds.count("execution", "POST") == 1
    assert not (find_request(cfg, PRESSURE).manifest_path(raw_dir(cfg)).with_suffix(".pending.json")).exists()


def test_persistent_5xx_ends_in_a_clear_error_naming_the_request(cds, cfg):
    cds.fail("process", 503, times=100)
    with pytest.raises(SeqvitError) as info:
        download(cfg, [SINGLE], Layout(cfg).raw_dir)
    message = str(info.value)
    assert message.startswith("CDS request single-levels/2018/01 (single-levels 2018-01 days 1-31) failed 3 times")
    assert "503 Service Unavailable" in message and "rerun the same command later" in message
    assert cds.count("process", status=503) == 3 * 3  # bounded: attempts x client tries
    assert_nothing_accepted(cfg, SINGLE)


def test_timeout_then_success(cds, cfg, caplog):
    cfg["source"]["retry"].update(timeout_s=0.3, client_retry_max=1)
    cds.delay("job", 1.0)
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    # the stalled status request timed out, and one more fetch resumed the same job
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 1 and "Timeout" in retries[0], retries
    assert cds.count("execution", "POST") == 1


def test_failed_job_is_submitted_again(cds, cfg):
    cds.faults.fail_jobs = 1
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    assert cds.count("execution", "POST", 201) == 2


# ---- too large: split and go on ---------------------------------------------------------------


def test_request_too_large_is_split_in_time_and_joined(cds, cfg):
    cds.faults.max_fields = 40  # 2 variables x 62 steps = 124 fields: needs four parts
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    assert cds.count("execution", "POST", 403) == 3 and cds.count("execution", "POST", 201) == 4
    record = manifest(cfg, SINGLE)
    assert [p["label"] for p in record["parts"]] == [
        "single-levels 2018-01 days 1-7",
        "single-levels 2018-01 days 8-15",
        "single-levels 2018-01 days 16-23",
        "single-levels 2018-01 days 24-31",
    ]
    assert len({p["request_id"] for p in record["parts"]}) == 4
    joined = era5.open_raw(final(cfg, SINGLE))
    assert joined.sizes["time"] == 62 and sorted(joined.data_vars) == ["t2m", "tp"]
    assert np.all(np.diff(joined["time"].values) > np.timedelta64(0))
    assert leftovers(cfg) == []


# ---- damaged or incomplete deliveries -----------------------------------------------------


def test_truncated_download_is_fetched_again(cds, cfg):
    cds.faults.truncate_downloads = 1
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("download") == 2
    assert manifest(cfg, PRESSURE)["size"] == final(cfg, PRESSURE).stat().st_size


def test_truncated_large_download_resumes_with_a_range_request(cds, cfg):
    cfg["source"]["grid"] = [1.0, 1.0]  # 181 x 360 points: about 8 MB, above the client's 1 MiB chunk
    cfg["data"].update(hours=[0], single_level=["t2m"])
    cds.faults.truncate_downloads = 1
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    ranges = cds.range_requests()
    assert len(ranges) == 1 and ranges[0].startswith("bytes=") and not ranges[0].startswith("bytes=0-")
    data = era5.open_raw(final(cfg, SINGLE))
    assert data.sizes["time"] == 31 and data.sizes["latitude"] == 181 and not np.isnan(data["t2m"].values).any()


def test_download_truncated_every_time_is_a_clear_error(cds, cfg):
    cds.faults.truncate_downloads = 1000
    with pytest.raises(
        SeqvitError, match=r"CDS request pressure-levels/2018/01 .* failed 3 times; last error: connection problem"
    ):
        download(cfg, [PRESSURE], Layout(cfg).raw_dir)
    assert_nothing_accepted(cfg, PRESSURE)


def test_garbage_of_the_right_size_is_fetched_again(cds, cfg):
    cds.faults.corrupt_downloads = 1
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("download") == 2 and cds.count("execution", "POST") == 1


def test_file_missing_one_time_step_is_rejected(cds, cfg):
    cds.faults.drop_time_steps = 1
    with pytest.raises(
        SeqvitError, match=r"lacks 1 of the 62 requested time steps \(2018-01-31T12:00\).*rerun later"
    ) as info:
        download(cfg, [PRESSURE], Layout(cfg).raw_dir)
    assert_nothing_accepted(cfg, PRESSURE)
    # the message names the request and the file it was to become, not a temporary that is gone
    assert f"CDS request {PRESSURE}" in str(info.value) and f"for {final(cfg, PRESSURE)}" in str(info.value)
    assert ".tmp" not in str(info.value) and "/delivery" not in str(info.value)
    # nothing is remembered of the bad job: the next run asks the CDS again
    cds.faults.drop_time_steps = 0
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("execution", "POST") == 2


def test_field_entirely_missing_is_rejected(cds, cfg):
    cds.faults.empty_field = ("t", 3)
    with pytest.raises(SeqvitError, match=r"variable 't' is entirely missing at 2018-01-02T12:00 at 850 hPa"):
        download(cfg, [PRESSURE], Layout(cfg).raw_dir)
    assert_nothing_accepted(cfg, PRESSURE)


def test_era5_and_era5t_mixed_in_one_month(cds, cfg):
    cds.faults.era5t_from = "2018-01-25"
    assert download(cfg, None, Layout(cfg).raw_dir) == {SINGLE: "fetched", PRESSURE: "fetched"}
    for request_id in (SINGLE, PRESSURE):  # the zip is rewritten, the netCDF kept: both keep expver
        assert manifest(cfg, request_id)["content"]["expver"] == {"0001": 48, "0005": 14}
        data = era5.open_raw(final(cfg, request_id))
        assert data.sizes["time"] == 62 and "expver" not in data.variables


# ---- killed and rerun ---------------------------------------------------------------------------


def test_killed_mid_download_leaves_no_file_and_the_rerun_resumes_the_same_job(cds, cfg, tmp_path):
    path = write_cfg(cfg, tmp_path)
    cds.faults.stall_download = threading.Event()
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqvit.cli", "download", "--config", str(path), "--request", PRESSURE],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert cds.download_started.wait(60), "the download never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not final(cfg, PRESSURE).exists() and leftovers(cfg)  # half a download, under a temporary name
    pending = find_request(cfg, PRESSURE).manifest_path(raw_dir(cfg)).with_suffix(".pending.json")
    first_job = next(iter(json.loads(pending.read_text())["jobs"].values()))

    cds.faults.stall_download.set()
    cds.faults.stall_download = None
    assert download(cfg, [PRESSURE], Layout(cfg).raw_dir) == {PRESSURE: "fetched"}
    assert cds.count("execution", "POST") == 1  # the job was resumed, not queued again
    record = manifest(cfg, PRESSURE)
    assert record["parts"][0]["request_id"] == first_job and "resumed" in record["parts"][0]
    assert leftovers(cfg) == [] and not pending.exists()
    assert era5.open_raw(final(cfg, PRESSURE)).sizes["time"] == 62


# ---- the key never leaks ----------------------------------------------------------------------


def test_the_key_appears_in_no_log_exception_or_file(cds, cfg, tmp_path, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)  # the client logs its settings, key included, at debug level
    texts = []
    cds.fail("job", 500, times=4)
    cds.faults.truncate_downloads = 1
    download(cfg, [SINGLE], Layout(cfg).raw_dir)
    cds.faults.drop_time_steps = 1
    with pytest.raises(SeqvitError) as info:
        download(cfg, [PRESSURE], Layout(cfg).raw_dir)
    texts.append(str(info.value))
    wrong = "wrong-token-4f0b2c"
    monkeypatch.setenv("CDSAPI_KEY", wrong)
    final(cfg, SINGLE).unlink()
    with pytest.raises(SeqvitError, match="rejected the API key") as info:
        main(["-v", "download", "--config", str(write_cfg(cfg, tmp_path))])  # -v: debug logs, exceptions raised
    texts.append(str(info.value))
    captured = capsys.readouterr()
    texts += [caplog.text, captured.out, captured.err]
    for path in raw_dir(cfg).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("latin-1"))
    assert "<key hidden>" in caplog.text  # the client did try to log it
    for text in texts:
        assert cds.token not in text and wrong not in text


def test_a_job_that_keeps_failing_is_resubmitted_a_bounded_number_of_times_then_reported(cds, cfg):
    """The CDS answers 400 to the results of a failed job: that is a failed job, not an invalid request."""
    cds.faults.fail_jobs = 100
    with pytest.raises(SeqvitError) as info:
        download(cfg, [SINGLE], Layout(cfg).raw_dir)
    message = str(info.value)
    assert "failed 3 times; last error: the CDS job failed: The job has failed: injected failure" in message
    assert "MarsError: no data for 2018-01" in message and "invalid" not in message
    assert cds.count("execution", "POST", 201) == 3
    assert_nothing_accepted(cfg, SINGLE)


def test_a_non_square_grid_is_asked_for_east_west_first_and_verifies(cds, cfg):
    """MARS reads grid=dlon/dlat (east-west increment first); source.grid is [dlat, dlon]."""
    cfg["source"]["grid"] = [30, 45]  # 7 latitudes (90..-90), 8 longitudes (0..315)
    assert find_request(cfg, SINGLE).cds_request()["grid"] == [45, 30]
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir) == {SINGLE: "fetched"}
    assert manifest(cfg, SINGLE)["content"]["grid"] == [7, 8]


def test_retry_after_is_honoured_and_waits_start_short(cds, cfg):
    from seqvit.data.sources.cds import CdsSource, retry_settings

    waits = []
    cfg["source"]["retry"].update(client_retry_max=1, backoff_s=0.01, backoff_max_s=5)
    cds.fail("execution", 429, times=2, retry_after=2)
    source = CdsSource(cfg, raw_dir(cfg), sleep=waits.append)
    assert download(cfg, [SINGLE], Layout(cfg).raw_dir, source=source) == {SINGLE: "fetched"}
    assert waits == [2.0, 2.0]  # the server's Retry-After, not our 0.01 s
    assert cds.count("execution", "POST", 429) == 2 and cds.count("execution", "POST", 201) == 1
    defaults = retry_settings({"source": {"kind": "cds"}})
    assert defaults.backoff_s == 5 and defaults.client_retry_max == 1  # the schema's defaults
