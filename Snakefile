from snakemake.utils import min_version

min_version("9.11.2")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/diagnose.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/compare.smk"

# Mapping query datasets onto trained runs: only with a `query:` block.
if config.get("query"):

    include: "workflow/rules/map.smk"


# The collapse atlas: only with its grid (snakemake --cores 2 atlas --configfile config/atlas.yaml).
if config.get("atlas"):

    include: "workflow/rules/atlas_common.smk"
    include: "workflow/rules/atlas.smk"


rule all:
    input:
        all_targets(),
    default_target: True
