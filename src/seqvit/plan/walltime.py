"""The walltime of each training job, from the planner's predicted step time.

A run needs train.steps x the predicted step time, times (1 + cluster.walltime_margin) for what
the step time leaves out (validation, checkpoints, an estimate that is low). Each Slurm job also
spends cluster.startup_minutes before its first step and gives up the last
cluster.signal_seconds (USR1: it checkpoints and stops). When the whole run fits one job of the
partition chosen, that job gets all of it; otherwise jobs get the partition's limit, and the
retries that resume from their checkpoints get what remains, the last one less.

A walltime the config pins (parallel.runs.P.train_minutes, cluster.train_minutes) wins. The
policy lives here, not in train/slurm.py, so that changing it or the planner's figures changes
no training code hash (train/slurm.py is part of it) and retrains nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqvit.config import load_schema
from seqvit.errors import SeqvitError
from seqvit.plan.report import plan_config
from seqvit.train.slurm import describe_sbatch, job_shape, pinned_minutes, train_resources


@dataclass(frozen=True)
class Walltime:
    """How one run's training is split into Slurm jobs."""

    patch_size: int
    pinned: int | None  # minutes the config pins, or None
    training_minutes: float  # train.steps x predicted step time, margin included (0 when pinned)
    overhead_minutes: float  # per job: start-up and the time after the USR1 warning
    limit: int | None  # the chosen partition's (or debug QoS's) limit; None: no limit
    jobs: int  # predicted number of jobs (1 when pinned)

    def minutes(self, attempt: int = 1) -> int:
        """Walltime of the job of Snakemake attempt `attempt` (1 for the first submission)."""
        if self.pinned is not None:
            return self.pinned if self.limit is None else min(self.pinned, self.limit)
        whole = math.ceil(self.training_minutes + self.overhead_minutes)
        if self.limit is None or whole <= self.limit:
            return whole
        if attempt > self.jobs:  # slower than predicted, or a job failed: give it all the partition allows
            return self.limit
        useful = self.limit - self.overhead_minutes
        remaining = self.training_minutes - (attempt - 1) * useful
        return min(self.limit, math.ceil(remaining + self.overhead_minutes))

    def describe(self) -> str:
        if self.pinned is not None:
            return "walltime pinned by the config"
        hours = self.training_minutes / 60
        length = f"{hours:,.1f} h" if hours >= 1 else f"{self.training_minutes:.1f} min"
        text = f"walltime predicted by seqvit plan: {length} of training"
        if self.jobs > 1:
            text += f" in {self.jobs:,} jobs of up to {self.limit} min"
        return text


def _cluster_setting(cfg: dict, key: str):
    """cluster.KEY, or its schema default when the config has no cluster section (defaults are filled per section)."""
    cluster = cfg.get("cluster") or {}
    if key in cluster:
        return cluster[key]
    return load_schema()["properties"]["cluster"]["properties"][key]["default"]


def walltime(cfg: dict, patch_size: int) -> Walltime:
    """The walltime plan of the run with this patch size (its plan on the config's machine)."""
    pinned = pinned_minutes(cfg, patch_size)
    if pinned is not None:
        limit = job_shape(cfg, patch_size, pinned)["limit"]
        return Walltime(patch_size, pinned, 0.0, 0.0, limit, 1)
    margin = float(_cluster_setting(cfg, "walltime_margin"))
    startup = float(_cluster_setting(cfg, "startup_minutes"))
    signal = float((cfg.get("cluster") or {}).get("signal_seconds") or 0) / 60
    (plan,) = plan_config(cfg, [patch_size])
    training = int(cfg["train"]["steps"]) * plan.step_seconds * (1 + margin) / 60
    overhead = startup + signal
    # the partition that takes the whole run in one job if any does, else the first that takes the nodes
    limit = job_shape(cfg, patch_size, math.ceil(training + overhead))["limit"]
    if limit is not None and limit <= overhead:
        raise SeqvitError(
            f"run p={patch_size}: a job of {limit} minutes (its partition's limit) leaves no time to train after "
            f"cluster.startup_minutes ({startup:g}) and cluster.signal_seconds ({signal * 60:g} s); lower them "
            f"or pin cluster.train_minutes"
        )
    one_job = limit is None or math.ceil(training + overhead) <= limit
    jobs = 1 if one_job else math.ceil(training / (limit - overhead))
    return Walltime(patch_size, None, training, overhead, limit, jobs)


def train_job_resources(cfg: dict, patch_size: int, attempt: int = 1) -> dict:
    """Snakemake resources of the train job of this attempt, with its walltime (the train rule's resources)."""
    return train_resources(cfg, patch_size, walltime(cfg, patch_size).minutes(attempt))


def sbatch_layout(cfg: dict, patch_size: int) -> str:
    """The train job's sbatch options that do not follow the walltime (no time, partition or QoS).

    The train rule records them as a param (provenance reads them back); the rest would make a
    new prediction look like a change of the run and retrain it.
    """
    resources = train_resources(cfg, patch_size)
    return describe_sbatch({k: v for k, v in resources.items() if k not in ("runtime", "slurm_partition", "qos")})


def sbatch_summary(cfg: dict, patch_size: int, attempt: int = 1) -> str:
    """The sbatch options of the train job of this attempt and where its walltime comes from (the rule's message)."""
    plan = walltime(cfg, patch_size)
    resources = train_job_resources(cfg, patch_size, attempt)
    return f"{describe_sbatch(resources)}; {plan.describe()}"


def multi_job_warnings(cfg: dict, patch_sizes) -> list[str]:
    """One line per run predicted to need more than one Slurm job."""
    lines = []
    for p in patch_sizes:
        plan = walltime(cfg, int(p))
        if plan.jobs > 1:
            lines.append(
                f"run p={p} is predicted to need {plan.jobs:,} jobs of {plan.limit} min "
                f"({plan.training_minutes / 60:,.1f} h of training, margin included); Snakemake resubmits it as often "
                f"as the profile's retries allow, then run Snakemake again to continue from the newest checkpoint, or "
                f"give the run more nodes (seqvit plan --suggest --patch-size {p})"
            )
    return lines
