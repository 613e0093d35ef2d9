"""The Frontier profile and the sequence-length sweep: the sbatch layout each training job gets."""

import math
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
from seqvit.plan import load_machine, plan_run, run_shape
from seqvit.plan.walltime import train_job_resources, walltime
from seqvit.train.slurm import (
    check_slurm_account,
    job_shape,
    predict_resources,
    seqvit_command,
    train_resources,
)

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


def predicted_first_job(cfg: dict, patch: int) -> tuple[str, int, int]:
    """(partition, minutes, jobs) of a run's first training job, worked out here from its predicted
    step time: train.steps x step x 1.25 (cluster.walltime_margin), plus 10 minutes of start-up and
    the 10 after USR1 per job; the first partition that takes the nodes and the whole walltime, else
    the first that takes the nodes, whose limit then splits the run into jobs."""
    step = plan_run(run_shape(cfg, patch), load_machine("frontier")).step_seconds
    training = cfg["train"]["steps"] * step * 1.25 / 60
    whole = math.ceil(training + 10 + 10)
    sp, dp = cfg["parallel"]["runs"][patch]["sp"], cfg["parallel"]["runs"][patch]["dp"]
    nodes = math.ceil(sp * dp / 8)
    taking = [b for b in cfg["cluster"]["partitions"] if b["min_nodes"] <= nodes <= b["max_nodes"]]
    chosen = next((b for b in taking if whole <= b["max_minutes"]), taking[0])
    if whole <= chosen["max_minutes"]:
        return chosen["name"], whole, 1
    return chosen["name"], chosen["max_minutes"], math.ceil(training / (chosen["max_minutes"] - 20))


def test_dry_run_without_slurm_shows_each_training_job(tmp_path):
    env = {**os.environ, "PATH": path_without_slurm(tmp_path), "SEQVIT_SLURM_ACCOUNT": "CLI000"}
    cmd = frontier_snakemake(tmp_path)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(
            r"Training the ViT (?:vit-p\d+ )?on (\d+) x \d+ patches \(on Slurm: ([^)]*)\)", proc.stdout
        )
    }
    cfg = load_config(SEQSCALE)
    assert sorted(jobs) == sorted(cfg["tokenize"]["patch_sizes"])
    assert cfg["cluster"]["train_minutes"] is None  # the sweep's walltimes are predicted
    bins = cfg["cluster"]["partitions"]
    for patch, sbatch in jobs.items():
        options = dict(re.findall(r"--([a-z-]+)=([^\s;]+)", sbatch.split(";")[0]))
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
        partition, minutes, count = predicted_first_job(cfg, patch)
        assert (options["partition"], int(options["time"])) == (partition, minutes), (patch, sbatch)
        assert "walltime predicted by seqvit plan" in sbatch
        if count > 1:  # split into jobs of the partition's limit, and named in a warning
            assert f"in {count:,} jobs of up to {minutes} min" in sbatch
            assert f"run p={patch} is predicted to need {count:,} jobs of {minutes} min" in proc.stderr
    # the longest sequence: 1,036,800 tokens over 64 GCDs on 8 nodes, launched by srun
    assert (
        "srun --nodes 8 --ntasks 64 --cpus-per-task 7 --gpus-per-task=1 --gpu-bind=closest seqvit train" in proc.stdout
    )
    # each run's forecast runs on its training job's nodes and tasks, for cluster.predict_minutes, through srun
    predictions = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"Forecasting the test years with the ViT vit-p(\d+) \(on Slurm: ([^)]*)\)", proc.stdout)
    }
    assert sorted(predictions) == sorted(cfg["tokenize"]["patch_sizes"])
    assert cfg["cluster"]["predict_minutes"] == 30  # the schema's default
    for patch, sbatch in predictions.items():
        options = dict(re.findall(r"--([a-z-]+)=([^\s;]+)", sbatch))
        run = cfg["parallel"]["runs"][patch]
        world = run["sp"] * run["dp"]
        nodes = math.ceil(world / 8)
        assert int(options["nodes"]) == nodes, (patch, sbatch)
        tasks = int(options.get("ntasks", 0)) or nodes * int(options["ntasks-per-node"])
        assert tasks == world, (patch, sbatch)
        assert options["time"] == "30" and "signal" not in options, (patch, sbatch)
        srun = f"srun --nodes {nodes} --ntasks {world} --cpus-per-task 7 --gpus-per-task=1 --gpu-bind=closest seqvit predict"
        assert re.search(re.escape(srun) + rf" .*--patch-size {patch} ", proc.stdout), (patch, srun)
    assert max(int(dict(re.findall(r"--([a-z-]+)=(\S+)", s))["nodes"]) for s in predictions.values()) == 8


@pytest.fixture
def frontier():
    return load_config(SEQSCALE)


def test_partition_follows_node_count_and_walltime(frontier):
    frontier["parallel"]["runs"][1] = {"sp": 64, "dp": 12}  # 96 nodes: past the first batch bin
    assert job_shape(frontier, 1)["partition"] == "batch"
    assert job_shape(frontier, 1)["minutes"] == 360  # nothing wanted: the bin's whole limit
    frontier["cluster"]["train_minutes"] = 120
    assert job_shape(frontier, 1)["minutes"] == 120
    frontier["cluster"]["train_minutes"] = 600
    assert (job_shape(frontier, 1)["partition"], job_shape(frontier, 1)["minutes"]) == ("batch", 360)
    assert (job_shape(frontier, 2)["partition"], job_shape(frontier, 2)["minutes"]) == ("extended", 600)


def test_debug_qos_for_smoke_tests(frontier):
    frontier["cluster"]["debug"] = True
    frontier["cluster"]["train_minutes"] = 600
    resources = train_resources(frontier, 4)
    assert resources["qos"] == "debug" and resources["runtime"] == 120


def test_impossible_layouts_are_refused(frontier):
    frontier["parallel"]["runs"][2] = {"sp": 12, "dp": 1}
    with pytest.raises(SeqvitError, match="multiple of 8"):
        job_shape(frontier, 2)
    frontier["parallel"]["runs"][1] = {"sp": 64, "dp": 2000}
    with pytest.raises(SeqvitError, match="16000 nodes"):
        job_shape(frontier, 1)


def test_predict_job_has_the_training_shape_and_its_own_walltime(frontier):
    frontier["cluster"]["predict_minutes"] = 45
    predicting, training = predict_resources(frontier, 1), train_resources(frontier, 1)
    assert predicting["runtime"] == 45 and "USR1" in training["slurm_extra"]
    assert "slurm_extra" not in predicting  # no USR1: prediction has no checkpoint to write on it
    for key in ("nodes", "tasks_per_node", "mpi", "cpus_per_task"):
        assert predicting[key] == training[key], key
    assert (predicting["nodes"], predicting["tasks_per_node"]) == (8, 8)  # 64 ranks of sp=64, 8 per node


def test_launch_commands(demo_cfg):
    assert seqvit_command(demo_cfg, 8) == "seqvit"  # the demo's p=8 run: one process
    # its p=4 run: sequence parallelism over two ranks, started by torchrun on this machine
    assert seqvit_command(demo_cfg, 4).startswith("torchrun --standalone --nproc-per-node 2 -m seqvit.cli")
    demo_cfg["parallel"] = {"sp": 2}
    demo_cfg["cluster"] = {"launcher": "srun"}
    assert seqvit_command(demo_cfg, 4) == "srun --nodes 1 --ntasks 2 seqvit"
    # no walltime pinned and no partition: the runtime is the prediction's (train_job_resources)
    assert train_resources(demo_cfg, 4) == {"nodes": 1, "mpi": "srun", "tasks": 2}
    assert train_resources(demo_cfg, 4, 30) == {"runtime": 30, "nodes": 1, "mpi": "srun", "tasks": 2}


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
    from seqvit.runs import run_config

    cfg = load_config(SEQSCALE)
    one, four = run_config(cfg, 1), run_config(cfg, 4)
    assert (one["parallel"]["sp"], one["parallel"]["dp"], one["train"]["grad_accumulation"]) == (64, 1, 16)
    assert (four["parallel"]["sp"], four["parallel"]["dp"], four["train"]["grad_accumulation"]) == (8, 2, 1)
    assert cfg["train"]["grad_accumulation"] == 1  # the config itself is left as it was


def test_a_long_run_is_split_over_jobs_of_its_partitions_limit(frontier):
    """p=1 on 8 nodes takes longer than any partition allows: 2-hour batch jobs, the last one shorter."""
    step = plan_run(run_shape(frontier, 1), load_machine("frontier")).step_seconds
    training = 20_000 * step * 1.25 / 60  # minutes, margin included
    assert training + 20 > 1440  # more than even the extended partition's 24 hours
    useful = 120 - 10 - 10  # a job's limit less start-up and the minutes after USR1
    jobs = math.ceil(training / useful)
    plan = walltime(frontier, 1)
    assert (plan.limit, plan.jobs) == (120, jobs)
    assert [plan.minutes(a) for a in (1, 2, jobs - 1)] == [120, 120, 120]
    assert plan.minutes(jobs) == math.ceil(training - (jobs - 1) * useful + 20) <= 120
    assert plan.minutes(jobs + 1) == 120  # slower than predicted: the whole limit
    resources = train_job_resources(frontier, 1, attempt=jobs)
    assert (resources["runtime"], resources["slurm_partition"]) == (plan.minutes(jobs), "batch")


def test_a_pinned_walltime_wins(frontier):
    frontier["parallel"]["runs"][1]["train_minutes"] = 90
    assert train_job_resources(frontier, 1)["runtime"] == 90 and walltime(frontier, 1).jobs == 1
    assert "pinned" in walltime(frontier, 1).describe()
    frontier["cluster"]["train_minutes"] = 600  # every other run; p=1 keeps its own
    assert train_job_resources(frontier, 2)["runtime"] == 600
    assert train_job_resources(frontier, 2)["slurm_partition"] == "extended"
    assert train_job_resources(frontier, 1, attempt=3)["runtime"] == 90


def test_a_partition_too_short_for_start_up_is_refused(frontier):
    frontier["cluster"]["startup_minutes"] = 115  # with the 10 minutes after USR1, no time is left in 2 hours
    with pytest.raises(SeqvitError, match="cluster.startup_minutes.*cluster.signal_seconds"):
        walltime(frontier, 1)


def test_the_walltime_policy_is_outside_the_training_code():
    """A new prediction (the planner's figures, the walltime policy) must not retrain: the train
    rule's code hash and the checkpoints' record cover train.engine and train.slurm only."""
    from seqvit.provenance.code import import_closure

    closure = import_closure("train.engine", "train.slurm")
    assert "train.slurm" in closure and not [m for m in closure if m == "plan" or m.startswith("plan.")]


def test_torchrun_hands_every_option_of_the_train_and_predict_commands_to_seqvit():
    """torchrun's own parser takes an option of the script's that abbreviates one of its own (it
    once read --run as --run-path): every option the rules pass must reach seqvit."""
    import re

    from torch.distributed.run import get_args_parser

    text = (ROOT / "workflow" / "rules" / "train.smk").read_text()
    for command in ("train", "predict"):
        shell = re.search(rf'"\{{params.seqvit\}} {command} ([^"]+)"', text).group(1)
        options = [word for word in shell.split() if word.startswith("--")]
        argv = ["--standalone", "--nproc-per-node", "2", "-m", "seqvit.cli", command, *options]
        args = get_args_parser().parse_args(argv)
        assert args.training_script == "seqvit.cli"
        assert args.training_script_args == [command, *options], command
