"""The workflow through Snakemake's Slurm executor on a real one-node Slurm cluster.

`make test` starts the cluster (tests/cluster/start-slurm.sh); the rules are the ones Frontier
runs, with this machine's site values in profiles/ci-slurm.
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from test_workflow import ROOT, SNAKEMAKE, run, tiny_config

pytestmark = pytest.mark.workflow  # slow: real Snakemake runs or multi-process training


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("sinfo") is None:
        pytest.fail(
            "Slurm is not installed: run `make test` (it starts the test cluster) or tests/cluster/start-slurm.sh as root"
        )
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
        pytest.fail(
            f"the Slurm test cluster is not up (sinfo: {state.stdout or state.stderr}); run tests/cluster/start-slurm.sh"
        )


@pytest.mark.workflow
def test_slurm_run_equals_local_run(cluster, tmp_path, demo_cfg):
    """Training with sequence parallelism P = 2: a 2-task srun job on Slurm, torchrun locally.

    Then a training job gets Slurm's USR1 (scancel --signal, as --signal=USR1@600 sends it before
    the walltime): both tasks checkpoint and exit 75, and a resubmitted job resumes and ends
    bit-identical to an uninterrupted run.
    """
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
        output[mode] = run(
            [
                *SNAKEMAKE,
                "-s",
                str(ROOT / "Snakefile"),
                "--directory",
                str(workdir),
                "--configfile",
                str(cfg_path),
                *profile,
                "--printshellcmds",
            ],
            workdir,
        )
        results[mode] = pd.read_csv(workdir / "results" / "eval" / "metrics.csv").drop(columns="run")
    # every stage ran as a Slurm job
    for rule in ("synth", "regrid", "stats", "tokenize", "train", "predict", "baseline", "evaluate"):
        assert "submitted with SLURM jobid" in output["slurm"] and f"slurm_logs/rule_{rule}/" in output["slurm"], rule
    assert re.search(r"srun --nodes 1 --ntasks 2 seqvit train", output["slurm"])
    assert "torchrun --standalone --nproc-per-node 2 -m seqvit.cli train" in output["local"]
    pd.testing.assert_frame_equal(results["local"], results["slurm"], rtol=1e-6)

    # Slurm's walltime warning reaches both tasks of the srun step; a resubmitted job resumes bit for bit
    _usr1_then_resubmit(tmp_path, yaml.safe_load((tmp_path / "slurm" / "tiny.yaml").read_text()))


def _sbatch(command: str, out) -> str:
    done = subprocess.run(
        ["sbatch", "--parsable", "-n", "2", "-o", str(out), "--wrap", command],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def _wait(job: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"Slurm job {job} still running"
        time.sleep(0.5)


def _usr1_then_resubmit(tmp_path, cfg):
    cfg["results"] = str(tmp_path / "signal" / "results")
    cfg["train"].update(steps=1000, log_every=10, val_every=500, checkpoint_every=250)
    cfg["cluster"] = {"launcher": "none"}
    tokens = tmp_path / "signal" / "results" / "tokens"
    tokens.mkdir(parents=True)
    (tokens / "p8.zarr").symlink_to(tmp_path / "slurm" / "results" / "tokens" / "p8.zarr")
    cfg_path = tmp_path / "signal" / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    seqvit = str(Path(sys.executable).parent / "seqvit")
    train = f"{seqvit} train --config {cfg_path} --patch-size 8 --quiet"
    run_dir = tmp_path / "signal" / "results" / "train" / "p8"

    first = _sbatch(f"srun -n 2 {train}; echo srun exit $?", tmp_path / "signal" / "first.out")
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.csv").exists() and len((run_dir / "metrics.csv").read_text().splitlines()) > 3):
        assert time.monotonic() < deadline, (tmp_path / "signal" / "first.out").read_text()[-3000:]
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=USR1", first], check=True)
    _wait(first)
    out = (tmp_path / "signal" / "first.out").read_text()
    assert out.count("stopped by SIGUSR1 after step") == 2 and "srun exit 75" in out, out[-3000:]
    stopped_at = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert 0 < stopped_at < 1000 and not (run_dir / "model.pt").exists()

    second = _sbatch(f"srun -n 2 {train}; echo srun exit $?", tmp_path / "signal" / "second.out")
    _wait(second)
    out = (tmp_path / "signal" / "second.out").read_text()
    assert f"resumed from step {stopped_at}," in out and "srun exit 0" in out, out[-3000:]

    # the same run, uninterrupted, under torchrun
    reference = tmp_path / "signal" / "reference.yaml"
    cfg["results"] = str(tmp_path / "signal" / "reference")
    reference.write_text(yaml.safe_dump(cfg))
    (tmp_path / "signal" / "reference" / "tokens").mkdir(parents=True)
    (tmp_path / "signal" / "reference" / "tokens" / "p8.zarr").symlink_to(tokens / "p8.zarr")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "seqvit.cli",
            "train",
            "--config",
            str(reference),
            "--patch-size",
            "8",
            "--quiet",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    a = torch.load(tmp_path / "signal" / "reference" / "train" / "p8" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[name], b[name]) for name in a)
