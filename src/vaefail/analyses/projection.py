"""Appendix K: projection onto a learned manifold as a defence against adversarial perturbations.

Data follow eq. 40: z ~ p(z), x = f_GT(z) + eps with eps ~ N(0, sigma^2 I), and labels
y = g(f_GT(z)) from a classifier g that is right by definition on the true manifold and
arbitrary off it.  The defence classifies the projection

    M_{theta,phi}(x) = f_theta(mu_phi(x))                                         (appendix K)

instead of x.  It works when M removes the noise, i.e. moves x back onto the true manifold; a
model with a larger latent space and a smaller sigma^2 than the truth explains the noise by z,
so M barely moves x (Figure 5b) and a perturbation that crosses g's boundary off the manifold
survives the projection.

What is here:
- projections: of a VAEEnsemble (batched over members), of a decoder with any encoder mean
  (e.g. the exact posterior mean on a grid), and the exact one of a linear-Gaussian model;
- the noise a projection removes, E||M(x) - f_GT(z)||^2 against E||x - f_GT(z)||^2 = D sigma^2,
  by Monte Carlo and, for linear-Gaussian models, in closed form;
- classifiers g defined on x-space (a half-space, e.g. one tilted against the manifold as in
  Figure 5; nearest centre, e.g. the clusters of the Clusters example);
- an L2 attack on g o M (projected gradient steps through M, with restarts, batched over points
  and members), its success rate at growing budgets, and the exact minimal budget for a
  half-space classifier behind a linear-Gaussian projection;
- the arrays of Figure 5 (an adversarial example and its projections; a uniform grid of x
  projected by several models), which report.figures.figure5 draws.

A *projector* is a function x (M, N, D) -> M(x) (M, N, D), differentiable in x; a projector
with one member (a ground-truth model) broadcasts against data of M members.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch

from ..evaluation import posteriors as P
from ..models.vae import VAEEnsemble
from .disentanglement import exact_posterior, posterior_precision

DTYPE = torch.float64
Projector = Callable[[torch.Tensor], torch.Tensor]
Decoder = Callable[[torch.Tensor], torch.Tensor]


def _t(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=DTYPE)
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


# --- projections -------------------------------------------------------------------------
def projection(model: VAEEnsemble, x: torch.Tensor) -> torch.Tensor:
    """M_{theta,phi}(x) = f_theta(mu_phi(x)) of every member (appendix K), differentiable in x.
    x: (N, D) (the same points for every member) or (M, N, D).  Returns (M, N, D) in x's dtype."""
    xm = x.to(device=model.encoder.flat.device, dtype=model.encoder.flat.dtype)
    if xm.dim() == 2 or xm.shape[0] == 1:          # the same points for every member
        xm = xm.expand(model.M, *xm.shape[-2:])
    mu, _ = model.encode(xm)
    return model.decode(mu).to(device=x.device, dtype=x.dtype)


def model_projector(model: VAEEnsemble) -> Projector:
    """The projector of a VAEEnsemble: a trained ensemble, a one-member model loaded from disk,
    or the ground truth built as an ensemble (the surrogate decoder with its fitted encoder)."""
    return partial(projection, model)


def decoder_projector(decoder: Decoder, encoder_mean: Callable[[torch.Tensor], torch.Tensor]) -> Projector:
    """M(x) = f(mu(x)) for callables: decoder z (..., K) -> (..., D), encoder_mean x (..., D) -> (..., K)."""
    return lambda x: decoder(encoder_mean(x)).to(x.dtype)


def identity_projector(x: torch.Tensor) -> torch.Tensor:
    """No defence: the classifier sees x itself."""
    return x


def posterior_mean_encoder(decoder: Decoder, sigma2, latent_dim: int = 1,
                           grid=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """mu(x) = E[z | x] under x | z ~ N(f(z), diag(sigma2)), z ~ N(0, I_K), by quadrature on a
    tensor grid (K <= 2 in practice): the Bayes-optimal encoder mean of a known decoder, e.g.
    of the ground truth, differentiable in x.  grid: a 1-D grid for every axis or K grids
    (default 1201 points on [-6, 6]).  Returns x (..., D) -> (..., K) in x's dtype."""
    grid = P.uniform_grid(-6.0, 6.0, 1201) if grid is None else grid
    axes = [_t(a).reshape(-1) for a in grid] if isinstance(grid, (list, tuple)) else [_t(grid).reshape(-1)] * latent_dim
    points = P.tensor_grid(axes, latent_dim)                                       # (G, K)
    log_w = torch.zeros((), dtype=DTYPE)
    for a in axes:
        log_w = log_w.unsqueeze(-1) + P.trapezoid_weights(a).log()
    log_prior_w = log_w.reshape(-1) - 0.5 * (points ** 2).sum(-1)                  # constants cancel
    with torch.no_grad():
        means = _t(decoder(points))                                                # (G, D)
    precision = 1.0 / _t(sigma2).reshape(-1).expand(means.shape[-1])
    means_sq = (means ** 2 * precision).sum(-1)

    def encoder_mean(x: torch.Tensor) -> torch.Tensor:
        x64 = x.to(DTYPE)
        sq = (x64 ** 2 * precision).sum(-1, keepdim=True) + means_sq - 2 * (x64 * precision) @ means.T
        weights = torch.softmax(-0.5 * sq + log_prior_w, dim=-1)
        return (weights @ points).to(x.dtype)

    return encoder_mean


def linear_gaussian_projection_matrix(A, s2) -> torch.Tensor:
    """P = A S A^T diag(1/s2) with S = (I + A^T diag(1/s2) A)^-1, so that the exact projection of
    the linear-Gaussian model f(z) = Az + b with its exact posterior mean (= the ELBO-optimal
    MFG mean) is M(x) = b + P (x - b).  For s2 = sigma^2 I and A = U diag(s) V^T, P has
    eigenvalues s_k^2 / (s_k^2 + sigma^2) on U's columns and 0 off A's column space.  (..., D, D)."""
    A = _t(A)
    s2 = _t(s2)
    s2 = s2.expand(A.shape[:-1]) if s2.dim() == 0 else s2
    S = torch.linalg.inv(posterior_precision(A, s2))
    return A @ S @ (A / s2.unsqueeze(-1)).mT


def linear_gaussian_projection(A, b, s2, x) -> torch.Tensor:
    """M(x) = A m(x) + b with m(x) the exact posterior mean: x (..., N, D) -> (..., N, D)."""
    m, _ = exact_posterior(A, b, s2, x)
    return m @ _t(A).mT + _t(b).unsqueeze(-2)


# --- noise removed by a projection -------------------------------------------------------
@dataclass
class Denoising:
    """E||M(x) - f_GT(z)||^2 (per member) against E||x - f_GT(z)||^2 = tr Cov(eps) (= D sigma^2).

    projected_error: (M,) what the projection leaves; noise_error: the expected squared noise,
    tr Cov(eps); observed_noise_error: its value on the points used (Monte Carlo only)."""

    projected_error: torch.Tensor
    noise_error: float
    observed_noise_error: float

    @property
    def ratio(self) -> torch.Tensor:
        """projected_error / noise_error: 0 for a perfect denoiser, about K/D for the exact
        orthogonal projection onto a K-dimensional manifold at small noise, 1 for no projection."""
        return self.projected_error / self.noise_error


def noisy_manifold_points(decoder: Decoder, latent_dim: int, sigma2, n: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test points of eq. 40: z ~ N(0, I_K), clean f_GT(z), x = f_GT(z) + eps, eps ~ N(0, diag(sigma2)).
    Returns (z (n, K), clean (n, D), x (n, D)), float64."""
    z = torch.randn(n, latent_dim, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        clean = _t(decoder(z))
    eps = torch.randn(clean.shape, generator=generator, dtype=DTYPE)
    return z, clean, clean + _t(sigma2).sqrt() * eps


@torch.no_grad()
def denoising(project: Projector, clean, x, sigma2) -> Denoising:
    """The noise a projection removes on test points x = f_GT(z) + eps (clean = f_GT(z); both
    (N, D), or (M, N, D) for each member's own data version): E||M(x) - f_GT(z)||^2 per member,
    by the mean over the points, against D sigma^2 (sigma2: the truth's noise variance, a
    scalar or per dimension)."""
    clean, x = _t(clean), _t(x)
    projected = _t(project(x if x.dim() == 3 else x.unsqueeze(0)))
    noise = float(_t(sigma2).expand(x.shape[-1]).sum())
    return Denoising(projected_error=((projected - clean) ** 2).sum(-1).mean(-1),
                     noise_error=noise,
                     observed_noise_error=float(((x - clean) ** 2).sum(-1).mean()))


def linear_gaussian_denoising(A, b, s2, A_true=None, b_true=None, s2_true=None) -> Denoising:
    """The noise removed by the exact projection of the linear-Gaussian model (A, b, s2), in
    closed form, for test points of a linear-Gaussian truth (A_true, b_true, s2_true; by
    default the model itself).  With M(x) - f_GT(z) = (P - I)(A_t z + b_t - b) + P eps:

        E||M(x) - f_GT(z)||^2 = ||(P - I) A_t||_F^2 + ||(P - I)(b_t - b)||^2 + tr(P diag(s2_t) P^T),

    which for the true model with s2 = sigma^2 I is the posterior variance of f(z),
    tr(A S A^T) = sigma^2 sum_k s_k^2 / (s_k^2 + sigma^2) <= K sigma^2 (s_k: singular values of A).
    Batched over leading axes of A."""
    A, b = _t(A), _t(b)
    A_true = A if A_true is None else _t(A_true)
    b_true = b if b_true is None else _t(b_true)
    s2_true = _t(s2 if s2_true is None else s2_true)
    D = A.shape[-2]
    s2_true = s2_true.expand(D) if s2_true.dim() == 0 else s2_true
    Pm = linear_gaussian_projection_matrix(A, s2)
    residual = Pm - torch.eye(D, dtype=DTYPE)
    signal = (residual @ A_true).pow(2).sum((-2, -1)) + (residual @ (b_true - b).unsqueeze(-1)).pow(2).sum((-2, -1))
    noise = (Pm ** 2 * s2_true.unsqueeze(-2)).sum((-2, -1))
    total = float(s2_true.sum())
    return Denoising(projected_error=(signal + noise).reshape(-1), noise_error=total, observed_noise_error=total)


# --- classifiers on x-space --------------------------------------------------------------
class HalfSpaceClassifier:
    """g(x) = 1 if w . x > c else 0.  The margin (2y - 1)(w . x - c) / |w| is the signed distance
    to the boundary, positive when x is classified y."""

    def __init__(self, normal, offset: float):
        self.normal = _t(normal).reshape(-1)
        self.offset = float(offset)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.normal.to(x) - self.offset

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.score(x) > 0).long()

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (2 * y - 1).to(x) * self.score(x) / self.normal.norm()

    @classmethod
    def tilted(cls, decoder: Decoder, z_boundary: float, tilt: float, off_manifold=None) -> "HalfSpaceClassifier":
        """A boundary through f(z*) of a 1-D manifold, its normal w = cos(tilt) t + sin(tilt) n
        with t the manifold's unit tangent at z* and n a unit direction off it (orthogonal to t;
        in 2-D the normal, else `off_manifold` made orthogonal to t).  tilt = 0 cuts the
        manifold at right angles (the nearest-manifold-point labels near z*); tilt -> pi/2
        lays the boundary along the manifold, the learned classifier of Figure 5 that a small
        off-manifold step crosses.  Labels on the manifold near z*: 1 for z > z*; a curved
        manifold may cross the line again elsewhere, and the labels are then what eq. 40
        makes them, g(f_GT(z)) (manifold_labels)."""
        z = torch.tensor([float(z_boundary)], dtype=DTYPE)
        point = _t(decoder(z.reshape(1, 1))).reshape(-1)
        tangent = torch.autograd.functional.jacobian(lambda u: decoder(u.reshape(1, 1)).reshape(-1).to(DTYPE),
                                                     z).reshape(-1)
        tangent = tangent / tangent.norm()
        if off_manifold is None:
            if tangent.numel() != 2:
                raise ValueError("give off_manifold for data of more than 2 dimensions")
            off = torch.stack([-tangent[1], tangent[0]])
        else:
            off = _t(off_manifold).reshape(-1)
            off = off - (off @ tangent) * tangent
            off = off / off.norm()
        normal = math.cos(tilt) * tangent + math.sin(tilt) * off
        return cls(normal, float(normal @ point))


class NearestCentreClassifier:
    """g(x) = argmin_c |x - mu_c|, e.g. the cluster centres of the Clusters example.  The margin
    min_{c != y} |x - mu_c|^2 - |x - mu_y|^2 is positive when x is classified y."""

    def __init__(self, centres):
        self.centres = _t(centres)

    def _squared_distances(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.unsqueeze(-2) - self.centres.to(x)) ** 2).sum(-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._squared_distances(x).argmin(-1)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self._squared_distances(x)
        own = d.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        others = d.masked_fill(torch.nn.functional.one_hot(y, d.shape[-1]).bool(), math.inf)
        return others.min(-1).values - own

    @classmethod
    def class_means(cls, decoder: Decoder, label_of_z: Callable[[torch.Tensor], torch.Tensor],
                    z) -> "NearestCentreClassifier":
        """Centres mu_c = mean of f(z) over the z's (n, K) with label_of_z(z) = c (labels 0..C-1):
        e.g. for Clusters the index of the flat stretch of t(u(z)), giving the cluster centres."""
        z = _t(z)
        labels = label_of_z(z).long()
        with torch.no_grad():
            f = _t(decoder(z))
        return cls(torch.stack([f[labels == c].mean(0) for c in range(int(labels.max()) + 1)]))


def manifold_labels(classifier, decoder: Decoder, z) -> torch.Tensor:
    """y = g(f_GT(z)) (eq. 40): the labels the classifier gives the clean points, (N,)."""
    with torch.no_grad():
        return classifier(_t(decoder(_t(z))))


# --- the attack --------------------------------------------------------------------------
@dataclass
class AttackResult:
    """budgets (B,) ascending; success_rate (M, B): the fraction of points classified correctly
    after projection (g(M(x)) = y) whose label the attack flipped within each budget;
    clean_accuracy (M,); minimal_budget (M, N): the smallest budget of the grid at which a
    flip was found (inf if none, nan for points misclassified without attack); perturbation
    (M, N, D): that flip's eta (0 where none)."""

    budgets: np.ndarray
    success_rate: np.ndarray
    clean_accuracy: np.ndarray
    minimal_budget: np.ndarray
    perturbation: np.ndarray


def _members_and_points(project: Projector, x: torch.Tensor, labels: torch.Tensor):
    """Broadcast x (N, D) or (M, N, D) and labels (N,) or (M, N) to the projector's members."""
    x = x if x.dim() == 3 else x.unsqueeze(0)
    with torch.no_grad():
        members = max(project(x).shape[0], x.shape[0])
    labels = labels if labels.dim() == 2 else labels.unsqueeze(0)
    return x.expand(members, -1, -1), labels.expand(members, -1)


def _random_in_ball(shape, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform draws in the L2 ball of `radius` in the last dimension."""
    direction = torch.randn(shape, generator=generator, dtype=DTYPE)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    u = torch.rand(shape[:-1], generator=generator, dtype=DTYPE).unsqueeze(-1)
    return radius * u ** (1.0 / shape[-1]) * direction


def _flips_within(project: Projector, classifier, x: torch.Tensor, labels: torch.Tensor, budget: float,
                  steps: int, restarts: int, step_fraction: float, generator,
                  skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient descent on the margin of g(M(x + eta)) over |eta|_2 <= budget, from
    eta = 0 and restarts - 1 random points of the ball.  Points marked in `skip` (M, N) need no
    attack (so the search stops once all others have flipped).  Returns (flipped (M, N) bool,
    eta (M, N, D)) for the others."""
    M, N, D = x.shape
    xr = x.unsqueeze(2).expand(M, N, restarts, D).reshape(M, N * restarts, D)
    yr = labels.unsqueeze(2).expand(M, N, restarts).reshape(M, N * restarts)
    eta = torch.cat([torch.zeros(M, N, 1, D, dtype=DTYPE),
                     _random_in_ball((M, N, restarts - 1, D), budget, generator)], 2).reshape(M, N * restarts, D)
    step = step_fraction * budget / steps
    skip = skip.unsqueeze(2).expand(M, N, restarts).reshape(M, N * restarts)
    flipped = skip.clone()
    found = torch.zeros_like(eta)
    for i in range(steps + 1):
        eta.requires_grad_(True)
        projected = project(xr + eta)
        new = (classifier(projected.detach()) != yr) & ~flipped
        found[new] = eta.detach()[new]
        flipped |= new
        if i == steps or budget == 0 or bool(flipped.all()):
            break
        grad, = torch.autograd.grad(classifier.margin(projected, yr).sum(), eta)
        with torch.no_grad():
            eta = eta - step * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            eta = eta * (budget / eta.norm(dim=-1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
    flipped = (flipped & ~skip).reshape(M, N, restarts)
    found = found.reshape(M, N, restarts, D)
    first = flipped.to(torch.int8).argmax(-1)                     # a restart that succeeded, if any
    eta_found = found.gather(2, first.reshape(M, N, 1, 1).expand(M, N, 1, D)).squeeze(2)
    return flipped.any(-1), eta_found


def attack(project: Projector, classifier, x, labels, budgets, steps: int = 40, restarts: int = 4,
           step_fraction: float = 2.5, generator: torch.Generator | None = None) -> AttackResult:
    """L2 attacks on the defended classifier g o M at each budget (appendix K): find eta with
    |eta| <= budget and g(M(x + eta)) != y, by `steps` normalised-gradient steps of the margin
    through M, each of length step_fraction * budget / steps (Madry et al. 2018), projected back
    onto the ball, from eta = 0 and restarts - 1 random starts.

    x: (N, D) or (M, N, D); labels y (N,) or (M, N), normally manifold_labels(g, f_GT, z).
    A flip found at a budget is a valid perturbation for every larger one, so success is
    cumulative over the ascending budgets (the rate cannot decrease), and only points that
    g o M classifies correctly without attack count: a zero budget never succeeds."""
    budgets = np.sort(np.asarray(budgets, dtype=float))
    x, labels = _members_and_points(project, _t(x), torch.as_tensor(labels).long())
    with torch.no_grad():
        correct = classifier(project(x)) == labels
    M, N, D = x.shape
    minimal = torch.full((M, N), math.inf, dtype=DTYPE)
    perturbation = torch.zeros(M, N, D, dtype=DTYPE)
    rates = np.zeros((M, budgets.size))
    for j, budget in enumerate(budgets):
        flipped, eta = _flips_within(project, classifier, x, labels, float(budget), steps,
                                     max(restarts, 1), step_fraction, generator,
                                     skip=~correct | torch.isfinite(minimal))
        new = flipped & correct & torch.isinf(minimal)
        minimal[new] = float(budget)
        perturbation[new] = eta[new]
        rates[:, j] = ((minimal <= budget) & correct).sum(-1).numpy() / correct.sum(-1).clamp_min(1).numpy()
    minimal[~correct] = math.nan
    rates[~correct.any(-1).numpy()] = math.nan
    return AttackResult(budgets, rates, correct.to(DTYPE).mean(-1).numpy(), minimal.numpy(), perturbation.numpy())


def linear_gaussian_minimal_budget(A, b, s2, classifier: HalfSpaceClassifier, x) -> torch.Tensor:
    """The exact smallest |eta| that flips a half-space classifier w . x > c behind the exact
    linear-Gaussian projection M(x) = b + P (x - b): the score is affine in eta,
    w . M(x + eta) - c = (w . M(x) - c) + (P^T w) . eta, so the minimum is
    |w . M(x) - c| / |P^T w|, along P^T w.  x: (N, D) -> (N,) (batched over A's leading axes)."""
    projected = linear_gaussian_projection(A, b, s2, x)
    sensitivity = (linear_gaussian_projection_matrix(A, s2).mT @ classifier.normal).norm(dim=-1, keepdim=True)
    return classifier.score(projected).abs() / sensitivity


# --- Figure 5 ----------------------------------------------------------------------------
def adversarial_example(classifier, x, labels, budgets, projectors: dict[str, Projector],
                        attacked: str | None = None, steps: int = 40, restarts: int = 4,
                        generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """Figure 5's star, red arrow and black arrows: for points x (N, D) with labels y (N,), the
    smallest-budget perturbation eta found against g o M_attacked (attacked=None: against g
    itself, no defence), then x + eta projected by each of `projectors` (one-member projectors,
    e.g. the true model of 5a and the mismatched model of 5b) and the labels g gives there.
    Returns x, y, eta, minimal_budget, x + eta (`perturbed`), and per projector name
    `<name>_projection` (N, D) and `<name>_label` (N,); an attack that failed has eta = 0."""
    target = identity_projector if attacked is None else projectors[attacked]
    result = attack(target, classifier, x, labels, budgets, steps, restarts, generator=generator)
    x = _t(x)
    eta = torch.from_numpy(result.perturbation[0])
    perturbed = x + eta
    out = {"x": x.numpy(), "label": np.asarray(labels), "eta": eta.numpy(),
           "minimal_budget": result.minimal_budget[0], "perturbed": perturbed.numpy()}
    with torch.no_grad():
        for name, project in projectors.items():
            projected = _t(project(perturbed.unsqueeze(0)))[0]
            out[f"{name}_projection"] = projected.numpy()
            out[f"{name}_label"] = classifier(projected).numpy()
    return out


def uniform_grid_points(low: float, high: float, points_per_axis: int, origin=None, basis=None) -> torch.Tensor:
    """A uniform points_per_axis^2 grid of x: origin + u basis[0] + v basis[1] for u, v in
    [low, high] (default: the plane of 2-D data itself).  Returns (G, D)."""
    axis = torch.linspace(low, high, points_per_axis, dtype=DTYPE)
    uv = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    basis = torch.eye(2, dtype=DTYPE) if basis is None else _t(basis)
    origin = torch.zeros(basis.shape[-1], dtype=DTYPE) if origin is None else _t(origin)
    return origin + uv @ basis


@torch.no_grad()
def projected_grid(projectors: dict[str, Projector], grid) -> dict[str, np.ndarray]:
    """Figure 5b: a grid of x (G, D) and its projection by each model (e.g. the mismatched model
    beside the true and a matched one); also the mean distance each model moves a grid point.
    Returns `grid` (G, D), `<name>` (M, G, D) and `<name>_mean_shift` (M,)."""
    grid = _t(grid)
    out = {"grid": grid.numpy()}
    for name, project in projectors.items():
        projected = _t(project(grid.unsqueeze(0)))
        out[name] = projected.numpy()
        out[f"{name}_mean_shift"] = (projected - grid).norm(dim=-1).mean(-1).numpy()
    return out


# --- the orthogonal projection onto a known 1-D manifold (appendix K's nearest point) -------
def nearest_point_encoder(decoder: Decoder, grid=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """z*(x) = argmin_z |x - f(z)|^2 for a 1-D latent, so that f(z*(x)) is the orthogonal
    projection of x onto the manifold {f(z)} (Figure 5's "projection onto the true manifold",
    the limit sigma^2 -> 0 of the posterior mean).  The argmin is taken over a grid (default
    4001 points on [-6, 6]) and refined by one Gauss-Newton step,
    z = z_g + clamp(t . (x - f(z_g)) / |t|^2, +-h) with t = f'(z_g) and h the grid spacing,
    which makes z*(x) differentiable: dz/dx = t / |t|^2, so the projection's Jacobian is the
    tangent projector t t^T / |t|^2 (exact to first order), and gradient attacks through it
    see the manifold's direction instead of the zero gradient of a pure argmin.
    Returns x (..., D) -> (..., 1) in x's dtype."""
    axis = _t(P.uniform_grid(-6.0, 6.0, 4001) if grid is None else grid).reshape(-1)
    points = axis.unsqueeze(-1)
    with torch.no_grad():
        means = _t(decoder(points))                                                # (G, D)
    _, tangents = torch.autograd.functional.jvp(lambda z: decoder(z).to(DTYPE), points, torch.ones_like(points))
    tangents = tangents.detach()
    spacing = float((axis[1:] - axis[:-1]).abs().max())
    means_sq = (means ** 2).sum(-1)

    def encoder(x: torch.Tensor) -> torch.Tensor:
        x64 = x.to(DTYPE)
        with torch.no_grad():
            idx = ((x64 ** 2).sum(-1, keepdim=True) + means_sq - 2 * x64 @ means.T).argmin(-1)
        t = tangents[idx]
        step = ((x64 - means[idx]) * t).sum(-1) / (t ** 2).sum(-1).clamp_min(1e-30)
        return (axis[idx] + step.clamp(-spacing, spacing)).unsqueeze(-1).to(x.dtype)

    return encoder
