# The settings record, ground-truth decoders, data sets and ground-truth encoders.


localrules:
    settings,


ruleorder: uci_splits > dataset  # UCI data come from data/uci, not from a ground-truth decoder


rule settings:
    output:
        SETTINGS_JSON,
    params:
        settings=json.dumps(SETTINGS, sort_keys=True),
        scale=config["scale"],
    log:
        out("logs/settings.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail settings --settings-json {params.settings:q} --scale {params.scale:q} "
        "--out {output:q} --log {log:q}"


rule surrogate:
    input:
        SETTINGS_JSON,
    output:
        pt=out("surrogates/{base}.pt"),
        record=out("surrogates/{base}.json"),
    log:
        out("logs/surrogate/{base}.log"),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail surrogate --settings {input:q} --base {wildcards.base:q} "
        "--out {output.pt:q} --log {log:q}"


rule dataset:
    input:
        settings=SETTINGS_JSON,
        surrogate=surrogate_of,
    output:
        [out(grid.data_path("{dataset}", v)) for v in SYNTHETIC_VERSIONS],
    log:
        out("logs/dataset/{dataset}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail dataset --settings {input.settings:q} --dataset {wildcards.dataset:q} "
        "--surrogate {input.surrogate:q} --out {output:q} --log {log:q}"


rule uci_splits:
    input:
        settings=SETTINGS_JSON,
        data=lambda w: str(Path(workflow.basedir) / "data" / "uci" / uci_spec(w.uci).path),
    output:
        [out(grid.data_path("{uci}", k)) for k in range(SETTINGS["uci_splits"])],
    log:
        out("logs/dataset/{uci}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail uci-splits --settings {input.settings:q} --dataset {wildcards.uci:q} "
        "--uci-file {input.data:q} --out {output:q} --log {log:q}"


rule gt_encoders:
    input:
        settings=SETTINGS_JSON,
        surrogate=surrogate_of,
        data=data_of,
    output:
        [out(grid.gt_encoder_path("{dataset}", v)) for v in VERSIONS],
    params:
        device=DEVICE,
    log:
        out("logs/gt_encoders/{dataset}.log"),
    threads: 1
    resources:
        gpu=GPU,
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail gt-encoders --settings {input.settings:q} --dataset {wildcards.dataset:q} "
        "--surrogate {input.surrogate:q} --data {input.data:q} --out {output:q} "
        "--device {params.device:q} --threads {threads} --log {log:q}"
