"""Tests of evaluation.posteriors against closed-form linear-Gaussian posteriors.

For f(z) = A z + b, x | z ~ N(f(z), diag(s2)), z ~ N(0, I_K) the posterior is Gaussian with
covariance S = (I + A^T diag(1/s2) A)^-1 and mean m = S A^T diag(1/s2) (x - b), and the data
are distributed as p(x) = N(b, diag(s2) + A A^T).
"""
import math

import numpy as np
import pytest
import torch

from vaefail.evaluation import posteriors as P
from vaefail.models.vae import VAEEnsemble


def linear_posterior(A, b, s2, x):
    """Closed-form posterior N(m, S) of z given each row of x: m (n, K), S (K, K)."""
    A, b, s2, x = (np.asarray(v, dtype=float) for v in (A, b, s2, x))
    prec = np.eye(A.shape[1]) + A.T @ (A / s2[:, None])
    S = np.linalg.inv(prec)
    m = (x - b) / s2 @ A @ S.T
    return m, S


def mvn_pdf(z, m, S):
    """N(z_g; m_n, S) for z (G, K), m (n, K) -> (n, G)."""
    K = S.shape[0]
    diff = z[None, :, :] - m[:, None, :]
    Si = np.linalg.inv(S)
    quad = np.einsum("ngk,kl,ngl->ng", diff, Si, diff)
    return np.exp(-0.5 * quad) / math.sqrt((2 * math.pi) ** K * np.linalg.det(S))


A1 = np.array([[1.3], [-0.7]])          # D = 2, K = 1
B1 = np.array([0.4, -1.0])
S2_1 = np.array([0.3, 0.5])


def linear_decoder(A, b):
    At, bt = torch.tensor(A, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return lambda z: z @ At.T + bt


def test_trapezoid_weights_integrate_exactly_linear_functions():
    g = torch.tensor([-1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    w = P.trapezoid_weights(g)
    assert float(w.sum()) == pytest.approx(3.0)
    assert float((w * g).sum()) == pytest.approx((2.0 ** 2 - 1.0) / 2)


def test_1d_grid_posterior_matches_closed_form_linear_gaussian():
    x = np.array([[0.4, -1.0], [2.5, -2.0], [-1.5, 0.3], [3.0, -3.0]])
    grid = P.uniform_grid(-5, 5, 2001)
    ll = P.decoder_log_likelihood(linear_decoder(A1, B1), torch.tensor(S2_1))
    dens = P.exact_posterior_1d(ll, x, grid, chunk=3).numpy()       # chunk < n: exercises chunking
    m, S = linear_posterior(A1, B1, S2_1, x)
    # the closed forms of the brief for K = 1: s^2 = 1 / (1 + sum a_d^2 / s2_d)
    s2_post = 1.0 / (1.0 + np.sum(A1[:, 0] ** 2 / S2_1))
    assert S[0, 0] == pytest.approx(s2_post)
    np.testing.assert_allclose(m[:, 0], s2_post * ((x - B1) / S2_1) @ A1[:, 0])
    expected = mvn_pdf(grid.numpy()[:, None], m, S)
    assert dens.shape == (4, 2001)
    assert np.abs(dens - expected).max() < 1e-6 * expected.max()


def test_1d_grid_posterior_scalar_sigma2_and_offset_grid():
    s2 = 0.2
    x = np.array([[1.0, 1.0]])
    grid = P.uniform_grid(-4, 6, 1501)
    dens = P.exact_posterior_1d(P.decoder_log_likelihood(linear_decoder(A1, B1), s2), x, grid).numpy()
    m, S = linear_posterior(A1, B1, np.full(2, s2), x)
    expected = mvn_pdf(grid.numpy()[:, None], m, S)
    assert np.abs(dens - expected).max() < 1e-5


def test_grid_posterior_integrates_to_one_even_for_nonlinear_decoder():
    f = lambda z: torch.cat([torch.sin(3 * z), z ** 2 - 1], -1)   # bimodal posteriors
    grid = P.uniform_grid(-5, 5, 2001)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dens = P.exact_posterior_1d(P.decoder_log_likelihood(f, 0.05), x, grid)
    np.testing.assert_allclose(P.integrate(dens, grid).numpy(), 1.0, atol=1e-12)
    assert (dens >= 0).all()


def test_second_mode_mass_separates_unimodal_from_bimodal():
    grid = P.uniform_grid(-5, 5, 2001)
    # f(z) = z^2 - 1 (D = 1): x = 0 has two equal modes at z = +-1; x = 3 has modes at +-2
    ll = P.decoder_log_likelihood(lambda z: z ** 2 - 1, 0.01)
    bimodal = P.exact_posterior_1d(ll, torch.tensor([[0.0], [3.0]], dtype=torch.float64), grid)
    np.testing.assert_allclose(P.second_mode_mass(bimodal, grid).numpy(), 0.5, atol=1e-3)
    unimodal = torch.stack([P.standard_normal_density(grid), P.standard_normal_density(grid - 1.5) * 0.5
                            + P.standard_normal_density(grid + 0.1) * 0.5])
    assert float(P.second_mode_mass(unimodal, grid).max()) < 1e-3
    skewed = 0.8 * P.standard_normal_density((grid + 2) / 0.3) / 0.3 + 0.2 * P.standard_normal_density(grid - 2)
    assert float(P.second_mode_mass(skewed, grid)[0]) == pytest.approx(0.2, abs=0.02)
    # a plateau with small ripples (as a fitted network's posterior can have) is one mode
    plateau = torch.where(grid.abs() < 1, 1 + 0.05 * torch.sin(40 * grid), torch.exp(-20 * (grid.abs() - 1) ** 2))
    plateau = plateau / P.integrate(plateau[None], grid)
    assert float(P.second_mode_mass(plateau, grid)[0]) < 1e-6


def test_model_helpers_wire_decoder_and_learned_sigma2():
    """A hidden-layer-free VAEEnsemble decoder is linear: its exact posterior is closed form."""
    model = VAEEnsemble(2, 1, [], 1, "learned", dtype=torch.float64)
    with torch.no_grad():
        model.decoder["dec.W0"][0].copy_(torch.tensor(A1.T))
        model.decoder["dec.b0"][0].copy_(torch.tensor(B1[None, :]))
    model.set_sigma2(torch.tensor(S2_1))
    x = np.array([[0.0, 0.0], [1.0, -2.0]])
    grid = P.uniform_grid(-5, 5, 2001)
    dens = P.exact_posterior_1d(P.model_log_likelihood(model), x, grid).numpy()
    m, S = linear_posterior(A1, B1, S2_1, x)
    assert np.abs(dens - mvn_pdf(grid.numpy()[:, None], m, S)).max() < 1e-6
    np.testing.assert_allclose(P.model_sigma2(model).numpy(), S2_1)
    # the same through exact_posterior_grid with the model's log sigma^2
    dens_g = P.exact_posterior_grid(P.model_decoder(model), model.log_sigma2[0, 0], x, grid, 1).numpy()
    np.testing.assert_allclose(dens_g, dens, atol=1e-12)


def test_aggregate_of_exact_posteriors_is_the_prior():
    """If q(z|x) is the exact posterior, E_{p(x)} q(z|x) = p(z) = N(0, 1)."""
    rng = np.random.default_rng(1)
    n = 20000
    cov_x = np.diag(S2_1) + A1 @ A1.T
    x = rng.multivariate_normal(B1, cov_x, size=n)
    m, S = linear_posterior(A1, B1, S2_1, x)
    grid = P.uniform_grid(-4, 4, 401)
    agg = P.aggregate_posterior(m, np.full_like(m, math.log(S[0, 0])), grid, chunk=1000).numpy()
    prior = P.standard_normal_density(grid).numpy()
    assert np.abs(agg - prior).max() < 0.02
    assert float((P.trapezoid_weights(grid).numpy() * agg).sum()) == pytest.approx(1.0, abs=1e-3)
    # and a deliberately wrong encoder (posterior variance too small by 10x, means shrunk) is not
    bad = P.aggregate_posterior(0.5 * m, np.full_like(m, math.log(S[0, 0] / 10)), grid).numpy()
    assert np.abs(bad - prior).max() > 0.1


def test_gaussian_density_matches_closed_form_2d():
    mu = np.array([[0.5, -1.0], [0.0, 0.0]])
    lv = np.array([[np.log(0.3), np.log(2.0)], [0.0, 0.0]])
    z = P.tensor_grid(P.uniform_grid(-3, 3, 31), 2).numpy()
    q = P.gaussian_density(mu, lv, z).numpy()
    expected = np.stack([mvn_pdf(z, mu[i:i + 1], np.diag(np.exp(lv[i])))[0] for i in range(2)])
    np.testing.assert_allclose(q, expected, rtol=1e-12)


def test_2d_grid_posterior_matches_closed_form_correlated_gaussian():
    A = np.array([[1.0, 0.6], [-0.4, 0.9], [0.7, 0.7]])   # D = 3, K = 2: correlated posterior
    b = np.array([0.1, -0.2, 0.3])
    s2 = np.array([0.5, 0.8, 0.6])
    x = np.array([[0.0, 0.0, 0.0], [1.5, -0.5, 2.0], [-1.0, 1.0, -0.5]])
    grid = P.uniform_grid(-5, 5, 201)
    dens = P.exact_posterior_grid(linear_decoder(A, b), torch.tensor(np.log(s2)), x, grid, 2, chunk=2)
    assert dens.shape == (3, 201, 201)
    m, S = linear_posterior(A, b, s2, x)
    assert abs(S[0, 1]) > 0.05                             # the case is genuinely correlated
    expected = mvn_pdf(P.tensor_grid(grid, 2).numpy(), m, S).reshape(3, 201, 201)
    assert np.abs(dens.numpy() - expected).max() < 1e-4 * expected.max()
    np.testing.assert_allclose(P.integrate(dens, grid).numpy(), 1.0, atol=1e-12)


def test_3d_grid_posterior_and_its_12_marginal():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(4, 3))
    b = rng.normal(size=4)
    s2 = np.full(4, 1.5)
    x = rng.normal(size=(2, 4))
    axes = [P.uniform_grid(-5, 5, 61), P.uniform_grid(-4.5, 5, 57), P.uniform_grid(-5, 4, 53)]
    dens = P.exact_posterior_grid(linear_decoder(A, b), math.log(1.5), x, axes, 3)
    assert dens.shape == (2, 61, 57, 53)
    np.testing.assert_allclose(P.integrate(dens, axes).numpy(), 1.0, atol=1e-12)
    marg = P.marginal_12(dens, axes).numpy()
    m, S = linear_posterior(A, b, s2, x)
    z12 = P.tensor_grid(axes[:2], 2).numpy()
    expected = mvn_pdf(z12, m[:, :2], S[:2, :2]).reshape(2, 61, 57)
    assert np.abs(marg - expected).max() < 2e-3 * expected.max()
