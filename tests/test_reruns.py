"""Partial reruns: after one change, a dry run lists exactly the stages downstream of it.

The workflow and the package are copied, so the test can edit the source the rules hash, and
move the checkout.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, tiny_config

pytestmark = pytest.mark.workflow  # slow: real Snakemake runs or multi-process training

ALL_STAGES = {
    "synth",
    "regrid",
    "stats",
    "climatology",
    "tokenize",
    "train",
    "predict",
    "baseline",
    "evaluate",
    "provenance",
}
SCORING = {"evaluate", "provenance"}


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A copy of the project with the tiny workflow already run to the end."""
    import copy

    top = tmp_path_factory.mktemp("reruns")
    repo = top / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "workflow", "config", "envs"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    shutil.copy(ROOT / "Snakefile", repo / "Snakefile")
    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg_path = top / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(copy.deepcopy(demo), top / "results")))
    env = {
        **os.environ,
        "PYTHONPATH": str(repo / "src"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def snakemake(*args, checkout=repo, configfiles=(cfg_path,)):
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(checkout / "Snakefile"),
            "--directory",
            str(top),
            "--configfile",
            *map(str, configfiles),
            "--cores",
            "2",
            *args,
        ]
        proc = subprocess.run(
            cmd, cwd=top, env={**env, "PYTHONPATH": str(checkout / "src")}, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    snakemake()
    return repo, cfg_path, snakemake


def planned_jobs(snakemake, *args, **kwargs) -> dict[str, int]:
    out = snakemake("-n", "--quiet", "rules", *args, **kwargs)
    if "Nothing to be done" in out:
        return {}
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}


def planned_stages(snakemake, *args, **kwargs) -> set[str]:
    return set(planned_jobs(snakemake, *args, **kwargs)) & ALL_STAGES


def edit_config(cfg_path, section, key, value):
    """Set (or, with value None, remove) config key section.key; returns the old value (None: absent)."""
    cfg = yaml.safe_load(cfg_path.read_text())
    old = cfg[section].get(key)
    if value is None:
        cfg[section].pop(key, None)
    else:
        cfg[section][key] = value
    cfg_path.write_text(yaml.safe_dump(cfg))
    return old


def test_nothing_changed_nothing_reruns(done_run):
    _, _, snakemake = done_run
    assert planned_stages(snakemake) == set()


def test_training_parameter_reruns_training_and_what_follows(done_run):
    _, cfg_path, snakemake = done_run
    old = edit_config(cfg_path, "train", "lr", 0.0123)
    try:
        assert planned_stages(snakemake) == {"train", "predict"} | SCORING
    finally:
        edit_config(cfg_path, "train", "lr", old)


def test_regrid_method_reruns_from_regridding(done_run):
    _, cfg_path, snakemake = done_run
    old = edit_config(cfg_path, "regrid", "method", "bilinear")
    try:
        assert planned_stages(snakemake) == ALL_STAGES - {"synth"}
    finally:
        edit_config(cfg_path, "regrid", "method", old)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("model/vit.py", {"train", "predict"} | SCORING),
        ("evaluate/metrics.py", SCORING),
    ],
)
def test_editing_source_reruns_what_uses_it(done_run, source, expected):
    repo, _, snakemake = done_run
    path = repo / "src" / "seqvit" / source
    original = path.read_text()
    path.write_text(original + "\n# an edit\n")
    try:
        assert planned_stages(snakemake) == expected
    finally:
        path.write_text(original)
    assert planned_stages(snakemake) == set()


def test_moved_checkout_reruns_nothing(done_run, tmp_path):
    repo, _, snakemake = done_run
    moved = tmp_path / "elsewhere" / "seqvit"
    shutil.copytree(repo, moved, ignore=shutil.ignore_patterns("__pycache__"))
    assert planned_stages(snakemake, checkout=moved) == set()


def test_renamed_config_file_reruns_nothing(done_run, tmp_path):
    _, cfg_path, snakemake = done_run
    renamed = tmp_path / "my experiment.yaml"
    shutil.copy(cfg_path, renamed)
    assert planned_stages(snakemake, configfiles=[renamed]) == set()


def test_overlay_config_reruns_only_what_it_changes(done_run, tmp_path):
    _, cfg_path, snakemake = done_run
    cfg = yaml.safe_load(cfg_path.read_text())
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"evaluate": {"lead_hours": cfg["evaluate"]["lead_hours"]}}))
    assert planned_stages(snakemake, configfiles=[cfg_path, overlay]) == set()
    overlay.write_text(yaml.safe_dump({"evaluate": {"lead_hours": [24]}}))
    assert planned_stages(snakemake, configfiles=[cfg_path, overlay]) == {"predict", "baseline"} | SCORING


def test_renamed_experiment_reruns_only_scoring_and_provenance(done_run):
    _, cfg_path, snakemake = done_run
    assert planned_stages(snakemake, "--config", "experiment=renamed") == SCORING
    cfg = yaml.safe_load(cfg_path.read_text())
    old = cfg["experiment"]
    cfg["experiment"] = "renamed"
    cfg_path.write_text(yaml.safe_dump(cfg))
    try:
        assert planned_stages(snakemake) == SCORING
    finally:
        cfg["experiment"] = old
        cfg_path.write_text(yaml.safe_dump(cfg))


def test_climatology_years_rerun_the_climatology_not_the_models(done_run):
    _, cfg_path, snakemake = done_run
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["stats"] = {"climatology_years": cfg["splits"]["train"]}
    cfg_path.write_text(yaml.safe_dump(cfg))
    try:
        assert planned_stages(snakemake) == {"climatology", "baseline"} | SCORING
    finally:
        del cfg["stats"]
        cfg_path.write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("key, value", [("log_every", 3), ("threads", 1), ("checkpoint_every", 5)])
def test_reporting_keys_do_not_retrain(done_run, key, value):
    _, cfg_path, snakemake = done_run
    old = edit_config(cfg_path, "train", key, value)
    try:  # only the provenance bundle, which records the whole config
        assert planned_stages(snakemake) == {"provenance"}
    finally:
        edit_config(cfg_path, "train", key, old)


@pytest.mark.parametrize("config", ["era5-5.625deg.yaml", "frontier-seqscale.yaml"])
def test_era5_configs_after_the_demo_plan_every_download(done_run, config):
    """The demo's synthetic raw files are never taken for ERA5: each experiment has its own folder,
    so a dry run after the demo plans every download the config needs."""
    from seqvit.config import load_config
    from seqvit.data.sources import plan_requests

    repo, _, snakemake = done_run
    jobs = planned_jobs(snakemake, configfiles=[repo / "config" / config])
    expected = len(plan_requests(load_config(repo / "config" / config)))
    if config == "frontier-seqscale.yaml":
        assert expected == 19 * 12 * 2  # 2000-2018, one request per month and variable group
    assert jobs["download"] == expected


def test_retraining_after_an_upstream_change_does_not_keep_the_old_weights(done_run):
    """Runs last: it changes the fixture's results."""
    import torch
    import zarr

    _, cfg_path, snakemake = done_run
    cfg = yaml.safe_load(cfg_path.read_text())
    run = Path(cfg["results"]) / "train" / "p8"
    before = torch.load(run / "model.pt", weights_only=False)
    edit_config(cfg_path, "regrid", "method", "bilinear")
    snakemake()
    after = torch.load(run / "model.pt", weights_only=False)
    assert any(not torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in before["state_dict"])
    store_id = zarr.open_group(str(Path(cfg["results"]) / "tokens" / "p8.zarr"), mode="r").attrs["seqvit_store_id"]
    recorded = json.loads((run / "checkpoints" / "run.json").read_text())
    assert recorded["tokens"]["store_id"] == store_id == after["tokens"]["store_id"] != before["tokens"]["store_id"]
    assert recorded["tokens"]["lineage"]["regrid_method"] == "bilinear"
    assert (run / "checkpoints.previous").is_dir()
    assert "resumed from step" not in (Path(cfg["results"]) / "logs" / "train" / "p8.log").read_text()
