# The reproduction report: paper/*.tex with the generated tables, figures and provenance.


rule paper:
    input:
        settings=SETTINGS_JSON,
        sources=ancient(sorted(str(p) for p in Path("paper").glob("*.tex"))),
        tables=TABLES,
        figures=[out("figures/figure1.pdf"), *FIGURE_PANELS, *LATENT_FIGURES],
    output:
        out("paper.pdf"),
    log:
        out("logs/paper.log"),
    shell:
        "python -m vaefail paper --settings {input.settings} --outdir {OUT} --out {output} > {log} 2>&1"
