"""The provenance bundle: crate structure, checksums, one action per job, tables, methods, no credential."""

import base64
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from seqvit.errors import SeqvitError
from seqvit.layout import Layout
from seqvit.provenance import crate as crate_mod
from seqvit.provenance import record, tables

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
SBATCH = "--nodes=1 --ntasks=2 --partition=batch --time=120 --signal=USR1@600"  # describe_sbatch, a param of train
HOST = "node-q7x-unlikely.example.org"
RC_KEY = "0fedcba9-8765-4321-0fed-cba987654321"


# A tiny workflow shaped like the pipeline's (a log, params, a benchmark, a directory output, a
# job with two outputs, an output deleted afterwards), run by the real Snakemake so that the job
# records the crate reads are in Snakemake's own format: a change there breaks these tests.
SNAKEFILE = r"""
rule all:
    input:
        "results/train/p8/model.pt",
        "results/train/p8/metrics.csv",
        "results/gone.nc",


rule stats:
    input:
        "results/regridded/single-levels/2015.nc",
    output:
        "results/stats/stats.nc",
    log:
        "results/logs/stats.log",
    benchmark:
        "results/benchmarks/stats.tsv"
    params:
        config="--config config.yaml",
        years={"train": [2015]},
    shell:
        "printf stats > {output} && echo 'used key KEYHEAD... never the whole key' > {log}"


rule tokenize:
    input:
        "results/stats/stats.nc",
    output:
        directory("results/tokens/p8.zarr"),
    log:
        "results/logs/tokenize/p8.log",
    shell:
        "mkdir -p {output}/x && printf '\\000\\001' > {output}/x/0.0 && touch {log}"


rule train:
    input:
        "results/tokens/p8.zarr",
    output:
        "results/train/p8/model.pt",
        "results/train/p8/metrics.csv",
    log:
        "results/logs/train/p8.log",
    benchmark:
        "results/benchmarks/train/p8.tsv"
    params:
        train={"steps": 20},
        sbatch="SBATCH",
    shell:
        "printf weights > {output[0]} && printf 'step,loss\\n1,0.5\\n' > {output[1]} && touch {log}"


rule scratch:
    output:
        "results/gone.nc",
    shell:
        "touch {output}"
"""


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    """The tiny workflow above, run once by Snakemake (its job records in .snakemake/metadata)."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("workflow")
    text = SNAKEFILE.replace("KEYHEAD", FAKE_KEY[:4]).replace('"SBATCH"', repr(SBATCH))
    (work / "Snakefile").write_text(text)
    field = work / "results" / "regridded" / "single-levels" / "2015.nc"
    field.parent.mkdir(parents=True)
    field.write_text("field")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--quiet", "rules"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (work / "results" / "gone.nc").unlink()  # a recorded output deleted since: the crate leaves it out
    return work


def _record_path(workdir: Path, output: str) -> Path:
    return workdir / ".snakemake" / "metadata" / base64.urlsafe_b64encode(output.encode()).decode()


@pytest.fixture
def run(finished_workflow, tmp_path, demo_cfg, monkeypatch):
    """A finished run (a copy of the tiny workflow's results and job records) plus eval tables."""
    import shutil

    shutil.copytree(finished_workflow, tmp_path, dirs_exist_ok=True)
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
    # What a Slurm training job leaves that a local run does not: its job id in the record (set by
    # Snakemake's Slurm executor), its process layout, the device in its last throughput line, and
    # the benchmark of a two-hour job.
    for out in ("results/train/p8/model.pt", "results/train/p8/metrics.csv"):
        record = json.loads(_record_path(tmp_path, out).read_text())
        assert "external_jobid" in record, sorted(record)  # the key Snakemake's cluster executors fill
        record["external_jobid"] = "4242"
        _record_path(tmp_path, out).write_text(json.dumps(record))
    (res / "train/p8/checkpoints").mkdir(parents=True)
    (res / "train/p8/checkpoints/run.json").write_text(json.dumps({"world_size": 2, "sp": 2, "patch_size": 8}))
    (res / "logs/train/p8.log").write_text(
        "2026-01-01 00:00:00,000 seqvit.train.engine step 20: 90 samples/s, 2880 tokens/s, "
        "1.2 TFLOP/s per device, MFU 0.6% of 192 TFLOP/s (data sheet of the MI250X GCD (bf16 "
        "dense), device 'AMD Instinct MI250X')\n"
    )
    (res / "benchmarks/train/p8.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n7200.0\t2:00:00\t20480.0\t7000.0\n")
    ev = res / "eval"
    ev.mkdir()
    rows = []
    for model, r in (("vit-p8", 1.5), ("vit-p4", 1.2), ("persistence", 1.8)):
        for lead in (6, 24):
            rows.append(
                {
                    "run": "demo",
                    "model": model,
                    "variable": "t2m",
                    "lead_hours": lead,
                    "rmse": r * lead / 6,
                    "acc": 0.9,
                    "bias": 0.01,
                    "mse": (r * lead / 6) ** 2,
                    "rmse_mean_per_time": r,
                    "n_times": 100,
                }
            )
    metrics = pd.DataFrame(rows)
    metrics.to_csv(ev / "metrics.csv", index=False)
    from seqvit.evaluate.sequence_length import write_sequence_length

    write_sequence_length(metrics, 32, 64, ev)
    return tmp_path, cfg, config_path


def _recorded_times(workdir: Path, output: str) -> tuple[str, str]:
    """Start and end of a job as its Snakemake record gives them, in the crate's ISO format."""
    import datetime

    record = json.loads(_record_path(workdir, output).read_text())
    iso = [
        datetime.datetime.fromtimestamp(record[k], datetime.timezone.utc).isoformat() for k in ("starttime", "endtime")
    ]
    return iso[0][:19], iso[1][:19]


def build(run, **kw):
    """The bundle of the run, recording this repository's workflow (its Snakefile, rules, git state)."""
    workdir, cfg, config_path = run
    kw.setdefault("snakefile", ROOT / "Snakefile")
    return crate_mod.build_provenance(cfg, Layout(cfg), [config_path], workdir / ".snakemake", workdir=workdir, **kw)


def test_a_missing_snakefile_is_named_with_the_fix(run):
    workdir = run[0]
    with pytest.raises(
        SeqvitError, match=r"nowhere/Snakefile: the workflow's Snakefile was not found; pass it with --snakefile"
    ):
        build(run, validate=False, snakefile=workdir / "nowhere" / "Snakefile")
    assert not (workdir / "results" / "provenance").exists()


def test_crate_has_one_action_per_job_with_checksums(run):
    out = build(run, validate=False)
    meta = json.loads((out / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in meta["@graph"]}
    root = graph["./"]
    assert {p["@id"] for p in root["conformsTo"]} >= {crate_mod.PROFILES["provenance"], crate_mod.PROFILES["workflow"]}
    assert root["mainEntity"]["@id"] == "workflow/Snakefile" and (out / "workflow" / "Snakefile").exists()
    jobs = [e for e in graph.values() if e["@type"] == "CreateAction" and e["@id"].startswith("#job-")]
    assert sorted(j["instrument"]["@id"] for j in jobs) == ["#rule-stats", "#rule-tokenize", "#rule-train"]
    train = next(j for j in jobs if j["instrument"]["@id"] == "#rule-train")
    start, end = _recorded_times(run[0], "results/train/p8/model.pt")
    assert train["startTime"].startswith(start) and train["endTime"].startswith(end)
    assert sorted(r["@id"] for r in train["result"]) == ["../train/p8/metrics.csv", "../train/p8/model.pt"]
    extra = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"] for p in train["additionalProperty"]}
    assert extra["slurm_job_id"] == "4242"
    stats = next(j for j in jobs if j["instrument"]["@id"] == "#rule-stats")
    extra = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"] for p in stats["additionalProperty"]}
    benchmark = pd.read_csv(run[0] / "results" / "benchmarks" / "stats.tsv", sep="\t")
    assert "host" not in extra and float(extra["benchmark_max_rss"]) == pytest.approx(float(benchmark["max_rss"][0]))
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
    for name in (
        "methods.md",
        "tables/rmse.tex",
        "tables/sequence_length.tex",
        "config.resolved.yaml",
        "cds_requests.json",
    ):
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
    import rocrate_validator  # noqa: F401  a test dependency (pyproject's test extra): fail, never skip

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
    for needle in (
        "2015-2018",
        "2015, 2016",
        "5.625deg",
        "p = 8, 4",
        "32, 128 tokens",
        "arXiv:2405.15780",
        "Snakemake",
        "-20.0%",
        "git commit",
    ):
        assert needle in text, needle


def test_booktabs_escapes_underscores():
    text = tables.booktabs(["a_b", "c"], [["t_850", "1"]], "cap", "tab:x")
    assert "t_850 & 1" in text  # booktabs writes cells as given: the callers escape them
    df = pd.DataFrame([{"model": "vit-p4", "variable": "t_850", "lead_hours": 6, "rmse": 1.0}])
    assert "t\\_850 6\\,h" in tables.metric_table(df, "rmse", "c", "l")


def test_methods_describe_each_runs_sequence_parallelism_and_the_recorded_hardware(run):
    workdir, cfg, config_path = run
    cfg["parallel"] = {"sp_method": "lss", "runs": {8: {"sp": 2, "dp": 1}, 4: {"sp": 1, "dp": 2}}}
    text = (build(run, validate=False) / "methods.md").read_text()
    assert "without sequence parallelism" not in text
    assert "p = 8: sequence split over SP = 2 ranks, 1 data-parallel replica (2 processes)" in text
    assert "p = 4: no sequence parallelism, 2 data-parallel replicas (2 processes)" in text
    assert "Long-Sequence-Segmentation (LSS) [tsaris2024]" in text
    # the training jobs as the run folder, the log, the job record and the benchmark recorded them
    assert f"p = 8: 2 processes, on AMD Instinct MI250X, Slurm job 4242 (sbatch {SBATCH}), 2.0 h wall time" in text
    assert "peak resident memory 20.0 GB" in text and "p = 4: not recorded" in text
    # and the machine that ran `seqvit provenance` is named as that, not as the training hardware
    assert "This report was built by `seqvit provenance` on" in text and "Runs used" not in text


def test_methods_of_the_frontier_sweep_give_every_runs_degree():
    from seqvit.config import load_config
    from seqvit.provenance import methods

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "frontier-seqscale.yaml")
    text = methods.methods_text(cfg, {}, "no-eval-folder")
    assert "without sequence parallelism" not in text
    for p, layout in cfg["parallel"]["runs"].items():
        sp, dp = layout["sp"], layout["dp"]
        if sp > 1:
            assert f"p = {p}: sequence split over SP = {sp} ranks" in text and f"({sp * dp} processes)" in text
        else:
            assert f"p = {p}: no sequence parallelism, {dp} data-parallel replicas" in text
    assert "no record of the training hardware" in text and "the machine that built the report" in text


def test_methods_take_climatology_years_baselines_and_extrapolation_from_the_config(demo_cfg, tmp_path):
    from seqvit.provenance import methods

    text = methods.methods_text(demo_cfg, {}, tmp_path)
    assert "normalization statistics and the day-of-year and hour climatology come from the training years only" in text
    assert "The baselines were climatology, persistence and a linear regression per lead time" in text
    assert "extrapolat" not in text
    demo_cfg["stats"] = {"climatology_years": [2013, 2014, 2015]}
    demo_cfg["evaluate"].update(baselines=["persistence"], lead_hours=[6, 24, 72], extrapolate_leads=True)
    text = methods.methods_text(demo_cfg, {}, tmp_path)
    assert "the day-of-year and hour climatology from the years 2013-2015" in text
    assert "from the training years only" in text and "climatology come from the training years" not in text
    assert "The baselines were persistence." in text and "linear regression" not in text
    assert (
        "Forecasts at 72 h, lead times the model was not trained on, were made by extrapolating its lead-time embedding"
    ) in text
    demo_cfg["evaluate"]["baselines"] = []
    assert "No baseline was scored" in methods.methods_text(demo_cfg, {}, tmp_path)


def test_table_captions_give_the_units_of_each_variable(tmp_path):
    rows = [
        {
            "model": "vit-p4",
            "variable": v,
            "lead_hours": 6,
            "rmse": 1.0,
            "acc": 0.9,
            "bias": 0.1,
            "rmse_mean_per_time": 1.0,
            "n_times": 10,
        }
        for v in ("t2m", "t_850", "z_500")
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    tables.write_tables(tmp_path, tmp_path / "tables", [2018], climatology_years=[2013, 2014])
    rmse = (tmp_path / "tables" / "rmse.tex").read_text()
    assert "Units: t2m and t\\_850 in K; z\\_500 in m$^2$\\,s$^{-2}$." in rmse
    assert "in K, m" not in rmse  # not one list of units for the whole table
    assert "climatology of the years 2013, 2014" in (tmp_path / "tables" / "acc.tex").read_text()


@pytest.mark.parametrize(
    "remote, recorded",
    [
        ("https://github.com/owner/seqvit.git", "https://github.com/owner/seqvit.git"),
        ("https://user:s3cret@github.com/owner/seqvit.git", "https://github.com/owner/seqvit.git"),
        ("https://ghp_token123@github.com/owner/seqvit.git", "https://github.com/owner/seqvit.git"),
        ("https://gitlab.example.org/owner/seqvit.git?private_token=x", "https://gitlab.example.org/owner/seqvit.git"),
        ("git@github.com:owner/seqvit.git", "git@github.com:owner/seqvit.git"),
        ("ssh://git@gitlab.example.org:2222/owner/seqvit.git", "ssh://git@gitlab.example.org:2222/owner/seqvit.git"),
        ("/home/someone/src/seqvit", None),
        ("file:///home/someone/src/seqvit.git", None),
        ("../seqvit", None),
        ("", None),
    ],
)
def test_only_url_remotes_are_recorded(remote, recorded):
    assert record.public_remote(remote) == recorded


def test_git_state_leaves_out_a_local_remote(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "--allow-empty", "-m", "x")
    git("remote", "add", "origin", str(tmp_path.parent / "elsewhere" / "seqvit"))
    state = record.git_state(tmp_path)
    assert state["commit"] and state["remote"] is None
    git("remote", "set-url", "origin", "https://tok@github.com/owner/seqvit.git")
    assert record.git_state(tmp_path)["remote"] == "https://github.com/owner/seqvit.git"


def test_host_names_only_with_record_hosts(run, monkeypatch):
    from seqvit import cli

    workdir, cfg, config_path = run
    monkeypatch.setattr(record.socket, "gethostname", lambda: HOST)
    assert cli.main(["provenance", "--config", str(config_path), "--no-validate"]) == 0
    out = workdir / "results" / "provenance"
    for path in out.rglob("*"):
        if path.is_file():
            assert HOST not in path.read_text(errors="replace"), path
    assert cli.main(["provenance", "--config", str(config_path), "--no-validate", "--record-hosts"]) == 0
    assert json.loads((out / "environment.json").read_text())["hardware"]["host"] == HOST
    graph = {e["@id"]: e for e in json.loads((out / "ro-crate-metadata.json").read_text())["@graph"]}
    hosts = {}
    for action in (e for e in graph.values() if e["@type"] == "CreateAction" and e["@id"].startswith("#job-")):
        extra = {graph[p["@id"]]["name"]: graph[p["@id"]]["value"] for p in action.get("additionalProperty", [])}
        hosts[action["instrument"]["@id"]] = extra.get("host")
    assert hosts["#rule-stats"] == HOST and hosts["#rule-tokenize"] == HOST
    assert hosts["#rule-train"] == "a Slurm node (job 4242; see sacct)"  # a batch job's node is not this machine
