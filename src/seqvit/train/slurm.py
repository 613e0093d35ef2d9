"""How a training run is laid out as a Slurm job: nodes, tasks, partition, QoS, walltime.

The experiment config says what each run needs (`parallel`: the sequence-parallel degree P of
each patch size, and D data-parallel replicas); its `cluster` section describes the machine
(tasks per node, CPUs per task, partitions and their limits, the launcher). Snakemake's train
rule turns the result into sbatch resources and the srun line, so the same rule runs on
Frontier, on the test cluster and on a laptop (no `cluster` section: one plain process, or
torchrun for several). The walltime a job wants comes from the planner (seqvit.plan.walltime),
unless the config pins it; it is not decided here, so this module, which training imports, does
not change when the prediction does.
"""

from __future__ import annotations

import math
import os
import re
import shlex

from seqvit.errors import SeqvitError
from seqvit.runs import run_entry, run_parallelism

_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def pinned_minutes(cfg: dict, patch_size: int) -> int | None:
    """The walltime the config pins for this run: parallel.runs.P.train_minutes, else cluster.train_minutes."""
    value = run_entry(cfg, patch_size).get("train_minutes", (cfg.get("cluster") or {}).get("train_minutes"))
    return None if value is None else int(value)


def job_shape(cfg: dict, patch_size: int, minutes: int | None = None) -> dict:
    """Tasks, nodes, partition, QoS and minutes of the training job for one patch size.

    minutes: the walltime wanted (seqvit.plan.walltime predicts it); None: the one the config
    pins (pinned_minutes), else the whole limit of the partition chosen. `limit` is that limit.
    """
    sp, dp = run_parallelism(cfg, patch_size)
    world = sp * dp
    cluster = cfg.get("cluster") or {}
    per_node = int(cluster.get("tasks_per_node", world))
    if per_node < 1:
        raise SeqvitError("cluster.tasks_per_node must be at least 1")
    if sp > per_node and sp % per_node:
        raise SeqvitError(
            f"parallel.runs.{patch_size}: a sequence-parallel group of {sp} ranks must fill whole nodes of "
            f"{per_node} tasks (cluster.tasks_per_node); use a multiple of {per_node}"
        )
    nodes = math.ceil(world / per_node)
    wanted = pinned_minutes(cfg, patch_size) if minutes is None else int(minutes)
    layout = {
        "sp": sp,
        "dp": dp,
        "world": world,
        "nodes": nodes,
        "tasks_per_node": min(per_node, world),
        "minutes": wanted,
        "limit": None,
        "partition": None,
        "qos": None,
    }
    if cluster.get("debug"):
        debug = cluster.get("debug_qos") or {}
        limit = int(debug.get("max_minutes", 120))
        if nodes > int(debug.get("max_nodes", nodes)):
            raise SeqvitError(f"cluster.debug: {nodes} nodes exceed the debug QoS limit of {debug['max_nodes']}")
        layout.update(
            partition=debug.get("partition"),
            qos=debug.get("qos", "debug"),
            limit=limit,
            minutes=limit if wanted is None else min(wanted, limit),
        )
        return layout
    partitions = cluster.get("partitions") or []
    fitting = [p for p in partitions if int(p.get("min_nodes", 1)) <= nodes <= int(p["max_nodes"])]
    if partitions and not fitting:
        largest = max(int(p["max_nodes"]) for p in partitions)
        raise SeqvitError(
            f"the p={patch_size} run needs {nodes} nodes (sp={sp} x dp={dp} tasks / {per_node} per node); "
            f"no entry of cluster.partitions takes that many (the largest takes {largest})"
        )
    if fitting:
        # the first partition that allows the wanted walltime, else the first that takes the nodes
        # with its limit (training checkpoints and a retry resumes it)
        chosen = next((p for p in fitting if wanted is not None and wanted <= int(p["max_minutes"])), fitting[0])
        limit = int(chosen["max_minutes"])
        layout.update(
            partition=chosen["name"],
            qos=chosen.get("qos"),
            limit=limit,
            minutes=limit if wanted is None else min(wanted, limit),
        )
    return layout


def train_resources(cfg: dict, patch_size: int, minutes: int | None = None) -> dict:
    """Snakemake resources of the train job (sbatch options through the Slurm executor).

    minutes: the walltime wanted, as for job_shape; without it and without a pinned walltime
    or a partition there is no runtime resource (seqvit.plan.walltime passes the prediction).
    """
    cluster = cfg.get("cluster") or {}
    layout = job_shape(cfg, patch_size, minutes)
    resources = {"nodes": layout["nodes"]}
    if layout["minutes"] is not None:
        resources["runtime"] = layout["minutes"]
    if cluster.get("cpus_per_task"):
        resources["cpus_per_task"] = int(cluster["cpus_per_task"])
    if cluster.get("mem_mb") is not None:
        resources["mem_mb"] = int(cluster["mem_mb"])
    if layout["partition"]:
        resources["slurm_partition"] = layout["partition"]
    if layout["qos"]:
        resources["qos"] = layout["qos"]
    if _uses_srun(cfg, patch_size):
        resources["mpi"] = "srun"
        if layout["world"] >= 2 * layout["tasks_per_node"] or (layout["nodes"] > 1):
            resources["tasks_per_node"] = layout["tasks_per_node"]
        else:
            resources["tasks"] = layout["world"]
    extra = [str(cluster["sbatch_extra"])] if cluster.get("sbatch_extra") else []
    if cluster.get("signal_seconds"):
        # Slurm warns every step this long before the walltime; training checkpoints on it
        extra.append(f"--signal=USR1@{int(cluster['signal_seconds'])}")
    if extra:
        resources["slurm_extra"] = " ".join(extra)
    return resources


def predict_minutes(cfg: dict) -> int:
    """Walltime of a predict job (cluster.predict_minutes; the schema's default without a cluster section)."""
    cluster = cfg.get("cluster") or {}
    if "predict_minutes" in cluster:
        return int(cluster["predict_minutes"])
    from seqvit.config import load_schema

    return int(load_schema()["properties"]["cluster"]["properties"]["predict_minutes"]["default"])


def predict_resources(cfg: dict, patch_size: int) -> dict:
    """Snakemake resources of the predict job of a run: the nodes and tasks of its training job (each
    rank holds the same token segment and attention as in training), with cluster.predict_minutes.

    No USR1 warning: prediction does not checkpoint, and the signal would end it early.
    """
    resources = train_resources(cfg, patch_size, predict_minutes(cfg))
    resources.pop("slurm_extra", None)
    cluster = cfg.get("cluster") or {}
    if cluster.get("sbatch_extra"):
        resources["slurm_extra"] = str(cluster["sbatch_extra"])
    return resources


def _uses_srun(cfg: dict, patch_size: int) -> bool:
    launcher = (cfg.get("cluster") or {}).get("launcher", "none")
    return launcher == "srun" and job_shape(cfg, patch_size)["world"] > 1


def seqvit_command(cfg: dict, patch_size: int) -> str:
    """The start of the train job's shell command, up to and including the `seqvit` program."""
    cluster = cfg.get("cluster") or {}
    layout = job_shape(cfg, patch_size)
    parts = []
    if cluster.get("env_script"):
        parts.append(f"source {shlex.quote(str(cluster['env_script']))} &&")
    launcher = cluster.get("launcher", "none")
    if launcher not in ("none", "srun", "torchrun"):
        raise SeqvitError(f"cluster.launcher: {launcher!r}; use none, srun or torchrun")
    if layout["world"] > 1:
        if launcher == "srun":
            parts.append(
                f"srun --nodes {layout['nodes']} --ntasks {layout['world']}"
                + (f" --cpus-per-task {int(cluster['cpus_per_task'])}" if cluster.get("cpus_per_task") else "")
                + (f" {cluster['srun_extra']}" if cluster.get("srun_extra") else "")
                + " seqvit"
            )
        else:  # one machine without Slurm: torchrun starts the ranks
            parts.append(f"torchrun --standalone --nproc-per-node {layout['world']} -m seqvit.cli")
    else:
        parts.append("seqvit")
    return " ".join(parts)


def describe_sbatch(resources: dict) -> str:
    """The sbatch options the Slurm executor derives from `resources` (shown in dry runs)."""
    options = [f"--nodes={resources['nodes']}"]
    if resources.get("tasks_per_node"):
        options.append(f"--ntasks-per-node={resources['tasks_per_node']}")
    elif resources.get("tasks"):
        options.append(f"--ntasks={resources['tasks']}")
    if resources.get("cpus_per_task"):
        options.append(f"--cpus-per-task={resources['cpus_per_task']}")
    if resources.get("slurm_partition"):
        options.append(f"--partition={resources['slurm_partition']}")
    if resources.get("qos"):
        options.append(f"--qos={resources['qos']}")
    if resources.get("runtime"):
        options.append(f"--time={resources['runtime']}")
    if resources.get("slurm_extra"):
        options.append(resources["slurm_extra"])
    return " ".join(options)


def check_slurm_account(value, environ=None) -> str:
    """The account a Slurm profile charges jobs to (its default resource slurm_account), $VARs expanded.

    Snakemake expands a `$NAME` in a resource only when NAME is set; otherwise sbatch would be
    given the literal text. Refuse that before any job is submitted.
    """
    environ = os.environ if environ is None else environ
    text = str(value).strip().strip("'\"")
    unset = [a or b for a, b in _VARIABLE.findall(text) if not environ.get(a or b, "").strip()]
    if unset:
        name = unset[0]
        # Not suggested: --default-resources on the command line replaces the profile's whole list.
        raise SeqvitError(
            f"the Slurm account of every job is slurm_account: {text} (the profile's default-resources), but the "
            f"environment variable {name} is not set, so sbatch would get the literal text; nothing was submitted. "
            f"Export the project to charge first: export {name}=<project> (e.g. in ~/.bashrc)"
        )
    account = _VARIABLE.sub(lambda m: environ[m.group(1) or m.group(2)].strip(), text)
    if not account:
        raise SeqvitError(
            "the Slurm account of every job (slurm_account in the profile's default-resources) is empty; nothing "
            "was submitted. Set it to the project to charge"
        )
    return account
