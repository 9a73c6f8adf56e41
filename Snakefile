# vaefail: reproduce "Failures of Variational Autoencoders and their Effects on Downstream
# Tasks" (Yacoby, Pan & Doshi-Velez 2020).  See README.md; configuration in config.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


# Light aggregation steps run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    select,
    table,
    figure_panels,
    figure1,
    figure_latent,
    figure2,
    figure_ss_panels,
    paper,


rule all:
    input:
        PAPER_TARGETS,
    default_target: True


if not REDRAW:

    include: "workflow/rules/data.smk"
    include: "workflow/rules/train.smk"


include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
