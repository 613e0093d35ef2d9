"""The Frontier profile and the sequence-length sweep: the sbatch layout each training job gets."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqvit.config import load_config
from seqvit.errors import SeqvitError
from seqvit.train.slurm import check_slurm_account, job_layout, seqvit_command, train_resources

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


def frontier_snakemake(tmp_path, *configfiles, dry_run=True) -> list[str]:
    """The Snakemake command a user runs with the Frontier profile, in a work folder under tmp_path."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path / "work"),
        "--profile",
        str(ROOT / "profiles" / "frontier"),
        "--configfile",
        *map(str, configfiles or [SEQSCALE]),
    ]
    return cmd + ["-n"] if dry_run else cmd


def test_dry_run_without_slurm_shows_each_training_job(tmp_path):
    env = {**os.environ, "PATH": path_without_slurm(tmp_path), "SEQVIT_SLURM_ACCOUNT": "CLI000"}
    cmd = frontier_snakemake(tmp_path)
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
        allowed = [
            b["max_minutes"]
            for b in bins
            if b["name"] == options["partition"] and b["min_nodes"] <= nodes <= b["max_nodes"]
        ]
        assert allowed and int(options["time"]) <= max(allowed), (patch, sbatch)
        assert options["signal"] == "USR1@600"
    # the longest sequence: 1,036,800 tokens over 64 GCDs on 8 nodes, launched by srun
    assert (
        "srun --nodes 8 --ntasks 64 --cpus-per-task 7 --gpus-per-task=1 --gpu-bind=closest seqvit train" in proc.stdout
    )


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


@pytest.mark.parametrize(
    "value, environ, account",
    [
        ("$SEQVIT_SLURM_ACCOUNT", {"SEQVIT_SLURM_ACCOUNT": "CLI000"}, "CLI000"),
        ("${SEQVIT_SLURM_ACCOUNT}", {"SEQVIT_SLURM_ACCOUNT": " CLI000 "}, "CLI000"),
        ("none", {}, "none"),  # profiles/ci-slurm: a plain name
    ],
)
def test_account_variables_are_expanded(value, environ, account):
    assert check_slurm_account(value, environ) == account


@pytest.mark.parametrize("environ", [{}, {"SEQVIT_SLURM_ACCOUNT": ""}, {"SEQVIT_SLURM_ACCOUNT": "  "}])
def test_account_from_an_unset_variable_is_refused(environ):
    with pytest.raises(SeqvitError, match=r"SEQVIT_SLURM_ACCOUNT is not set.*export SEQVIT_SLURM_ACCOUNT=<project>"):
        check_slurm_account("$SEQVIT_SLURM_ACCOUNT", environ)


def test_unset_account_stops_the_workflow_before_anything_is_submitted(tmp_path):
    # Slurm commands that only record that they were called: nothing may reach them.
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    calls = tmp_path / "slurm-calls.log"
    for name in SLURM_COMMANDS:
        script = fake / name
        script.write_text(f'#!/bin/sh\necho {name} "$@" >> {calls}\nexit 1\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SEQVIT_SLURM_ACCOUNT"}
    env["PATH"] = f"{fake}{os.pathsep}{path_without_slurm(tmp_path)}"
    cmd = frontier_snakemake(tmp_path, dry_run=False)  # a real run, not -n
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "SEQVIT_SLURM_ACCOUNT is not set" in out and "export SEQVIT_SLURM_ACCOUNT=<project>" in out, out[-3000:]
    # The Slurm plugin may query the cluster (scontrol show config) before the Snakefile is read; no job is sent.
    called = [line.split()[0] for line in calls.read_text().splitlines()] if calls.exists() else []
    assert not {"sbatch", "srun", "salloc"} & set(called), called


def make_frontier_profile(home: Path) -> subprocess.CompletedProcess:
    assert shutil.which("make"), "make is missing: install it (Debian: apt-get install make)"
    env = {**os.environ, "HOME": str(home)}
    env.pop("MAKEFLAGS", None)
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "frontier-profile"], env=env, capture_output=True, text=True, timeout=60
    )


def test_make_frontier_profile_links_and_replaces_an_old_link(tmp_path):
    link = tmp_path / ".config" / "snakemake" / "frontier"
    proc = make_frontier_profile(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and link.resolve() == (ROOT / "profiles" / "frontier").resolve()
    old = tmp_path / "old-checkout" / "profiles" / "frontier"
    old.mkdir(parents=True)
    link.unlink()
    link.symlink_to(old)
    proc = make_frontier_profile(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert link.resolve() == (ROOT / "profiles" / "frontier").resolve()
    assert not (old / "frontier").exists()  # not a link put inside the old profile


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_make_frontier_profile_refuses_a_real_folder_or_file(tmp_path, kind):
    link = tmp_path / ".config" / "snakemake" / "frontier"
    link.parent.mkdir(parents=True)
    if kind == "folder":
        link.mkdir()
        (link / "config.yaml").write_text("executor: slurm\n")
    else:
        link.write_text("not a profile\n")
    proc = make_frontier_profile(tmp_path)
    assert proc.returncode != 0
    assert f"{link} is a {kind}, not a link" in proc.stderr and f'mv "{link}"' in proc.stderr, proc.stderr
    assert not link.is_symlink()
    if kind == "folder":
        assert sorted(p.name for p in link.iterdir()) == ["config.yaml"]  # no frontier/frontier link


def test_dry_run_refuses_a_run_that_does_not_fit_before_anything_is_submitted(tmp_path):
    """The corrected sweep is accepted (the test above); without the p=1 run's micro-batching it is not."""
    overlay = tmp_path / "no-accumulation.yaml"
    overlay.write_text(yaml.safe_dump({"parallel": {"runs": {1: {"sp": 64, "dp": 1, "grad_accumulation": 1}}}}))
    env = {**os.environ, "PATH": path_without_slurm(tmp_path), "SEQVIT_SLURM_ACCOUNT": "CLI000"}
    cmd = frontier_snakemake(tmp_path, SEQSCALE, overlay)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "nothing was submitted" in out, out[-3000:]
    assert re.search(r"run p=1 .* does not fit: predicted peak [\d.]+ GB per rank, capacity 64\.0 GB", out), out[-3000:]
    assert "grad_accumulation" in out and "Traceback" not in out


def test_a_run_entry_sets_that_runs_sp_dp_and_accumulation_only():
    from seqvit.train.slurm import run_config

    cfg = load_config(SEQSCALE)
    one, two = run_config(cfg, 1), run_config(cfg, 2)
    assert (one["parallel"]["sp"], one["parallel"]["dp"], one["train"]["grad_accumulation"]) == (64, 1, 4)
    assert (two["parallel"]["sp"], two["parallel"]["dp"], two["train"]["grad_accumulation"]) == (16, 2, 1)
    assert cfg["train"]["grad_accumulation"] == 1  # the config itself is left as it was
