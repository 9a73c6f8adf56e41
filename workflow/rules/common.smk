# Configuration, grid and paths shared by all rules.  The grid and the path patterns
# live in the package (vaefail.grid) so that the workflow and the code agree.
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
# Jobs run `python`: the interpreter that runs Snakemake (e.g. .venv/bin), unless a conda
# environment (--sdm conda) puts its own first on PATH.
shell.prefix(f'set -euo pipefail; export PATH="{Path(sys.executable).parent}:$PATH"; ')

from snakemake.exceptions import WorkflowError
from vaefail import config as vconfig
from vaefail import grid
from vaefail.uci import uci_spec

try:
    SETTINGS = vconfig.resolve(config)
    OUT = vconfig.output_dir(config)
    vconfig.check_output_dir(SETTINGS, OUT)
except vconfig.ConfigError as error:
    raise WorkflowError(str(error))

DEVICE = vconfig.resolve_device(config.get("device", "auto"))
GPU = 1 if DEVICE == "cuda" else 0
REDRAW = str(config.get("redraw", False)).lower() == "true"  # --config passes text
VERSIONS = range(SETTINGS["versions"])  # of the unsupervised data sets; UCI splits: uci_splits
# the dataset rule draws as many versions as any synthetic experiment needs
SYNTHETIC_VERSIONS = range(max(SETTINGS["versions"], SETTINGS["ss_versions"]))
SETTINGS_JSON = f"{OUT}/settings.json"
CONDA_ENV = "../../envs/vaefail.yaml"  # relative to the rule files


UCI_PATTERN = "|".join(grid.UCI_DATASETS)


wildcard_constraints:
    experiment="|".join(grid.EXPERIMENTS),
    dataset="[a-z0-9-]+",
    uci=UCI_PATTERN,
    base="[a-z0-9-]+",
    setting="[A-Za-z0-9.-]+",
    method="|".join(grid.METHODS),


def out(path):
    return f"{OUT}/{path}"


def surrogate_of(wildcards):
    return out(grid.surrogate_path(wildcards.dataset.removesuffix("-5d")))


def data_of(wildcards):
    versions = range(grid.dataset_versions(SETTINGS, wildcards.dataset))
    return [out(grid.data_path(wildcards.dataset, v)) for v in versions]


def gt_encoders_of(wildcards):
    setting = grid.find_setting(SETTINGS, wildcards.experiment, wildcards.setting)
    uses_gt = any(grid.restart_init(SETTINGS, setting, r) == "gt"
                  for r in range(grid.n_restarts(SETTINGS)))
    return [out(grid.gt_encoder_path(wildcards.dataset, v)) for v in VERSIONS] if uses_gt else []


def run_files(experiment, suffix=".json"):
    return [out(f"{stem}{suffix}") for stem in grid.experiment_run_stems(SETTINGS, experiment)]


def job_outputs(suffix, experiment="{experiment}", grid_of="unsupervised"):
    """Outputs of one training job: every member of `grid_of`'s jobs, as wildcard patterns."""
    return [
        out(f"{grid.member_stem(experiment, '{dataset}', '{setting}', member)}{suffix}")
        for member in grid.job_members(SETTINGS, grid_of)
    ]


def panel_runs(wildcards):
    """Weights of every restart of one (data set, method) of the unsupervised experiment."""
    return [out(f"{stem}.pt")
            for setting in grid.experiment_settings(SETTINGS, "unsupervised")
            if setting.method == wildcards.method
            for stem in grid.job_run_stems(SETTINGS, "unsupervised", wildcards.dataset, setting.id)]


def ss_version0_runs(dataset, methods):
    """Version-0 weights of every setting of these methods on one semi-supervised data set
    (which one a figure draws is known only after selection)."""
    return [out(f"{stem}.pt")
            for setting in grid.experiment_settings(SETTINGS, "semisupervised")
            if setting.method in methods
            for stem in grid.job_run_stems(SETTINGS, "semisupervised", dataset, setting.id)
            if "/v0/" in stem]


SS_PANELS = [
    out(f"figures/ss-panels/{dataset}-{method}.pdf")
    for dataset in SETTINGS["ss_datasets"]
    for method in grid.METHODS
]
SS_FIGURES = ([out("figures/figure2.pdf")] if "discrete-semicircle" in SETTINGS["ss_datasets"] else []) + SS_PANELS
FIGURE_PANELS = [
    out(f"figures/panels/{dataset}-{method}.pdf")
    for dataset in SETTINGS["unsupervised_datasets"]
    for method in grid.METHODS
]
LATENT_FIGURES = [
    out(f"figures/latent/{dataset}.pdf") for dataset in grid.experiment_datasets(SETTINGS, "latent")
]
TABLES = [out(f"tables/{name}.csv")
          for name in ("table1", "table2", "theorem2", "table3", "table4", "table5", "table6")]
FIGURES = [out("figures/figure1.pdf"), *FIGURE_PANELS, *LATENT_FIGURES, *SS_FIGURES]
RECORD = [out("record/runtimes.csv"), out("record/provenance.json")]
PAPER_TARGETS = [out("paper.pdf"), *TABLES, *FIGURES, *RECORD]

if REDRAW:
    # Redraw tables, figures and the report from saved results, training nothing.
    needed = [SETTINGS_JSON, *(out(grid.surrogate_path(b)) for b in grid.base_datasets(SETTINGS))]
    needed += [out(grid.data_path(d, v)) for d in grid.all_datasets(SETTINGS)
               for v in range(grid.dataset_versions(SETTINGS, d))]
    for experiment in grid.EXPERIMENTS:
        needed += run_files(experiment, ".json") + run_files(experiment, ".pt")
    missing = [p for p in needed if not Path(p).exists()]
    if missing:
        by_folder = {}
        for p in missing:
            folder = str(Path(*Path(p).relative_to(OUT).parent.parts[:3]))
            by_folder[folder] = by_folder.get(folder, 0) + 1
        summary = "\n  ".join(f"{folder}/: {n} missing" for folder, n in by_folder.items())
        raise WorkflowError(
            f"redraw needs saved results, but {len(missing)} of {len(needed)} files are missing "
            f"under {OUT}:\n  {summary}\nfirst missing: {missing[0]}\n"
            "Run the workflow without redraw=true to produce them."
        )
