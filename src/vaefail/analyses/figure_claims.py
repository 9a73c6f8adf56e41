"""Two claims the paper makes with figures, measured on every data version.

Theorem 1 (section 2, Figures 1 and 6-14): where the true posterior p(z|x) is far from a
mean-field Gaussian for much of the data, the VAE learns a decoder whose posteriors are
simpler.  Measured as the share of test points whose exact posterior (on a z-grid) has more
than `theorem1_threshold` of its mass outside the basin of its main mode
(posteriors.second_mode_mass), under the true decoder and under each method's selected
decoder with its own sigma^2.

Figures 2 and 18 (section 3): the semi-supervised VAE collapses f(y, z) to one function of z
for every y, and IWAE does not.  Measured as the label separation
E_{z ~ N(0,1)} ||f(y=a, z) - f(y=b, z)||, averaged over pairs (a, b) of the data set's cohort
labels (Table 4's), by quadrature on the z-grid, for the true decoder and each selected one.

Both tables hold one row per (data set, model, version); the claims table reads them, and
report.analysis_tables writes them with their summaries over versions.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..data.datasets import example
from ..data.surrogate import GroundTruthDecoder
from ..engine.ensembles import load_member
from ..evaluation import posteriors as P
from ..files import load_npz, read_json
from ..models.m2 import Labels, encode_labels
from .selected import read_selected, selected_row, selected_stem

TRUTH = "truth"


def off_mode_share(log_lik_fn, x: np.ndarray, z_grid: torch.Tensor, threshold: float) -> float:
    """Share of the points x (n, D) whose exact 1-D posterior has more than `threshold` of its
    mass outside its main mode's basin."""
    density = P.exact_posterior_1d(log_lik_fn, x, z_grid)
    return float((P.second_mode_mass(density, z_grid) > threshold).double().mean())


def label_separation(decoder_of_inputs, label_kind: str, classes: int, cohort_values, z_grid: torch.Tensor) -> float:
    """E_{z ~ N(0,1)} ||f(a, z) - f(b, z)||, the mean over pairs (a, b) of cohort labels, by
    quadrature on z_grid.  decoder_of_inputs maps [encoded y, z] (n, Y + 1) to x-means (n, D)."""
    weights = P.trapezoid_weights(z_grid) * P.standard_normal_density(z_grid)
    weights = weights / weights.sum()
    curves = {}
    for value in cohort_values:
        y = np.full(len(z_grid), int(value) if label_kind == "discrete" else value)
        labels = encode_labels(Labels(label_kind, classes), y)
        with torch.no_grad():
            curves[value] = torch.as_tensor(decoder_of_inputs(torch.cat([labels, z_grid.unsqueeze(-1)], -1)),
                                            dtype=torch.float64)
    pairs = list(itertools.combinations(cohort_values, 2))
    return float(np.mean([float((weights * (curves[a] - curves[b]).norm(dim=-1)).sum()) for a, b in pairs]))


def theorem1_table(settings: dict, outdir: str | Path) -> pd.DataFrame:
    """Off-mode shares of the unsupervised data sets' test points: truth and each method's
    selected model, every version."""
    outdir = Path(outdir)
    selected = read_selected(outdir, "unsupervised")
    z_grid = P.uniform_grid(*P.GRID_1D)
    threshold = settings["theorem1_threshold"]
    rows = []
    for dataset in settings["unsupervised_datasets"]:
        ex = example(dataset)
        truth = GroundTruthDecoder(outdir / grid.surrogate_path(ex.base), ex.embedded)
        truth_lik = P.ground_truth_log_likelihood(truth, ex.noise_variance)
        for version in range(settings["versions"]):
            x = load_npz(outdir / grid.data_path(dataset, version))["x_test"].astype(np.float64)
            rows.append({"dataset": dataset, "model": TRUTH, "version": version,
                         "share": off_mode_share(truth_lik, x, z_grid, threshold)})
            for method in grid.METHODS:
                chosen = selected_row(selected, "unsupervised", dataset, method, version)
                share = math.nan
                if chosen.row is not None:
                    model = load_member(outdir / f"{selected_stem('unsupervised', chosen.row, version)}.pt")
                    share = off_mode_share(P.model_log_likelihood(model), x, z_grid, threshold)
                rows.append({"dataset": dataset, "model": method, "version": version, "share": share})
    return pd.DataFrame(rows)


def separation_table(settings: dict, outdir: str | Path) -> pd.DataFrame:
    """Label separation of the semi-supervised Semi-Circles: truth and each method's selected
    model for each variant of M2's unlabelled z-posterior, every version."""
    outdir = Path(outdir)
    selected = read_selected(outdir, "semisupervised")
    z_grid = P.uniform_grid(*P.GRID_1D)
    rows = []
    for dataset in settings["ss_datasets"]:
        ex = example(dataset)
        truth = GroundTruthDecoder(outdir / grid.surrogate_path(dataset))
        separation = label_separation(truth, ex.label_kind, ex.classes, ex.cohorts, z_grid)
        for version in range(settings["ss_versions"]):
            rows.append({"dataset": dataset, "unlabelled_posterior": None, "model": TRUTH, "version": version,
                         "separation": separation})
            for variant in settings["ss_unlabelled_posteriors"]:
                for method in grid.METHODS:
                    chosen = selected_row(selected, "semisupervised", dataset, method, version,
                                          unlabelled_posterior=variant)
                    value = math.nan
                    if chosen.row is not None:
                        model = load_member(outdir / f"{selected_stem('semisupervised', chosen.row, version)}.pt")
                        value = label_separation(P.m2_decoder(model), ex.label_kind, ex.classes, ex.cohorts, z_grid)
                    rows.append({"dataset": dataset, "unlabelled_posterior": variant, "model": method,
                                 "version": version, "separation": value})
    return pd.DataFrame(rows)


def separation_by_restart(settings: dict, outdir: str | Path, dataset: str = "discrete-semicircle",
                          experiment: str = "semisupervised") -> pd.DataFrame:
    """Label separation of every restart of every (alpha, gamma) on one Semi-Circle, beside its
    setting, initialisation, validation scores and whether selection kept it: what besides the
    z-posterior decides whether f collapses (gamma, alpha, the start, selection, and -- in the
    labelshare experiment -- the share of observed labels)."""
    outdir = Path(outdir)
    if dataset not in grid.experiment_datasets(settings, experiment):
        return pd.DataFrame()
    ex = example(dataset)
    z_grid = P.uniform_grid(*P.GRID_1D)
    chosen = set()
    if experiment == "semisupervised":
        selected = read_selected(outdir, "semisupervised")
        chosen = {selected_stem("semisupervised", row, int(row["version"]))
                  for _, row in selected[selected["dataset"] == dataset].iterrows()}
    rows = []
    for setting in grid.experiment_settings(settings, experiment, dataset):
        for member in grid.job_members(settings, experiment):
            stem = grid.member_stem(experiment, dataset, setting.id, member)
            record = read_json(outdir / f"{stem}.json")
            value = math.nan
            if record["status"] == "ok":
                model = load_member(outdir / f"{stem}.pt")
                value = label_separation(P.m2_decoder(model), ex.label_kind, ex.classes, ex.cohorts, z_grid)
            rows.append({"dataset": dataset, "unlabelled_posterior": setting.unlabelled_posterior,
                         "method": setting.method, "setting": setting.id,
                         "label_fraction": setting.label_fraction if setting.label_fraction is not None
                         else float(settings["label_fraction"]),
                         "alpha": member.alpha, "gamma": member.gamma, "version": member.version,
                         "restart": member.restart, "init": record.get("init"), "status": record["status"],
                         "objective_valid": record.get("objective_valid"), "knn_valid": record.get("knn_valid"),
                         "converged": record["train"].get("converged"),
                         "selected": stem in chosen, "separation": value})
    return pd.DataFrame(rows)
