"""Appendix F in the workflow: the linear-Gaussian truth of the `disentangle` experiment, its
data, and the disentanglement table (tables/disentanglement.csv and .tex).

The truth (config key `linear_gaussian`): z ~ N(0, I_2), x = A z + eps, eps ~ N(0, sigma2 I_5),
A = U diag(singular_values) R(angle)^T (disentanglement.entangled_linear_map: U spans the plane of
the appendix's 5-D embedding), b = 0 (an offset changes neither the posteriors nor the codes'
information).  Its posteriors are correlated unless the angle is 0 or the singular values are
equal, and the rotation that maximises the ELBO turns the latents by the angle: at 45 degrees the
latents the ELBO prefers mix both true ones equally.

The table, one row per model, mean +- sd over data versions:
  (a) closed form on each version's test data: mean exact log p(x), the mean ELBO at the optimal
      mean-field Gaussian q, and the MIG of the model's posterior means against the true z — for
      the true A, the appendix's A R and the ELBO-maximising rotation A R*;
  (b) each trained setting (VAE, IWAE S=...): the restart of each version that selection kept
      (best validation objective), its test ELBO, training bound and log p(x) estimate (from its
      result file) and the MIG of its posterior means mu_phi(x) on the test points against their
      true z.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..catalogue import DISENTANGLEMENT_TABLE, DISENTANGLEMENT_VERSIONS, METHOD_TITLES
from .disentanglement import (
    appendix_f_models,
    disentanglement_scores,
    encoder_codes,
    entangled_linear_map,
    exact_posterior,
    linear_gaussian_split,
    log_marginal_likelihood,
    optimal_mean_field_elbo,
)
from ..engine.ensembles import load_member
from ..files import load_npz, read_csv, save_npz, write_bytes
from ..randomness import derive_seed
from ..report.tables import COLUMNS, cell, to_latex

# rows of part (a), by the names of disentanglement.appendix_f_models
MODEL_ROWS = {"original": "true A", "appendix_rotation": "A R (appendix F)",
              "elbo_maximising": "A R* (ELBO-maximising)"}
LOG_PX, ELBO, BOUND, MIG, MIG_NATS = "test log p(x)", "test ELBO", "test training bound", "MIG", "MIG (nats)"


@dataclass(frozen=True, eq=False)
class LinearGaussianTruth:
    """Appendix F's truth, with what a training job asks of an example (datasets.Example)."""

    A: torch.Tensor                  # (D, K) float64
    noise_variance: float            # sigma^2, isotropic
    name: str = grid.LINEAR_GAUSSIAN
    embedded: bool = False

    @property
    def b(self) -> torch.Tensor:
        return torch.zeros(self.data_dim, dtype=torch.float64)

    @property
    def data_dim(self) -> int:
        return self.A.shape[0]


def truth(settings: dict) -> LinearGaussianTruth:
    spec = settings["linear_gaussian"]
    A = entangled_linear_map(spec["singular_values"], math.radians(spec["angle_degrees"]))
    return LinearGaussianTruth(A, float(spec["sigma2"]))


def make_dataset(settings: dict, out_paths: list[str]) -> None:
    """Every version of the linear-Gaussian data, with the true z of each point (for the MIG)."""
    t = truth(settings)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}
    for version, path in enumerate(out_paths):
        seed = derive_seed(settings["seed"], "data", grid.LINEAR_GAUSSIAN, version)
        save_npz(path, linear_gaussian_split(t.A, t.b, t.noise_variance, sizes, seed))


def method_row(method: str, samples: int) -> str:
    return METHOD_TITLES[method] + (f" S={samples}" if method == "iwae" else "")


# --- the table ---------------------------------------------------------------------------
def closed_form_values(t: LinearGaussianTruth, x: np.ndarray, z: np.ndarray, k: int) -> dict[str, dict]:
    """Part (a) on one version's test data: {row: {column: value}}."""
    models = appendix_f_models(t.A, t.noise_variance)
    codes = np.stack([exact_posterior(A, t.b, t.noise_variance, x)[0].numpy() for A in models.values()])
    scores = disentanglement_scores(codes, z, k)
    return {MODEL_ROWS[name]: {LOG_PX: float(log_marginal_likelihood(A, t.b, t.noise_variance, x).mean()),
                               ELBO: float(optimal_mean_field_elbo(A, t.b, t.noise_variance, x).mean()),
                               MIG: float(scores["mig"][i]), MIG_NATS: float(scores["mig_nats"][i])}
            for i, (name, A) in enumerate(models.items())}


def trained_values(settings: dict, kept: pd.DataFrame, outdir: Path, test: dict[int, tuple]) -> dict[str, list[dict]]:
    """Part (b): {row: one {"version": v, column: value} per version's kept restart}.  test[v] = (x, z)."""
    out: dict[str, list[dict]] = {}
    for setting in grid.experiment_settings(settings, "disentangle"):
        row = method_row(setting.method, setting.samples)
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


def disentanglement_cells(versions: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (tables.COLUMNS): mean and sd over versions of each row's columns."""
    cells = []
    for row, frame in versions.groupby("row", sort=False):
        columns = (LOG_PX, ELBO, MIG, MIG_NATS) + ((BOUND,) if frame[BOUND].notna().any() else ())
        cells += [cell(DISENTANGLEMENT_TABLE, row, column, frame[column]) for column in columns]
    return pd.DataFrame(cells, columns=COLUMNS)


def caption(settings: dict) -> str:
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
    write_bytes(out_csv, cells.to_csv(index=False).encode())
    write_bytes(Path(out_csv).with_name(f"{DISENTANGLEMENT_VERSIONS}.csv"), versions.to_csv(index=False).encode())
    tex = to_latex(cells, caption(settings), f"tab:{DISENTANGLEMENT_TABLE}")
    write_bytes(Path(out_csv).with_suffix(".tex"), tex.encode())
