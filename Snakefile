# seqvit: rerun the ViT sequence-length experiment from raw data to report.
#   snakemake --profile profiles/local                      (embedded demo, config/config.yaml)
#   snakemake --profile profiles/local --configfile C       (another experiment)
import shlex

from snakemake.utils import min_version, validate

from seqvit.config import flatten_overrides
from seqvit.layout import Layout
from seqvit.provenance.code import source_hash

min_version("9.27")


report: "workflow/report/workflow.rst"


if not workflow.configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

# The CLI reads the same files Snakemake merged (and any --config overrides), so both see one
# configuration.
CONFIG_ARGS = " ".join(
    [f"--config {shlex.quote(str(path))}" for path in workflow.configfiles]
    + [
        f"--set {shlex.quote(item)}"
        for item in flatten_overrides(workflow.config_settings.overwrite_config or {})
    ]
)
LAYOUT = Layout(config)
RESULTS = str(LAYOUT.root)


include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        rules.evaluate.output,
