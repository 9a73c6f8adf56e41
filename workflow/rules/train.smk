# One job per (experiment, data set, hyperparameter setting): every restart of every
# data version, trained as one batched ensemble; one result file per restart.


rule train:
    wildcard_constraints:
        experiment="unsupervised|noise|latent|disentangle",
    input:
        settings=SETTINGS_JSON,
        surrogate=surrogate_of,
        data=data_of,
        gt_encoders=gt_encoders_of,
    output:
        results=job_outputs(".json"),
        weights=job_outputs(".pt"),
    params:
        stems=lambda w, output: [p.removesuffix(".json") for p in output.results],
        device=DEVICE,
    log:
        out("logs/train/{experiment}/{dataset}/{setting}.log"),
    benchmark:
        out("benchmarks/train/{experiment}/{dataset}/{setting}.tsv")
    threads: 1
    resources:
        gpu=GPU,
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail train --settings {input.settings:q} --experiment {wildcards.experiment:q} "
        "--dataset {wildcards.dataset:q} --setting {wildcards.setting:q} "
        "--surrogate {input.surrogate:q} --data {input.data:q} --gt-encoders {input.gt_encoders:q} "
        "--out-stems {params.stems:q} --device {params.device:q} --threads {threads} --log {log:q}"


rule train_semisupervised:
    input:
        settings=SETTINGS_JSON,
        surrogate=surrogate_of,
        data=data_of,
    output:
        results=job_outputs(".json", "semisupervised", "semisupervised"),
        weights=job_outputs(".pt", "semisupervised", "semisupervised"),
    params:
        stems=lambda w, output: [p.removesuffix(".json") for p in output.results],
        device=DEVICE,
    log:
        out("logs/train/semisupervised/{dataset}/{setting}.log"),
    benchmark:
        out("benchmarks/train/semisupervised/{dataset}/{setting}.tsv")
    threads: 1
    resources:
        gpu=GPU,
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail train-ss --settings {input.settings:q} --experiment semisupervised "
        "--dataset {wildcards.dataset:q} --setting {wildcards.setting:q} --surrogate {input.surrogate:q} "
        "--data {input.data:q} --out-stems {params.stems:q} --device {params.device:q} --threads {threads} "
        "--log {log:q}"


rule train_uci:
    input:
        settings=SETTINGS_JSON,
        data=data_of,
    output:
        results=job_outputs(".json", "uci", "uci"),
        weights=job_outputs(".pt", "uci", "uci"),
    params:
        stems=lambda w, output: [p.removesuffix(".json") for p in output.results],
        device=DEVICE,
    log:
        out("logs/train/uci/{dataset}/{setting}.log"),
    benchmark:
        out("benchmarks/train/uci/{dataset}/{setting}.tsv")
    threads: 1
    resources:
        gpu=GPU,
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail train-ss --settings {input.settings:q} --experiment uci "
        "--dataset {wildcards.dataset:q} --setting {wildcards.setting:q} --surrogate none "
        "--data {input.data:q} --out-stems {params.stems:q} --device {params.device:q} --threads {threads} "
        "--log {log:q}"
