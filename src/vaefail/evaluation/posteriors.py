"""Exact posteriors p(z|x) on a grid, and encoder densities q(z|x), for low-dimensional latents.

For the decoders of this package, x | z ~ N(f(z), diag(sigma^2)) and z ~ N(0, I_K).  With K <= 3
the posterior

    p(z | x) = p(x | z) N(z; 0, I) / p(x)

can be evaluated on a tensor grid of z and normalised numerically (trapezoid rule), which is
exact up to the grid's resolution and extent.  Everything is float64 torch; inputs may be numpy
arrays or tensors.  Memory is bounded by working on chunks of x: the log-likelihood of a chunk
is a (chunk, n_grid) matrix obtained by one matrix product, never a (chunk, n_grid, D) tensor.

Conventions
- A *decoder* is a function z (..., K) -> f(z) (..., D).
- A *log-likelihood function* `log_lik_fn(x, z)` maps x (n, D) and grid points z (G, K) to the
  (n, G) matrix log p(x_n | z_g).  `decoder_log_likelihood` builds one from a decoder and a
  per-dimension sigma^2; `model_log_likelihood` and `ground_truth_log_likelihood` build it for a
  learned one-member VAEEnsemble and for the ground-truth surrogate decoder.
- Densities are returned on the grid with shape (n_x, G_1, ..., G_K) and integrate to 1 under
  the trapezoid rule (`trapezoid_weights`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

LOG_2PI = math.log(2 * math.pi)
DTYPE = torch.float64
DEFAULT_CHUNK_ELEMENTS = 4_000_000   # entries of the (chunk, G) working matrices (32 MB each)
DECODE_CHUNK = 65_536                # grid points decoded at once
# The 1-D z-grid (spacing 0.0025) of the figures' posteriors and of Theorem 1's measurement
# (analyses.figure_claims): what is drawn is what is measured.
GRID_1D = (-5.0, 5.0, 4001)

Decoder = Callable[[torch.Tensor], torch.Tensor]
LogLikFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _t(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=DTYPE)
    return torch.as_tensor(a, dtype=DTYPE)


# --- grids ------------------------------------------------------------------------------
def uniform_grid(low: float = -5.0, high: float = 5.0, n: int = 2001) -> torch.Tensor:
    """A uniform 1-D grid (n,) on [low, high], float64."""
    return torch.linspace(low, high, n, dtype=DTYPE)


def trapezoid_weights(grid_1d) -> torch.Tensor:
    """Trapezoid-rule weights w with sum_g w_g h(z_g) ~ integral of h over the (sorted) grid."""
    g = _t(grid_1d).reshape(-1)
    if g.numel() < 2:
        raise ValueError("a grid needs at least two points")
    d = g[1:] - g[:-1]
    if (d <= 0).any():
        raise ValueError("grid points must be strictly increasing")
    w = torch.zeros_like(g)
    w[:-1] += d / 2
    w[1:] += d / 2
    return w


def _axes(grid, latent_dim: int) -> list[torch.Tensor]:
    """One 1-D grid shared by all K axes, or a sequence of K 1-D grids."""
    if isinstance(grid, (list, tuple)):
        axes = [_t(g).reshape(-1) for g in grid]
        if len(axes) != latent_dim:
            raise ValueError(f"{len(axes)} grids for latent dimension {latent_dim}")
        return axes
    return [_t(grid).reshape(-1)] * latent_dim


def tensor_grid(grid, latent_dim: int) -> torch.Tensor:
    """All points of the tensor grid, (G_1 * ... * G_K, K), in C order ('ij' indexing)."""
    axes = _axes(grid, latent_dim)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], -1)


def _log_weights(axes: list[torch.Tensor]) -> torch.Tensor:
    """log of the product trapezoid weights, flattened like `tensor_grid`."""
    log_w = torch.zeros((), dtype=DTYPE)
    for a in axes:
        log_w = (log_w.unsqueeze(-1) + trapezoid_weights(a).log())
    return log_w.reshape(-1)


def _chunk_size(n_grid: int, chunk: int | None) -> int:
    return chunk if chunk else max(1, DEFAULT_CHUNK_ELEMENTS // max(n_grid, 1))


# --- log-likelihoods --------------------------------------------------------------------
def gaussian_log_likelihood_matrix(x, mean, sigma2) -> torch.Tensor:
    """log N(x_n; mean_g, diag(sigma2)) for all pairs: x (n, D), mean (G, D) -> (n, G).

    Uses sum_d (x_d - m_d)^2 / s_d = |x/s|^2-type terms plus one matrix product, so the memory
    is O(n G) rather than O(n G D).
    """
    x, mean = _t(x), _t(mean)
    sigma2 = _t(sigma2).reshape(-1).expand(x.shape[-1])
    prec = 1.0 / sigma2
    xx = (x * x * prec).sum(-1, keepdim=True)                 # (n, 1)
    mm = (mean * mean * prec).sum(-1).unsqueeze(0)            # (1, G)
    cross = (x * prec) @ mean.T                               # (n, G)
    sq = (xx + mm - 2 * cross).clamp_min(0.0)
    return -0.5 * (sigma2.numel() * LOG_2PI + sigma2.log().sum() + sq)


def decoder_log_likelihood(f: Decoder, sigma2) -> LogLikFn:
    """log p(x | z) for x | z ~ N(f(z), diag(sigma2)); sigma2 a scalar or per-dimension (D,).

    The returned function caches f on the last grid it saw, so calling it chunk by chunk of x
    on one grid decodes the grid once.
    """
    cache: dict = {}

    def log_lik_fn(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = _t(z)
        if z.dim() == 1:
            z = z.unsqueeze(-1)
        key = (z.data_ptr(), tuple(z.shape), z._version)
        if cache.get("key") != key:
            with torch.no_grad():   # decode in chunks: hidden activations stay small
                cache["mean"] = torch.cat([_t(f(z[s:s + DECODE_CHUNK]))
                                           for s in range(0, z.shape[0], DECODE_CHUNK)])
            cache["key"], cache["z"] = key, z   # keep z alive so its address is not reused
        return gaussian_log_likelihood_matrix(_t(x), cache["mean"], sigma2)

    return log_lik_fn


def model_decoder(model, member: int = 0) -> Decoder:
    """The decoder f_theta of one member of a VAEEnsemble as z (..., K) -> (..., D), float64."""
    def f(z: torch.Tensor) -> torch.Tensor:
        z = _t(z).to(model.decoder.flat.dtype)
        lead = z.shape[:-1]
        zz = z.reshape(1, -1, model.K).expand(model.M, -1, -1)
        with torch.no_grad():
            out = model.decode(zz)[member]
        return out.reshape(*lead, model.D).to(DTYPE)
    return f


def model_sigma2(model, member: int = 0) -> torch.Tensor:
    """The member's (learned or fixed) per-dimension observation variance, (D,)."""
    with torch.no_grad():
        return model.log_sigma2[member].reshape(-1).to(DTYPE).exp()


def model_log_likelihood(model, member: int = 0) -> LogLikFn:
    """log p_theta(x | z) of a learned model with its own sigma^2."""
    return decoder_log_likelihood(model_decoder(model, member), model_sigma2(model, member))


def ground_truth_log_likelihood(gt_decoder: Decoder, noise_variance: float) -> LogLikFn:
    """log p(x | z) under the ground-truth (surrogate) decoder with the true sigma^2."""
    return decoder_log_likelihood(gt_decoder, noise_variance)


def model_encoder(model, x, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x) = N(mu, diag(exp(log_var))) of one member for x (n, D): (mu, log_var), each (n, K)."""
    x = _t(x).to(model.encoder.flat.dtype)
    with torch.no_grad():
        mu, log_var = model.encode(x.unsqueeze(0).expand(model.M, -1, -1))
    return mu[member].to(DTYPE), log_var[member].to(DTYPE)


# --- exact posteriors -------------------------------------------------------------------
def _normalised_posterior(log_lik_fn: LogLikFn, x, points: torch.Tensor, log_w: torch.Tensor,
                          chunk: int | None) -> torch.Tensor:
    x = _t(x)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    log_prior = -0.5 * (points.shape[-1] * LOG_2PI + (points ** 2).sum(-1))   # (G,)
    out = torch.empty(x.shape[0], points.shape[0], dtype=DTYPE)
    size = _chunk_size(points.shape[0], chunk)
    for s in range(0, x.shape[0], size):
        log_joint = log_lik_fn(x[s:s + size], points) + log_prior
        log_evidence = torch.logsumexp(log_joint + log_w, dim=-1, keepdim=True)
        out[s:s + size] = (log_joint - log_evidence).exp()
    return out


def exact_posterior_1d(log_lik_fn: LogLikFn, x, z_grid=None, chunk: int | None = None) -> torch.Tensor:
    """p(z | x) proportional to p(x | z) N(z; 0, 1) for a 1-D latent on a grid.

    log_lik_fn(x, z) -> (n, G) gives log p(x_n | z_g) for x (n, D) and z (G, 1).
    Returns (n_x, G) densities, each integrating to 1 under the trapezoid rule on z_grid
    (default: 2001 points on [-5, 5]).
    """
    z_grid = uniform_grid() if z_grid is None else _t(z_grid).reshape(-1)
    return _normalised_posterior(log_lik_fn, x, z_grid.unsqueeze(-1), trapezoid_weights(z_grid).log(), chunk)


def exact_posterior_grid(decoder: Decoder, log_sigma2, x, grid_1d, latent_dim: int,
                         chunk: int | None = None) -> torch.Tensor:
    """p(z | x) for a K-dimensional latent (K = 1, 2 or 3) on a tensor grid.

    decoder: z (..., K) -> f(z) (..., D); log_sigma2: scalar or (D,) log observation variance;
    grid_1d: one 1-D grid used on every axis, or a sequence of K 1-D grids.
    Returns the joint normalised density, (n_x, G_1, ..., G_K), integrating to 1 under the
    product trapezoid rule.
    """
    axes = _axes(grid_1d, latent_dim)
    points = tensor_grid(axes, latent_dim)
    log_lik_fn = decoder_log_likelihood(decoder, _t(log_sigma2).exp())
    dens = _normalised_posterior(log_lik_fn, x, points, _log_weights(axes), chunk)
    return dens.reshape(dens.shape[0], *[a.numel() for a in axes])


def marginalise(density, grid_1d, axis: int) -> torch.Tensor:
    """Integrate a gridded density over one latent axis (0-based, counting latent axes only;
    the leading data axis is kept): (n, G_1, ..., G_K) -> one axis fewer."""
    density = _t(density)
    w = trapezoid_weights(grid_1d)
    dim = axis + 1
    shape = [1] * density.dim()
    shape[dim] = -1
    return (density * w.reshape(shape)).sum(dim)


def marginal_12(density_3d, grid_1d) -> torch.Tensor:
    """The (z1, z2) marginal of a K = 3 gridded posterior: (n, G1, G2, G3) -> (n, G1, G2).
    grid_1d: the z3 grid, or the sequence of three axis grids."""
    g3 = grid_1d[2] if isinstance(grid_1d, (list, tuple)) else grid_1d
    return marginalise(density_3d, g3, axis=2)


def integrate(density, grid) -> torch.Tensor:
    """Trapezoid integral over all latent axes of (n, G_1, ..., G_K) densities -> (n,)."""
    density = _t(density)
    K = density.dim() - 1
    axes = _axes(grid, K)
    out = density
    for k in reversed(range(K)):
        out = marginalise(out, axes[k], axis=k)
    return out


# --- encoder densities ------------------------------------------------------------------
def gaussian_density(mu, log_var, z_grid, chunk: int | None = None) -> torch.Tensor:
    """q(z | x) = N(z; mu, diag(exp(log_var))) on grid points.

    mu, log_var: (n, K) (or (n,) for K = 1); z_grid: (G,) for K = 1 or (G, K) points.
    Returns (n, G).
    """
    mu, log_var = _t(mu), _t(log_var)
    if mu.dim() == 1:
        mu, log_var = mu.unsqueeze(-1), log_var.unsqueeze(-1)
    z = _t(z_grid)
    if z.dim() == 1:
        z = z.unsqueeze(-1)
    out = torch.empty(mu.shape[0], z.shape[0], dtype=DTYPE)
    size = _chunk_size(z.shape[0] * mu.shape[-1], chunk)
    for s in range(0, mu.shape[0], size):
        m, lv = mu[s:s + size].unsqueeze(1), log_var[s:s + size].unsqueeze(1)   # (c, 1, K)
        log_q = -0.5 * (LOG_2PI + lv + (z.unsqueeze(0) - m) ** 2 / lv.exp()).sum(-1)
        out[s:s + size] = log_q.exp()
    return out


def aggregate_posterior(mu, log_var, z_grid, chunk: int | None = None) -> torch.Tensor:
    """The aggregated posterior q(z) = (1/N) sum_n q(z | x_n) on grid points, (G,)."""
    mu, log_var = _t(mu), _t(log_var)
    if mu.dim() == 1:
        mu, log_var = mu.unsqueeze(-1), log_var.unsqueeze(-1)
    z = _t(z_grid)
    size = _chunk_size(z.shape[0] * mu.shape[-1], chunk)
    total = torch.zeros(z.shape[0], dtype=DTYPE)
    for s in range(0, mu.shape[0], size):
        total += gaussian_density(mu[s:s + size], log_var[s:s + size], z).sum(0)
    return total / mu.shape[0]


def standard_normal_density(z_grid) -> torch.Tensor:
    """The prior N(z; 0, I) on grid points: (G,) for K = 1 input (G,), else (G, K) -> (G,)."""
    z = _t(z_grid)
    if z.dim() == 1:
        z = z.unsqueeze(-1)
    return (-0.5 * (z.shape[-1] * LOG_2PI + (z ** 2).sum(-1))).exp()


# --- summaries of gridded 1-D posteriors -------------------------------------------------
def _mass_beyond_valley(seq, w, min_height: float, dip: float) -> float:
    """seq: density walking outwards from the global mode.  The mass past the valley before the
    first secondary mode (a point above min_height and above dip x the lowest density between
    it and the mode), or 0 when there is none."""
    runmin = np.minimum.accumulate(seq)
    is_mode = (seq > dip * runmin) & (seq > min_height)
    if not is_mode.any():
        return 0.0
    j = int(np.argmax(is_mode))
    valley = int(np.argmin(seq[: j + 1]))
    return float((seq[valley + 1:] * w[valley + 1:]).sum())


def second_mode_mass(density, z_grid, rel_height: float = 0.01, dip: float = 2.0) -> torch.Tensor:
    """Posterior mass outside the basin of the highest mode, per row of (n, G) 1-D densities.

    Walking outwards from the global maximum, the basin ends at the valley before the first
    secondary mode: a point whose density exceeds rel_height * peak and is more than `dip`
    times the lowest density between it and the global mode (so ripples on a plateau do not
    count).  0 for a unimodal posterior (tails included); about 0.5 for two equal, separated
    modes.  Returns (n,).
    """
    d = _t(density)
    if d.dim() == 1:
        d = d.unsqueeze(0)
    d = d.numpy()
    w = trapezoid_weights(z_grid).numpy()
    out = np.zeros(d.shape[0])
    for n, row in enumerate(d):
        i = int(row.argmax())
        h = rel_height * row[i]
        out[n] = (_mass_beyond_valley(row[i::-1], w[i::-1], h, dip)
                  + _mass_beyond_valley(row[i:], w[i:], h, dip))
    return torch.from_numpy(out)


def posterior_moments_1d(log_lik_fn: LogLikFn, x, z_grid=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the exact 1-D posterior p(z | x) for each x: two (n,) tensors."""
    z_grid = uniform_grid() if z_grid is None else _t(z_grid).reshape(-1)
    w = trapezoid_weights(z_grid)
    density = exact_posterior_1d(log_lik_fn, x, z_grid) * w
    mean = density @ z_grid
    variance = density @ z_grid ** 2 - mean ** 2
    return mean, variance.clamp(min=1e-12)


def log_evidence_1d(log_lik_fn: LogLikFn, x, z_grid=None) -> torch.Tensor:
    """log p(x) = log of the integral of p(x | z) N(z; 0, 1) over a 1-D z-grid, (n,)."""
    z_grid = uniform_grid() if z_grid is None else _t(z_grid).reshape(-1)
    log_w = trapezoid_weights(z_grid).log()
    log_prior = -0.5 * (LOG_2PI + z_grid ** 2)
    x = _t(x)
    size = _chunk_size(z_grid.shape[0], None)
    return torch.cat([torch.logsumexp(log_lik_fn(x[s:s + size], z_grid.unsqueeze(-1)) + log_prior + log_w, -1)
                      for s in range(0, x.shape[0], size)])


def kl_optimal_gaussians(decoder: Decoder, noise_variance: float, x, z_grid=None, nodes: int = 20,
                         steps: int = 200, learning_rate: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """For each x, the 1-D Gaussian q = N(m, s^2) maximising the ELBO, i.e. closest to the exact
    posterior in KL[q || p(z|x)]: (m, log s^2), each (n,).

    Starts at the posterior's highest grid mode with s no wider than 0.05 and ascends the ELBO,
    its expectation by Gauss-Hermite quadrature (deterministic, accurate also for q narrower
    than the grid).  Where the posterior has several modes this finds the mode-seeking fit
    around the highest one.
    """
    import numpy as np
    z_grid = uniform_grid() if z_grid is None else _t(z_grid).reshape(-1)
    x = _t(x)
    log_lik = decoder_log_likelihood(decoder, noise_variance)
    density = exact_posterior_1d(log_lik, x, z_grid)
    mean0, var0 = posterior_moments_1d(log_lik, x, z_grid)
    m = z_grid[density.argmax(-1)].clone().requires_grad_(True)
    log_s = (0.5 * var0.log()).clamp(max=math.log(0.05)).clone().requires_grad_(True)
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    t, w = torch.tensor(t, dtype=DTYPE), torch.tensor(w / w.sum(), dtype=DTYPE)
    sigma2 = torch.as_tensor(noise_variance, dtype=DTYPE)
    opt = torch.optim.Adam([m, log_s], lr=learning_rate)
    for _ in range(steps):
        z = m.unsqueeze(-1) + log_s.exp().unsqueeze(-1) * t                 # (n, nodes)
        mean = decoder(z.unsqueeze(-1)).to(DTYPE)                             # (n, nodes, D)
        log_joint = (-0.5 * (LOG_2PI + sigma2.log() + (x.unsqueeze(1) - mean) ** 2 / sigma2)).sum(-1) \
            - 0.5 * (LOG_2PI + z ** 2)
        elbo = (log_joint * w).sum(-1) + log_s
        opt.zero_grad()
        (-elbo.sum()).backward()
        opt.step()
    return m.detach(), 2 * log_s.detach()


# --- semi-supervised (M2) posteriors: a label y beside the latent z ------------------------
# A *decoder of inputs* maps [encoded y, z] (..., Y + K) -> (..., D): the ground-truth surrogate
# (surrogate.GroundTruthDecoder) and a learned M2 model (`m2_decoder`) both have this form.  Discrete
# y is encoded one-hot (Y = classes) with a prior p(y) (uniform by default); continuous y is the
# value itself (Y = 1) with prior N(0, 1), so (y, z) is a 2-D latent with prior N(0, I_2).
def m2_decoder(model, member: int = 0) -> Decoder:
    """f_theta(y, z) of one member of an M2Ensemble as inputs [y, z] (..., Y + K) -> (..., D)."""
    Y = model.labels.dim

    def f(inputs: torch.Tensor) -> torch.Tensor:
        inputs = _t(inputs).to(model.decoder.flat.dtype)
        lead = inputs.shape[:-1]
        h = inputs.reshape(1, -1, inputs.shape[-1]).expand(model.M, -1, -1)
        with torch.no_grad():
            out = model.decode(h[..., :Y], h[..., Y:])[member]
        return out.reshape(*lead, model.D).to(DTYPE)
    return f


def m2_encoder(model, x, y_encoded, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The z-posterior of the unlabelled bound of one M2 member, q(z | x) (the paper) or
    q(z | x, y) (Kingma et al.), for x (n, D) and encoded labels (n, Y): (mu, log_var), (n, K)."""
    x = _t(x).to(model.encoder.flat.dtype)
    y = _t(y_encoded).to(model.encoder.flat.dtype)
    with torch.no_grad():
        mu, log_var = model.encode_unlabelled(x.unsqueeze(0).expand(model.M, -1, -1),
                                              y.unsqueeze(0).expand(model.M, -1, -1))
    return mu[member].to(DTYPE), log_var[member].to(DTYPE)


def m2_label_posterior(model, x, member: int = 0) -> torch.Tensor:
    """The discriminator q(y | x) of one M2 member for x (n, D): class probabilities (n, C) for
    discrete y, or (mean, log var) as (n, 2) for continuous y."""
    x = _t(x).to(model.encoder.flat.dtype)
    with torch.no_grad():
        out = model.classify(x.unsqueeze(0).expand(model.M, -1, -1))[member].to(DTYPE)
    return torch.softmax(out, -1) if model.labels.kind == "discrete" else out


def one_hot(c: int, classes: int) -> torch.Tensor:
    out = torch.zeros(classes, dtype=DTYPE)
    out[c] = 1.0
    return out


def fixed_label_decoder(decoder_of_inputs: Decoder, y_encoded) -> Decoder:
    """z (..., K) -> f([y, z]) for one fixed encoded label y (Y,)."""
    y = _t(y_encoded).reshape(-1)

    def f(z: torch.Tensor) -> torch.Tensor:
        z = _t(z)
        return decoder_of_inputs(torch.cat([y.expand(*z.shape[:-1], y.numel()), z], -1))
    return f


def exact_posterior_discrete_label(decoder_of_inputs: Decoder, sigma2, x, z_grid, classes: int,
                                   log_prior_y=None, chunk: int | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact joint posterior p(y = c, z | x) for a discrete label and a 1-D latent on a grid.

    p(y, z | x) is proportional to N(x; f([one-hot(y), z]), diag(sigma2)) N(z; 0, 1) p(y), with
    p(y) uniform unless log_prior_y (C,) is given.  Returns
      joint (n, C, G): densities in z for each class, sum_c of their trapezoid integrals = 1;
      p_y   (n, C):    p(y = c | x), the integral of joint[:, c] over the grid.
    p(z | x) = joint.sum(1).
    """
    z_grid = _t(z_grid).reshape(-1)
    x = _t(x)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    log_py = (torch.full((classes,), -math.log(classes), dtype=DTYPE) if log_prior_y is None
              else _t(log_prior_y).reshape(classes))
    z = z_grid.unsqueeze(-1)
    log_w = trapezoid_weights(z_grid).log()
    log_prior = -0.5 * (LOG_2PI + z_grid ** 2)
    lls = [decoder_log_likelihood(fixed_label_decoder(decoder_of_inputs, one_hot(c, classes)), sigma2)
           for c in range(classes)]
    joint = torch.empty(x.shape[0], classes, z_grid.numel(), dtype=DTYPE)
    size = _chunk_size(classes * z_grid.numel(), chunk)
    for s in range(0, x.shape[0], size):
        log_joint = torch.stack([ll(x[s:s + size], z) + log_prior + log_py[c] for c, ll in enumerate(lls)], 1)
        log_evidence = torch.logsumexp((log_joint + log_w).flatten(1), -1).reshape(-1, 1, 1)
        joint[s:s + size] = (log_joint - log_evidence).exp()
    return joint, joint @ trapezoid_weights(z_grid)


def exact_posterior_continuous_label(decoder_of_inputs: Decoder, sigma2, x, y_grid, z_grid,
                                     chunk: int | None = None) -> torch.Tensor:
    """The exact joint posterior p(y, z | x) of a continuous label with prior N(0, 1) and a 1-D
    latent, on the tensor grid y_grid x z_grid: (n, G_y, G_z), integrating to 1 under the
    product trapezoid rule.  (With both priors standard normal, (y, z) is a 2-D latent.)"""
    log_sigma2 = _t(sigma2).log()
    return exact_posterior_grid(decoder_of_inputs, log_sigma2, x, [_t(y_grid).reshape(-1), _t(z_grid).reshape(-1)],
                                2, chunk)


def m2_encoder_mixture_discrete(model, x, z_grid, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The M2 inference model's marginal over z, q(z | x) = sum_c q(y = c | x) q(z | x, y = c),
    on a 1-D grid (K = 1): (density (n, G), q(y | x) (n, C))."""
    x = _t(x)
    C = model.labels.classes
    q_y = m2_label_posterior(model, x, member)
    dens = torch.zeros(x.shape[0], _t(z_grid).numel(), dtype=DTYPE)
    for c in range(C):
        mu, log_var = m2_encoder(model, x, one_hot(c, C).expand(x.shape[0], C), member)
        dens += q_y[:, c:c + 1] * gaussian_density(mu, log_var, z_grid)
    return dens, q_y


def m2_encoder_joint_continuous(model, x, y_grid, z_grid, member: int = 0) -> torch.Tensor:
    """The M2 inference model's joint q(y, z | x) = N(y; m(x), s^2(x)) N(z; mu(x, y), var(x, y))
    of a continuous label on the grid y_grid x z_grid (K = 1): (n, G_y, G_z).  The encoder is
    evaluated at every y of the grid, so the dependence of q(z | x, y) on y is kept."""
    x = _t(x)
    y_grid, z_grid = _t(y_grid).reshape(-1), _t(z_grid).reshape(-1)
    n, Gy = x.shape[0], y_grid.numel()
    out = m2_label_posterior(model, x, member)
    m, log_s2 = out[:, :1], out[:, 1:]
    log_q_y = -0.5 * (LOG_2PI + log_s2 + (y_grid.unsqueeze(0) - m) ** 2 / log_s2.exp())      # (n, Gy)
    x_rep = x.unsqueeze(1).expand(n, Gy, x.shape[-1]).reshape(n * Gy, -1)
    mu, log_var = m2_encoder(model, x_rep, y_grid.repeat(n).unsqueeze(-1), member)           # (n Gy, 1)
    log_q_z = -0.5 * (LOG_2PI + log_var + (z_grid.unsqueeze(0) - mu) ** 2 / log_var.exp())   # (n Gy, Gz)
    return (log_q_y.unsqueeze(-1) + log_q_z.reshape(n, Gy, -1)).exp()


def hdr_levels(density, grid, masses=(0.5, 0.9, 0.99)) -> np.ndarray:
    """Density thresholds of the highest-density regions of one gridded density (G_1, ..., G_K):
    the region {density >= level_m} holds mass m (trapezoid rule).  grid: one 1-D grid for every
    axis or a sequence of K grids.  Returns the levels in the order of `masses`."""
    d = _t(density)
    axes = _axes(grid, d.dim())
    w = _log_weights(axes).exp()
    p = d.reshape(-1)
    order = torch.argsort(p, descending=True)
    mass = torch.cumsum((p * w)[order], 0)
    mass = mass / mass[-1]
    idx = torch.searchsorted(mass, torch.tensor(list(masses), dtype=DTYPE)).clamp(max=p.numel() - 1)
    return p[order][idx].numpy()
