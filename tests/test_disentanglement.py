"""Tests of analyses.disentanglement (appendix F) against closed forms and direct computations.

The model is linear-Gaussian: z ~ N(0, I_2), x | z ~ N(A z + b, diag(s2)), whose marginal is
N(b, A A^T + diag(s2)) (checked with scipy, independently of the Cholesky code) and whose ELBO
for any Gaussian q is checked by Monte Carlo, both by hand and by the package's own model.elbo.
"""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from vaefail.analyses import disentanglement as F
from vaefail.data import linear_gaussian as LG
from vaefail.models.vae import elbo

B = torch.tensor([0.3, -0.2, 0.1, 0.0, 0.5], dtype=torch.float64)
SIGMA2 = 0.1
# Singular values 2 and 0.5, right singular vectors at 45 degrees: the posterior of the true
# latents is strongly correlated and the ELBO-preferred latents mix both equally.
A = LG.entangled_linear_map([2.0, 0.5], math.pi / 4)


def data(n, seed=0, A=A, s2=SIGMA2):
    return LG.sample_linear_gaussian(A, B, s2, n, torch.Generator().manual_seed(seed))


def test_log_marginal_likelihood_is_the_gaussian_marginal():
    _, x = data(50)
    s2 = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.15], dtype=torch.float64)
    cov = (A @ A.T + torch.diag(s2)).numpy()
    expected = multivariate_normal(B.numpy(), cov).logpdf(x.numpy())
    np.testing.assert_allclose(F.log_marginal_likelihood(A, B, s2, x).numpy(), expected, rtol=0, atol=1e-10)


def monte_carlo_elbo(A, b, s2, x, mu, log_var, samples, seed):
    """E_q[log p(x|z) + log p(z) - log q(z)] by sampling q, per point, with its standard error."""
    gen = torch.Generator().manual_seed(seed)
    s2 = torch.as_tensor(s2, dtype=torch.float64).expand(x.shape[-1])
    log_var = log_var.expand(mu.shape)
    eps = torch.randn(samples, *mu.shape, generator=gen, dtype=torch.float64)
    z = mu + (0.5 * log_var).exp() * eps                                          # (S, N, K)
    log_lik = -0.5 * (math.log(2 * math.pi) + s2.log() + (x - z @ A.T - b) ** 2 / s2).sum(-1)
    log_prior = -0.5 * (math.log(2 * math.pi) + z ** 2).sum(-1)
    log_q = -0.5 * (math.log(2 * math.pi) + log_var + eps ** 2).sum(-1)
    values = log_lik + log_prior - log_q
    return values.mean(0), values.std(0) / math.sqrt(samples)


def test_gaussian_q_elbo_matches_monte_carlo_for_any_q():
    _, x = data(40)
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    log_var = torch.randn(40, 2, generator=gen, dtype=torch.float64) - 1.0
    closed = F.gaussian_q_elbo(A, B, SIGMA2, x, mu, log_var)
    mc, se = monte_carlo_elbo(A, B, SIGMA2, x, mu, log_var, 20000, seed=2)
    z_scores = ((closed - mc) / se).numpy()
    assert np.abs(z_scores).max() < 5


@pytest.mark.parametrize("matrix", ["original", "rotated"])
def test_optimal_mean_field_elbo_matches_monte_carlo_and_the_package_elbo(matrix):
    A_model = A if matrix == "original" else A @ F.appendix_rotation(A, SIGMA2)
    _, x = data(300)
    closed = F.optimal_mean_field_elbo(A_model, B, SIGMA2, x)
    mu, log_var = F.optimal_mean_field(A_model, B, SIGMA2, x)
    mc, se = monte_carlo_elbo(A_model, B, SIGMA2, x, mu, log_var, 4000, seed=3)
    # for the rotated model q is the exact posterior: log p(x, z) - log q(z) is constant, se = 0
    assert bool(((closed - mc).abs() <= 5 * se + 1e-9).all())
    # the same q as a VAEEnsemble (one affine layer each), through models.vae.elbo
    model = F.linear_gaussian_ensemble(A_model, B, SIGMA2)
    eps = torch.randn(1, 300, 4000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    package = elbo(model, x.unsqueeze(0), eps)[0]
    assert float((package - closed).mean()) == pytest.approx(0.0, abs=4 * float(se.mean()) / math.sqrt(300) + 1e-3)


def test_optimal_mean_field_is_a_maximum_of_the_elbo():
    _, x = data(20)
    mu, log_var = F.optimal_mean_field(A, B, SIGMA2, x)
    best = F.gaussian_q_elbo(A, B, SIGMA2, x, mu, log_var)
    for d_mu, d_lv in [(0.05, 0.0), (-0.05, 0.0), (0.0, 0.1), (0.0, -0.1)]:
        shifted = F.gaussian_q_elbo(A, B, SIGMA2, x, mu + d_mu, log_var + d_lv)
        assert bool((shifted < best).all())
    # the gap to log p(x) is the closed-form KL, the same for every x
    np.testing.assert_allclose((F.log_marginal_likelihood(A, B, SIGMA2, x) - best).numpy(),
                               float(F.mean_field_gap(A, SIGMA2)), rtol=1e-10)


def test_appendix_rotation_keeps_p_x_and_raises_the_elbo_to_it():
    _, x = data(500)
    R = F.appendix_rotation(A, SIGMA2)
    np.testing.assert_allclose((R.T @ R).numpy(), np.eye(2), atol=1e-12)       # orthogonal: R = V
    rotated = A @ R
    np.testing.assert_allclose(F.log_marginal_likelihood(rotated, B, SIGMA2, x).numpy(),
                               F.log_marginal_likelihood(A, B, SIGMA2, x).numpy(), atol=1e-10)
    elbo_original = F.optimal_mean_field_elbo(A, B, SIGMA2, x)
    elbo_rotated = F.optimal_mean_field_elbo(rotated, B, SIGMA2, x)
    assert bool((elbo_rotated > elbo_original + 0.1).all())
    # the rotated model's posterior is uncorrelated, so its MFG ELBO is log p(x) itself
    np.testing.assert_allclose(elbo_rotated.numpy(), F.log_marginal_likelihood(A, B, SIGMA2, x).numpy(), atol=1e-10)
    # any orthogonal R keeps p(x); the literal formula with another Lambda does not
    other = LG.rotation(0.7)
    np.testing.assert_allclose(F.log_marginal_likelihood(A @ other, B, SIGMA2, x).numpy(),
                               F.log_marginal_likelihood(A, B, SIGMA2, x).numpy(), atol=1e-10)
    literal = A @ F.appendix_rotation(A, SIGMA2, eigenvalues=[1.0, 2.0])
    assert not np.allclose(F.log_marginal_likelihood(literal, B, SIGMA2, x).numpy(),
                           F.log_marginal_likelihood(A, B, SIGMA2, x).numpy(), atol=1e-3)


@pytest.mark.parametrize("s2", [SIGMA2, torch.tensor([0.1, 0.4, 0.05, 0.2, 0.3], dtype=torch.float64)])
def test_elbo_maximising_rotation_beats_every_angle(s2):
    angles = torch.linspace(0, 2 * math.pi, 3601, dtype=torch.float64)
    scan = F.rotated_mean_field_gap(A, s2, angles)
    R_best = F.elbo_maximising_rotation(A, s2)
    best_gap = float(F.mean_field_gap(A @ R_best, s2))
    assert float(torch.linalg.det(R_best)) == pytest.approx(1.0)
    assert best_gap == pytest.approx(0.0, abs=1e-12)
    assert float(scan.min()) >= best_gap - 1e-12
    assert float(scan[0]) == pytest.approx(float(F.mean_field_gap(A, s2)), rel=1e-12)   # angle 0: A itself
    assert float(scan[0]) > 0.1


def test_elbo_maximising_rotation_of_an_entangled_map_is_its_angle():
    for angle in [0.3, math.pi / 4, 1.2]:
        matrix = LG.entangled_linear_map([1.5, 0.4], angle)
        R = F.elbo_maximising_rotation(matrix, SIGMA2)
        # R(angle) up to a signed permutation of columns
        np.testing.assert_allclose(np.abs((LG.rotation(angle).T @ R).numpy()).max(0), [1.0, 1.0], atol=1e-10)


def test_linear_gaussian_ensemble_encoder_is_the_exact_posterior_mean():
    _, x = data(30)
    model = F.linear_gaussian_ensemble(torch.stack([A, A @ LG.rotation(0.4)]), B, SIGMA2)
    codes = F.encoder_codes(model, x)
    np.testing.assert_allclose(codes[0].numpy(), F.exact_posterior(A, B, SIGMA2, x)[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(codes[1].numpy(), F.exact_posterior(A @ LG.rotation(0.4), B, SIGMA2, x)[0].numpy(),
                               atol=1e-12)


def test_mig_of_true_latents_is_one_and_of_independent_noise_is_zero():
    z, _ = data(2000)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    truth = F.disentanglement_scores(z.numpy(), z.numpy())
    np.testing.assert_array_equal(np.diag(truth["normalised_mutual_information"]), [1.0, 1.0])
    assert float(truth["mig"]) > 0.99
    random = F.disentanglement_scores(noise.numpy(), z.numpy())
    assert float(random["mig"]) < 0.01
    assert np.abs(random["normalised_mutual_information"]).max() < 0.01


def test_elbo_preferred_rotation_entangles_the_codes():
    """The codes of the ELBO-preferred model A R are R^T m(x): MIG drops from the true model's."""
    z, x = data(2000)
    m, _ = F.exact_posterior(A, B, SIGMA2, x)
    R = F.elbo_maximising_rotation(A, SIGMA2)
    m_rotated, _ = F.exact_posterior(A @ R, B, SIGMA2, x)
    np.testing.assert_allclose(m_rotated.numpy(), (m @ R).numpy(), atol=1e-10)
    scores = F.disentanglement_scores(np.stack([m.numpy(), m_rotated.numpy()]), z.numpy())
    assert scores["mutual_information"].shape == (2, 2, 2)
    mig_true, mig_rotated = scores["mig"]
    assert mig_rotated < 0.3 * mig_true


def test_linear_gaussian_split_is_seeded_and_has_the_model_covariance():
    sizes = {"train": 20000, "valid": 10}
    first = LG.linear_gaussian_split(A, B, SIGMA2, sizes, seed=5)
    again = LG.linear_gaussian_split(A, B, SIGMA2, sizes, seed=5)
    for key in ["z_train", "x_train", "z_valid", "x_valid"]:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["z_train"].shape == (20000, 2) and first["x_valid"].shape == (10, 5)
    cov = np.cov(first["x_train"].T)
    np.testing.assert_allclose(cov, F.marginal_covariance(A, SIGMA2).numpy(), atol=0.06)
    np.testing.assert_allclose(first["x_train"].mean(0), B.numpy(), atol=0.04)


def test_ppca_loading_with_k_equal_d_reproduces_p_x():
    C = F.marginal_covariance(A, SIGMA2)
    loading = F.ppca_loading(C, 5, SIGMA2 / 10)
    np.testing.assert_allclose(F.marginal_covariance(loading, SIGMA2 / 10).numpy(), C.numpy(), atol=1e-12)
