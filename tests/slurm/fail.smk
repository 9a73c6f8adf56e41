# A job that fails on the cluster: tests/test_slurm.py checks that Snakemake reports it
# with its SLURM log and that SLURM records it as FAILED.


rule fail_on_purpose:
    output:
        "never-written.txt",
    shell:
        "echo 'vaefail-slurm-test: fail_on_purpose exits 1 on purpose'; exit 1"
