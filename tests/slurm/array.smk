# Three jobs of one rule, submitted as one SLURM job array, whose first task ends last:
# tests/test_slurm.py checks that every task keeps its output.  The array's first task
# (SLURM_ARRAY_TASK_ID 1) waits until the other tasks have written theirs, then a further
# WAIT_AFTER seconds (longer than the test profile's latency-wait), so the order of the
# ends does not depend on timing or load.  With snakemake-executor-plugin-slurm 2.8.0 the
# other tasks check the first task's output instead of their own (plugin issue #447) and
# fail; a plugin that checks each task's own output passes.
TASKS = ["1", "2", "3"]
WAIT_AFTER = 20


rule all:
    input:
        expand("out/{task}.txt", task=TASKS),


rule ordered:
    output:
        "out/{task}.txt",
    params:
        others=lambda wildcards: " ".join(f"out/{t}.txt" for t in TASKS if t != wildcards.task),
        wait_after=WAIT_AFTER,
    shell:
        "echo 'vaefail-slurm-test: ordered {wildcards.task} is array task '${{SLURM_ARRAY_TASK_ID:-none}}; "
        'if [ "${{SLURM_ARRAY_TASK_ID:-}}" = 1 ]; then '
        "  for f in {params.others}; do "
        "    for i in $(seq 1800); do [ -e $f ] && break; sleep 0.5; done; "
        "  done; "
        "  sleep {params.wait_after}; "
        "fi; "
        "echo {wildcards.task} > {output}"
