# Figure 1, the panels (a)-(e) of Figures 6-14, and Figures 21-22.


rule figure_panels:
    input:
        settings=SETTINGS_JSON,
        selected=out("selected/unsupervised.csv"),
        weights=panel_runs,
    output:
        pdf=out("figures/panels/{dataset}-{method}.pdf"),
        png=out("figures/panels/{dataset}-{method}.png"),
    log:
        out("logs/figures/panels-{dataset}-{method}.log"),
    shell:
        "python -m vaefail figure --settings {input.settings} --figure panels --outdir {OUT} "
        "--dataset {wildcards.dataset} --method {wildcards.method} "
        "--out {OUT}/figures/panels/{wildcards.dataset}-{wildcards.method} > {log} 2>&1"


rule figure1:
    input:
        settings=SETTINGS_JSON,
        selected=out("selected/unsupervised.csv"),
        weights=run_files("unsupervised", ".pt"),
    output:
        pdf=out("figures/figure1.pdf"),
        png=out("figures/figure1.png"),
    log:
        out("logs/figures/figure1.log"),
    shell:
        "python -m vaefail figure --settings {input.settings} --figure figure1 --outdir {OUT} "
        "--out {OUT}/figures/figure1 > {log} 2>&1"


rule figure_latent:
    input:
        settings=SETTINGS_JSON,
        selected=out("selected/latent.csv"),
        weights=run_files("latent", ".pt"),
    output:
        pdf=out("figures/latent/{dataset}.pdf"),
        png=out("figures/latent/{dataset}.png"),
    log:
        out("logs/figures/latent-{dataset}.log"),
    shell:
        "python -m vaefail figure --settings {input.settings} --figure latent --outdir {OUT} "
        "--dataset {wildcards.dataset} --out {OUT}/figures/latent/{wildcards.dataset} > {log} 2>&1"
