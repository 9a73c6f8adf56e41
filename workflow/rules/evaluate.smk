# Best restart per setting and version, then each method's hyperparameters.


rule select:
    input:
        settings=SETTINGS_JSON,
        # each job's manifest, and every result that is missing or changed since the last
        # selection (each is checked whole: a damaged one stops selection, which names it)
        runs=lambda w: run_inputs(w.experiment),
    output:
        selected=out(catalogue.selected_path("{experiment}")),
        all_runs=out(catalogue.all_restarts_path("{experiment}")),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/select/{experiment}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail select --settings {input.settings:q} --experiment {wildcards.experiment:q} "
        "--outdir {params.outdir:q} --out {output.selected:q} --out-all {output.all_runs:q} --log {log:q}"
