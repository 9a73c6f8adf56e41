# One job per (experiment, data set, hyperparameter setting): every restart of every
# data version, trained as one batched ensemble; one result file per restart.


def _run_outputs(suffix):
    return [
        out(grid.run_stem("{experiment}", "{dataset}", "{setting}", v, r) + suffix)
        for v in VERSIONS
        for r in range(grid.n_restarts(SETTINGS))
    ]


rule train:
    input:
        settings=SETTINGS_JSON,
        surrogate=surrogate_of,
        data=data_of,
        gt_encoders=gt_encoders_of,
    output:
        results=_run_outputs(".json"),
        weights=_run_outputs(".pt"),
    params:
        stems=lambda w, output: [p.removesuffix(".json") for p in output.results],
    log:
        out("logs/train/{experiment}/{dataset}/{setting}.log"),
    benchmark:
        out("benchmarks/train/{experiment}/{dataset}/{setting}.tsv")
    threads: 1
    resources:
        gpu=GPU,
    shell:
        "python -m vaefail train --settings {input.settings} --experiment {wildcards.experiment} "
        "--dataset {wildcards.dataset} --setting {wildcards.setting} "
        "--surrogate {input.surrogate} --data {input.data} --gt-encoders {input.gt_encoders} "
        "--out-stems {params.stems} --device {DEVICE} --threads {threads} > {log} 2>&1"
