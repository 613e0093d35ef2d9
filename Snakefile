# seqvit: rerun the ViT sequence-length experiment from raw data to report.
#   snakemake --profile profiles/local                      (embedded demo, config/config.yaml)
#   snakemake --profile profiles/local --configfile C       (another experiment)
from snakemake.utils import min_version, validate

from seqvit.layout import Layout
from seqvit.provenance.code import source_hash

min_version("9.27")

report: "workflow/report/workflow.rst"


if not workflow.configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

# The CLI reads the same files Snakemake merged, so both see one configuration.
CONFIG_ARGS = " ".join(f"--config {path}" for path in workflow.configfiles)
LAYOUT = Layout(config)
RESULTS = str(LAYOUT.root)


include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        rules.evaluate.output,
    default_target: True
