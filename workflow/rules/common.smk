# Shared by every rule: where files live, and the arguments that hand the config to the CLI.
import shlex

from seqvit.config import command_line_overrides, flatten_overrides
from seqvit.layout import Layout
from seqvit.provenance.code import source_hash
from seqvit.train.slurm import (
    describe_sbatch,
    run_parallelism,
    seqvit_command,
    train_resources,
)

LAYOUT = Layout(config)
RESULTS = str(LAYOUT.root)
COMMAND_LINE_OVERRIDES = command_line_overrides(
    workflow.config_settings.overwrite_config, workflow.configfiles
)


def config_args(*sections):
    """The CLI's --config/--set arguments for a rule that uses `sections` of the config.

    The CLI reads the same files Snakemake merged. Of Snakemake's own --config overrides only
    those of the rule's sections are passed on, so an override reruns just the rules using it.
    """
    files = [f"--config {shlex.quote(str(path))}" for path in workflow.configfiles]
    overrides = COMMAND_LINE_OVERRIDES
    wanted = {
        key: overrides[key]
        for key in ("results", "experiment", *sections)
        if key in overrides
    }
    return " ".join(
        files + [f"--set {shlex.quote(item)}" for item in flatten_overrides(wanted)]
    )


def run_args(patch_size):
    """--set arguments that give one run its own sequence-parallel degree (parallel.runs)."""
    if not (config.get("parallel") or {}).get("runs"):
        return ""
    sp, _ = run_parallelism(config, patch_size)
    return f"--set parallel.sp={sp}"


def _train_resource(name, default=None):
    return lambda wc: train_resources(config, int(wc.p)).get(name, default)


# Every key any layout may set, each looked up per patch size; absent ones fall back to defaults
TRAIN_RESOURCES = {
    "mem_mb": _train_resource("mem_mb", 8000),
    "runtime": _train_resource("runtime", 120),
    "nodes": _train_resource("nodes", 1),
}
for _key in (
    "cpus_per_task",
    "slurm_partition",
    "qos",
    "mpi",
    "tasks",
    "tasks_per_node",
    "slurm_extra",
):
    if any(_key in train_resources(config, p) for p in LAYOUT.patch_sizes()):
        TRAIN_RESOURCES[_key] = _train_resource(_key, "")
