# Shared by every rule: where files live, and the arguments that hand the config to the CLI.
import shlex

from seqvit.config import flatten_overrides
from seqvit.layout import Layout
from seqvit.provenance.code import source_hash

LAYOUT = Layout(config)
RESULTS = str(LAYOUT.root)


def config_args(*sections):
    """The CLI's --config/--set arguments for a rule that uses `sections` of the config.

    The CLI reads the same files Snakemake merged. Of Snakemake's own --config overrides only
    those of the rule's sections are passed on, so an override reruns just the rules using it.
    """
    files = [f"--config {shlex.quote(str(path))}" for path in workflow.configfiles]
    overrides = workflow.config_settings.overwrite_config or {}
    wanted = {
        key: overrides[key]
        for key in ("results", "experiment", *sections)
        if key in overrides
    }
    return " ".join(
        files + [f"--set {shlex.quote(item)}" for item in flatten_overrides(wanted)]
    )
