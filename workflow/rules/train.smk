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
        # first: Snakemake matches a requested file against the outputs in this order
        manifest=job_manifest(),
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
        "--out-stems {params.stems:q} --manifest {output.manifest:q} --device {params.device:q} "
        "--threads {threads} --log {log:q}"


# M2: one rule per semi-supervised experiment (catalogue.TRAINING_RULES names them), defined
# once here.  Not one rule with an {experiment} wildcard: a rule's outputs are fixed patterns,
# and the two experiments' jobs write different sets of files (UCI members also differ in
# sigma^2; the experiments have their own versions and restarts).  The loop's variable
# reaches the command as a param: Snakemake evaluates a shell expression again when the job
# runs, after the loop has ended.
for ss_experiment in grid.SEMI_SUPERVISED_EXPERIMENTS:

    rule:
        name:
            catalogue.TRAINING_RULES[ss_experiment]
        input:
            settings=SETTINGS_JSON,
            surrogate=[] if ss_experiment == "uci" else surrogate_of,  # real data: no ground truth
            data=data_of,
        output:
            manifest=job_manifest(ss_experiment),
            results=job_outputs(".json", ss_experiment, ss_experiment),
            weights=job_outputs(".pt", ss_experiment, ss_experiment),
        params:
            experiment=ss_experiment,
            stems=lambda w, output: [p.removesuffix(".json") for p in output.results],
            device=DEVICE,
        log:
            out(f"logs/train/{ss_experiment}/{{dataset}}/{{setting}}.log"),
        benchmark:
            out(f"benchmarks/train/{ss_experiment}/{{dataset}}/{{setting}}.tsv")
        threads: 1
        resources:
            gpu=GPU,
        conda:
            CONDA_ENV
        shell:
            "python -m vaefail train-ss --settings {input.settings:q} --experiment {params.experiment:q} "
            "--dataset {wildcards.dataset:q} --setting {wildcards.setting:q} --surrogate {input.surrogate:q} "
            "--data {input.data:q} --out-stems {params.stems:q} --manifest {output.manifest:q} "
            "--device {params.device:q} --threads {threads} --log {log:q}"
