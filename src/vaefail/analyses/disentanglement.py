"""Appendix F: the ELBO prefers rotated, entangled representations of a linear-Gaussian model.

The model of appendix F is linear-Gaussian,

    z ~ N(0, I_K),   x | z ~ N(A z + b, diag(s2)),                               (eq. 1, f = Az + b)

so everything is in closed form:

    posterior       p(z | x) = N(m(x), S),  S = Lambda^-1,  Lambda = I + A^T diag(1/s2) A,
                    m(x) = S A^T diag(1/s2) (x - b);
    marginal        p(x) = N(b, A A^T + diag(s2));
    optimal MFG q   the ELBO-optimal mean-field Gaussian of a Gaussian posterior has the exact
                    mean m(x) and variances 1 / Lambda_kk;
    its ELBO        eq. 2: ELBO = log p(x) - KL[q || p(z|x)], and for that q
                    KL = (1/2) (sum_k log Lambda_kk - log det Lambda),
                    the same for every x (Hadamard's inequality makes it >= 0, = 0 iff Lambda
                    is diagonal, i.e. iff the posterior is uncorrelated).

Replacing A by A R with R orthogonal leaves A A^T, hence p(x), unchanged, but changes Lambda to
R^T Lambda R: the rotation that diagonalises A^T diag(1/s2) A closes the mean-field gap, so the
ELBO prefers it — and its latent z' = R^T z mixes ("entangles") the true latents.  Part (b)
measures entanglement of trained models by the KSG mutual information between learned and
true latents and the Mutual Information Gap (MIG) of Chen et al. (2018), with the KSG
estimator the evaluation uses (evaluation.ksg).

Conventions: float64 torch; A is (D, K) (or batched (..., D, K)); s2 is a scalar, (D,) or
batched (..., D); x is (N, D) (or (..., N, D)); per-point results are (..., N).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.linear_gaussian import DTYPE, as_float64, noise_variances, rotation
from ..evaluation.ksg import ksg_mutual_information
from ..models.vae import VAEEnsemble

LOG_2PI = math.log(2 * math.pi)


# --- the linear-Gaussian model in closed form --------------------------------------------
def posterior_precision(A, s2) -> torch.Tensor:
    """Lambda = I + A^T diag(1/s2) A, the precision of p(z | x) (the same for every x): (..., K, K)."""
    A = as_float64(A)
    s2 = noise_variances(s2, A)
    return torch.eye(A.shape[-1], dtype=DTYPE) + A.mT @ (A / s2.unsqueeze(-1))


def exact_posterior(A, b, s2, x) -> tuple[torch.Tensor, torch.Tensor]:
    """p(z | x) = N(m(x), S): m = S A^T diag(1/s2) (x - b), S = Lambda^-1.  Returns m (..., N, K)
    and S (..., K, K)."""
    A, b, x = as_float64(A), as_float64(b), as_float64(x)
    s2 = noise_variances(s2, A)
    S = torch.linalg.inv(posterior_precision(A, s2))
    m = ((x - b.unsqueeze(-2)) / s2.unsqueeze(-2)) @ A @ S       # rows: (x - b)^T diag(1/s2) A S
    return m, S


def marginal_covariance(A, s2) -> torch.Tensor:
    """Cov p(x) = A A^T + diag(s2): (..., D, D)."""
    A = as_float64(A)
    return A @ A.mT + torch.diag_embed(noise_variances(s2, A))


def log_marginal_likelihood(A, b, s2, x) -> torch.Tensor:
    """Exact log p(x) = log N(x; b, A A^T + diag(s2)) per point (appendix F): (..., N)."""
    A, b, x = as_float64(A), as_float64(b), as_float64(x)
    C = marginal_covariance(A, s2)
    L = torch.linalg.cholesky(C)
    r = torch.linalg.solve_triangular(L.unsqueeze(-3), (x - b.unsqueeze(-2)).unsqueeze(-1), upper=False)
    log_det = 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (A.shape[-2] * LOG_2PI + log_det.unsqueeze(-1) + (r.squeeze(-1) ** 2).sum(-1))


def optimal_mean_field(A, b, s2, x) -> tuple[torch.Tensor, torch.Tensor]:
    """The ELBO-optimal mean-field Gaussian q(z | x) = N(mu, diag(exp(log_var))) of the model.

    For a Gaussian posterior N(m, Lambda^-1), argmin_q KL[q || p] over diagonal Gaussians has
    mu = m and var_k = 1 / Lambda_kk (the coordinate-ascent fixed point, exact in one step).
    Returns mu (..., N, K) and log_var (..., K) (the same for every x).
    """
    m, _ = exact_posterior(A, b, s2, x)
    Lam = posterior_precision(A, s2)
    return m, -torch.diagonal(Lam, dim1=-2, dim2=-1).log()


def mean_field_gap(A, s2) -> torch.Tensor:
    """KL[q* || p(z|x)] = (1/2)(sum_k log Lambda_kk - log det Lambda) for the optimal MFG q*:
    log p(x) - ELBO, the same for every x (eq. 2's posterior-matching term): (...,)."""
    Lam = posterior_precision(A, s2)
    return 0.5 * (torch.diagonal(Lam, dim1=-2, dim2=-1).log().sum(-1) - torch.logdet(Lam))


def optimal_mean_field_elbo(A, b, s2, x) -> torch.Tensor:
    """The ELBO (eq. 1) at the ELBO-optimal MFG q, per point: log p(x) - mean_field_gap: (..., N)."""
    return log_marginal_likelihood(A, b, s2, x) - mean_field_gap(A, s2).unsqueeze(-1)


def gaussian_q_elbo(A, b, s2, x, mu, log_var) -> torch.Tensor:
    """The ELBO of any mean-field Gaussian q = N(mu, diag(exp(log_var))), in closed form:

        E_q log N(x; Az + b, diag(s2)) = -1/2 sum_d [log 2 pi s2_d + ((x - A mu - b)_d^2 + (A V A^T)_dd) / s2_d]
        E_q log N(z; 0, I)            = -1/2 sum_k [log 2 pi + mu_k^2 + v_k]
        H[q]                          =  1/2 sum_k [log 2 pi e v_k]

    with V = diag(v).  mu: (..., N, K), log_var: (..., N, K) or (..., K).  Returns (..., N).
    """
    A, b, x, mu, log_var = as_float64(A), as_float64(b), as_float64(x), as_float64(mu), as_float64(log_var)
    s2 = noise_variances(s2, A).unsqueeze(-2)                       # (..., 1, D)
    if log_var.dim() == mu.dim() - 1:
        log_var = log_var.unsqueeze(-2)
    v = log_var.exp()
    residual = x - mu @ A.mT - b.unsqueeze(-2)
    spread = v @ (A ** 2).mT                                          # (A V A^T)_dd
    expected_log_lik = -0.5 * (LOG_2PI + s2.log() + (residual ** 2 + spread) / s2).sum(-1)
    expected_log_prior = -0.5 * (LOG_2PI + mu ** 2 + v).sum(-1)
    entropy = 0.5 * (LOG_2PI + 1 + log_var).sum(-1)
    return expected_log_lik + expected_log_prior + entropy


def linear_gaussian_ensemble(A, b, s2, dtype=torch.float64) -> VAEEnsemble:
    """The linear-Gaussian model with its ELBO-optimal MFG encoder as a VAEEnsemble (hidden=[]:
    one affine layer each), so the package's own ELBO/IWAE code and projections apply to it.

    A: (D, K) or (M, D, K) for M members; b: (D,) or (M, D); s2: scalar, (D,) or (M, D).
    Encoder: mu(x) = (x - b)^T diag(1/s2) A S, log var = -log diag(Lambda) (constant in x).
    """
    A, b = as_float64(A), as_float64(b)
    if A.dim() == 2:
        A = A.unsqueeze(0)
    M, D, K = A.shape
    b = b.expand(M, D)
    s2 = noise_variances(s2, A)                                      # (M, D)
    Lam = posterior_precision(A, s2)
    S = torch.linalg.inv(Lam)
    W_mu = (A / s2.unsqueeze(-1)) @ S                                  # (M, D, K)
    model = VAEEnsemble(D, K, [], M, "fixed", dtype=dtype)
    with torch.no_grad():
        model.decoder["dec.W0"].copy_(A.mT)
        model.decoder["dec.b0"].copy_(b.unsqueeze(1))
        model.encoder["enc.W0"].copy_(torch.cat([W_mu, torch.zeros_like(W_mu)], -1))
        log_var = -torch.diagonal(Lam, dim1=-2, dim2=-1).log()
        model.encoder["enc.b0"].copy_(torch.cat([-(b.unsqueeze(1) @ W_mu), log_var.unsqueeze(1)], -1))
    model.set_sigma2(s2.unsqueeze(1))
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return model


def ppca_loading(covariance, latent_dim: int, s2: float) -> torch.Tensor:
    """A = U_K (Lambda_K - s2 I)^{1/2}: the loading whose model A A^T + s2 I equals `covariance`
    on its top-K eigenspace (Tipping & Bishop 1999), (D, K).  p(x) is reproduced exactly when the
    other D - K eigenvalues equal s2 — always for K = D, which gives the mismatched models of
    appendices F and K: a latent space as large as the data, explaining noise by z with a
    smaller s2.  Appendix F's rotated A R (see appendix_rotation) is this loading for K latents."""
    C = as_float64(covariance)
    eigenvalues, eigenvectors = torch.linalg.eigh(C)
    top = torch.argsort(eigenvalues, descending=True)[:latent_dim]
    excess = eigenvalues[top] - s2
    if (excess < 0).any():
        raise ValueError(f"s2 = {s2} exceeds an eigenvalue kept by the loading ({eigenvalues[top].tolist()})")
    return eigenvectors[:, top] * excess.sqrt()


# --- rotations ---------------------------------------------------------------------------
def appendix_rotation(A, sigma2: float, eigenvalues=None) -> torch.Tensor:
    """Appendix F's R = (Sigma V^T)^-1 (Lambda - sigma^2 I)^{1/2}, A = U Sigma V^T (thin SVD): (K, K).

    The appendix calls Lambda "an arbitrary diagonal matrix", but A' A'^T = U (Lambda - sigma^2 I)
    U^T equals A A^T — the claimed p(x) equality — only for Lambda = Sigma^2 + sigma^2 I (the
    eigenvalues of A A^T + sigma^2 I on A's column space), which is the default here.  Then
    R = V, orthogonal, and A R = U Sigma has orthogonal columns: the posterior precision
    I + Sigma^2 / sigma^2 is diagonal and the MFG ELBO equals log p(x).  Other `eigenvalues`
    (K,) give the literal formula, whose p(x) differs.  sigma2: the isotropic noise variance.
    """
    A = as_float64(A)
    _, singular_values, Vh = torch.linalg.svd(A, full_matrices=False)
    Lam = singular_values ** 2 + sigma2 if eigenvalues is None else as_float64(eigenvalues)
    if (Lam <= sigma2).any():
        raise ValueError(f"Lambda - sigma^2 I must be positive; Lambda = {Lam.tolist()}, sigma^2 = {sigma2}")
    return torch.linalg.inv(torch.diag(singular_values) @ Vh) @ torch.diag((Lam - sigma2).sqrt())


def elbo_maximising_rotation(A, s2) -> torch.Tensor:
    """The rotation R (det +1) maximising the optimal-MFG ELBO of A R: (K, K).

    Since p(x) is the same for every orthogonal R, the ELBO is maximised by minimising the gap
    (1/2)(sum_k log (R^T Lambda R)_kk - log det Lambda), which by Hadamard's inequality is 0
    exactly when R^T (A^T diag(1/s2) A) R is diagonal: R = its eigenvectors (unique up to
    permutations and sign flips of columns, all equally good; one with det +1 is returned).
    """
    A = as_float64(A)
    s2 = noise_variances(s2, A)
    _, Q = torch.linalg.eigh(A.T @ (A / s2.unsqueeze(-1)))
    if torch.linalg.det(Q) < 0:
        Q[:, 0] = -Q[:, 0]
    return Q


def rotated_mean_field_gap(A, s2, angles) -> torch.Tensor:
    """The mean-field gap log p(x) - ELBO of A R(angle) for K = 2 over a grid of angles: (n_angles,).
    The optimal-MFG ELBO of the rotated model is mean log p(x) minus this."""
    A = as_float64(A)
    R = rotation(as_float64(angles).reshape(-1))
    return mean_field_gap(A @ R, s2)


def appendix_f_models(A, sigma2: float) -> dict[str, torch.Tensor]:
    """The loadings appendix F compares (isotropic sigma2): the model A itself ("original"), the
    appendix's A R ("appendix_rotation") and the ELBO-maximising rotation ("elbo_maximising")."""
    A = as_float64(A)
    return {"original": A, "appendix_rotation": A @ appendix_rotation(A, sigma2),
            "elbo_maximising": A @ elbo_maximising_rotation(A, sigma2)}


def appendix_f_comparison(A, b, sigma2: float, x) -> dict[str, float]:
    """Appendix F in numbers on data x (N, D): mean log p(x) and mean optimal-MFG ELBO of each
    model of appendix_f_models."""
    b, x = as_float64(b), as_float64(x)
    out = {}
    for name, matrix in appendix_f_models(A, sigma2).items():
        out[f"log_px_{name}"] = float(log_marginal_likelihood(matrix, b, sigma2, x).mean())
        out[f"elbo_{name}"] = float(optimal_mean_field_elbo(matrix, b, sigma2, x).mean())
    return out


# --- (b) disentanglement of learned representations --------------------------------------
@torch.no_grad()
def encoder_codes(model: VAEEnsemble, x, generator: torch.Generator | None = None) -> torch.Tensor:
    """Learned latents of every member for x (N, D) or (M, N, D): the posterior mean mu_phi(x),
    or, with a generator, one draw z ~ q_phi(z | x).  Returns (M, N, K) float64."""
    x = as_float64(x).to(device=model.encoder.flat.device, dtype=model.encoder.flat.dtype)
    if x.dim() == 2:
        x = x.expand(model.M, -1, -1)
    mu, log_var = (v.to(device="cpu", dtype=DTYPE) for v in model.encode(x))
    if generator is None:
        return mu
    return mu + (0.5 * log_var).exp() * torch.randn(mu.shape, generator=generator, dtype=DTYPE)


def mutual_information_matrix(codes, factors, k: int = 3) -> np.ndarray:
    """KSG estimates I(c_i; z_j) between each learned latent c_i and each true factor z_j (nats),
    every (member, latent, factor) pair at once by the workflow's batched estimator.

    codes: (N, K) or (M, N, K) (members); factors: (N, J) or (M, N, J).  Returns (K, J) or (M, K, J).
    """
    codes = torch.as_tensor(np.asarray(codes, dtype=float))
    factors = torch.as_tensor(np.asarray(factors, dtype=float))
    single = codes.dim() == 2
    codes = codes[None] if single else codes
    factors = factors.expand(codes.shape[0], *factors.shape[-2:])
    (M, N, K), J = codes.shape, factors.shape[-1]
    # one estimate per (member, latent i, factor j): c_i against z_j as rows of (M K J, N)
    c = codes.permute(0, 2, 1)[:, :, None, :].expand(M, K, J, N)
    z = factors.permute(0, 2, 1)[:, None, :, :].expand(M, K, J, N)
    out = ksg_mutual_information(c.reshape(-1, N), z.reshape(-1, N), k).reshape(M, K, J).numpy()
    return out[0] if single else out


def factor_self_information(factors, k: int = 3) -> np.ndarray:
    """The normaliser of MIG: the KSG estimate of I(z_j; z_j) for each true factor, (J,).

    Chen et al. (2018) divide by the entropy H(z_j) of a discrete factor.  For a continuous factor
    the mutual information with a perfect (invertible) code is unbounded, and its differential
    entropy (1.42 nats for N(0, 1)) is no bound at all, so we divide by what the same estimator
    returns for the factor against itself.  For distinct values KSG gives exactly
    psi(N) - psi(k) there (each point's k-th joint neighbour is its k-th marginal neighbour),
    the most an estimate of this N and k reaches for a code that determines z_j: normalised,
    'true latents against themselves' is 1 exactly and an independent code is ~0 (KSG is nearly
    unbiased at independence), both on the same scale as the learned codes' estimates.
    """
    factors = np.asarray(factors, dtype=float)
    factors = factors[:, None] if factors.ndim == 1 else factors
    z = torch.as_tensor(np.ascontiguousarray(factors.T))      # one row per factor
    return ksg_mutual_information(z, z, k).numpy()


def mutual_information_gap(mutual_information, normaliser) -> np.ndarray:
    """MIG (Chen et al. 2018): (1/J) sum_j [I(c_(1); z_j) - I(c_(2); z_j)] / H_j, with c_(1), c_(2)
    the learned latents most and second-most informative about z_j.

    mutual_information: (..., K, J) estimates, clipped at 0 (KSG can dip slightly below at
    independence); normaliser: (J,) (factor_self_information).  With K = 1 the second term is 0.
    Returns (...,).
    """
    mi = np.clip(np.asarray(mutual_information, dtype=float), 0.0, None) / np.asarray(normaliser, dtype=float)
    top = -np.sort(-mi, axis=-2)
    second = top[..., 1, :] if mi.shape[-2] > 1 else 0.0
    return (top[..., 0, :] - second).mean(-1)


def disentanglement_scores(codes, factors, k: int = 3) -> dict[str, np.ndarray]:
    """MI matrix (..., K, J), its normalised version and the MIG (...,) of learned codes against
    the true factors (factors (N, J); codes (N, K) or (M, N, K), e.g. encoder_codes(...)).

    The normalised scale depends on N and k through psi(N) - psi(k) (see
    factor_self_information), so compare MIGs at equal N and k; `mig_nats`, the same gap
    without normalisation, does not have that dependence."""
    factors = np.asarray(factors, dtype=float)
    factors = factors[:, None] if factors.ndim == 1 else factors
    mi = mutual_information_matrix(codes, factors, k)
    normaliser = factor_self_information(factors, k)
    return {"mutual_information": mi,
            "normalised_mutual_information": np.clip(mi, 0.0, None) / normaliser,
            "factor_self_information": normaliser,
            "mig": mutual_information_gap(mi, normaliser),
            "mig_nats": mutual_information_gap(mi, np.ones_like(normaliser))}
