"""Partial reruns: after one change, a dry run lists exactly the stages downstream of it.

The workflow and the package are copied, so the test can edit the source the rules hash.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, tiny_config

ALL_STAGES = {"synth", "regrid", "stats", "tokenize", "train", "predict", "baseline", "evaluate"}


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

    def snakemake(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(top),
               "--configfile", str(cfg_path), "--cores", "2", *args]
        proc = subprocess.run(cmd, cwd=top, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    snakemake()
    return repo, cfg_path, snakemake


def planned_stages(snakemake) -> set[str]:
    out = snakemake("-n", "--quiet", "rules")
    if "Nothing to be done" in out:
        return set()
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", out, re.M)} & ALL_STAGES


def edit_config(cfg_path, section, key, value):
    cfg = yaml.safe_load(cfg_path.read_text())
    old = cfg[section].get(key)
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
        assert planned_stages(snakemake) == {"train", "predict", "evaluate"}
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
        ("model/vit.py", {"train", "predict", "evaluate"}),
        ("evaluate/metrics.py", {"evaluate"}),
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
