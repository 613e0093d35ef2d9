# seqvit: rerun the ViT sequence-length experiment from raw data to report.
#   snakemake --profile profiles/local                      (embedded demo, config/config.yaml)
#   snakemake --profile profiles/local --configfile C       (another experiment)
from snakemake.utils import min_version, validate

from seqvit.config import SCHEMA, check_workflow_config

min_version("9.27")


report: "workflow/report/workflow.rst"


if not workflow.configfiles:

    configfile: "config/config.yaml"


check_workflow_config(config, workflow.configfiles)  # seqvit's messages, before any job
validate(config, str(SCHEMA))  # fills in the schema's defaults, as the CLI does


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.evaluate.output,
        rules.provenance.output,
