"""Appendix K and Figure 5 in the workflow's terms: does projecting onto a learned manifold
remove the noise, and does it defend a classifier against small perturbations?

The projection of a model is M(x) = f_theta(mu_phi(x)) (vaefail.projection).  Data follow
eq. 40, x = f_GT(z) + eps, eps ~ N(0, sigma^2 I_D); the models are those the workflow trains:

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
                           (gt_encoders.fit_gt_encoders; only where restarts_gt > 0).

f_GT(E[z | x]) is not a good denoiser where the true posterior is multimodal: it averages z
over the modes and lands between them (Figure-8 near its crossing; Clusters, whose first and
last clusters lie 1.4 sigma apart in 5-D, so that the posterior of a point in one puts mass
on both; a point on one of Spiral-Dots' steep links).  The nearest point is the geometric projection.

Three results:

denoising_table  for test points x = f_GT(z) + eps of every data version,
                 E||M(x) - f_GT(z)||^2 against E||x - f_GT(z)||^2 = D sigma^2 (their ratio: 0 a
                 perfect denoiser, about K/D for the truth at small noise -- it keeps the noise
                 along the manifold -- and 1 for no projection).
attack_table     L2 attacks on a classifier behind each projection (below), success rate at
                 each budget |eta|, on the 5-D data sets (version 0).
draw_figure5     Figure 5: (a) an adversarial example and its projections, (b) a uniform grid
                 projected by the truth, a matched and a mismatched model, (c) the success
                 rates, (d) the noise each projection leaves against its learned sigma^2.

The classifier of the attack.  Appendix K's classifier is a *learned* one: right on the
true manifold (its labels are y = g(f_GT(z)), eq. 40) and arbitrary off it, so that a
perturbation off the manifold can cross its boundary (the orange line of Figure 5).  The 5-D
data make this exact: the true manifold lies in the 2-D plane spanned by the rows of
datasets.EMBEDDING, and every direction off that plane is pure noise.  With Pi the orthogonal
projection onto the plane, Q (D, 2) an orthonormal basis of it and N2 (D, 2) two orthonormal
directions off it (the first two of the right-singular vectors of EMBEDDING that span its
null space, signs fixed), the classifier is

    g(x) = g_plane(S x),   S = Q Q^T + gain * Q N2^T,

i.e. g_plane of the in-plane part of x plus `attack_gain` times its off-plane part (in N2)
turned into the plane.  On the plane g = g_plane, the true classifier; off it a step of
length r moves the point the classifier sees by gain * r, so without a defence a point at
in-plane distance d from the boundary falls with |eta| ~ d / gain, while behind a projection
that removes the off-plane part the attacker must move the point along the plane, |eta| ~ d.
gain = 0 is a classifier that ignores the noise directions (no defence needed).  g_plane:

  Figure-8  the sign of x_1 in the example's own 2-D coordinates (a half-space through the
            lemniscate's crossing point): on the manifold this is exactly the sign of z
            (z < 0 traces the left lobe, z > 0 the right one, z = 0 is the crossing), and the
            boundary crosses the manifold where its density is highest (z near 0), so the
            attack reaches many points.
  Clusters  the nearest true cluster centre: the centres are the means of f_GT(z) over each
            flat stretch of the staircase t(u(z)) (eq. 36), i.e. the cluster of Clusters;
            points on the sparse links are labelled by the nearer centre.
  other     (any other example among latent_datasets) a half-space through f_GT(0)
            perpendicular to the manifold's tangent there: the sign of z near z = 0.

Spiral-Dots (2-D) is in the denoising table and Figure 5b but not in the attack: in 2-D no
direction is off the manifold everywhere, so there is no learned classifier of this kind.

Gradient attacks and piecewise-constant projections: where a projection is flat in x (a
cluster of Clusters, a dot of Spiral-Dots, a decoder's flat stretch), its gradient vanishes
and the attack relies on its random starts; success rates are what the attack finds (lower
bounds on what an attacker can do), for every projection alike.

Randomness (test points are the data files'; attack restarts) comes from generators seeded
from settings["seed"], so the tables and the figure are reproducible.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from .. import grid  # noqa: E402
from ..catalogue import APPENDIX_K_POINTS, DATASET_TITLES, method_legend  # noqa: E402
from ..engine.ensembles import load_member  # noqa: E402
from ..report.figures import common as FIG  # noqa: E402
from . import projection as PJ  # noqa: E402
from ..data.datasets import EMBEDDING, example  # noqa: E402
from ..files import load_npz, load_weights, write_bytes  # noqa: E402
from ..models.vae import VAEEnsemble  # noqa: E402
from ..randomness import derive_seed  # noqa: E402
from ..data.surrogate import GroundTruthDecoder  # noqa: E402

log = logging.getLogger(__name__)

DTYPE = torch.float64
VERSION = 0                         # the data version of the attack and of Figure 5

TRUTH_GRID = (-6.0, 6.0, 1201)      # quadrature grid of the exact posterior mean E[z | x]
NEAREST_GRID = (-6.0, 6.0, 4001)    # search grid of the nearest point on the true manifold
NEAREST = "truth (nearest point)"
FIGURE_GRID_POINTS = 15             # Figure 5b: points per axis of the uniform grid of x
EXAMPLE_CANDIDATES = 40             # Figure 5a: test points searched for the example drawn

DENOISING_COLUMNS = ["dataset", "model", "experiment", "method", "setting", "latent_dim", "sigma2_mode",
                     "version", "restart", "init", "sigma2_learned", "sigma2_learned_min", "sigma2_learned_max",
                     "sigma2_true", "data_dim", "noise", "observed_noise", "projection_error", "ratio",
                     "n_points", "note"]
POINT_COLUMNS = ["dataset", "model", "point", "correct", "minimal_budget_in_sigma"]
ATTACK_COLUMNS = ["dataset", "classifier", "attack_gain", "model", "experiment", "method", "setting",
                  "latent_dim", "sigma2_learned", "sigma2_true", "version", "restart", "denoising_ratio",
                  "budget_in_sigma", "budget", "n_points", "n_correct", "clean_accuracy", "success_rate",
                  "robust_accuracy", "note"]


# --- geometry of the 5-D embedding -------------------------------------------------------
@dataclass(frozen=True)
class Plane:
    """The plane of the true manifold in x-space: Q (D, 2) an orthonormal basis, N (D, D - 2)
    an orthonormal basis of the directions off it, and `to_2d` (D, 2), x -> the example's own
    2-D coordinates of the orthogonal projection of x onto the plane (the pseudo-inverse of
    the embedding; the identity for 2-D data)."""

    Q: torch.Tensor
    N: torch.Tensor
    to_2d: torch.Tensor
    from_2d: torch.Tensor

    @property
    def D(self) -> int:
        return self.Q.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Pi x: the orthogonal projection onto the plane."""
        return (x @ self.Q) @ self.Q.T

    def coords(self, x) -> np.ndarray:
        """The example's 2-D coordinates of (the in-plane part of) x (..., D) -> (..., 2)."""
        return (torch.as_tensor(np.asarray(x), dtype=DTYPE) @ self.to_2d).numpy()

    def off_plane_norm(self, x) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x), dtype=DTYPE)
        return (x @ self.N).norm(dim=-1).numpy() if self.N.shape[1] else np.zeros(x.shape[:-1])


def _fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive (SVD signs are arbitrary)."""
    idx = basis.abs().argmax(0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1])])
    return basis * torch.where(signs == 0, torch.ones_like(signs), signs)


def plane_of(dataset: str) -> Plane:
    """The plane of a data set's true manifold: span of EMBEDDING's rows (5-D), or all of x (2-D)."""
    if example(dataset).embedded:
        E = EMBEDDING.to(DTYPE)
        _, _, Vh = torch.linalg.svd(E, full_matrices=True)
        return Plane(_fix_signs(Vh[:2].T.contiguous()), _fix_signs(Vh[2:].T.contiguous()),
                     torch.linalg.pinv(E), E)
    eye = torch.eye(2, dtype=DTYPE)
    return Plane(eye, torch.zeros(2, 0, dtype=DTYPE), eye, eye)


class OffPlaneTiltedClassifier:
    """g(x) = base(S x) with S = Q Q^T + gain Q N2^T (module docstring): the true classifier
    `base` on the plane of the manifold, tilted off it so that an off-plane step of length r
    moves the point it sees by gain * r within the plane.  Has the interface of the
    classifiers of vaefail.projection (call -> labels, margin(x, y) > 0 iff classified y)."""

    def __init__(self, base, plane: Plane, gain: float):
        self.base, self.plane, self.gain = base, plane, float(gain)
        S = plane.Q @ plane.Q.T
        if plane.N.shape[1] >= 2 and gain:
            S = S + self.gain * plane.Q @ plane.N[:, :2].T
        elif plane.N.shape[1] == 0:
            S = torch.eye(plane.D, dtype=DTYPE)
        self.S = S

    def seen(self, x: torch.Tensor) -> torch.Tensor:
        """S x: the in-plane point the classifier classifies."""
        return x @ self.S.T.to(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.seen(x))

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.margin(self.seen(x), y)

    def off_plane_partner(self, direction: torch.Tensor) -> torch.Tensor:
        """For an in-plane unit vector w, the off-plane unit vector n with S n = gain w."""
        if self.plane.N.shape[1] < 2:
            return torch.zeros_like(direction)
        return self.plane.N[:, :2] @ (self.plane.Q.T @ direction)


def cluster_index(z: torch.Tensor) -> torch.Tensor:
    """The flat stretch of the Clusters staircase t(u(z)) (eq. 36) that z falls on, 0..3."""
    u = 2 * math.pi / (1 + torch.exp(-0.5 * math.pi * z.reshape(-1)))
    return torch.floor((u + 1) / 2).long()


def prior_quantiles(n: int = 4001) -> torch.Tensor:
    """z at n equally spaced quantiles of N(0, 1), (n, 1): prior means by equal weights."""
    p = (torch.arange(n, dtype=DTYPE) + 0.5) / n
    return (math.sqrt(2) * torch.special.erfinv(2 * p - 1)).unsqueeze(-1)


def plane_classifier(dataset: str, decoder: Callable, plane: Plane):
    """(g_plane, description): the true classifier on the plane of the manifold (module docstring)."""
    base = example(dataset).base
    if base == "figure-8":
        return PJ.HalfSpaceClassifier(plane.to_2d[:, 0], 0.0), "sign of x_1 (= sign of z on the manifold)"
    if base == "clusters":
        return (PJ.NearestCentreClassifier.class_means(decoder, cluster_index, prior_quantiles()),
                "nearest true cluster centre")
    off = plane.N[:, 0] if plane.N.shape[1] else None
    return (PJ.HalfSpaceClassifier.tilted(decoder, 0.0, 0.0, off_manifold=off),
            "half-space through f(0) normal to the manifold (sign of z near 0)")


# --- loading models ----------------------------------------------------------------------
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
    """M(x) = f_GT(mu_phiGT(x)): the true decoder with the encoder fitted to it (gt_encoders.fit_gt_encoders)."""
    ex = example(truth.dataset)
    model = VAEEnsemble(ex.data_dim, 1, settings["hidden_layers"], 1, "fixed", dtype=DTYPE)
    encoder = load_weights(Path(outdir) / grid.gt_encoder_path(truth.dataset, version))["encoder"]
    with torch.no_grad():
        for name, value in truth.decoder.decoder_weights().items():
            model.decoder[name][0] = value.to(DTYPE)
        for name, value in encoder.items():
            model.encoder[name][0] = value.to(DTYPE)
    model.set_sigma2(torch.tensor(truth.sigma2, dtype=DTYPE))
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return PJ.model_projector(model)


def uses_phi_gt(settings: dict) -> bool:
    """Whether the workflow fits phi_GT (it does when any restart starts at the ground truth)."""
    return settings["restarts_gt"] > 0


def selected_candidate(outdir, table: pd.DataFrame, experiment: str, dataset: str, method: str,
                       version: int, latent_dim: int, label: str) -> Candidate:
    """The selected restart of (experiment, dataset, method, K, version) with its projector,
    or a Candidate with a note saying why there is none."""
    sel = FIG.selected_row(table, experiment, dataset, method, version, latent_dim)
    mode = grid.Setting(experiment, method, latent_dim=latent_dim).sigma2_mode
    if sel.row is None:
        return Candidate(dataset, label, experiment, method, "", latent_dim, mode, version, note=sel.note)
    row = sel.row
    cand = Candidate(dataset, label, experiment, method, str(row["setting"]), latent_dim, mode, version,
                     restart=int(row["restart"]), init=str(row.get("init", "")))
    stem = FIG.selected_stem(experiment, row, version)
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


# --- the denoising table ------------------------------------------------------------------
def denoising_datasets(settings: dict) -> list[str]:
    return grid.appendix_k_datasets(settings)


def _sigma2_columns(c: Candidate) -> dict:
    s2 = np.asarray(c.sigma2, dtype=float)
    return {"sigma2_learned": float(s2.mean()), "sigma2_learned_min": float(s2.min()),
            "sigma2_learned_max": float(s2.max())}


def denoising_rows(settings: dict, outdir, truth: TruthData, candidates: list[Candidate], version: int) -> list[dict]:
    _, clean, x = load_test_points(outdir, truth, version)
    rows = []
    for c in candidates:
        row = {"dataset": truth.dataset, "model": c.model, "experiment": c.experiment, "method": c.method,
               "setting": c.setting, "latent_dim": c.latent_dim, "sigma2_mode": c.sigma2_mode,
               "version": version, "restart": c.restart, "init": c.init, **_sigma2_columns(c),
               "sigma2_true": truth.sigma2, "data_dim": x.shape[-1], "n_points": x.shape[0], "note": c.note}
        noise = truth.sigma2 * x.shape[-1]
        row.update(noise=noise, observed_noise=float(((x - clean) ** 2).sum(-1).mean()))
        if c.ok:
            result = PJ.denoising(c.project, clean, x, truth.sigma2)
            row.update(projection_error=float(result.projected_error[0]), ratio=float(result.ratio[0]))
        else:
            row.update(projection_error=math.nan, ratio=math.nan)
        rows.append(row)
    return rows


def denoising_table(settings: dict, outdir) -> pd.DataFrame:
    """One row per (data set, model, version): the noise its projection leaves on that
    version's test points, E||M(x) - f_GT(z)||^2 (`projection_error`), against the noise
    D sigma_true^2 (`noise`; `observed_noise` its value on these points) and their `ratio`.

    Data sets: the latent experiment's (5-D Figure-8, Clusters) with the truth, phi_GT and the
    selected VAE and IWAE of every K; the noise experiment's (Spiral-Dots) with the truth,
    phi_GT, the noise experiment's VAE (sigma^2 learned) and the unsupervised experiment's
    selected VAE (sigma^2 fixed at the truth).  sigma2_learned: the model's sigma^2, mean over
    dimensions (min, max beside it; the truth's own for the truth); latent_dim: its K.  A
    selected model that does not exist has NaN errors and a note."""
    tables = {e: FIG.read_selected(outdir, e) for e in ("latent", "noise", "unsupervised")}
    latent = grid.experiment_datasets(settings, "latent")
    rows = []
    for dataset in denoising_datasets(settings):
        truth = truth_of(outdir, dataset)
        for version in range(grid.n_versions(settings, "latent")):
            cands = truth_candidates(settings, outdir, truth, version)
            if dataset in latent:
                cands += latent_candidates(settings, outdir, tables["latent"], dataset, version)
            if dataset == settings["noise_dataset"]:
                cands += noise_candidates(settings, outdir, tables, version)
            rows += denoising_rows(settings, outdir, truth, cands, version)
    return pd.DataFrame(rows, columns=DENOISING_COLUMNS)


# --- the attack table ---------------------------------------------------------------------
@dataclass
class AttackSetup:
    """The classifier and the attacked points of one data set (version 0)."""

    truth: TruthData
    classifier: OffPlaneTiltedClassifier
    description: str
    x: torch.Tensor          # (n, D) attacked test points
    labels: torch.Tensor     # (n,) y = g(f_GT(z))
    budgets: np.ndarray      # absolute |eta|
    budgets_in_sigma: np.ndarray


def attack_setup(settings: dict, outdir, dataset: str, truth_project: Callable | None = None) -> AttackSetup:
    """The tilted classifier of `dataset`, labels y = g(f_GT(z)) of version 0's test points, and
    the first attack_points of them that g classifies correctly both as they are (no defence)
    and after the orthogonal projection onto the true manifold."""
    truth = truth_of(outdir, dataset)
    base, description = plane_classifier(dataset, truth.decoder, truth.plane)
    gain = float(settings["attack_gain"])
    g = OffPlaneTiltedClassifier(base, truth.plane, gain)
    z, clean, x = load_test_points(outdir, truth, VERSION)
    labels = PJ.manifold_labels(g, truth.decoder, z)
    project = truth_project or nearest_point_projector(truth)
    with torch.no_grad():
        ok = (g(x) == labels) & (g(project(x.unsqueeze(0))[0]) == labels)
    keep = torch.nonzero(ok).reshape(-1)[: int(settings["attack_points"])]
    relative = np.sort(np.asarray(settings["attack_budgets"], dtype=float))
    return AttackSetup(truth, g, f"{description}, tilted off the plane with gain {gain:g}", x[keep], labels[keep],
                       relative * math.sqrt(truth.sigma2), relative)


def identity_candidate(dataset: str, data_dim: int) -> Candidate:
    """No defence: the projection of a K = D model with sigma^2 -> 0."""
    return Candidate(dataset, "no defence (identity)", "none", "identity", "", data_dim, "none", VERSION,
                     sigma2=np.zeros(1), project=PJ.identity_projector)


def attack_rows(settings: dict, setup: AttackSetup, candidates: list[Candidate], ratios: dict,
                points: list | None = None) -> list[dict]:
    """The attack table's rows of one data set; with `points` (a list), also one row per
    (model, attacked point) appended to it: whether the projection classifies the point
    correctly without attack and the smallest budget (in units of the true sigma) that flipped
    it (inf: none did) -- the paired outcomes the claims compare between projections."""
    rows = []
    steps, restarts = int(settings["attack_steps"]), int(settings["attack_restarts"])
    n = setup.x.shape[0]
    for c in candidates:
        head = {"dataset": setup.truth.dataset, "classifier": setup.description,
                "attack_gain": float(settings["attack_gain"]), "model": c.model,
                "experiment": c.experiment, "method": c.method, "setting": c.setting, "latent_dim": c.latent_dim,
                "sigma2_learned": float(np.mean(c.sigma2)), "sigma2_true": setup.truth.sigma2, "version": VERSION,
                "restart": c.restart, "denoising_ratio": ratios.get(c.model, math.nan), "n_points": n,
                "note": c.note}
        if c.ok and n:
            gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "appendix-k", "attack",
                                                            setup.truth.dataset, c.model))
            result = PJ.attack(c.project, setup.classifier, setup.x, setup.labels, setup.budgets, steps, restarts,
                               generator=gen)
            minimal = result.minimal_budget[0]
            n_correct = int(np.isfinite(minimal).sum() + np.isinf(minimal).sum())
            if points is not None:
                sigma = math.sqrt(setup.truth.sigma2)
                points += [{"dataset": setup.truth.dataset, "model": c.model, "point": i,
                            "correct": bool(not np.isnan(m)), "minimal_budget_in_sigma": float(m) / sigma}
                           for i, m in enumerate(minimal)]
        for j, (b, rel) in enumerate(zip(setup.budgets, setup.budgets_in_sigma, strict=True)):
            row = dict(head, budget=float(b), budget_in_sigma=float(rel))
            if c.ok and n:
                row.update(n_correct=n_correct, clean_accuracy=float(result.clean_accuracy[0]),
                           success_rate=float(result.success_rate[0, j]),
                           robust_accuracy=float(np.mean(np.nan_to_num(minimal, nan=-1.0) > b)))
            else:
                row.update(n_correct=0, clean_accuracy=math.nan, success_rate=math.nan, robust_accuracy=math.nan,
                           note=c.note or "no test point to attack")
            rows.append(row)
    return rows


def attack_datasets(settings: dict) -> list[str]:
    """The data sets of the attack: the 5-D ones (see the module docstring)."""
    return [d for d in grid.experiment_datasets(settings, "latent") if example(d).embedded]


def attack_table(settings: dict, outdir, denoising: pd.DataFrame | None = None,
                 points: list | None = None) -> pd.DataFrame:
    """Success rate of an L2 attack at each budget, one row per (data set, model, budget).

    For each 5-D data set of the latent experiment, the classifier of the module docstring
    (the true classifier on the plane of the manifold, tilted off it by attack_gain), labels
    y = g(f_GT(z)), and the first attack_points test points of version 0 that g classifies
    correctly with no defence and behind the truth's projection.  Defences: the truth's
    projection (exact posterior mean; phi_GT where fitted), each selected VAE and IWAE of the
    latent experiment (K, learned sigma^2 beside each), and none (identity; K = D, sigma^2 = 0).
    Attack: projection.attack, `attack_steps` normalised gradient steps of the margin through
    M from attack_restarts starts (eta = 0 and random), at budgets |eta| = attack_budgets x the
    true sigma (budget_in_sigma; budget is the absolute norm).

    success_rate: the fraction of the points g o M classifies correctly without attack
    (clean_accuracy of n_points; n_correct of them) whose label the attack flips within the
    budget; robust_accuracy: the fraction of all n_points still classified correctly under
    attack (a projection that misclassifies clean points loses them here).  A projection that
    misclassifies every point (n_correct = 0) has success_rate NaN (nothing to attack) and
    robust_accuracy 0; a selected model that does not exist has NaN and a note.
    denoising_ratio: the model's ratio on version 0 (denoising_table), when given."""
    table = FIG.read_selected(outdir, "latent")
    ratios_by = {}
    if denoising is not None and len(denoising):
        here = denoising[denoising["version"] == VERSION]
        ratios_by = {(r.dataset, r.model): r.ratio for r in here.itertuples()}
    rows = []
    for dataset in attack_datasets(settings):
        setup = attack_setup(settings, outdir, dataset)
        cands = truth_candidates(settings, outdir, setup.truth, VERSION)
        cands += latent_candidates(settings, outdir, table, dataset, VERSION)
        cands.append(identity_candidate(dataset, setup.truth.plane.D))
        ratios = {m: v for (d, m), v in ratios_by.items() if d == dataset}
        ratios.setdefault("no defence (identity)", 1.0)
        rows += attack_rows(settings, setup, cands, ratios, points)
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS)


# --- Figure 5 -----------------------------------------------------------------------------
MODEL_STYLE = {"truth": dict(color="0.45", lw=2.0), "truth (phi_GT)": dict(color="0.45", lw=1.2, ls="--"),
               NEAREST: dict(color="k", lw=2.0),
               "no defence (identity)": dict(color="tab:red", lw=1.6, ls=":")}
DATASET_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown")
K_MARKERS = {1: "o", 2: "s", 3: "^", 4: "D", 5: "P"}


def _style(model: str, latent_dim, dims: list[int]) -> dict:
    if model in MODEL_STYLE:
        return dict(MODEL_STYLE[model])
    k = int(latent_dim) if np.isfinite(latent_dim) else 1
    position = dims.index(k) / max(len(dims) - 1, 1) if k in dims else 0.5
    colour = plt.get_cmap("viridis")(0.1 + 0.75 * position)
    return dict(color=colour, lw=1.4, ls="-" if model.startswith("VAE") else "--")


def manifold_curve(truth: TruthData, n: int = 2001) -> np.ndarray:
    """The true manifold f_GT(z), z in [-4, 4], in the example's 2-D coordinates."""
    z = torch.linspace(-4.0, 4.0, n, dtype=DTYPE).unsqueeze(-1)
    with torch.no_grad():
        return truth.plane.coords(truth.decoder(z).numpy())


def figure_grid(truth: TruthData, x_test: torch.Tensor, points: int = FIGURE_GRID_POINTS):
    """A uniform points x points grid over the test data's range in the example's 2-D
    coordinates, placed in the plane of the manifold: (grid in x-space (G, D), its 2-D coords,
    the axis limits)."""
    xy = truth.plane.coords(x_test.numpy())
    xlim, ylim = FIG.data_limits(xy, pad=0.02)
    u = torch.linspace(*xlim, points, dtype=DTYPE)
    v = torch.linspace(*ylim, points, dtype=DTYPE)
    uv = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
    pad_x, pad_y = 0.04 * (xlim[1] - xlim[0]), 0.04 * (ylim[1] - ylim[0])
    limits = ((xlim[0] - pad_x, xlim[1] + pad_x), (ylim[0] - pad_y, ylim[1] + pad_y))
    return uv @ truth.plane.from_2d, uv.numpy(), limits


def _fmt_s2(c: Candidate) -> str:
    return FIG.fmt_sigma2(np.asarray(c.sigma2).mean())


@dataclass
class ExampleAttack:
    """Figure 5a's example: the point x, its label, eta against the undefended classifier and
    x + eta's projections (name -> (D,)) with the labels g gives them."""

    x: np.ndarray
    label: int
    eta: np.ndarray
    budget: float
    projections: dict
    labels: dict


def example_attack(settings: dict, setup: AttackSetup, projectors: dict) -> ExampleAttack | None:
    """Attack g itself (no defence) on the first EXAMPLE_CANDIDATES attacked points and pick one
    to draw: among the points whose perturbation the orthogonal projection onto the true
    manifold (projectors["nearest"]) undoes but the mismatched model's does not -- failing
    that, among those the projection undoes, or among all successful ones -- the point with
    the median successful budget (a typical point rather than one on the boundary).  None if
    no attack succeeded."""
    n = min(EXAMPLE_CANDIDATES, setup.x.shape[0])
    if n == 0:
        return None
    gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "appendix-k", "figure5", setup.truth.dataset))
    out = PJ.adversarial_example(setup.classifier, setup.x[:n], setup.labels[:n].numpy(), setup.budgets, projectors,
                                 attacked=None, steps=int(settings["attack_steps"]),
                                 restarts=int(settings["attack_restarts"]), generator=gen)
    found = np.isfinite(out["minimal_budget"])
    if not found.any():
        return None
    y = out["label"]
    truth_ok = out["nearest_label"] == y
    mismatched_bad = out["mismatched_label"] != y if "mismatched_label" in out else np.zeros(n, bool)
    for mask in (found & truth_ok & mismatched_bad, found & truth_ok, found):
        if mask.any():                      # the median budget: a typical point, not one on the boundary
            order = np.flatnonzero(mask)[np.argsort(out["minimal_budget"][mask], kind="stable")]
            i = int(order[(len(order) - 1) // 2])
            break
    names = list(projectors)
    return ExampleAttack(out["x"][i], int(y[i]), out["eta"][i], float(out["minimal_budget"][i]),
                         {k: out[f"{k}_projection"][i] for k in names}, {k: int(out[f"{k}_label"][i]) for k in names})


def draw_slice_panel(ax, setup: AttackSetup, ex: ExampleAttack | None, names: dict) -> None:
    """Figure 5a in the slice of x-space through the example that shows the attack: the
    horizontal axis is the in-plane direction w the perturbation pushes the classifier's view
    along (w = S eta / |S eta|), the vertical one the off-plane direction n with S n = gain w;
    the plane of the true manifold is the line n . x = 0.  Shading: the classifier's labels on
    the slice through the in-plane foot of x (its other coordinates dropped)."""
    g, plane = setup.classifier, setup.truth.plane
    if ex is None:
        ax.set_title("(a) adversarial example")
        FIG.empty_panel(ax, "no attack on g succeeded within the largest budget")
        return
    x, eta = torch.as_tensor(ex.x), torch.as_tensor(ex.eta)
    w = g.seen(eta)
    w = w / w.norm() if float(w.norm()) > 0 else plane.Q[:, 0]
    n = g.off_plane_partner(w)
    foot = plane.project(x)

    def ab(y) -> tuple[float, float]:
        y = torch.as_tensor(y)
        return float(y @ w), float(y @ n)

    pts = {"x": ab(x), "x + eta": ab(x + eta), **{k: ab(v) for k, v in ex.projections.items()}}
    a_vals = [p[0] for p in pts.values()]
    b_vals = [p[1] for p in pts.values()] + [0.0]
    span = max(max(a_vals) - min(a_vals), max(b_vals) - min(b_vals), 4 * math.sqrt(setup.truth.sigma2))
    a_mid, b_mid = (max(a_vals) + min(a_vals)) / 2, (max(b_vals) + min(b_vals)) / 2
    alim = (a_mid - 0.75 * span, a_mid + 0.75 * span)
    blim = (b_mid - 0.75 * span, b_mid + 0.75 * span)
    A, B = np.meshgrid(np.linspace(*alim, 241), np.linspace(*blim, 241))
    mesh = (foot + (torch.as_tensor(A)[..., None] - float(foot @ w)) * w + torch.as_tensor(B)[..., None] * n)
    with torch.no_grad():
        labels = g(mesh).numpy()
    ax.contourf(A, B, labels, levels=np.arange(labels.min() - 0.5, labels.max() + 1.5), cmap="Pastel2", alpha=0.6)
    ax.contour(A, B, labels, levels=np.arange(labels.min() + 0.5, labels.max() + 0.5), colors="tab:orange",
               linewidths=1.2)
    ax.axhline(0.0, color="tab:blue", lw=2.0)
    line = labels[np.argmin(np.abs(B[:, 0])), :]
    for j in np.flatnonzero(np.diff(line) != 0):                 # the true boundary on the manifold
        ax.axvline((A[0, j] + A[0, j + 1]) / 2, color="tab:blue", lw=1.2, ls="--")
    ax.plot([], [], color="tab:blue", lw=2.0, label="plane of the true manifold")
    ax.plot([], [], color="tab:blue", lw=1.2, ls="--", label="true boundary (on the manifold)")
    ax.plot([], [], color="tab:orange", lw=1.2, label="classifier's boundary")
    ax.scatter(*pts["x"], marker="*", s=160, color="k", zorder=5, label=f"x (label {ex.label})")
    ax.annotate("", pts["x + eta"], pts["x"], arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.8))
    ax.plot([], [], color="tab:red", lw=1.8, label=f"eta, |eta| = {np.linalg.norm(ex.eta):.3g}")
    colours = {"nearest": "k", "truth": "0.55", "matched": "tab:green", "mismatched": "tab:purple"}
    for key, proj in ex.projections.items():
        ax.annotate("", ab(proj), pts["x + eta"], arrowprops=dict(arrowstyle="->", color=colours.get(key, "0.3"),
                                                                   lw=1.4))
        ax.plot([], [], color=colours.get(key, "0.3"), lw=1.4,
                label=f"M of {names.get(key, key)}: label {ex.labels[key]}")
    ax.set(xlim=alim, ylim=blim, aspect="equal", xlabel="in-plane coordinate along w",
           ylabel="off-plane coordinate along n")
    short = {"nearest": "true manifold", "truth": "truth"}
    verdicts = ", ".join(f"{short.get(k, names.get(k, k))} {'yes' if v == ex.label else 'no'}"
                         for k, v in ex.labels.items())
    ax.set_title(f"(a) {dataset_short(setup.truth.dataset)}: g(x) = {ex.label}, g(x + eta) = {int(g(x + eta))}; "
                 f"restored by\nprojecting onto: {verdicts}", fontsize=8)
    ax.legend(loc="best", fontsize=6, framealpha=0.85)


def dataset_short(dataset: str) -> str:
    ex = example(dataset)
    return DATASET_TITLES.get(ex.base, ex.base) + (" (5-D)" if ex.embedded else "")


def draw_grid_panel(ax, truth: TruthData, x_test: torch.Tensor, name: str, cand: Candidate, title: str,
                    classifier=None, ex: ExampleAttack | None = None, key: str | None = None,
                    ratio: float = math.nan) -> None:
    """Figure 5b: the uniform grid of x (in the plane of the manifold) joined to its projection
    by `cand`, over the test data and the true manifold, in the example's 2-D coordinates."""
    if not cand.ok:
        ax.set_title(title, fontsize=8)
        FIG.empty_panel(ax, cand.note)
        return
    grid_x, grid_2d, (xlim, ylim) = figure_grid(truth, x_test)
    with torch.no_grad():
        projected = cand.project(grid_x.unsqueeze(0))[0]
    proj_2d = truth.plane.coords(projected.numpy())
    xy = truth.plane.coords(x_test.numpy())
    ax.scatter(*xy.T, s=FIG.marker_size(len(xy)) / 2, color=FIG.DATA_COLOUR, alpha=0.25, linewidths=0, zorder=1)
    PJ.plot_projection_panel(ax, manifold_curve(truth), grid_2d, proj_2d)
    if classifier is not None:
        U, V = np.meshgrid(np.linspace(*xlim, 241), np.linspace(*ylim, 241))
        with torch.no_grad():
            labels = classifier(torch.as_tensor(np.stack([U, V], -1)) @ truth.plane.from_2d).numpy()
        ax.contour(U, V, labels, levels=np.arange(labels.min() + 0.5, labels.max() + 0.5), colors="tab:orange",
                   linewidths=0.8, linestyles="-.")
    if ex is not None and key in ex.projections:
        start = truth.plane.coords(ex.x)
        moved = truth.plane.coords(ex.x + ex.eta)
        end = truth.plane.coords(ex.projections[key])
        ax.scatter(*start, marker="*", s=110, color="k", zorder=6)
        ax.annotate("", moved, start, arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5))
        ax.annotate("", end, moved, arrowprops=dict(arrowstyle="->", color="k", lw=1.3))
    shift = float((projected - grid_x).norm(dim=-1).mean())
    off = float(np.mean(truth.plane.off_plane_norm(projected.numpy())))
    extra = f", off-plane |M(x)| = {off:.2g}" if truth.plane.N.shape[1] else ""
    ax.set(xlim=xlim, ylim=ylim, xlabel="$x_1$", ylabel="$x_2$")
    ax.set_title(f"{title}\nK = {cand.latent_dim:g}, $\\sigma^2$ = {_fmt_s2(cand)} (true {truth.sigma2:g}), "
                 f"noise left {ratio:.2f}\nmean |M(x) - x| = {shift:.2g}{extra}", fontsize=8)
    ax.get_legend() and ax.get_legend().remove()


def _mean_ratio(denoising: pd.DataFrame, dataset: str, model: str, version: int | None = VERSION) -> float:
    rows = denoising[(denoising["dataset"] == dataset) & (denoising["model"] == model)]
    if version is not None:
        rows = rows[rows["version"] == version]
    return float(rows["ratio"].mean()) if len(rows) and rows["ratio"].notna().any() else math.nan


def draw_success_panel(ax, attack: pd.DataFrame, dataset: str, dims: list[int]) -> None:
    rows = attack[attack["dataset"] == dataset]
    for model, frame in rows.groupby("model", sort=False):
        if frame["success_rate"].isna().all():
            continue
        first = frame.iloc[0]
        s2 = "" if model == "no defence (identity)" else f", $\\sigma^2$={first['sigma2_learned']:.2g}"
        ax.plot(frame["budget_in_sigma"], frame["success_rate"], marker=".",
                label=f"{model}{s2}", **_style(model, first["latent_dim"], dims))
    ax.set(xlabel="budget |eta| / true $\\sigma$", ylabel="attack success rate", ylim=(-0.03, 1.03))
    n = int(rows["n_points"].max()) if len(rows) else 0
    ax.set_title(f"(c) {dataset_short(dataset)}: L2 attack on g(M(x + eta)), {n} test points\n"
                 f"g: {rows['classifier'].iloc[0] if len(rows) else ''}", fontsize=8)
    ax.legend(loc="lower right", fontsize=6)


def draw_ratio_panel(ax, denoising: pd.DataFrame) -> None:
    """(d): the noise each projection leaves (ratio) against its sigma^2 / the true sigma^2."""
    ok = denoising[denoising["ratio"].notna() & (denoising["sigma2_learned"] > 0)]   # not the sigma^2 -> 0 limit
    for i, (dataset, frame) in enumerate(ok.groupby("dataset", sort=False)):
        colour = DATASET_COLOURS[i % len(DATASET_COLOURS)]
        for r in frame.itertuples():
            rel = r.sigma2_learned / r.sigma2_true
            marker = "*" if r.method == "truth" else K_MARKERS.get(int(r.latent_dim), "o")
            filled = r.method != "iwae"
            ax.scatter(rel, r.ratio, marker=marker, s=60 if marker == "*" else 28,
                       facecolor=colour if filled else "none", edgecolor=colour, linewidths=1.0, alpha=0.85)
        ax.scatter([], [], marker="o", color=colour, label=dataset_short(dataset))
    for k, m in K_MARKERS.items():
        if ok["latent_dim"].eq(k).any():
            ax.scatter([], [], marker=m, facecolor="0.5", edgecolor="0.5", label=f"K = {k}")
    ax.scatter([], [], marker="o", facecolor="none", edgecolor="0.5", label="IWAE (hollow)")
    ax.scatter([], [], marker="*", color="0.5", s=60, label="truth")
    ax.axhline(1.0, color="tab:red", ls=":", lw=1)
    ax.axvline(1.0, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):     # ticks at 1, 2, 5 x 10^k, labelled plainly
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="learned $\\sigma^2$ / true $\\sigma^2$ (mean over dimensions)",
           ylabel="noise left: E|M(x) - f(z)|$^2$ / D$\\sigma^2$")
    ax.set_title("(d) noise left by each projection, every data version\n"
                 "(1 = none removed; dotted red)", fontsize=8)
    ax.legend(loc="best", fontsize=6, ncols=2)


def draw_summary_text(ax, denoising: pd.DataFrame) -> None:
    ax.axis("off")
    lines = ["noise left E|M(x)-f(z)|^2 / D sigma^2", "(mean over versions)", ""]
    for dataset, frame in denoising.groupby("dataset", sort=False):
        lines.append(dataset_short(dataset) + ":")
        for model, rows in frame.groupby("model", sort=False):
            ratio = rows["ratio"].mean()
            s2 = rows["sigma2_learned"].mean()
            lines.append(f"  {model:<24s} {ratio:6.3f}  s2={s2:.3g}" if np.isfinite(ratio)
                         else f"  {model:<24s}   --   ({rows['note'].iloc[0]})")
        lines.append("")
    ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=6, va="top", ha="left", transform=ax.transAxes)


FIGURE5_CAPTION = (
    "Figure 5 (appendix K): projection onto a learned manifold as a defence. "
    "(a) For each 5-D data set, one test point x (star) of version 0, the smallest perturbation eta (red) "
    "found that flips the classifier g without defence, and x + eta projected (arrows) onto the true "
    "manifold (the nearest point, black), by the true model f_GT(E[z|x]) (grey), by the matched model (the "
    "selected VAE with the smallest K, green) and by the mismatched one (the selected VAE with the largest K, "
    "purple); the title says which projections restore the label. Drawn in the slice of x-space spanned by "
    "w (the in-plane direction in which eta moves the point g sees) and n (the off-plane direction that g's "
    "tilt turns into w); the plane of the true manifold is the horizontal line, g's labels are shaded and "
    "its boundary is orange, the true boundary on the manifold is blue dashed. "
    "(b) A uniform grid of x in the plane of the manifold (grey lines join each grid point to its "
    "projection, orange dots) projected by the true model f_GT(E[z|x]), the matched and the mismatched "
    "model, with K, sigma^2, the noise each leaves (denoising table, version 0) and the mean distance it "
    "moves a grid point (and, for 5-D data, the mean off-plane norm of the projections); 5-D data are "
    "drawn in the example's own 2-D coordinates of the orthogonal projection onto the plane spanned by "
    "the rows of the embedding (x -> x pinv(E)); the true manifold is blue, the test data light blue, the "
    "star and arrows the example of (a), and the dash-dotted orange line g's boundary in the plane. For "
    "Spiral-Dots (2-D) the matched model is the VAE with sigma^2 fixed at the truth (unsupervised "
    "experiment) and the mismatched one the VAE with sigma^2 learned jointly (Theorem 2). "
    "(c) Success rate of the L2 attack on g(M(x + eta)) against the budget |eta| in units of the true "
    "sigma, for each projection (and none), on the first attack_points test points that g classifies "
    "correctly with no defence and behind the nearest-point projection. "
    "(d) The noise a projection leaves, E||M(x) - f_GT(z)||^2 / (D sigma^2) on test points, against its "
    "learned sigma^2 relative to the truth, every data version; markers by K, hollow for IWAE, stars for "
    "the truth's encoders (the nearest point, sigma^2 -> 0, is off this axis; it is in the text panel, "
    "which lists every projection's noise left, mean over versions).")


def draw_figure5(settings: dict, outdir, out_stem, attack: pd.DataFrame | None = None,
                 denoising: pd.DataFrame | None = None) -> str:
    """Draw Figure 5 to out_stem + '.pdf' and '.png' (module docstring; FIGURE5_CAPTION says what
    is drawn) and return its caption.  attack/denoising: the tables, computed if not given."""
    denoising = denoising_table(settings, outdir) if denoising is None else denoising
    attack = attack_table(settings, outdir, denoising) if attack is None else attack
    dims = list(settings["latent_dims"])
    five_d = attack_datasets(settings)
    noise_dataset = settings["noise_dataset"]
    tables = {e: FIG.read_selected(outdir, e) for e in ("latent", "noise", "unsupervised")}
    n_rows = len(five_d) + 2
    fig, axes = plt.subplots(n_rows, 4, figsize=(17, 4.3 * n_rows), layout="constrained", squeeze=False)
    for r, dataset in enumerate(five_d):
        setup = attack_setup(settings, outdir, dataset)
        truth_c, nearest_c = truth_candidates(settings, outdir, setup.truth, VERSION)[:2]
        matched = selected_candidate(outdir, tables["latent"], "latent", dataset, "vae", VERSION, min(dims),
                                     model_label("vae", min(dims)))
        mismatched = selected_candidate(outdir, tables["latent"], "latent", dataset, "vae", VERSION, max(dims),
                                        model_label("vae", max(dims)))
        cands = {"truth": truth_c, "matched": matched, "mismatched": mismatched}
        projectors = {"nearest": nearest_c.project, **{k: c.project for k, c in cands.items() if c.ok}}
        ex = example_attack(settings, setup, projectors)
        names = {"nearest": nearest_c.model, **{k: c.model for k, c in cands.items()}}
        draw_slice_panel(axes[r, 0], setup, ex, names)
        _, _, x_test = load_test_points(outdir, setup.truth, VERSION)
        for col, (key, c) in enumerate(cands.items(), start=1):
            what = {"truth": "", "matched": ", matched K", "mismatched": ", largest K"}[key]
            draw_grid_panel(axes[r, col], setup.truth, x_test, key, c,
                            f"(b) {dataset_short(dataset)}: {c.model}{what}",
                            classifier=setup.classifier,
                            ex=ex, key=key, ratio=_mean_ratio(denoising, dataset, c.model))
    # Spiral-Dots: sigma^2 fixed at the truth (matched) vs learned jointly (Theorem 2)
    r = len(five_d)
    truth = truth_of(outdir, noise_dataset)
    _, _, x_test = load_test_points(outdir, truth, VERSION)
    noise_cands = noise_candidates(settings, outdir, tables, VERSION)
    row = [("the truth", truth_candidates(settings, outdir, truth, VERSION)[0])]
    row += [("matched" if "fixed" in c.model else "Theorem 2", c) for c in reversed(noise_cands)]
    draw_summary_text(axes[r, 0], denoising)
    for col in range(1, 4):
        if col - 1 < len(row):
            what, c = row[col - 1]
            label = c.model.replace("sigma^2", "$\\sigma^2$") + ("" if what == "the truth" else f", {what}")
            draw_grid_panel(axes[r, col], truth, x_test, "", c, f"(b) {dataset_short(noise_dataset)}: {label}",
                            ratio=_mean_ratio(denoising, noise_dataset, c.model))
        else:
            axes[r, col].axis("off")
    # the numbers: attack success and noise left
    r += 1
    for col in range(4):
        axes[r, col].axis("off")
    for col, dataset in enumerate(five_d[:2]):
        axes[r, col].axis("on")
        draw_success_panel(axes[r, col], attack, dataset, dims)
    axes[r, 2].axis("on")
    draw_ratio_panel(axes[r, 2], denoising)
    fig.suptitle("Figure 5 (appendix K): projection M(x) = f(mu(x)) onto the learned manifold as a defence; "
                 f"version {VERSION}", fontweight="bold")
    FIG.save(fig, out_stem)
    return FIGURE5_CAPTION


# --- writing ------------------------------------------------------------------------------
def _tex(text: str) -> str:
    text = str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
    return text.replace("phi\\_GT", "$\\phi_{GT}$").replace("sigma^2", "$\\sigma^2$")


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if np.isfinite(value) else "--"


def _fixed(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if np.isfinite(value) else "--"


def _mean_sd(values, digits: int = 3) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if not len(v):
        return "--"
    return f"${v.mean():.{digits}f} \\pm {v.std(ddof=1):.{digits}f}$" if len(v) > 1 else f"${v.mean():.{digits}f}$"


def _booktabs(header: list[str], body: list[list[str]], caption: str, label: str, group_rows: list[int]) -> str:
    lines = ["\\begin{table}[htbp]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
             "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for i, row in enumerate(body):
        if i in group_rows and i:
            lines.append("\\midrule")
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(lines)


def denoising_latex(table: pd.DataFrame, settings: dict) -> str:
    """The denoising table summarised over versions: one line per (data set, model)."""
    header = ["data set / projection", "$K$", "$\\sigma^2$ (learned)", "$D\\sigma_{true}^2$",
              "$E\\|M(x) - f_{GT}(z)\\|^2$", "ratio", "versions"]
    body, groups = [], []
    for dataset, frame in table.groupby("dataset", sort=False):
        groups.append(len(body))
        for model, rows in frame.groupby("model", sort=False):
            ok = rows["ratio"].notna()
            body.append([f"{_tex(dataset_short(dataset))}: {_tex(model)}", _num(rows["latent_dim"].iloc[0]),
                         _num(rows["sigma2_learned"].mean()), _num(rows["noise"].iloc[0]),
                         _mean_sd(rows["projection_error"]), _mean_sd(rows["ratio"]), str(int(ok.sum()))])
    caption = ("\\textbf{Appendix K: the noise a projection removes.} For test points $x = f_{GT}(z) + \\epsilon$ "
               "of each data version, the error of the projection $M(x) = f_\\theta(\\mu_\\phi(x))$ against the "
               "noise $E\\|x - f_{GT}(z)\\|^2 = D\\sigma^2$ and their ratio (0: all noise removed, about $K/D$ for "
               "the exact projection onto the true manifold at small noise, 1: none removed); mean $\\pm$ sd over "
               "data versions. The truth: the true decoder with the exact posterior mean under the true "
               "$\\sigma^2$, with the nearest point on the true manifold (the orthogonal projection, the limit "
               "$\\sigma^2 \\to 0$), or with the encoder $\\phi_{GT}$ fitted to it; $\\sigma^2$ (learned): the "
               "model's, mean over dimensions. "
               "Spiral-Dots: VAE with $\\sigma^2$ learned jointly (Theorem 2) and fixed at the truth.")
    return _booktabs(header, body, caption, "tab:appendix-k-denoising", groups)


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
            body.append([f"{_tex(dataset_short(dataset))}: {_tex(model)}", _num(first["latent_dim"]),
                         _num(first["sigma2_learned"]), _fixed(first["denoising_ratio"]),
                         _fixed(first["clean_accuracy"])] + [_fixed(rate.get(b, math.nan)) for b in budgets])
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
    return _booktabs(header, body, caption, "tab:appendix-k-attack", groups)


def write_table(table: pd.DataFrame, out_csv, latex: str) -> None:
    write_bytes(out_csv, table.to_csv(index=False).encode())
    write_bytes(Path(out_csv).with_suffix(".tex"), latex.encode())


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


