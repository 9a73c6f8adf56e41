"""The catalogue of outputs: which tables and figures the workflow makes, from which
experiments, under which titles and at which paths (relative to the output folder), and
which workflow rule trains each experiment.

One place for these facts, read by the command line, the Snakemake rules, the tables, the
figures, the report, the claims and the tests.  No torch (the Snakefile imports it), so the
table and selection jobs stay light.  The paths of the grid's own results (surrogates, data,
weights) are in vaefail.grid.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import grid

# --- titles -------------------------------------------------------------------------------
DATASET_TITLES = {
    "figure-8": "Figure-8", "circle": "Circle", "absolute-value": "Absolute-Value", "clusters": "Clusters",
    "spiral-dots": "Spiral-Dots", "discrete-semicircle": "Discrete Semi-Circle",
    "continuous-semicircle": "Continuous Semi-Circle",
    "diabetic-retinopathy": "Diabetic Retinopathy", "contraceptive": "Contraceptive", "titanic": "Titanic",
}
# Table columns, claims and the report's captions.
METHOD_TITLES = {"vae": "VAE", "lin": "LIN", "iwae": "IWAE"}
# Figure legends and titles: LIN is a way of training the VAE.
METHOD_LEGENDS = {"vae": "VAE", "lin": "VAE + LIN", "iwae": "IWAE"}
# The tables' column order (the paper's, alphabetical).
TABLE_METHOD_ORDER = ("iwae", "lin", "vae")


def method_legend(method: str) -> str:
    return METHOD_LEGENDS.get(method, method)


# --- tables ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """One of the paper's tables: the experiments whose selected restarts it reads (in the
    order the table job takes them) and the heading of its caption."""

    experiments: tuple[str, ...]
    heading: str


TABLES = {
    "table1": Table(("unsupervised",), "The paper's Table 1"),
    "table2": Table(("latent",), "The paper's Table 2"),
    "theorem2": Table(("unsupervised", "noise"), "The paper's section 2.2 (Theorem 2)"),
    "table3": Table(("semisupervised",), "The paper's Table 3"),
    "table4": Table(("semisupervised",), "The paper's Table 4"),
    "table5": Table(("uci",), "The paper's Table 5"),
    "table6": Table(("uci",), "The paper's Table 6"),
}


def is_semi_supervised(table: str) -> bool:
    return all(e in grid.SEMI_SUPERVISED_EXPERIMENTS for e in TABLES[table].experiments)


UNSUPERVISED_TABLES = tuple(name for name in TABLES if not is_semi_supervised(name))
SEMI_SUPERVISED_TABLES = tuple(name for name in TABLES if is_semi_supervised(name))
# Measurements behind the claims the paper makes with figures (analyses.figure_claims), in
# appendix F's text (analyses.appendix_f) and in appendix K (analyses.appendix_k).
FIGURE_CLAIM_TABLES = ("theorem1", "separation")
DISENTANGLEMENT_TABLE = "disentanglement"
APPENDIX_K_TABLES = ("appendix_k_denoising", "appendix_k_attack")
# Per-version, per-restart or per-point rows behind the claims, written beside the tables above.
DISENTANGLEMENT_VERSIONS = "disentanglement-versions"
APPENDIX_K_POINTS = "appendix_k_attack_points"
SEPARATION_RESTARTS = "separation-restarts"
COLLAPSE_TABLE = "collapse"                   # J of collapsed against separated restarts
LABEL_SHARE_TABLE = "separation-labelshare"   # separation against the share of observed labels
# The paper's kNN cells on each candidate scale of the statistic, and the summary counts.
PAPER_SCALE_TABLES = ("paper-scale", "paper-scale-summary", "paper-scale-null")
EVALUATION_NOISE_TABLE = "evaluation-noise"
CLAIM_TABLES = (*FIGURE_CLAIM_TABLES, DISENTANGLEMENT_TABLE, *APPENDIX_K_TABLES)
CLAIMS_TABLE = "claims"
# What the claims table reads: each experiment's selected models and the analyses' rows.
CLAIM_EXPERIMENTS = ("unsupervised", "noise", "latent", "semisupervised", "uci", "disentangle")
CLAIM_ANALYSES = ("theorem1", "separation", COLLAPSE_TABLE, DISENTANGLEMENT_VERSIONS, "appendix_k_denoising",
                  APPENDIX_K_POINTS)


def table_path(name: str, suffix: str = ".csv") -> str:
    return f"tables/{name}{suffix}"


def selected_path(experiment: str) -> str:
    """The selected restarts of an experiment (one per method and data version)."""
    return f"selected/{experiment}.csv"


def claim_inputs(settings: dict) -> list[str]:
    """The files (relative to the output folder) the claims table reads."""
    active = grid.active_experiments(settings)
    return ([selected_path(e) for e in CLAIM_EXPERIMENTS if e in active]
            + [table_path(name) for name in CLAIM_ANALYSES])


def all_restarts_path(experiment: str) -> str:
    """Every restart of an experiment, with whether selection kept it."""
    return f"selected/{experiment}-all-restarts.csv"


# --- appendix F's table: its rows and columns -------------------------------------------
# Rows: appendix F's closed-form models (by the names of analyses.disentanglement's
# appendix_f_models), then one per trained setting (disentanglement_row).
DISENTANGLEMENT_MODEL_ROWS = {"original": "true A", "appendix_rotation": "A R (appendix F)",
                              "elbo_maximising": "A R* (ELBO-maximising)"}
LOG_PX, ELBO, BOUND, MIG, MIG_NATS = "test log p(x)", "test ELBO", "test training bound", "MIG", "MIG (nats)"


def disentanglement_row(method: str, samples: int) -> str:
    return METHOD_TITLES[method] + (f" S={samples}" if method == "iwae" else "")


# --- figures (each is drawn as .pdf and .png; paths without extension unless given) ---------
FIGURE_KINDS = ("panels", "figure1", "latent", "figure2", "ss-panels", "forest", "label-share")
FIGURE1 = "figures/figure1"
FIGURE2 = "figures/figure2"
FIGURE2_DATASET = "discrete-semicircle"
FIGURE5 = "figures/figure5"
FOREST_FIGURE = "figures/claims-forest"       # every claim's effect and interval
LABEL_SHARE_FIGURE = "figures/collapse-labelshare"


def panel_figure(dataset: str, method: str, suffix: str = "") -> str:
    """Panels (a)-(e) of Figures 6-14 for one unsupervised data set and method."""
    return f"figures/panels/{dataset}-{method}{suffix}"


def latent_figure(dataset: str, suffix: str = "") -> str:
    """Figures 21-22: one 5-D data set's posteriors for every latent dimension."""
    return f"figures/latent/{dataset}{suffix}"


def ss_panel_figure(dataset: str, method: str, suffix: str = "") -> str:
    """Panels (a)-(e) of Figures 15-20 for one semi-supervised data set and method."""
    return f"figures/ss-panels/{dataset}-{method}{suffix}"


# --- training rules -----------------------------------------------------------------------
# The workflow rule that trains each experiment's jobs (workflow/rules/train.smk).  The
# semi-supervised experiments have a rule each: their jobs write different sets of files.
TRAINING_RULES = {**{e: "train" for e in grid.EXPERIMENTS},
                  **{e: f"train_{e}" for e in grid.SEMI_SUPERVISED_EXPERIMENTS}}
# The rules whose jobs train on the GPU when run with device=cuda (they declare `gpu: 1`).
GPU_RULES = ("gt_encoders", *dict.fromkeys(TRAINING_RULES.values()))
