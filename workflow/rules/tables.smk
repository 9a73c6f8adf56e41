# Tables 1-2 and the Theorem 2 numbers, each as a tidy CSV and a booktabs .tex.

TABLE_INPUTS = {
    "table1": ["unsupervised"],
    "table2": ["latent"],
    "theorem2": ["unsupervised", "noise"],
    "table3": ["semisupervised"],
    "table4": ["semisupervised"],
    "table5": ["uci"],
    "table6": ["uci"],
}


rule table:
    input:
        settings=SETTINGS_JSON,
        selected=lambda w: [out(f"selected/{e}.csv") for e in TABLE_INPUTS[w.table]],
    output:
        csv=report(
            out("tables/{table}.csv"), caption="../report/table.rst", category="Tables"
        ),
        tex=out("tables/{table}.tex"),
    wildcard_constraints:
        table="|".join(TABLE_INPUTS),
    log:
        out("logs/tables/{table}.log"),
    conda:
        CONDA_ENV
    shell:
        "python -m vaefail table --settings {input.settings:q} --table {wildcards.table:q} "
        "--selected {input.selected:q} --out {output.csv:q} --log {log:q}"
