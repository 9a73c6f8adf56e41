# The run record: job run times (from the benchmark files) and the provenance summary of
# every per-restart result, for the HTML report (`snakemake --report`) and for reviewers.


rule run_record:
    input:
        settings=SETTINGS_JSON,
        runs=manifests(*grid.active_experiments(SETTINGS)),
    output:
        runtimes=report(
            out("record/runtimes.csv"),
            caption="../report/runtimes.rst",
            category="Run record",
        ),
        provenance=report(
            out("record/provenance.json"),
            caption="../report/provenance.rst",
            category="Run record",
        ),
    params:
        outdir=lambda w, input: os.path.dirname(input.settings),
    log:
        out("logs/record.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail record --settings {input.settings:q} --outdir {params.outdir:q} "
        "--out-runtimes {output.runtimes:q} --out-provenance {output.provenance:q} --log {log:q}"
