# Tables 1-6 and the Theorem 2 numbers, each as a tidy CSV and a booktabs .tex; the
# measurements behind the claims the paper makes with figures and in appendix F (disentanglement);
# the claims table.

rule table:
    input:
        settings=SETTINGS_JSON,
        selected=lambda w: [out(catalogue.selected_path(e)) for e in catalogue.TABLES[w.table].experiments],
    output:
        csv=report(
            out(catalogue.table_path("{table}")), caption="../report/table.rst", category="Tables"
        ),
        tex=out(catalogue.table_path("{table}", ".tex")),
    wildcard_constraints:
        table="|".join(catalogue.TABLES),
    log:
        out("logs/tables/{table}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail table --settings {input.settings:q} --table {wildcards.table:q} "
        "--selected {input.selected:q} --out {output.csv:q} --log {log:q}"


rule disentanglement_table:
    input:
        settings=SETTINGS_JSON,
        all_runs=out(catalogue.all_restarts_path("disentangle")),
        runs=manifests("disentangle"),
        data=[out(grid.data_path(grid.LINEAR_GAUSSIAN, v)) for v in range(grid.n_versions(SETTINGS, "disentangle"))],
    output:
        csv=report(DISENTANGLEMENT_TABLE, caption="../report/disentanglement.rst", category="Claims"),
        tex=out(catalogue.table_path(catalogue.DISENTANGLEMENT_TABLE, ".tex")),
        versions=out(catalogue.table_path(catalogue.DISENTANGLEMENT_VERSIONS)),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/tables/disentanglement.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail disentanglement-table --settings {input.settings:q} --all-restarts {input.all_runs:q} "
        "--outdir {params.outdir:q} --out {output.csv:q} --log {log:q}"


rule figure_claims:
    input:
        settings=SETTINGS_JSON,
        selected=[out(catalogue.selected_path(e)) for e in ("unsupervised", "semisupervised")],
        runs=manifests("unsupervised", "semisupervised", "labelshare"),
        surrogates=[out(grid.surrogate_path(d)) for d in SETTINGS["unsupervised_datasets"] + SETTINGS["ss_datasets"]],
        data=[out(grid.data_path(d, v)) for d in SETTINGS["unsupervised_datasets"] for v in VERSIONS]
        + [out(grid.data_path(d, v)) for d in SETTINGS["ss_datasets"] for v in range(SETTINGS["ss_versions"])],
    output:
        theorem1=report(out(catalogue.table_path("theorem1")), caption="../report/theorem1.rst", category="Claims"),
        separation=report(out(catalogue.table_path("separation")), caption="../report/separation.rst", category="Claims"),
        separation_restarts=out(catalogue.table_path(catalogue.SEPARATION_RESTARTS)),
        collapse=report(out(catalogue.table_path(catalogue.COLLAPSE_TABLE)), caption="../report/collapse.rst",
                        category="Claims"),
        label_share=out(catalogue.table_path(catalogue.LABEL_SHARE_TABLE)),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/tables/figure_claims.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail figure-claims --settings {input.settings:q} --outdir {params.outdir:q} "
        "--out-theorem1 {output.theorem1:q} --out-separation {output.separation:q} "
        "--out-separation-restarts {output.separation_restarts:q} --out-collapse {output.collapse:q} "
        "--out-label-share {output.label_share:q} --log {log:q}"


rule claims:
    input:
        [out(path) for path in catalogue.claim_inputs(SETTINGS)],
        settings=SETTINGS_JSON,
    output:
        report(CLAIMS, caption="../report/claims.rst", category="Claims"),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/tables/claims.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail claims --settings {input.settings:q} --outdir {params.outdir:q} --out {output:q} "
        "--log {log:q}"


# The paper's kNN cells on each candidate scale of the statistic, and the evaluation noise.
rule paper_scale:
    input:
        settings=SETTINGS_JSON,
        tables=table_files(["table2", "theorem2"]),
        selected=[out(catalogue.selected_path(e)) for e in ("unsupervised", "semisupervised", "uci")
                  if e in grid.active_experiments(SETTINGS)],
        data=[out(grid.data_path(d, v)) for e in ("unsupervised", "semisupervised", "uci")
              for d in grid.experiment_datasets(SETTINGS, e) for v in range(grid.n_versions(SETTINGS, e))],
    output:
        cells=report(out(catalogue.table_path(catalogue.PAPER_SCALE_TABLES[0])), caption="../report/paper_scale.rst",
                     category="Claims"),
        summary=out(catalogue.table_path(catalogue.PAPER_SCALE_TABLES[1])),
        null=out(catalogue.table_path(catalogue.PAPER_SCALE_TABLES[2])),
        noise=out(catalogue.table_path(catalogue.EVALUATION_NOISE_TABLE)),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/tables/paper_scale.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail paper-scale --settings {input.settings:q} --outdir {params.outdir:q} --out {output.cells:q} "
        "--out-summary {output.summary:q} --out-null {output.null:q} --out-noise {output.noise:q} --log {log:q}"


rule appendix_k:
    input:
        [out(path) for path in grid.appendix_k_inputs(SETTINGS)],
        settings=SETTINGS_JSON,
    output:
        denoising=report(APPENDIX_K_TABLES[0], caption="../report/appendix_k.rst", category="Claims"),
        attack=report(APPENDIX_K_TABLES[1], caption="../report/appendix_k.rst", category="Claims"),
        tex=[out(catalogue.table_path(name, ".tex")) for name in catalogue.APPENDIX_K_TABLES],
        points=out(catalogue.table_path(catalogue.APPENDIX_K_POINTS)),
        pdf=out(f"{catalogue.FIGURE5}.pdf"),
        png=report(out(f"{catalogue.FIGURE5}.png"), caption="../report/figure5.rst", category="Claims"),
    params:
        **figure_params(),
    log:
        out("logs/tables/appendix_k.log"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail appendix-k --settings {input.settings:q} --outdir {params.outdir:q} "
        "--out-denoising {output.denoising:q} --out-attack {output.attack:q} --out-figure {params.stem:q} "
        "--threads {threads} --log {log:q}"
