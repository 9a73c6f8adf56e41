"""The tables of the analyses, as CSV and booktabs .tex (through tables.to_latex): the numbers
come from vaefail.analyses, the captions and the writing are here.

  theorem1, separation  Theorem 1 and the collapse of Figures 2 and 18 (analyses.figure_claims,
                   analyses.collapse): per version, mean +- sd over versions in the .tex, with
                   the separation of every restart, the objective J of collapsed against
                   separated restarts and the separation against the labelled share.
  disentanglement  appendix F (analyses.appendix_f): mean +- sd over data versions of each
                   model's log p(x), ELBO, training bound and MIG, and the per-version rows
                   the claims pair (disentanglement-versions.csv).
  appendix_k_denoising, appendix_k_attack
                   appendix K (analyses.appendix_k): the noise each projection leaves and the
                   attack's success rates, and the outcome of each attacked point
                   (appendix_k_attack_points.csv); the same job draws Figure 5
                   (report.figures.figure5).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from .. import grid
from ..analyses.appendix_f import disentanglement_versions
from ..analyses.appendix_k import POINT_COLUMNS, attack_table, denoising_table
from ..analyses.appendix_k_projections import VERSION
from ..analyses.collapse import collapse_pairs, label_share_table
from ..analyses.figure_claims import TRUTH, separation_by_restart, separation_table, theorem1_table
from ..catalogue import (APPENDIX_K_POINTS, BOUND, DISENTANGLEMENT_TABLE, DISENTANGLEMENT_VERSIONS, ELBO, LOG_PX,
                         METHOD_TITLES, MIG, MIG_NATS)
from ..files import read_csv, write_bytes
from .figures.common import dataset_short
from .figures.figure5 import draw_figure5
from .tables import (COLUMNS, booktabs, cell, mean_sd, row_title, significant, tex_text, to_latex, decimals,
                     write_table)

log = logging.getLogger(__name__)


# --- Theorem 1 and the collapse of Figures 2 and 18 -------------------------------------
MODEL_TITLES = {TRUTH: "truth", **METHOD_TITLES}


def summary_cells(name: str, frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean and sd over versions, one cell per (data set [and variant], model), as tables.py's cells."""
    cells = []
    keys = ["dataset", "unlabelled_posterior"] if "unlabelled_posterior" in frame else ["dataset"]
    frame = frame.assign(unlabelled_posterior=frame.get("unlabelled_posterior"))
    for dataset in dict.fromkeys(frame["dataset"]):
        rows = frame[frame["dataset"] == dataset]
        truth = rows[rows["model"] == TRUTH]
        variants = [v for v in dict.fromkeys(rows["unlabelled_posterior"]) if isinstance(v, str)] or [None]
        for variant in variants:
            title = row_title(dataset, variant) if len(keys) > 1 else row_title(dataset)
            cells.append(cell(name, title, MODEL_TITLES[TRUTH], truth[value]))
            for method in grid.METHODS:
                mine = rows[(rows["model"] == method) & ((rows["unlabelled_posterior"] == variant) | (variant is None))]
                cells.append(cell(name, title, MODEL_TITLES[method], mine[value]))
    return pd.DataFrame(cells, columns=COLUMNS)


def write_figure_claims(settings: dict, outdir: str, out_theorem1: str, out_separation: str,
                        out_separation_restarts: str, out_collapse: str, out_label_share: str) -> None:
    """The two tables, per version (CSV) and summarised over versions (booktabs .tex beside),
    the separation of every restart on the Discrete Semi-Circle (CSV), the objective J of its
    collapsed against its separated restarts (CSV) and its separation against the share of
    observed labels (CSV)."""
    restarts = separation_by_restart(settings, outdir)
    write_bytes(out_separation_restarts, restarts.to_csv(index=False).encode())
    shares = theorem1_table(settings, outdir)
    separation = separation_table(settings, outdir)
    truth = separation[(separation["dataset"] == "discrete-semicircle") & (separation["model"] == TRUTH)]
    truth_separation = float(truth["separation"].mean()) if len(truth) else math.nan
    pairs = collapse_pairs(settings, outdir, restarts, truth_separation)
    write_bytes(out_collapse, pairs.to_csv(index=False).encode())
    share = label_share_table(settings, restarts, separation_by_restart(settings, outdir, experiment="labelshare")) \
        if len(restarts) else pd.DataFrame()
    write_bytes(out_label_share, share.assign(separation_truth=truth_separation).to_csv(index=False).encode())
    for frame, value, path, caption in (
            (shares, "share", out_theorem1,
             f"\\textbf{{Theorem 1, measured.}} Share of test points whose exact posterior $p(z|x)$ has more than "
             f"{settings['theorem1_threshold']:g} of its mass off its main mode, under the true decoder and each "
             f"method's selected decoder; mean $\\pm$ sd over {settings['versions']} data versions."),
            (separation, "separation", out_separation,
             "\\textbf{Figures 2 and 18, measured.} Label separation $E_{z}\\,\\|f(y{=}a, z) - f(y{=}b, z)\\|$ "
             "($z \\sim N(0,1)$, pairs of cohort labels) of the true and the selected decoders; 0 means $f$ "
             f"ignores $y$. Mean $\\pm$ sd over {settings['ss_versions']} data versions.")):
        cells = summary_cells(Path(path).stem, frame, value)
        write_table(frame, path, to_latex(cells, caption, f"tab:{Path(path).stem}"))


# --- appendix F ---------------------------------------------------------------------------
def disentanglement_cells(versions: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (tables.COLUMNS): mean and sd over versions of each row's columns."""
    cells = []
    for row, frame in versions.groupby("row", sort=False):
        columns = (LOG_PX, ELBO, MIG, MIG_NATS) + ((BOUND,) if frame[BOUND].notna().any() else ())
        cells += [cell(DISENTANGLEMENT_TABLE, row, column, frame[column]) for column in columns]
    return pd.DataFrame(cells, columns=COLUMNS)


def disentanglement_caption(settings: dict) -> str:
    spec = settings["linear_gaussian"]
    s1, s2 = spec["singular_values"]
    versions, restarts = grid.n_versions(settings, "disentangle"), grid.n_restarts(settings, "disentangle")
    return ("\\textbf{Appendix F (disentanglement).} Linear-Gaussian truth $x = Az + \\epsilon$ with $K=2$, $D=5$, "
            f"$A = U\\,\\mathrm{{diag}}({s1:g}, {s2:g})\\,R({spec['angle_degrees']:g}^\\circ)^\\top$, "
            f"$\\sigma^2 = {spec['sigma2']:g}$. First three rows, in closed form: $\\log p(x)$ and the ELBO at the "
            "optimal mean-field $q$ of the true $A$, of the appendix's rotation $AR$ and of the ELBO-maximising "
            "rotation $AR^*$. Other rows: VAE and IWAE with $K=2$ and $\\sigma^2$ fixed at the truth, "
            f"{grid.experiment_epochs(settings, 'disentangle')} epochs, per version the best of {restarts} random "
            "restarts by validation objective; test ELBO, the training bound (IWAE's for IWAE) and the IWAE "
            f"estimate of $\\log p(x)$ ({settings['eval_logpx_samples']} samples). MIG: mutual information gap of "
            "the posterior means against the true $z$ of the test points, with KSG estimates "
            f"(k={settings['mi_neighbours']}) normalised by each $z_j$'s KSG self-information; MIG (nats) "
            f"unnormalised. Mean $\\pm$ sd over {versions} data versions. The paper gives no numbers.")


def build_disentanglement_table(settings: dict, all_restarts_csv: str, outdir: str, out_csv: str) -> None:
    runs = read_csv(all_restarts_csv, required=("setting", "version", "restart", "status", "kept_restart",
                                                "log_px_test", "elbo_test", "objective_test"))
    kept = runs[runs["kept_restart"].astype(bool) & (runs["status"] == "ok")]
    versions = disentanglement_versions(settings, kept, outdir)
    cells = disentanglement_cells(versions)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    write_table(cells, out_csv, to_latex(cells, disentanglement_caption(settings), f"tab:{DISENTANGLEMENT_TABLE}"))
    write_bytes(Path(out_csv).with_name(f"{DISENTANGLEMENT_VERSIONS}.csv"), versions.to_csv(index=False).encode())


# --- appendix K ---------------------------------------------------------------------------
def denoising_latex(table: pd.DataFrame, settings: dict) -> str:
    """The denoising table summarised over versions: one line per (data set, model)."""
    header = ["data set / projection", "$K$", "$\\sigma^2$ (learned)", "$D\\sigma_{true}^2$",
              "$E\\|M(x) - f_{GT}(z)\\|^2$", "ratio", "versions"]
    body, groups = [], []
    for dataset, frame in table.groupby("dataset", sort=False):
        groups.append(len(body))
        for model, rows in frame.groupby("model", sort=False):
            ok = rows["ratio"].notna()
            body.append([f"{tex_text(dataset_short(dataset))}: {tex_text(model)}",
                         significant(rows["latent_dim"].iloc[0]), significant(rows["sigma2_learned"].mean()),
                         significant(rows["noise"].iloc[0]),
                         mean_sd(rows["projection_error"]), mean_sd(rows["ratio"]), str(int(ok.sum()))])
    caption = ("\\textbf{Appendix K: the noise a projection removes.} For test points $x = f_{GT}(z) + \\epsilon$ "
               "of each data version, the error of the projection $M(x) = f_\\theta(\\mu_\\phi(x))$ against the "
               "noise $E\\|x - f_{GT}(z)\\|^2 = D\\sigma^2$ and their ratio (0: all noise removed, about $K/D$ for "
               "the exact projection onto the true manifold at small noise, 1: none removed); mean $\\pm$ sd over "
               "data versions. The truth: the true decoder with the exact posterior mean under the true "
               "$\\sigma^2$, with the nearest point on the true manifold (the orthogonal projection, the limit "
               "$\\sigma^2 \\to 0$), or with the encoder $\\phi_{GT}$ fitted to it; $\\sigma^2$ (learned): the "
               "model's, mean over dimensions. "
               "Spiral-Dots: VAE with $\\sigma^2$ learned jointly (Theorem 2) and fixed at the truth.")
    return booktabs(header, body, caption, "tab:appendix-k-denoising", groups)


def attack_latex(table: pd.DataFrame, settings: dict) -> str:
    """Success rate of the attack at each budget: one line per (data set, model)."""
    budgets = list(dict.fromkeys(table["budget_in_sigma"]))
    header = ["data set / defence", "$K$", "$\\sigma^2$", "noise left", "clean acc."] + \
             [f"${b:g}\\sigma$" for b in budgets]
    body, groups = [], []
    for dataset, frame in table.groupby("dataset", sort=False):
        groups.append(len(body))
        for model, rows in frame.groupby("model", sort=False):
            first = rows.iloc[0]
            rate = rows.set_index("budget_in_sigma")["success_rate"]
            body.append([f"{tex_text(dataset_short(dataset))}: {tex_text(model)}", significant(first["latent_dim"]),
                         significant(first["sigma2_learned"]), decimals(first["denoising_ratio"], 2),
                         decimals(first["clean_accuracy"], 2)]
                        + [decimals(rate.get(b, math.nan), 2) for b in budgets])
    gain = float(settings["attack_gain"])
    n = int(table["n_points"].max()) if len(table) else 0
    caption = ("\\textbf{Appendix K: attacks through the projection.} Success rate of an $L_2$ attack on "
               "$g(M(x + \\eta))$ with $\\|\\eta\\|$ at most the budget (in units of the true $\\sigma$), on "
               f"{n} test points of version {VERSION} that $g$ classifies correctly; $g$ is the true classifier "
               "on the plane of the manifold (Figure-8: the sign of $z$; Clusters: the nearest cluster centre) "
               f"tilted off it (gain {gain:g}), so that without a defence off-plane noise flips it. "
               f"Attack: {int(settings['attack_steps'])} normalised gradient steps through $M$ from "
               f"{int(settings['attack_restarts'])} starts. Noise left: the ratio of the "
               "denoising table (version 0); clean acc.: the fraction of the points $g \\circ M$ classifies "
               "correctly without attack (the success rate is of these).")
    return booktabs(header, body, caption, "tab:appendix-k-attack", groups)


def write_appendix_k(settings: dict, outdir, out_denoising_csv, out_attack_csv, out_figure_stem) -> str:
    """The one job of appendix K: the denoising table, the attack table (each a CSV and a
    booktabs .tex beside it) and Figure 5 (out_figure_stem + .pdf/.png).  Returns the caption."""
    denoising = denoising_table(settings, outdir)
    write_table(denoising, out_denoising_csv, denoising_latex(denoising, settings))
    log.info("appendix K: denoising table, %d rows (%d without a model) -> %s", len(denoising),
             int(denoising["ratio"].isna().sum()), out_denoising_csv)
    points = []
    attack = attack_table(settings, outdir, denoising, points)
    write_table(attack, out_attack_csv, attack_latex(attack, settings))
    log.info("appendix K: attack table, %d rows -> %s", len(attack), out_attack_csv)
    points_csv = Path(out_attack_csv).with_name(f"{APPENDIX_K_POINTS}.csv")
    write_bytes(points_csv, pd.DataFrame(points, columns=POINT_COLUMNS).to_csv(index=False).encode())
    caption = draw_figure5(settings, outdir, out_figure_stem, attack, denoising)
    log.info("appendix K: Figure 5 -> %s.pdf, .png", out_figure_stem)
    return caption


