"""Planning CDS requests from the config: cost limits, file names, --plan, the Snakemake DAG."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from seqvit.cli import main
from seqvit.config import validate
from seqvit.data.sources.cds import backoff_delay, retry_settings
from seqvit.data.sources.plan import find_request, plan_requests
from seqvit.errors import SeqvitError
from seqvit.layout import Layout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cds_cfg(demo_cfg, tmp_path):
    cfg = demo_cfg
    cfg["results"] = str(tmp_path / "results")
    cfg["source"] = {"kind": "cds"}
    cfg["data"].update(years=[2015, 2016, 2017], months=[1, 2], hours=list(range(24)), single_level=["t2m", "tp"])
    cfg["splits"] = {"train": [2015], "val": [2016], "test": [2017]}
    cfg["data"].update(pressure_level=["z", "t", "u", "v", "q", "r"], levels=[50, 250, 500, 850, 1000])
    validate(cfg)
    return cfg


def test_default_is_one_request_per_group_and_month(cds_cfg):
    cds_cfg["source"]["data_format"] = "grib"
    requests = plan_requests(cds_cfg)
    assert [r.id for r in requests] == [
        "single-levels/2015/01",
        "single-levels/2015/02",
        "single-levels/2016/01",
        "single-levels/2016/02",
        "single-levels/2017/01",
        "single-levels/2017/02",
        "pressure-levels/2015/01",
        "pressure-levels/2015/02",
        "pressure-levels/2016/01",
        "pressure-levels/2016/02",
        "pressure-levels/2017/01",
        "pressure-levels/2017/02",
    ]
    feb = find_request(cds_cfg, "pressure-levels/2016/02")
    assert feb.days == tuple(range(1, 30)) and feb.fields == 6 * 5 * 29 * 24  # leap year
    body = feb.cds_request()
    assert body["variable"] == [
        "geopotential",
        "temperature",
        "u_component_of_wind",
        "v_component_of_wind",
        "specific_humidity",
        "relative_humidity",
    ]
    assert body["pressure_level"] == ["50", "250", "500", "850", "1000"]
    assert body["year"] == ["2016"] and body["month"] == ["02"] and body["day"][-1] == "29"
    assert body["time"][:2] == ["00:00", "01:00"] and body["data_format"] == "grib"
    assert body["download_format"] == "unarchived" and body["product_type"] == ["reanalysis"]
    assert "area" not in body and "grid" not in body
    assert feb.path(Layout(cds_cfg).raw_dir).as_posix().endswith("raw/pressure-levels/2016/02.nc")


def test_large_months_split_into_runs_of_days_under_the_limit(cds_cfg):
    requests = [r for r in plan_requests(cds_cfg) if r.group == "pressure-levels"]  # netcdf: 12000
    per_day = 6 * 5 * 24
    assert all(r.fields <= 12_000 for r in requests)
    january = [r for r in requests if (r.year, r.month) == (2016, 1)]
    assert [r.stem for r in january] == ["01_d01-16", "01_d17-31"]  # 16 days of 720 fields fit in 12000
    assert sum(len(r.days) for r in january) == 31 and january[0].fields == 16 * per_day
    assert [r.stem for r in requests if (r.year, r.month) == (2016, 2)] == ["02_d01-15", "02_d16-29"]
    # the same data as GRIB needs fewer requests: netCDF limits are lower
    netcdf_total = len(plan_requests(cds_cfg))
    cds_cfg["source"]["data_format"] = "grib"
    assert len(plan_requests(cds_cfg)) == 12 < netcdf_total == 18  # 3 years x 2 months x 2 groups


def test_a_day_too_large_splits_into_hours_and_one_step_too_large_is_an_error(cds_cfg):
    cds_cfg["source"]["max_fields"] = 100  # one day of pressure levels is 720 fields
    parts = [r for r in plan_requests(cds_cfg) if r.id.startswith("pressure-levels/2016/01_d01_")]
    assert [r.stem for r in parts] == [
        "01_d01_h00-02",
        "01_d01_h03-05",
        "01_d01_h06-08",
        "01_d01_h09-11",
        "01_d01_h12-14",
        "01_d01_h15-17",
        "01_d01_h18-20",
        "01_d01_h21-23",
    ]
    assert all(r.fields <= 100 for r in parts)
    cds_cfg["source"]["max_fields"] = 20
    with pytest.raises(SeqvitError, match="one time step of pressure-levels .* exceeds the CDS limit of 20"):
        plan_requests(cds_cfg)


def test_runtime_halves_cover_the_request(cds_cfg):
    request = find_request(cds_cfg, "single-levels/2017/02")
    first, second = request.halves()
    assert first.days + second.days == request.days and first.stem == second.stem == "02"
    one_day = replace(request, days=(5,))
    early, late = one_day.halves()
    assert early.hours + late.hours == tuple(range(24)) and early.days == late.days == (5,)
    assert replace(one_day, hours=(6,)).halves() is None


def test_unknown_names_and_levels_fail_before_anything_is_sent(cds_cfg):
    cds_cfg["data"]["single_level"] = ["t2m", "2t"]
    with pytest.raises(SeqvitError, match=r"data.single_level: '2t' is not an ERA5 single-levels variable"):
        plan_requests(cds_cfg)
    cds_cfg["data"]["single_level"] = ["t2m"]
    cds_cfg["data"]["levels"] = [500, 450, 460]
    with pytest.raises(SeqvitError, match=r"\[460\] hPa are not ERA5 pressure levels"):
        plan_requests(cds_cfg)


def test_expected_grid_for_native_coarse_and_area_requests(cds_cfg):
    request = find_request(cds_cfg, "single-levels/2016/01")
    lat, lon = request.expected_grid()
    assert (lat.size, lon.size) == (721, 1440) and lat[0] == 90 and lon[-1] == 359.75
    cds_cfg["source"].update(grid=[5.625, 5.625], area=[60, -30, 20, 40.5])
    request = find_request(cds_cfg, "single-levels/2016/01")
    lat, lon = request.expected_grid()
    np.testing.assert_allclose(lat, [60, 54.375, 48.75, 43.125, 37.5, 31.875, 26.25, 20.625])
    np.testing.assert_allclose(lon[[0, -1]], [-30, 37.5])
    assert request.cds_request()["area"] == [60, -30, 20, 40.5] and request.cds_request()["grid"] == [5.625, 5.625]


def test_layout_lists_a_years_request_files_for_regrid(cds_cfg):
    layout = Layout(cds_cfg)
    files = layout.raw_year("pressure-levels", 2016)
    assert [p.name for p in files] == ["01_d01-16.nc", "01_d17-31.nc", "02_d01-15.nc", "02_d16-29.nc"]
    assert layout.raw_year("single-levels", 2016)[0].name == "01.nc"
    cds_cfg["source"] = {"kind": "synthetic"}
    assert [p.name for p in Layout(cds_cfg).raw_year("pressure-levels", 2016)] == ["01.nc", "02.nc"]


def test_retry_settings_and_backoff_with_jitter(cds_cfg):
    cds_cfg["source"]["retry"] = {"attempts": 4, "backoff_s": 10, "backoff_max_s": 25}
    settings = retry_settings(cds_cfg)
    assert settings.attempts == 4 and settings.client_retry_max == 1  # the schema's default
    import random

    rng = random.Random(1)
    delays = [backoff_delay(settings, attempt, rng) for attempt in (1, 2, 3, 4)]
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20 and all(12.5 <= d <= 25 for d in delays[2:])
    assert len({round(d, 6) for d in delays}) == 4  # jitter: no two equal
    cds_cfg["source"]["retry"] = {"tries": 3}
    with pytest.raises(SeqvitError, match="source.retry.tries is unknown"):
        retry_settings(cds_cfg)


def test_plan_prints_requests_and_sends_nothing(cds_cfg, tmp_path, monkeypatch, capsys):
    # no credentials at all, and a URL nothing listens on: --plan needs neither
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    monkeypatch.setenv("CDSAPI_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("CDSAPI_RC", str(tmp_path / "absent"))
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump(cds_cfg))
    assert main(["download", "--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(plan_requests(cds_cfg)) + 1 and out[-1].endswith("nothing was sent")
    assert out[0].startswith("single-levels/2015/01 ") and "reanalysis-era5-single-levels" in out[0]
    assert not (tmp_path / "results").exists()
    assert main(["download", "--config", str(path), "--plan", "--request", "pressure-levels/2017/02_d01-14"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["download", "--config", str(path), "--plan", "--request", "pressure-levels/2017/13"]) == 2
    assert "not in the plan" in capsys.readouterr().err


def snakemake(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(cwd), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_dry_run_has_one_download_job_per_request_file_and_lints_clean(cds_cfg, tmp_path):
    cds_cfg["data"].update(months=[1])
    path = tmp_path / "cds.yaml"
    path.write_text(yaml.safe_dump(cds_cfg))
    out = snakemake(["--configfile", str(path), "-n", "--quiet", "rules"], tmp_path)
    counts = dict(line.split()[:2] for line in out.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(counts["download"]) == len(plan_requests(cds_cfg)) == 3 * 3  # per year: 1 single + 2 pressure parts
    assert "synth" not in counts
    out = snakemake(["--configfile", str(path), "-n", "--printshellcmds"], tmp_path)
    assert "seqvit download --config" in out and "--request pressure-levels/2016/01_d17-31" in out
    assert "lints for" not in snakemake(["--configfile", str(path), "--lint"], tmp_path).lower()


def test_download_with_the_synthetic_source_points_to_synth(capsys):
    assert main(["download", "--config", str(ROOT / "config" / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert "source.kind is synthetic" in err and "seqvit synth" in err and len(err.strip().splitlines()) == 1
