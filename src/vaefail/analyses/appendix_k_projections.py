"""The projections appendix K compares, M(x) = f(mu(x)) (analyses.projection), each with
its identity (a Candidate; None and a note where its model does not exist), and the test
points they are compared on.  Data follow eq. 40, x = f_GT(z) + eps, eps ~ N(0, sigma^2 I_D);
the models are those the workflow trains:

  latent        the 5-D embeddings of Figure-8 and Clusters (Table 2): VAE and IWAE with
                K in latent_dims and sigma^2 learned per dimension;
  noise         Spiral-Dots, VAE with sigma^2 learned jointly (Theorem 2);
  unsupervised  Spiral-Dots, VAE with sigma^2 fixed at the truth (the matched model).

and the ground truth f_GT (the surrogate decoder that generated the data) with three encoders:

  "truth"                  the exact posterior mean E[z | x] under the true sigma^2
                           (projection.posterior_mean_encoder): the true model's M;
  "truth (nearest point)"  the orthogonal projection onto the true manifold, f_GT(argmin_z
                           |x - f_GT(z)|) (projection.nearest_point_encoder), the sigma^2 -> 0
                           limit of the former and Figure 5a's black arrow;
  "truth (phi_GT)"         the amortised encoder phi_GT the workflow fits to the true decoder
                           (jobs.gt_encoders; only where restarts_gt > 0).

and no defence (the identity).  Models are loaded through engine.ensembles (load_member, and
load_ground_truth for phi_GT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..catalogue import method_legend
from ..data.datasets import example
from ..data.surrogate import GroundTruthDecoder
from ..engine.ensembles import load_ground_truth, load_member
from ..files import load_npz
from . import projection as PJ
from .appendix_k_geometry import DTYPE, Plane, plane_of
from .selected import selected_row, selected_stem

VERSION = 0                         # the data version of the attack and of Figure 5
TRUTH_GRID = (-6.0, 6.0, 1201)      # quadrature grid of the exact posterior mean E[z | x]
NEAREST_GRID = (-6.0, 6.0, 4001)    # search grid of the nearest point on the true manifold
NEAREST = "truth (nearest point)"
NO_DEFENCE = "no defence (identity)"


@dataclass
class Candidate:
    """One projection of the tables: its identity, and its projector (None with a note if absent)."""

    dataset: str
    model: str
    experiment: str
    method: str
    setting: str
    latent_dim: float
    sigma2_mode: str
    version: int
    restart: float = math.nan
    init: str = ""
    sigma2: np.ndarray = field(default_factory=lambda: np.array([np.nan]))
    project: Callable | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.project is not None


@dataclass
class TruthData:
    dataset: str
    decoder: GroundTruthDecoder
    sigma2: float
    plane: Plane


def truth_of(outdir, dataset: str) -> TruthData:
    ex = example(dataset)
    decoder = GroundTruthDecoder(Path(outdir) / grid.surrogate_path(ex.base), ex.embedded)
    return TruthData(dataset, decoder, ex.noise_variance, plane_of(dataset))


def truth_projector(truth: TruthData) -> Callable:
    """M_GT(x) = f_GT(E[z | x]) with the exact posterior mean under the true sigma^2."""
    encoder = PJ.posterior_mean_encoder(truth.decoder, truth.sigma2, 1, grid=torch.linspace(*TRUTH_GRID, dtype=DTYPE))
    return PJ.decoder_projector(truth.decoder, encoder)


def nearest_point_projector(truth: TruthData) -> Callable:
    """The orthogonal projection onto the true manifold, f_GT(argmin_z |x - f_GT(z)|)
    (projection.nearest_point_encoder): Figure 5a's black arrow, the sigma^2 -> 0 limit of the
    true model's projection."""
    return PJ.decoder_projector(truth.decoder, PJ.nearest_point_encoder(truth.decoder,
                                                                        torch.linspace(*NEAREST_GRID, dtype=DTYPE)))


def phi_gt_projector(settings: dict, outdir, truth: TruthData, version: int) -> Callable:
    """M(x) = f_GT(mu_phiGT(x)): the true decoder with the encoder fitted to it (jobs.gt_encoders)."""
    model = load_ground_truth(truth.decoder, Path(outdir) / grid.gt_encoder_path(truth.dataset, version),
                              example(truth.dataset).data_dim, settings["hidden_layers"], truth.sigma2, dtype=DTYPE)
    return PJ.model_projector(model)


def uses_phi_gt(settings: dict) -> bool:
    """Whether the workflow fits phi_GT (it does when any restart starts at the ground truth)."""
    return settings["restarts_gt"] > 0


def selected_candidate(outdir, table: pd.DataFrame, experiment: str, dataset: str, method: str,
                       version: int, latent_dim: int, label: str) -> Candidate:
    """The selected restart of (experiment, dataset, method, K, version) with its projector,
    or a Candidate with a note saying why there is none."""
    sel = selected_row(table, experiment, dataset, method, version, latent_dim)
    mode = grid.Setting(experiment, method, latent_dim=latent_dim).sigma2_mode
    if sel.row is None:
        return Candidate(dataset, label, experiment, method, "", latent_dim, mode, version, note=sel.note)
    row = sel.row
    cand = Candidate(dataset, label, experiment, method, str(row["setting"]), latent_dim, mode, version,
                     restart=int(row["restart"]), init=str(row.get("init", "")))
    stem = selected_stem(experiment, row, version)
    path = Path(outdir) / f"{stem}.pt"
    if not path.exists():
        cand.note = f"weights missing: {stem}.pt"
        return cand
    model = load_member(path)
    with torch.no_grad():
        cand.sigma2 = model.log_sigma2[0].reshape(-1).exp().numpy()
    cand.project = PJ.model_projector(model)
    return cand


def model_label(method: str, latent_dim: int | None = None, sigma2_mode: str | None = None) -> str:
    name = method_legend(method)
    if latent_dim is not None:
        name += f" K={latent_dim}"
    if sigma2_mode is not None:
        name += f" (sigma^2 {sigma2_mode})"
    return name


def truth_candidates(settings: dict, outdir, truth: TruthData, version: int) -> list[Candidate]:
    ex = example(truth.dataset)
    s2 = np.full(ex.data_dim, truth.sigma2)
    out = [Candidate(truth.dataset, "truth", "truth", "truth", "exact posterior mean", 1, "truth", version,
                     sigma2=s2, project=truth_projector(truth)),
           Candidate(truth.dataset, NEAREST, "truth", "truth", "nearest point", 1, "truth", version,
                     sigma2=np.zeros(ex.data_dim), project=nearest_point_projector(truth))]
    if uses_phi_gt(settings):
        path = Path(outdir) / grid.gt_encoder_path(truth.dataset, version)
        cand = Candidate(truth.dataset, "truth (phi_GT)", "truth", "truth", "fitted encoder phi_GT", 1, "truth",
                         version, sigma2=s2)
        if path.exists():
            cand.project = phi_gt_projector(settings, outdir, truth, version)
        else:
            cand.note = f"missing: {grid.gt_encoder_path(truth.dataset, version)}"
        out.append(cand)
    return out


def latent_candidates(settings: dict, outdir, table: pd.DataFrame, dataset: str, version: int) -> list[Candidate]:
    return [selected_candidate(outdir, table, "latent", dataset, method, version, k, model_label(method, k))
            for method in ("vae", "iwae") for k in settings["latent_dims"]]


def noise_candidates(settings: dict, outdir, tables: dict, version: int) -> list[Candidate]:
    """Spiral-Dots: the VAE with sigma^2 learned (noise) beside the VAE with sigma^2 fixed (unsupervised)."""
    dataset = settings["noise_dataset"]
    out = [selected_candidate(outdir, tables["noise"], "noise", dataset, "vae", version, 1,
                              model_label("vae", sigma2_mode="learned"))]
    if dataset in grid.experiment_datasets(settings, "unsupervised"):
        out.append(selected_candidate(outdir, tables["unsupervised"], "unsupervised", dataset, "vae", version, 1,
                                      model_label("vae", sigma2_mode="fixed")))
    return out


def load_test_points(outdir, truth: TruthData, version: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z (n, 1), clean f_GT(z) (n, D), x (n, D)) of a version's test split."""
    data = load_npz(Path(outdir) / grid.data_path(truth.dataset, version))
    z = torch.as_tensor(data["z_test"], dtype=DTYPE).reshape(-1, 1)
    with torch.no_grad():
        clean = truth.decoder(z)
    return z, clean, torch.as_tensor(data["x_test"], dtype=DTYPE)


def identity_candidate(dataset: str, data_dim: int) -> Candidate:
    """No defence: the projection of a K = D model with sigma^2 -> 0."""
    return Candidate(dataset, NO_DEFENCE, "none", "identity", "", data_dim, "none", VERSION,
                     sigma2=np.zeros(1), project=PJ.identity_projector)
