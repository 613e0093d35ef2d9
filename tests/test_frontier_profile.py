"""The Frontier profile and the sequence-length sweep: the sbatch layout each training job gets."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqvit.config import load_config
from seqvit.errors import SeqvitError
from seqvit.train.slurm import job_layout, seqvit_command, train_resources

ROOT = Path(__file__).resolve().parents[1]
SEQSCALE = ROOT / "config" / "frontier-seqscale.yaml"


SLURM_COMMANDS = {"sbatch", "srun", "squeue", "sinfo", "scontrol", "sacct", "scancel", "salloc"}


def path_without_slurm(tmp_path) -> str:
    """A PATH like this one with every Slurm command left out: a machine without Slurm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            link = bin_dir / name
            if name not in SLURM_COMMANDS and not link.exists():
                link.symlink_to(Path(folder) / name)
    return f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"


def test_dry_run_without_slurm_shows_each_training_job(tmp_path):
    env = {**os.environ, "PATH": path_without_slurm(tmp_path), "SEQVIT_SLURM_ACCOUNT": "CLI000"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path / "work"),
           "--profile", str(ROOT / "profiles" / "frontier"), "--configfile", str(SEQSCALE), "-n"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"Training the ViT on (\d+) x \d+ patches \(on Slurm: ([^)]*)\)", proc.stdout)
    }
    cfg = load_config(SEQSCALE)
    assert sorted(jobs) == sorted(cfg["tokenize"]["patch_sizes"])
    bins = cfg["cluster"]["partitions"]
    for patch, sbatch in jobs.items():
        options = dict(re.findall(r"--([a-z-]+)=(\S+)", sbatch))
        run = cfg["parallel"]["runs"][patch]
        nodes = int(options["nodes"])
        tasks = int(options.get("ntasks", 0)) or nodes * int(options["ntasks-per-node"])
        assert tasks == run["sp"] * run["dp"], (patch, sbatch)
        assert tasks <= nodes * cfg["cluster"]["tasks_per_node"] and options["cpus-per-task"] == "7"
        allowed = [b["max_minutes"] for b in bins if b["name"] == options["partition"] and b["min_nodes"] <= nodes <= b["max_nodes"]]
        assert allowed and int(options["time"]) <= max(allowed), (patch, sbatch)
        assert options["signal"] == "USR1@600"
    # the longest sequence: 1,036,800 tokens over 64 GCDs on 8 nodes, launched by srun
    assert "srun --nodes 8 --ntasks 64 --cpus-per-task 7 --gpus-per-task=1 --gpu-bind=closest seqvit train" in proc.stdout


@pytest.fixture
def frontier():
    return load_config(SEQSCALE)


def test_partition_follows_node_count_and_walltime(frontier):
    frontier["parallel"]["runs"][1] = {"sp": 64, "dp": 12}  # 96 nodes: past the first batch bin
    assert job_layout(frontier, 1)["partition"] == "batch"
    assert job_layout(frontier, 1)["minutes"] == 120
    frontier["cluster"]["train_minutes"] = 600
    assert (job_layout(frontier, 1)["partition"], job_layout(frontier, 1)["minutes"]) == ("batch", 360)
    assert (job_layout(frontier, 2)["partition"], job_layout(frontier, 2)["minutes"]) == ("extended", 600)


def test_debug_qos_for_smoke_tests(frontier):
    frontier["cluster"]["debug"] = True
    frontier["cluster"]["train_minutes"] = 600
    resources = train_resources(frontier, 4)
    assert resources["qos"] == "debug" and resources["runtime"] == 120


def test_impossible_layouts_are_refused(frontier):
    frontier["parallel"]["runs"][2] = {"sp": 12, "dp": 1}
    with pytest.raises(SeqvitError, match="multiple of 8"):
        job_layout(frontier, 2)
    frontier["parallel"]["runs"][1] = {"sp": 64, "dp": 2000}
    with pytest.raises(SeqvitError, match="16000 nodes"):
        job_layout(frontier, 1)


def test_launch_commands(demo_cfg):
    assert seqvit_command(demo_cfg, 4) == "seqvit"
    demo_cfg["parallel"] = {"sp": 2}
    assert seqvit_command(demo_cfg, 4).startswith("torchrun --standalone --nproc-per-node 2 -m seqvit.cli")
    demo_cfg["cluster"] = {"launcher": "srun"}
    assert seqvit_command(demo_cfg, 4) == "srun --nodes 1 --ntasks 2 seqvit"
    assert train_resources(demo_cfg, 4) == {"runtime": 120, "nodes": 1, "mpi": "srun", "tasks": 2}


def test_profile_account_comes_from_the_environment():
    profile = yaml.safe_load((ROOT / "profiles" / "frontier" / "config.yaml").read_text())
    assert profile["default-resources"]["slurm_account"] == "$SEQVIT_SLURM_ACCOUNT"
    assert profile["jobs"] < 100 and profile["executor"] == "slurm"
