"""Appendix F in the workflow: the numbers of the disentanglement table, per data version, on
the `disentangle` experiment's linear-Gaussian truth (data.linear_gaussian).  The table
itself (mean +- sd over versions, tables/disentanglement.csv and .tex) is written by
report.analysis_tables.

One row per model and version:
  (a) closed form on each version's test data: mean exact log p(x), the mean ELBO at the optimal
      mean-field Gaussian q, and the MIG of the model's posterior means against the true z — for
      the true A, the appendix's A R and the ELBO-maximising rotation A R*;
  (b) each trained setting (VAE, IWAE S=...): the restart of each version that selection kept
      (best validation objective), its test ELBO, training bound and log p(x) estimate (from its
      result file) and the MIG of its posterior means mu_phi(x) on the test points against their
      true z.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import grid
from ..catalogue import BOUND, DISENTANGLEMENT_MODEL_ROWS, ELBO, LOG_PX, MIG, MIG_NATS, disentanglement_row
from ..data.linear_gaussian import LinearGaussianTruth, truth
from ..engine.ensembles import load_member
from ..files import load_npz
from .disentanglement import (
    appendix_f_models,
    disentanglement_scores,
    encoder_codes,
    exact_posterior,
    log_marginal_likelihood,
    optimal_mean_field_elbo,
)


def closed_form_values(t: LinearGaussianTruth, x: np.ndarray, z: np.ndarray, k: int) -> dict[str, dict]:
    """Part (a) on one version's test data: {row: {column: value}}."""
    models = appendix_f_models(t.A, t.noise_variance)
    codes = np.stack([exact_posterior(A, t.b, t.noise_variance, x)[0].numpy() for A in models.values()])
    scores = disentanglement_scores(codes, z, k)
    return {DISENTANGLEMENT_MODEL_ROWS[name]: {
                LOG_PX: float(log_marginal_likelihood(A, t.b, t.noise_variance, x).mean()),
                ELBO: float(optimal_mean_field_elbo(A, t.b, t.noise_variance, x).mean()),
                MIG: float(scores["mig"][i]), MIG_NATS: float(scores["mig_nats"][i])}
            for i, (name, A) in enumerate(models.items())}


def trained_values(settings: dict, kept: pd.DataFrame, outdir: Path, test: dict[int, tuple]) -> dict[str, list[dict]]:
    """Part (b): {row: one {"version": v, column: value} per version's kept restart}.  test[v] = (x, z)."""
    out: dict[str, list[dict]] = {}
    for setting in grid.experiment_settings(settings, "disentangle"):
        row = disentanglement_row(setting.method, setting.samples)
        out[row] = []
        for _, run in kept[kept["setting"] == setting.id].sort_values("version").iterrows():
            version, restart = int(run["version"]), int(run["restart"])
            stem = grid.run_stem("disentangle", grid.LINEAR_GAUSSIAN, setting.id, version, restart)
            x, z = test[version]
            codes = encoder_codes(load_member(outdir / f"{stem}.pt"), x)[0].numpy()
            scores = disentanglement_scores(codes, z, settings["mi_neighbours"])
            out[row].append({"version": version, LOG_PX: run["log_px_test"], ELBO: run["elbo_test"],
                             BOUND: run["objective_test"], MIG: float(scores["mig"]),
                             MIG_NATS: float(scores["mig_nats"])})
    return out


def disentanglement_versions(settings: dict, kept: pd.DataFrame, outdir: str | Path) -> pd.DataFrame:
    """One row per (model row, version): its LOG_PX, ELBO, MIG, MIG_NATS (and BOUND for the
    trained models), from the kept restarts (rows of selection's all-restarts file with
    kept_restart) and the data and weights under outdir.  The claims pair these by version."""
    outdir = Path(outdir)
    t = truth(settings)
    test = {}
    for v in range(grid.n_versions(settings, "disentangle")):
        data = load_npz(outdir / grid.data_path(grid.LINEAR_GAUSSIAN, v))
        test[v] = (data["x_test"], data["z_test"])
    rows = [{"row": row, "version": v, **values}
            for v, (x, z) in test.items()
            for row, values in closed_form_values(t, x, z, settings["mi_neighbours"]).items()]
    for row, runs in trained_values(settings, kept, outdir, test).items():
        rows += [{"row": row, **run} for run in runs]
    return pd.DataFrame(rows, columns=["row", "version", LOG_PX, ELBO, MIG, MIG_NATS, BOUND])
