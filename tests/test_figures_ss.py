"""Posterior helpers of the semi-supervised figures (evaluation.posteriors, M2 part) against
closed forms.

Continuous y: with f(y, z) = a y + b z + c and y, z ~ N(0, 1), (y, z) is a 2-D latent with a
linear-Gaussian decoder, so p(y, z | x) is the Gaussian N(m, S) with S = (I + A^T diag(1/s2) A)^-1,
m = S A^T diag(1/s2) (x - c), A = [a b].
Discrete y: with f(c, z) = a_c z + b_c, p(x | y = c) = N(b_c, a_c a_c^T + diag(s2)), so
p(y = c | x) is proportional to p(y = c) N(x; b_c, ...) and p(z | x) = sum_c p(y = c | x) p(z | x, y = c).
"""
import math

import numpy as np
import pytest
import torch

from vaefail.evaluation import posteriors as P
from vaefail.models.m2 import Labels, M2Ensemble


def gaussian_posterior(A, b, s2, x):
    prec = np.eye(A.shape[1]) + A.T @ (A / s2[:, None])
    S = np.linalg.inv(prec)
    return (x - b) / s2 @ A @ S.T, S


def mvn_pdf(z, m, S):
    diff = z[None] - m[:, None]
    quad = np.einsum("ngk,kl,ngl->ng", diff, np.linalg.inv(S), diff)
    return np.exp(-0.5 * quad) / math.sqrt((2 * math.pi) ** S.shape[0] * np.linalg.det(S))


def mvn_logpdf(x, m, C):
    diff = x - m
    return -0.5 * (np.einsum("nd,de,ne->n", diff, np.linalg.inv(C), diff) + np.log(np.linalg.det(2 * math.pi * C)))


S2 = np.array([0.3, 0.5])


def test_continuous_label_joint_posterior_is_the_linear_gaussian_one():
    A = np.array([[1.2, -0.4], [0.5, 0.9]])          # columns: a (label), b (latent)
    c = np.array([0.3, -0.2])
    At, ct = torch.tensor(A), torch.tensor(c)
    decoder = lambda inputs: inputs @ At.T + ct       # inputs [y, z]
    x = np.array([[0.0, 0.0], [1.5, -1.0], [-2.0, 1.0]])
    yg, zg = P.uniform_grid(-6, 6, 241), P.uniform_grid(-6, 6, 301)
    dens = P.exact_posterior_continuous_label(decoder, torch.tensor(S2), x, yg, zg, chunk=2).numpy()
    assert dens.shape == (3, 241, 301)
    m, S = gaussian_posterior(A, c, S2, x)
    points = P.tensor_grid([yg, zg], 2).numpy()
    expected = mvn_pdf(points, m, S).reshape(3, 241, 301)
    assert np.abs(dens - expected).max() < 1e-4 * expected.max()
    np.testing.assert_allclose(P.integrate(dens, [yg, zg]).numpy(), 1.0, atol=1e-10)


def test_discrete_label_posterior_matches_mixture_weights_and_mixture_density():
    a = [np.array([1.3, -0.7]), np.array([-0.4, 1.1]), np.array([0.2, 0.2])]
    b = [np.array([0.4, -1.0]), np.array([-0.5, 0.8]), np.array([0.0, 0.0])]
    log_prior = np.log(np.array([0.5, 0.3, 0.2]))
    tensors = [(torch.tensor(ai), torch.tensor(bi)) for ai, bi in zip(a, b)]

    def decoder(inputs):                              # inputs [one-hot(y), z]
        onehot, z = inputs[..., :3], inputs[..., 3:]
        return sum(onehot[..., c:c + 1] * (z * tensors[c][0] + tensors[c][1]) for c in range(3))

    x = np.array([[0.4, -1.0], [-0.6, 1.0], [0.1, 0.1], [2.0, 2.0]])
    zg = P.uniform_grid(-7, 7, 4001)
    joint, p_y = P.exact_posterior_discrete_label(decoder, torch.tensor(S2), x, zg, 3,
                                                  log_prior_y=torch.tensor(log_prior), chunk=3)
    # mixture weights: p(y = c | x) from the per-class marginal likelihoods
    log_w = np.stack([log_prior[c] + mvn_logpdf(x, b[c], np.outer(a[c], a[c]) + np.diag(S2))
                      for c in range(3)], 1)
    weights = np.exp(log_w - log_w.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(p_y.numpy(), weights, atol=1e-9)
    # p(z | x) = sum_c p(y = c | x) N(z; m_c, S_c)
    expected = sum(weights[:, c:c + 1] * mvn_pdf(zg.numpy()[:, None], *gaussian_posterior(a[c][:, None], b[c], S2, x))
                   for c in range(3))
    dens = joint.sum(1).numpy()
    assert np.abs(dens - expected).max() < 1e-6 * expected.max()
    # uniform prior by default
    _, p_uniform = P.exact_posterior_discrete_label(decoder, torch.tensor(S2), x, zg, 3)
    log_u = log_w - log_prior
    w_u = np.exp(log_u - log_u.max(1, keepdims=True))
    np.testing.assert_allclose(p_uniform.numpy(), w_u / w_u.sum(1, keepdims=True), atol=1e-9)


def test_hdr_levels_of_a_standard_normal():
    g = P.uniform_grid(-7, 7, 701)
    dens = P.standard_normal_density(P.tensor_grid(g, 2)).reshape(701, 701)
    masses = (0.5, 0.9, 0.99)
    levels = P.hdr_levels(dens, g, masses)
    expected = [math.exp(np.log1p(-m)) / (2 * math.pi) for m in masses]   # exp(-r^2/2)/(2 pi), r^2 = -2 log(1-m)
    np.testing.assert_allclose(levels, expected, rtol=2e-3)


def _m2(kind):
    torch.manual_seed(0)
    labels = Labels(kind, 2)
    model = M2Ensemble(2, 1, labels, [8], 2, dtype=torch.float64)
    for params in (model.encoder, model.decoder):
        with torch.no_grad():
            params.flat.copy_(0.5 * torch.randn_like(params.flat))
    return model


@pytest.mark.parametrize("member", [0, 1])
def test_m2_helpers_wire_the_model(member):
    model = _m2("continuous")
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.randn(5, 1, dtype=torch.float64)
    z = torch.randn(5, 1, dtype=torch.float64)
    with torch.no_grad():
        ref = model.decode(y.expand(2, -1, -1), z.expand(2, -1, -1))[member]
        mu, lv = model.encode_unlabelled(x.expand(2, -1, -1), y.expand(2, -1, -1))
    np.testing.assert_allclose(P.m2_decoder(model, member)(torch.cat([y, z], -1)).numpy(), ref.numpy())
    got_mu, got_lv = P.m2_encoder(model, x, y, member)
    np.testing.assert_allclose(got_mu.numpy(), mu[member].numpy())
    np.testing.assert_allclose(got_lv.numpy(), lv[member].numpy())


def test_m2_encoder_densities_are_normalised_and_consistent():
    model = _m2("discrete")
    x = torch.randn(4, 2, dtype=torch.float64)
    zg = P.uniform_grid(-12, 12, 6001)
    dens, q_y = P.m2_encoder_mixture_discrete(model, x, zg)
    np.testing.assert_allclose(q_y.sum(1).numpy(), 1.0)
    np.testing.assert_allclose(P.integrate(dens, zg).numpy(), 1.0, atol=1e-6)

    model = _m2("continuous")
    yg, zg = P.uniform_grid(-12, 12, 801), P.uniform_grid(-12, 12, 801)
    joint = P.m2_encoder_joint_continuous(model, x, yg, zg)
    np.testing.assert_allclose(P.integrate(joint, [yg, zg]).numpy(), 1.0, atol=1e-4)
    # at a fixed y the z-slice is q(y|x) N(z; mu(x, y), var(x, y))
    k = 400
    out = P.m2_label_posterior(model, x)
    mu, lv = P.m2_encoder(model, x, yg[k].expand(4, 1))
    q_y = torch.exp(-0.5 * (math.log(2 * math.pi) + out[:, 1] + (yg[k] - out[:, 0]) ** 2 / out[:, 1].exp()))
    expected = q_y[:, None] * P.gaussian_density(mu, lv, zg)
    np.testing.assert_allclose(joint[:, k].numpy(), expected.numpy(), rtol=1e-10, atol=1e-300)
