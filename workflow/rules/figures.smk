# Figure 1, the panels (a)-(e) of Figures 6-14, and Figures 21-22.


rule figure_panels:
    input:
        settings=SETTINGS_JSON,
        selected=out(catalogue.selected_path("unsupervised")),
        weights=panel_runs,
        surrogate=surrogate_of,
        data=out(grid.data_path("{dataset}", 0)),
    output:
        pdf=out(catalogue.panel_figure("{dataset}", "{method}", ".pdf")),
        png=report(
            out(catalogue.panel_figure("{dataset}", "{method}", ".png")),
            caption="../report/panels.rst",
            category="Unsupervised figures",
            subcategory="{dataset}",
        ),
    params:
        **figure_params(),
    log:
        out("logs/figures/panels-{dataset}-{method}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure panels --outdir {params.outdir:q} "
        "--dataset {wildcards.dataset:q} --method {wildcards.method:q} --out {params.stem:q} --log {log:q}"


rule figure1:
    input:
        settings=SETTINGS_JSON,
        selected=out(catalogue.selected_path("unsupervised")),
        runs=manifests("unsupervised"),
        surrogates=[out(grid.surrogate_path(d)) for d in SETTINGS["unsupervised_datasets"]],
        data=[out(grid.data_path(d, 0)) for d in SETTINGS["unsupervised_datasets"]],
    output:
        pdf=out(f"{catalogue.FIGURE1}.pdf"),
        png=report(
            out(f"{catalogue.FIGURE1}.png"),
            caption="../report/figure1.rst",
            category="Unsupervised figures",
        ),
    params:
        **figure_params(),
    log:
        out("logs/figures/figure1.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure figure1 --outdir {params.outdir:q} "
        "--out {params.stem:q} --log {log:q}"


rule figure_latent:
    input:
        settings=SETTINGS_JSON,
        selected=out(catalogue.selected_path("latent")),
        runs=manifests("latent"),
        surrogate=surrogate_of,
        data=out(grid.data_path("{dataset}", 0)),
    output:
        pdf=out(catalogue.latent_figure("{dataset}", ".pdf")),
        png=report(
            out(catalogue.latent_figure("{dataset}", ".png")),
            caption="../report/latent.rst",
            category="Latent-dimension figures",
            subcategory="{dataset}",
        ),
    params:
        **figure_params(),
    log:
        out("logs/figures/latent-{dataset}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure latent --outdir {params.outdir:q} "
        "--dataset {wildcards.dataset:q} --out {params.stem:q} --log {log:q}"


rule figure2:
    input:
        settings=SETTINGS_JSON,
        selected=out(catalogue.selected_path("semisupervised")),
        weights=ss_version0_runs(catalogue.FIGURE2_DATASET, ("vae", "iwae")),
        surrogate=out(grid.surrogate_path(catalogue.FIGURE2_DATASET)),
        data=out(grid.data_path(catalogue.FIGURE2_DATASET, 0)),
    output:
        pdf=out(f"{catalogue.FIGURE2}.pdf"),
        png=report(
            out(f"{catalogue.FIGURE2}.png"),
            caption="../report/figure2.rst",
            category="Semi-supervised figures",
        ),
    params:
        **figure_params(),
    log:
        out("logs/figures/figure2.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure figure2 --outdir {params.outdir:q} "
        "--out {params.stem:q} --log {log:q}"


rule figure_ss_panels:
    input:
        settings=SETTINGS_JSON,
        selected=out(catalogue.selected_path("semisupervised")),
        weights=lambda w: ss_version0_runs(w.dataset, (w.method,)),
        surrogate=surrogate_of,
        data=out(grid.data_path("{dataset}", 0)),
    output:
        pdf=out(catalogue.ss_panel_figure("{dataset}", "{method}", ".pdf")),
        png=report(
            out(catalogue.ss_panel_figure("{dataset}", "{method}", ".png")),
            caption="../report/ss_panels.rst",
            category="Semi-supervised figures",
            subcategory="{dataset}",
        ),
    params:
        **figure_params(),
    log:
        out("logs/figures/ss-panels-{dataset}-{method}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure ss-panels --outdir {params.outdir:q} "
        "--dataset {wildcards.dataset:q} --method {wildcards.method:q} --out {params.stem:q} --log {log:q}"


# The verdicts: every claim's effect and 95 % interval (forest plot); the collapse of Figure 2
# against the share of observed labels.
rule figure_forest:
    input:
        settings=SETTINGS_JSON,
        claims=CLAIMS,
    output:
        pdf=out(f"{catalogue.FOREST_FIGURE}.pdf"),
        png=report(out(f"{catalogue.FOREST_FIGURE}.png"), caption="../report/forest.rst", category="Claims"),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
        stem=lambda w, output: output.pdf.removesuffix(".pdf"),
    log:
        out("logs/figures/forest.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure forest --outdir {params.outdir:q} "
        "--out {params.stem:q} --log {log:q}"


rule figure_label_share:
    input:
        settings=SETTINGS_JSON,
        table=out(catalogue.table_path(catalogue.LABEL_SHARE_TABLE)),
    output:
        pdf=out(f"{catalogue.LABEL_SHARE_FIGURE}.pdf"),
        png=report(out(f"{catalogue.LABEL_SHARE_FIGURE}.png"), caption="../report/label_share.rst",
                   category="Claims"),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
        stem=lambda w, output: output.pdf.removesuffix(".pdf"),
    log:
        out("logs/figures/label-share.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure --settings {input.settings:q} --figure label-share --outdir {params.outdir:q} "
        "--out {params.stem:q} --log {log:q}"
