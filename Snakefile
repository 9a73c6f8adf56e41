# vaefail: reproduce "Failures of Variational Autoencoders and their Effects on Downstream
# Tasks" (Yacoby, Pan & Doshi-Velez 2020).  See README.md; configuration in config.yaml.
from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"  # also reads config.yaml


# Light aggregation steps run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    unsupervised,
    semisupervised,
    select,
    table,
    disentanglement_table,
    figure_claims,
    claims,
    paper_scale,
    figure_forest,
    figure_label_share,
    figure_panels,
    figure1,
    figure_latent,
    figure2,
    figure_ss_panels,
    paper,
    run_record,


rule all:
    input:
        PAPER_TARGETS,
        UNSUPERVISED_RUNS,
        SEMISUPERVISED_RUNS,
    default_target: True


# One half of the paper without the PDF: `snakemake --cores all semisupervised`.
rule unsupervised:
    input:
        table_files(catalogue.UNSUPERVISED_TABLES),
        DISENTANGLEMENT_TABLE,
        APPENDIX_K_TABLES,
        figure_files([catalogue.FIGURE1, catalogue.FIGURE5]),
        FIGURE_PANELS,
        LATENT_FIGURES,
        UNSUPERVISED_RUNS,


rule semisupervised:
    input:
        table_files(catalogue.SEMI_SUPERVISED_TABLES),
        SS_FIGURES,
        SEMISUPERVISED_RUNS,


if not REDRAW:

    include: "workflow/rules/data.smk"
    include: "workflow/rules/train.smk"


include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/record.smk"
