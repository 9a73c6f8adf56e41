"""The objectives against closed forms: Gaussian KLs and a linear-Gaussian model whose
posterior and marginal likelihood are exact."""
import math

import pytest
import torch

from vaefail.models.vae import (elbo, encoder_mutual_information, iwae_bound, kl_to_standard_normal,
                           log_normal, sigma2_closed_form)


# closed forms in float64; the fixture restores torch's default dtype after each test
pytestmark = pytest.mark.usefixtures("float64_by_default")


def test_kl_to_standard_normal_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 7, 3, generator=gen)
    log_var = torch.randn(4, 7, 3, generator=gen)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_to_standard_normal(mu, log_var), expected, atol=1e-12)


def test_kl_is_zero_only_at_the_prior():
    zero = torch.zeros(1, 1, 2)
    assert kl_to_standard_normal(zero, zero).item() == 0.0
    assert kl_to_standard_normal(zero + 0.1, zero).item() > 0


def test_log_normal_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    x, mean, log_var = (torch.randn(5, 3, generator=gen) for _ in range(3))
    expected = torch.distributions.Normal(mean, (0.5 * log_var).exp()).log_prob(x).sum(-1)
    assert torch.allclose(log_normal(x, mean, log_var), expected, atol=1e-12)


class LinearGaussian:
    """p(z) = N(0, I_K), p(x|z) = N(A z + b, s2 I_D), one ensemble member, with an encoder that
    is the exact posterior, optionally with its variance scaled (to make it inexact)."""

    def __init__(self, D=2, K=1, s2=0.3, variance_scale=1.0, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.A = torch.randn(D, K, generator=gen)
        self.b = torch.randn(D, generator=gen)
        self.s2, self.D, self.K, self.M = s2, D, K, 1
        self.log_sigma2 = torch.full((1, 1, D), math.log(s2))
        self.post_cov = torch.linalg.inv(torch.eye(K) + self.A.T @ self.A / s2)
        self.variance_scale = variance_scale

    def encode(self, x):
        mean = (x - self.b) @ self.A @ self.post_cov.T / self.s2
        var = torch.diagonal(self.post_cov) * self.variance_scale
        return mean, var.log().expand_as(mean)

    def decode(self, z):
        return z @ self.A.T + self.b

    def log_marginal(self, x):
        cov = self.A @ self.A.T + self.s2 * torch.eye(self.D)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def sample(self, n, gen):
        z = torch.randn(n, self.K, generator=gen)
        return (self.decode(z) + math.sqrt(self.s2) * torch.randn(n, self.D, generator=gen)).unsqueeze(0)


def test_iwae_bound_with_exact_posterior_equals_log_marginal_for_any_draw():
    model = LinearGaussian(K=1)  # K = 1: the mean-field posterior is exact
    gen = torch.Generator().manual_seed(2)
    x = model.sample(20, gen)
    for S in (1, 7):
        eps = torch.randn(1, 20, S, 1, generator=gen)
        assert torch.allclose(iwae_bound(model, x, eps), model.log_marginal(x), atol=1e-10)


def test_elbo_with_exact_posterior_equals_log_marginal():
    model = LinearGaussian(D=3, K=1)
    gen = torch.Generator().manual_seed(3)
    x = model.sample(10, gen)
    eps = torch.randn(1, 10, 200_000, 1, generator=gen)   # the expectation, by Monte Carlo
    assert torch.allclose(elbo(model, x, eps), model.log_marginal(x), atol=5e-3)


def test_elbo_below_log_marginal_for_inexact_posterior():
    model = LinearGaussian(D=3, K=1, variance_scale=3.0)
    gen = torch.Generator().manual_seed(4)
    x = model.sample(10, gen)
    eps = torch.randn(1, 10, 100_000, 1, generator=gen)
    gap = model.log_marginal(x) - elbo(model, x, eps)
    # KL[q || p(z|x)] between 1-D Gaussians with equal means and variance ratio 3.
    expected_gap = 0.5 * (3.0 - 1 - math.log(3.0))
    assert torch.allclose(gap, torch.full_like(gap, expected_gap), atol=0.03)   # per point, MC error
    assert abs(gap.mean().item() - expected_gap) < 0.006


def test_iwae_bound_rises_with_samples_towards_log_marginal():
    model = LinearGaussian(D=2, K=1, variance_scale=4.0)
    gen = torch.Generator().manual_seed(5)
    x = model.sample(50, gen)
    log_px = model.log_marginal(x).mean()
    bounds = []
    for S in (1, 5, 50, 500):
        eps = torch.randn(1, 50, 400, S, 1, generator=gen).view(1, 50 * 400, S, 1)
        bounds.append(iwae_bound(model, x.repeat_interleave(400, 1), eps).mean())
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert bounds[-1] <= log_px + 1e-3
    assert log_px - bounds[-1] < 0.1 * (log_px - bounds[0])


def test_theorem2_closed_form_is_the_minimiser_found_by_gradient_descent():
    model = LinearGaussian(D=2, K=1, s2=0.3, variance_scale=2.0)
    gen = torch.Generator().manual_seed(6)
    x = model.sample(300, gen)
    eps = torch.randn(1, 300, 8, 1, generator=gen)
    closed_form = sigma2_closed_form(model, x, eps).squeeze(0)
    log_s2 = torch.zeros(1, 1, 2, requires_grad=True)
    model.log_sigma2 = log_s2
    opt = torch.optim.LBFGS([log_s2], max_iter=200, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = -elbo(model, x, eps).mean()
        loss.backward()
        return loss

    opt.step(closure)
    assert torch.allclose(log_s2.detach().exp().view(2), closed_form, rtol=1e-6)
    assert not torch.allclose(closed_form, torch.full_like(closed_form, 0.3), rtol=0.05)


def test_encoder_mutual_information_is_zero_without_dependence_and_large_with_it():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 500, 2, generator=gen)
    eps = torch.randn(1, 500, 1, generator=gen)

    class Encoder:
        def __init__(self, informative):
            self.informative = informative

        def encode(self, x):
            mu = x[..., :1] * 3.0 if self.informative else torch.zeros_like(x[..., :1])
            return mu, torch.full_like(mu, math.log(0.01))

    # Monte-Carlo error of the sampled log q(z) term only: sd about 0.7 / sqrt(500).
    assert abs(encoder_mutual_information(Encoder(False), x, eps).item()) < 0.1
    # I(x; z) for z = 3 x1 + 0.1 noise with x1 ~ N(0,1) is 0.5 log(1 + 9/0.01) = 3.4 nats, and
    # the minibatch estimate is capped at log B = 6.2.
    assert 2.5 < encoder_mutual_information(Encoder(True), x, eps).item() <= math.log(500)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_is_torchs_but_leaves_negligible_weights_out_of_the_gradient(dtype):
    from vaefail.models.vae import NEGLIGIBLE_WEIGHT, logsumexp
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 6, 20, generator=gen, dtype=torch.float64) * 40).to(dtype)   # many weights ~1e-30
    grad = torch.randn(4, 6, generator=gen, dtype=torch.float64).to(dtype)
    ours = x.clone().requires_grad_(True)
    theirs = x.clone().requires_grad_(True)
    value = logsumexp(ours, 2)
    assert torch.equal(value, torch.logsumexp(theirs, 2))
    value.backward(grad)
    torch.logsumexp(theirs, 2).backward(grad)
    weights = (x - torch.logsumexp(x, 2, keepdim=True)).exp()
    negligible = weights < NEGLIGIBLE_WEIGHT
    assert negligible.any() and (~negligible).any()
    assert torch.equal(ours.grad[~negligible], theirs.grad[~negligible])
    assert (ours.grad[negligible] == 0).all()
    with torch.no_grad():
        assert torch.equal(logsumexp(x, 2), torch.logsumexp(x, 2))
