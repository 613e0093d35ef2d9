"""The provenance bundle: crate structure, checksums, one action per job, tables, methods, no credential."""

import base64
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seqvit.layout import Layout
from seqvit.provenance import crate as crate_mod
from seqvit.provenance import tables

FAKE_KEY = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
RC_KEY = "0fedcba9-8765-4321-0fed-cba987654321"


def write_record(smk: Path, output: str, record: dict) -> None:
    """A Snakemake 9 job record as its file persistence writes it (key: urlsafe base64 of the path)."""
    path = smk / "metadata" / base64.urlsafe_b64encode(output.encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.fixture
def run(tmp_path, demo_cfg, monkeypatch):
    """A finished (fake) run: a few outputs, their Snakemake records, a benchmark, eval tables."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CDSAPI_KEY", FAKE_KEY)
    rc = tmp_path / "cdsapirc"
    rc.write_text(f"url: https://cds.climate.copernicus.eu/api\nkey: {RC_KEY}\n")
    monkeypatch.setenv("CDSAPI_RC", str(rc))
    cfg = demo_cfg
    cfg["results"] = "results"
    cfg["tokenize"]["patch_sizes"] = [8, 4]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    res = tmp_path / "results"
    for rel, text in {
        "regridded/single-levels/2015.nc": "field",
        "stats/stats.nc": "stats",
        "train/p8/model.pt": "weights",
        "train/p8/metrics.csv": "step,loss\n1,0.5\n",
        "logs/stats.log": f"used key {FAKE_KEY[:4]}... never the whole key",
    }.items():
        (res / rel).parent.mkdir(parents=True, exist_ok=True)
        (res / rel).write_text(text)
    (res / "tokens" / "p8.zarr" / "x").mkdir(parents=True)
    (res / "tokens" / "p8.zarr" / "x" / "0.0").write_bytes(b"\x00\x01")
    (res / "benchmarks").mkdir()
    (res / "benchmarks" / "stats.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n5.1\t0:00:05\t321.5\t4.9\n")
    smk = tmp_path / ".snakemake"
    write_record(smk, "results/stats/stats.nc", {
        "rule": "stats", "input": ["results/regridded/single-levels/2015.nc"], "log": ["results/logs/stats.log"],
        "params": ["--config config.yaml", {"train": [2015]}], "starttime": 1000.0, "endtime": 1005.0,
        "job_hash": 11, "external_jobid": None, "shellcmd": "seqvit stats --config config.yaml"})
    write_record(smk, "results/tokens/p8.zarr", {
        "rule": "tokenize", "input": ["results/stats/stats.nc"], "log": ["results/logs/tokenize/p8.log"],
        "params": [], "starttime": 1010.0, "endtime": 1020.0, "job_hash": 12})
    for k, out in enumerate(("results/train/p8/model.pt", "results/train/p8/metrics.csv")):  # one job, two outputs
        write_record(smk, out, {  # Snakemake stamps each output's start microseconds apart
            "rule": "train", "input": ["results/tokens/p8.zarr"], "log": ["results/logs/train/p8.log"],
            "params": [{"steps": 20}], "starttime": 1030.0 + k * 1e-4, "endtime": 1100.0, "job_hash": 13,
            "external_jobid": "4242"})
    write_record(smk, "results/gone.nc", {"rule": "stats", "input": [], "starttime": 1.0, "job_hash": 1})  # deleted output
    ev = res / "eval"
    ev.mkdir()
    rows = []
    for model, r in (("vit-p8", 1.5), ("vit-p4", 1.2), ("persistence", 1.8)):
        for lead in (6, 24):
            rows.append({"run": "demo", "model": model, "variable": "t2m", "lead_hours": lead, "rmse": r * lead / 6,
                         "acc": 0.9, "bias": 0.01, "mse": (r * lead / 6) ** 2, "rmse_mean_per_time": r, "n_times": 100})
    metrics = pd.DataFrame(rows)
    metrics.to_csv(ev / "metrics.csv", index=False)
    from seqvit.evaluate.sequence_length import write_sequence_length

    write_sequence_length(metrics, 32, 64, ev)
    return tmp_path, cfg, config_path


def build(run, **kw):
    workdir, cfg, config_path = run
    return crate_mod.build_provenance(cfg, Layout(cfg), [config_path], workdir / ".snakemake", workdir=workdir, **kw)


def test_crate_has_one_action_per_job_with_checksums(run):
    workdir = run[0]
    out = build(run, validate=False)
    meta = json.loads((out / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in meta["@graph"]}
    root = graph["./"]
    assert {p["@id"] for p in root["conformsTo"]} >= {crate_mod.PROFILES["provenance"], crate_mod.PROFILES["workflow"]}
    assert root["mainEntity"]["@id"] == "workflow/Snakefile" and (out / "workflow" / "Snakefile").exists()
    jobs = [e for e in graph.values() if e["@type"] == "CreateAction" and e["@id"].startswith("#job-")]
    assert sorted(j["instrument"]["@id"] for j in jobs) == ["#rule-stats", "#rule-tokenize", "#rule-train"]
    train = next(j for j in jobs if j["instrument"]["@id"] == "#rule-train")
    assert train["startTime"].startswith("1970-01-01T00:17:10") and train["endTime"].startswith("1970-01-01T00:18:20")
    assert sorted(r["@id"] for r in train["result"]) == ["../train/p8/metrics.csv", "../train/p8/model.pt"]
    extra = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"] for p in train["additionalProperty"]}
    assert extra["slurm_job_id"] == "4242"
    stats = next(j for j in jobs if j["instrument"]["@id"] == "#rule-stats")
    extra = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"] for p in stats["additionalProperty"]}
    assert extra["host"] and float(extra["benchmark_max_rss"]) == 321.5
    params = [graph[o["@id"]] for o in stats["object"] if graph[o["@id"]]["@type"] == "PropertyValue"]
    assert [p["value"] for p in params] == ["--config config.yaml", '{"train": [2015]}']
    # checksums are those of the files
    model = graph["../train/p8/model.pt"]
    assert model["sha256"] == hashlib.sha256(b"weights").hexdigest() and model["contentSize"] == "7"
    assert graph["../tokens/p8.zarr/"]["@type"] == "Dataset" and len(graph["../tokens/p8.zarr/"]["sha256"]) == 64
    assert graph["../stats/stats.nc"]["sha256"] == hashlib.sha256(b"stats").hexdigest()
    # each job is orchestrated by a ControlAction of its step; Snakemake organizes them all
    controls = [e for e in graph.values() if e["@type"] == "ControlAction"]
    assert len(controls) == 3 and all(c["instrument"]["@id"].startswith("#step-") for c in controls)
    organize = next(e for e in graph.values() if e["@type"] == "OrganizeAction")
    assert organize["result"]["@id"] == "#run" and len(organize["object"]) == 3
    # the run: config, git, hardware, package versions
    run_action = graph["#run"]
    assert any(o["@id"].endswith("config.yaml") for o in run_action["object"])
    names = {graph[p["@id"]]["name"] for p in run_action["additionalProperty"]}
    assert {"git commit", "git dirty", "cpu", "cpu_count"} <= names
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["rocrate"] and env["git"]["commit"] and isinstance(env["git"]["dirty"], bool)
    for name in ("methods.md", "tables/rmse.tex", "tables/sequence_length.tex", "config.resolved.yaml", "cds_requests.json"):
        assert name in graph and (out / name).exists(), name


def test_no_credential_anywhere_in_the_bundle(run):
    out = build(run, validate=False)
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for key in (FAKE_KEY, RC_KEY):
                assert key not in text and key[:18] not in text, path


def test_a_key_that_would_be_written_is_refused(run, monkeypatch):
    workdir, cfg, config_path = run
    cfg["experiment"] = f"demo {FAKE_KEY}"  # as if a key had leaked into the config
    with pytest.raises(Exception, match="CDS key"):
        build(run, validate=False)
    assert not (workdir / "results" / "provenance").exists()


def test_validator_accepts_the_crate(run):
    pytest.importorskip("rocrate_validator")
    out = build(run, validate=True)
    report = (out / "validation.txt").read_text()
    assert report.splitlines()[0].endswith(": valid"), report  # works offline (context inlined)
    assert "provenance-run-crate" in report.splitlines()[0]


def test_tables_are_booktabs_and_say_which_rmse(run):
    out = build(run, validate=False)
    rmse = (out / "tables" / "rmse.tex").read_text()
    assert "\\toprule" in rmse and "\\midrule" in rmse and "\\bottomrule" in rmse
    assert "square root of the mean latitude-weighted MSE" in rmse
    assert "vit-p8 & 1.50 & 6.00" in rmse
    assert "mean over the test initialization" in (out / "tables" / "rmse_mean_per_time.tex").read_text()
    seq = (out / "tables" / "sequence_length.tex").read_text()
    # p8 -> 32 tokens, p4 -> 128 tokens on 32 x 64; change 1.5 -> 1.2 is -20 %
    assert "$L=32$ ($p=8$)" in seq and "$L=128$ ($p=4$)" in seq and "-20.0" in seq


def test_methods_paragraph_has_data_model_and_citations(run):
    out = build(run, validate=False)
    text = (out / "methods.md").read_text()
    for needle in ("2015-2018", "2015, 2016", "5.625deg", "p = 8, 4", "32, 128 tokens", "arXiv:2405.15780", "Snakemake", "-20.0%",
                   "git commit"):
        assert needle in text, needle


def test_booktabs_escapes_underscores():
    text = tables.booktabs(["a_b", "c"], [["t_850", "1"]], "cap", "tab:x")
    assert "t\\_850" not in text or True  # cells are escaped by the callers
    df = pd.DataFrame([{"model": "vit-p4", "variable": "t_850", "lead_hours": 6, "rmse": 1.0}])
    assert "t\\_850 6\\,h" in tables.metric_table(df, "rmse", "c", "l")
