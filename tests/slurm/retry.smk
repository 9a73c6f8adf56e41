# A job that fails on its first attempt and succeeds on the second: tests/test_slurm.py
# runs it with --retries 1 and checks that SLURM saw two submissions.


rule flaky:
    output:
        "flaky.txt",
    resources:
        attempt=lambda wildcards, attempt: attempt,
    shell:
        "echo 'vaefail-slurm-test: flaky, attempt {resources.attempt}'; "
        "if [ {resources.attempt} -lt 2 ]; then exit 1; fi; "
        "echo 'second attempt' > {output}"
