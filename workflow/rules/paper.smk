# The reproduction report: paper/*.tex with the generated tables, figures and provenance.


rule paper:
    input:
        settings=SETTINGS_JSON,
        sources=sorted(str(p) for p in Path(workflow.basedir, "paper").glob("*.tex")),
        tables=TABLES + CLAIM_TABLES + PAPER_SCALE,
        claims=CLAIMS,
        all_restarts=[out(catalogue.all_restarts_path(e)) for e in grid.active_experiments(SETTINGS)],
        figures=FIGURES,
        record=RECORD,
    output:
        report(
            out("paper.pdf"),
            caption="../report/paper.rst",
            category="Reproduction report",
        ),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/paper.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail paper --settings {input.settings:q} --outdir {params.outdir:q} --out {output:q} "
        "--log {log:q}"
