# Best restart per setting and version, then each method's hyperparameters.


rule select:
    input:
        settings=SETTINGS_JSON,
        runs=lambda w: run_files(w.experiment),
    output:
        selected=out("selected/{experiment}.csv"),
        all_runs=out("selected/{experiment}-all-restarts.csv"),
    log:
        out("logs/select/{experiment}.log"),
    shell:
        "python -m vaefail select --settings {input.settings} --experiment {wildcards.experiment} "
        "--outdir {OUT} --out {output.selected} --out-all {output.all_runs} > {log} 2>&1"
