# Best restart per setting and version, then each method's hyperparameters.


rule select:
    input:
        settings=SETTINGS_JSON,
        runs=lambda w: run_files(w.experiment),
    output:
        selected=out("selected/{experiment}.csv"),
        all_runs=out("selected/{experiment}-all-restarts.csv"),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/select/{experiment}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail select --settings {input.settings} --experiment {wildcards.experiment} "
        "--outdir {params.outdir} --out {output.selected} --out-all {output.all_runs} > {log} 2>&1"
