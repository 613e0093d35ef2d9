"""The workflow through Snakemake's Slurm executor on a real one-node Slurm cluster.

`make test` starts the cluster (tests/cluster/start-slurm.sh); the rules are the ones Frontier
runs, with this machine's site values in profiles/ci-slurm.
"""

import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from test_workflow import ROOT, SNAKEMAKE, run, tiny_config


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sinfo") is None:
        pytest.fail("Slurm is not installed: run `make test` (it starts the test cluster) or tests/cluster/start-slurm.sh as root")
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        pytest.fail(f"the Slurm test cluster is not up (sinfo: {state.stdout or state.stderr}); run tests/cluster/start-slurm.sh")


@pytest.mark.workflow
def test_slurm_run_equals_local_run(cluster, tmp_path, demo_cfg):
    """Training with sequence parallelism P = 2: a 2-task srun job on Slurm, torchrun locally."""
    results, output = {}, {}
    for mode in ("local", "slurm"):
        workdir = tmp_path / mode
        workdir.mkdir()
        cfg = tiny_config(yaml.safe_load(yaml.safe_dump(demo_cfg)), workdir / "results")
        cfg["parallel"] = {"sp": 2, "sp_method": "ulysses"}
        cfg["train"]["threads"] = 1
        cfg["cluster"] = {"launcher": "srun" if mode == "slurm" else "none"}
        cfg_path = workdir / "tiny.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        profile = ["--profile", str(ROOT / "profiles" / ("ci-slurm" if mode == "slurm" else "local"))]
        output[mode] = run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(cfg_path), *profile, "--printshellcmds"], workdir)
        results[mode] = pd.read_csv(workdir / "results" / "eval" / "metrics.csv").drop(columns="run")
    # every stage ran as a Slurm job
    for rule in ("synth", "regrid", "stats", "tokenize", "train", "predict", "baseline", "evaluate"):
        assert f"submitted with SLURM jobid" in output["slurm"] and f"slurm_logs/rule_{rule}/" in output["slurm"], rule
    assert re.search(r"srun --nodes 1 --ntasks 2 seqvit train", output["slurm"])
    assert "torchrun --standalone --nproc-per-node 2 -m seqvit.cli train" in output["local"]
    pd.testing.assert_frame_equal(results["local"], results["slurm"], rtol=1e-6)
