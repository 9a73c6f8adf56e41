# Configuration, grid and paths shared by all rules.  The grid and the path patterns
# live in the package (vaefail.grid) so that the workflow and the code agree.
import functools
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

# This checkout's code, for the Snakefile and for every job: a vaefail installed elsewhere
# in the environment (another checkout) must not answer instead.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))


def shell_word(value):
    """`value` quoted for bash, its braces escaped for Snakemake's formatting."""
    return shlex.quote(str(value)).replace("{", "{{").replace("}", "}}")


# Jobs run `python`: the interpreter that runs Snakemake (e.g. .venv/bin), or with
# --sdm conda the environment's own, which Snakemake activates before this prefix.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON_ON_PATH = "" if USE_CONDA else f'export PATH={shell_word(Path(sys.executable).parent)}:"$PATH"; '
# A job killed with SIGKILL cannot say so itself (SIGTERM and Ctrl-C it reports; see
# vaefail.__main__): its shell does, on the screen.
REPORT_SIGKILL = ("trap 'if [ $? -eq 137 ]; then echo \"the job was killed by SIGKILL (kill -9, or the "
                  "out-of-memory killer: see dmesg); run the same command again to redo it\" >&2; fi' EXIT; ")
shell.prefix(f"set -euo pipefail; {REPORT_SIGKILL}{PYTHON_ON_PATH}export PYTHONPATH={shell_word(SRC)}; ")
shell.suffix("; :")  # bash then waits for the job instead of becoming it (exec), so the trap runs

from vaefail import catalogue
from vaefail import config as vconfig
from vaefail import files
from vaefail import grid
from vaefail.data.uci import uci_spec

if Path(vconfig.__file__).resolve().parent != (SRC / "vaefail").resolve():
    raise WorkflowError(f"the workflow in {workflow.basedir} imported vaefail from {Path(vconfig.__file__).parent}, "
                        f"not from its own {SRC / 'vaefail'}: remove that copy from the Python path")

try:
    vconfig.check_yaml_syntax("config.yaml")  # Snakemake's own message names no line
except vconfig.ConfigError as error:
    raise WorkflowError(str(error))


configfile: "config.yaml"


try:
    SETTINGS = vconfig.resolve(config)
    OUT = vconfig.output_dir(config)
    files.check_output_dir(SETTINGS, OUT)
except (vconfig.ConfigError, files.ResultReadError) as error:
    raise WorkflowError(str(error))

DEVICE = vconfig.resolve_device(config.get("device", "auto"))
GPU = 1 if DEVICE == "cuda" else 0
REDRAW = str(config.get("redraw", False)).lower() == "true"  # --config passes text
VERSIONS = range(SETTINGS["versions"])  # of the unsupervised data sets; UCI splits: uci_splits
# the dataset rule draws as many versions as any synthetic experiment needs
SYNTHETIC_VERSIONS = range(max(SETTINGS["versions"], SETTINGS["ss_versions"]))
SETTINGS_JSON = f"{OUT}/settings.json"
CONDA_ENV = "../../envs/vaefail.yaml"  # relative to the rule files


onstart:
    # A local run that trains on the GPU stops here, before any job, if torch sees none.
    # Not for a cluster: the login node that submits the jobs need not have a GPU.
    if GPU and workflow.local_exec and any(j.rule.name in catalogue.GPU_RULES for j in workflow.dag.needrun_jobs()):
        try:
            vconfig.require_cuda(config.get("device", "auto"))
        except vconfig.ConfigError as error:
            raise WorkflowError(str(error))


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
    if wildcards.dataset == grid.LINEAR_GAUSSIAN:   # appendix F's data come from a linear model
        return []
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


def manifests(*experiments):
    """Each training job's manifest (written after all its members' results), standing for the
    job's results as the input of the rules that read them.  Asking for every per-restart file
    instead made Snakemake match each of the paper grid's 100 000 against up to 2 400 output
    patterns of its training rule: minutes before the first job."""
    return [out(path) for e in experiments for path in grid.experiment_manifests(SETTINGS, e)]


@functools.cache
def stale_runs(experiment):
    """Per-restart results of the jobs whose manifest exists that are missing, or newer than
    the experiment's selection: (missing, changed).  One stat per file, before the DAG; not in
    the Snakemake a cluster job runs (it runs one job, whose inputs are decided)."""
    if not workflow.is_main_process:
        return [], []
    selection = out(catalogue.selected_path(experiment))
    selection_time = os.stat(selection).st_mtime if os.path.exists(selection) else None
    missing, changed = [], []
    for dataset in grid.experiment_datasets(SETTINGS, experiment):
        for setting in grid.experiment_settings(SETTINGS, experiment, dataset):
            if not os.path.exists(out(grid.job_manifest_path(experiment, dataset, setting.id))):
                continue        # the job will run anyway
            for stem in grid.job_run_stems(SETTINGS, experiment, dataset, setting.id):
                for suffix in (".json", ".pt"):
                    path = out(stem + suffix)
                    try:
                        if selection_time is not None and os.stat(path).st_mtime > selection_time:
                            changed.append(path)
                    except FileNotFoundError:
                        missing.append(path)
    return missing, changed


def run_inputs(experiment):
    """What selection asks for: each job's manifest, and the results that are missing (so the
    job that writes them reruns) or changed since the last selection (so selection reruns and
    checks them)."""
    missing, changed = stale_runs(experiment)
    return manifests(experiment) + missing + changed


def job_manifest(experiment="{experiment}"):
    return out(grid.job_manifest_path(experiment, "{dataset}", "{setting}"))


def job_outputs(suffix, experiment="{experiment}", grid_of="unsupervised"):
    """Outputs of one training job: every member of `grid_of`'s jobs, as wildcard patterns."""
    return [
        out(f"{grid.member_stem(experiment, '{dataset}', '{setting}', member)}{suffix}")
        for member in grid.job_members(SETTINGS, grid_of)
    ]


def panel_runs(wildcards):
    """The jobs of one (data set, method) of the unsupervised experiment, whose weights the panels read."""
    return [out(grid.job_manifest_path("unsupervised", wildcards.dataset, setting.id))
            for setting in grid.experiment_settings(SETTINGS, "unsupervised")
            if setting.method == wildcards.method]


def ss_version0_runs(dataset, methods):
    """The jobs of every setting of these methods on one semi-supervised data set, whose
    version-0 weights a figure reads (which one it draws is known only after selection)."""
    return [out(grid.job_manifest_path("semisupervised", dataset, setting.id))
            for setting in grid.experiment_settings(SETTINGS, "semisupervised")
            if setting.method in methods]


def table_files(names):
    return [out(catalogue.table_path(name)) for name in names]


def figure_files(stems):
    """The PDF of each figure (its PNG is made beside it)."""
    return [out(f"{stem}.pdf") for stem in stems]


def figure_params():
    """Params shared by the figure rules -- the output folder (of the settings record) and the
    output path without extension (of the PDF; the PNG is written beside it)."""
    return {"outdir": lambda w, input: os.path.dirname(input.settings),
            "stem": lambda w, output: output.pdf.removesuffix(".pdf")}


SS_PANELS = figure_files(catalogue.ss_panel_figure(d, m) for d in SETTINGS["ss_datasets"] for m in grid.METHODS)
SS_FIGURES = figure_files([catalogue.FIGURE2] if catalogue.FIGURE2_DATASET in SETTINGS["ss_datasets"] else []) + SS_PANELS
FIGURE_PANELS = figure_files(
    catalogue.panel_figure(d, m) for d in SETTINGS["unsupervised_datasets"] for m in grid.METHODS
)
LATENT_FIGURES = figure_files(catalogue.latent_figure(d) for d in grid.experiment_datasets(SETTINGS, "latent"))
TABLES = table_files(catalogue.TABLES)
DISENTANGLEMENT_TABLE = out(catalogue.table_path(catalogue.DISENTANGLEMENT_TABLE))
APPENDIX_K_TABLES = table_files(catalogue.APPENDIX_K_TABLES)
CLAIM_TABLES = table_files(catalogue.CLAIM_TABLES)
PAPER_SCALE = table_files([*catalogue.PAPER_SCALE_TABLES, catalogue.EVALUATION_NOISE_TABLE])
CLAIMS = out(catalogue.table_path(catalogue.CLAIMS_TABLE))
LABEL_SHARE = "labelshare" in grid.active_experiments(SETTINGS)
CLAIM_FIGURES = figure_files([catalogue.FOREST_FIGURE] + ([catalogue.LABEL_SHARE_FIGURE] if LABEL_SHARE else []))
FIGURES = [*figure_files([catalogue.FIGURE1]), *FIGURE_PANELS, *LATENT_FIGURES, *SS_FIGURES,
           *figure_files([catalogue.FIGURE5]), *CLAIM_FIGURES]
RECORD = [out("record/runtimes.csv"), out("record/provenance.json")]
PAPER_TARGETS = [out("paper.pdf"), *TABLES, *CLAIM_TABLES, *PAPER_SCALE, CLAIMS, *FIGURES, *RECORD]
# Every training job's manifest, and every per-restart result that was deleted after its job
# ran, asked for by the targets: Snakemake reruns the job of a deleted one, which it would not
# do for an intermediate file (the tables are newer).
UNSUPERVISED_RUNS = [f for e in ("unsupervised", "noise", "latent", "disentangle")
                     for f in manifests(e) + stale_runs(e)[0]]
SEMISUPERVISED_RUNS = [f for e in grid.SEMI_SUPERVISED_EXPERIMENTS for f in manifests(e) + stale_runs(e)[0]]

if REDRAW and workflow.is_main_process:
    # Redraw from saved results: check that every one is there and loads before any job
    # runs (and --forceall deletes an output).
    needed = [SETTINGS_JSON, *(out(grid.surrogate_path(b)) for b in grid.base_datasets(SETTINGS))]
    needed += [out(grid.data_path(d, v)) for d in grid.all_datasets(SETTINGS)
               for v in range(grid.dataset_versions(SETTINGS, d))]
    needed += [f for e in grid.active_experiments(SETTINGS) for suffix in (".json", ".pt")
               for f in run_files(e, suffix)]
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
    unreadable = files.unreadable(needed)
    if unreadable:
        listed = "\n  ".join(f"{e.path}: {e.cause}" for e in unreadable[:10])
        more = f"\n  ... and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
        raise WorkflowError(
            f"redraw needs saved results, but {len(unreadable)} of {len(needed)} files under {OUT} "
            f"cannot be read (nothing was deleted or redrawn):\n  {listed}{more}\n"
            "Delete them and run the workflow without redraw=true: it reruns the jobs that make them."
        )
