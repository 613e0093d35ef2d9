# Shared by every rule: where files live, and the arguments that hand the config to the CLI.
import os
import sys
from pathlib import Path

import yaml

from seqvit.errors import SeqvitError
from seqvit.io import atomic_path
from seqvit.layout import Layout
from seqvit.lineage import TRAIN_REPORTING_KEYS
from seqvit.machines import MACHINES_ENV
from seqvit.provenance.record import SNAKEFILE_ENV
from seqvit.plan.walltime import (
    multi_job_warnings,
    sbatch_layout,
    sbatch_summary,
    train_job_resources,
)
from seqvit.provenance.code import stage_hash
from seqvit.runs import run_parallelism
from seqvit.train.slurm import describe_sbatch, predict_resources, seqvit_command

# Machine files by name (seqvit plan, walltimes) come from this workflow's checkout, wherever
# Snakemake runs.
os.environ.setdefault(
    MACHINES_ENV, str(Path(workflow.main_snakefile).parent / "config" / "machines")
)
# The provenance stage records this Snakefile and its checkout; not a param, so that a moved
# checkout reruns nothing.
os.environ[SNAKEFILE_ENV] = str(workflow.main_snakefile)

LAYOUT = Layout(config)
RESULTS = str(LAYOUT.root)


def resolved_config_file():
    """The config Snakemake resolved (files merged, --config applied, schema defaults filled),
    written to <results>/resolved-config.yaml; every rule's command reads it (params.config).

    That path does not depend on where the config files live, what they are called or how many
    overlays there are, so none of that reruns anything: each rule's other params hold the
    config sections it uses, and a rule reruns exactly when one of those changes.
    """
    text = yaml.safe_dump(config, sort_keys=True)
    path = LAYOUT.root / "resolved-config.yaml"
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return str(path)


CONFIG = resolved_config_file()
# Train keys that change neither the weights nor what is evaluated: no retraining for them.
TRAIN_SETTINGS = {
    k: v for k, v in config["train"].items() if k not in TRAIN_REPORTING_KEYS
}


def run_args(patch_size):
    """--set arguments that give one run its own sequence-parallel degree (parallel.runs)."""
    if not (config.get("parallel") or {}).get("runs"):
        return ""
    sp, _ = run_parallelism(config, patch_size)
    return f"--set parallel.sp={sp}"


def _train_resource(name, default=None):
    # attempt: a retry's walltime is what remains of the predicted training (seqvit.plan.walltime)
    return lambda wc, attempt: train_job_resources(config, int(wc.p), attempt).get(
        name, default
    )


# Every key any layout may set, each looked up per patch size; absent ones fall back to defaults
TRAIN_RESOURCES = {
    "mem_mb": _train_resource("mem_mb", 8000),
    "runtime": _train_resource("runtime", 120),
    "nodes": _train_resource("nodes", 1),
    # text for the rule's message (not an sbatch option): resources may follow the attempt, params may not
    "sbatch": lambda wc, attempt: sbatch_summary(config, int(wc.p), attempt),
}
try:
    for _key in (
        "cpus_per_task",
        "slurm_partition",
        "qos",
        "mpi",
        "tasks",
        "tasks_per_node",
        "slurm_extra",
    ):
        if any(_key in train_job_resources(config, p) for p in LAYOUT.patch_sizes()):
            TRAIN_RESOURCES[_key] = _train_resource(_key, "")
except SeqvitError as _error:
    raise SystemExit(f"Configuration error, nothing was submitted:\n{_error}")

# cluster keys that only size Slurm jobs: changing them reruns nothing
WALLTIME_KEYS = (
    "train_minutes",
    "predict_minutes",
    "walltime_margin",
    "startup_minutes",
)


def _predict_resource(name, default=None):
    return lambda wc: predict_resources(config, int(wc.p)).get(name, default)


# A predict job runs on its training run's nodes and tasks (each rank its token segment), briefly
PREDICT_RESOURCES = {
    "mem_mb": _predict_resource("mem_mb", 4000),
    "runtime": _predict_resource("runtime", 30),
    "nodes": _predict_resource("nodes", 1),
    # text for the rule's message, as TRAIN_RESOURCES' sbatch
    "sbatch": lambda wc: describe_sbatch(predict_resources(config, int(wc.p))),
}
try:
    for _key in (
        "cpus_per_task",
        "slurm_partition",
        "qos",
        "mpi",
        "tasks",
        "tasks_per_node",
        "slurm_extra",
    ):
        if any(_key in predict_resources(config, p) for p in LAYOUT.patch_sizes()):
            PREDICT_RESOURCES[_key] = _predict_resource(_key, "")
except SeqvitError as _error:
    raise SystemExit(f"Configuration error, nothing was submitted:\n{_error}")

# A Slurm profile's account taken from an unset variable (profiles/frontier: $SEQVIT_SLURM_ACCOUNT)
# would reach sbatch as literal text; only Slurm profiles set slurm_account. Stop before submitting.
from seqvit.train.slurm import check_slurm_account

_defaults = workflow.resource_settings.default_resources or {}
if "slurm_account" in _defaults:
    _account = _defaults["slurm_account"]
    check_slurm_account(getattr(_account, "raw", _account))  # raw: the text, unexpanded

    # A run that does not fit its machine would die after hours in the queue: refuse it now,
    # in dry runs too (seqvit plan; the machine file named by the config key `machine`).
    from seqvit.plan import refuse_misfits

    try:
        refuse_misfits(config)
    except SeqvitError as _error:
        raise SystemExit(f"Configuration error, nothing was submitted:\n{_error}")
    # A run longer than its partition's limit still starts, and retries resume it; say how many
    # jobs it takes (the profile's retries are not known while the Snakefile is read).
    for _line in multi_job_warnings(config, LAYOUT.patch_sizes()):
        print(f"Warning: {_line}", file=sys.stderr)
