"""Tests of analyses.projection (appendix K, Figure 5) against closed forms.

For a linear-Gaussian model f(z) = A z + b, x | z ~ N(f(z), sigma^2 I) with its exact posterior
mean as the encoder, the projection is M(x) = b + P (x - b), P = A S A^T / sigma^2, and both the
noise it removes and the smallest perturbation that flips a half-space classifier behind it
are closed forms.  A model with K = D and a smaller sigma^2 but the same p(x) (the mismatched
model of appendix K) has P close to I and removes almost no noise.
"""
import math

import numpy as np
import pytest
import torch

from vaefail.analyses import disentanglement as F
from vaefail.analyses import projection as K
from vaefail.data.datasets import circle
from vaefail.models.vae import VAEEnsemble
from vaefail.report.figures.figure5 import plot_projection_panel

A = torch.tensor([[1.0], [0.5]], dtype=torch.float64)         # a line in 2-D, K = 1
B = torch.tensor([0.2, -0.1], dtype=torch.float64)
SIGMA2 = 0.05


def line(z):
    return z @ A.T + B


def points(n, seed=0, decoder=line, sigma2=SIGMA2):
    return K.noisy_manifold_points(decoder, 1, sigma2, n, torch.Generator().manual_seed(seed))


def mismatched_loading(sigma2):
    """K = D = 2 with a smaller noise variance and exactly the truth's p(x)."""
    return F.ppca_loading(F.marginal_covariance(A, SIGMA2), 2, sigma2)


def random_ensemble(members=2, seed=0):
    """A nonlinear VAEEnsemble (2 -> 16 -> 2 latents) with random weights."""
    model = VAEEnsemble(2, 2, [16], members, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in (model.encoder, model.decoder):
            params.flat.copy_(2 * torch.rand(params.flat.shape, generator=gen, dtype=torch.float64) - 1)
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return model


# --- projections -------------------------------------------------------------------------
def test_true_linear_model_moves_a_manifold_point_only_by_its_encoder_error():
    A3 = torch.tensor([[1.0, 0.3], [0.2, -0.8], [0.5, 0.5]], dtype=torch.float64)
    b3 = torch.tensor([0.1, 0.0, -0.3], dtype=torch.float64)
    noise = torch.tensor([[1e-2] * 3, [1e-4] * 3], dtype=torch.float64)
    model = F.linear_gaussian_ensemble(torch.stack([A3, A3]), torch.stack([b3, b3]), noise)
    z0 = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0 = z0 @ A3.T + b3
    errors = K.projection(model, x0) - x0
    for m in range(2):
        S = torch.linalg.inv(F.posterior_precision(A3, noise[m]))
        encoder_error = F.encoder_codes(model, x0)[m] - z0          # mu(f(z0)) - z0 = -S z0
        np.testing.assert_allclose(encoder_error.numpy(), -(z0 @ S).numpy(), atol=1e-12)
        np.testing.assert_allclose(errors[m].numpy(), (encoder_error @ A3.T).numpy(), atol=1e-12)
    norms = errors.norm(dim=-1)
    assert float(norms[1].max()) < 0.02 * float(norms[0].max())     # shrinks with sigma^2
    assert float(norms[1].max()) < 1e-3


def test_true_nonlinear_projection_returns_manifold_points_to_the_encoder_error():
    """Circle decoder with the exact posterior mean: |M(f(z0)) - f(z0)| <= max|f'| |mu - z0|."""
    encoder = K.posterior_mean_encoder(circle, 1e-3)
    z0 = torch.linspace(-2, 2, 41, dtype=torch.float64).unsqueeze(-1)
    x0 = circle(z0)
    encoder_error = (encoder(x0) - z0).abs().squeeze(-1)
    error = (K.decoder_projector(circle, encoder)(x0) - x0).norm(dim=-1)
    lipschitz = 2 * math.pi / math.sqrt(2 * math.pi)                  # max |f'(z)| = 2 pi phi(0)
    assert bool((error <= lipschitz * encoder_error + 1e-12).all())
    assert float(encoder_error.max()) < 0.02 and float(error.max()) < 0.01


def test_exact_projection_has_the_closed_form_spectrum_and_matches_the_ensemble():
    s = torch.linalg.svdvals(A)
    eigenvalues = torch.linalg.eigvals(K.linear_gaussian_projection_matrix(A, SIGMA2)).real.sort().values
    np.testing.assert_allclose(eigenvalues.numpy(), [0.0, float(s[0] ** 2 / (s[0] ** 2 + SIGMA2))], atol=1e-12)
    _, _, x = points(20)
    model = F.linear_gaussian_ensemble(A, B, SIGMA2)
    np.testing.assert_allclose(K.projection(model, x)[0].numpy(),
                               K.linear_gaussian_projection(A, B, SIGMA2, x).numpy(), atol=1e-12)


# --- the noise a projection removes --------------------------------------------------------
@pytest.mark.parametrize("which", ["true", "mismatched"])
def test_noise_removed_by_the_exact_projection_equals_its_closed_form(which):
    loading, noise = (A, SIGMA2) if which == "true" else (mismatched_loading(SIGMA2 / 10), SIGMA2 / 10)
    model = F.linear_gaussian_ensemble(loading, B, noise)
    _, clean, x = points(20000, seed=2)
    measured = K.denoising(K.model_projector(model), clean, x, SIGMA2)
    per_point = ((K.projection(model, x)[0] - clean) ** 2).sum(-1)
    standard_error = float(per_point.std()) / math.sqrt(per_point.numel())
    closed = K.linear_gaussian_denoising(loading, B, noise, A, B, SIGMA2)
    assert measured.noise_error == closed.noise_error == pytest.approx(2 * SIGMA2)
    assert abs(float(measured.projected_error[0] - closed.projected_error[0])) < 4 * standard_error
    if which == "true":   # the posterior variance of f(z): sigma^2 sum_k s_k^2 / (s_k^2 + sigma^2)
        s2 = torch.linalg.svdvals(A) ** 2
        assert float(closed.projected_error[0]) == pytest.approx(float(SIGMA2 * (s2 / (s2 + SIGMA2)).sum()))


def test_mismatched_model_removes_less_noise_and_none_in_the_limit():
    true = K.linear_gaussian_denoising(A, B, SIGMA2)
    ratios = [float(K.linear_gaussian_denoising(mismatched_loading(SIGMA2 * f), B, SIGMA2 * f,
                                                A, B, SIGMA2).ratio[0]) for f in [0.5, 0.1, 1e-3]]
    assert float(true.ratio[0]) < 0.5                                 # at most K / D = 1/2 left
    assert float(true.ratio[0]) < ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] > 0.99


# --- classifiers and the attack --------------------------------------------------------
def test_tilted_boundary_labels_a_straight_manifold_by_the_side_of_z():
    z, _, _ = points(500)
    for tilt in [0.0, 0.7, 1.4]:
        g = K.HalfSpaceClassifier.tilted(line, 0.3, tilt)
        np.testing.assert_array_equal(K.manifold_labels(g, line, z).numpy(), (z[:, 0] > 0.3).long().numpy())


def test_margins_are_positive_exactly_for_the_predicted_label():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    centres = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [-0.5, -0.8]], dtype=torch.float64)
    for g, classes in [(K.NearestCentreClassifier(centres), 3), (K.HalfSpaceClassifier([0.3, -1.0], 0.2), 2)]:
        predicted = g(x)
        for c in range(classes):
            y = torch.full((300,), c)
            np.testing.assert_array_equal((g.margin(x, y) > 0).numpy(), (predicted == c).numpy())


def test_zero_budget_attack_never_succeeds():
    _, _, x = points(100, decoder=circle, sigma2=0.01)
    g = K.HalfSpaceClassifier.tilted(circle, 0.0, 1.2)
    z, _, _ = points(100, decoder=circle, sigma2=0.01)
    y = K.manifold_labels(g, circle, z)
    for project in [K.model_projector(random_ensemble()), K.identity_projector]:
        result = K.attack(project, g, x, y, [0.0], steps=5, restarts=3, generator=torch.Generator().manual_seed(0))
        assert result.success_rate.shape[1] == 1
        np.testing.assert_array_equal(result.success_rate[:, 0], 0.0)
        assert not np.isfinite(result.minimal_budget).any()
        assert (result.clean_accuracy > 0).all()


def test_attack_success_rate_does_not_decrease_with_budget():
    z, _, x = points(150, decoder=circle, sigma2=0.01, seed=4)
    g = K.HalfSpaceClassifier.tilted(circle, 0.0, 0.5)
    y = K.manifold_labels(g, circle, z)
    budgets = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6]
    truth = K.decoder_projector(circle, K.posterior_mean_encoder(circle, 0.01, grid=K.P.uniform_grid(-6, 6, 601)))
    for project, members in [(K.model_projector(random_ensemble(seed=5)), 2), (truth, 1)]:
        result = K.attack(project, g, x, y, budgets, steps=15, restarts=2, generator=torch.Generator().manual_seed(1))
        assert result.success_rate.shape == (members, 6)
        assert (np.diff(result.success_rate, axis=1) >= 0).all()
        assert (result.success_rate[:, -1] > result.success_rate[:, 1]).all()
        found = np.isfinite(result.minimal_budget)                  # a found eta is within its budget
        norms = np.linalg.norm(result.perturbation, axis=-1)
        assert (norms[found] <= result.minimal_budget[found] + 1e-9).all()


def test_attack_finds_the_exact_minimal_budget_behind_a_linear_projection():
    """PGD through the exact projection reaches the closed-form minimal |eta| (the score is affine
    in eta); the mismatched model, which barely projects, is broken with smaller budgets."""
    z, _, x = points(200, seed=5)
    g = K.HalfSpaceClassifier.tilted(line, 0.0, 1.3)
    y = K.manifold_labels(g, line, z)
    budgets = np.linspace(0.0, 1.0, 6)
    minimal = {}
    for name, loading, noise in [("true", A, SIGMA2), ("mismatched", mismatched_loading(SIGMA2 / 10), SIGMA2 / 10)]:
        model = F.linear_gaussian_ensemble(loading, B, noise)
        result = K.attack(K.model_projector(model), g, x, y, budgets, steps=10, restarts=1)
        exact = K.linear_gaussian_minimal_budget(loading, B, noise, g, x).numpy()
        correct = ~np.isnan(result.minimal_budget[0])
        expected = [(exact[correct] <= budget).mean() for budget in budgets]
        np.testing.assert_allclose(result.success_rate[0], expected, atol=1.0 / correct.sum() + 1e-12)
        minimal[name] = np.median(exact[correct])
    assert minimal["true"] > 2 * minimal["mismatched"]


# --- Figure 5 ------------------------------------------------------------------------------
def test_figure5_arrays_show_the_mismatched_model_barely_projecting():
    true = K.model_projector(F.linear_gaussian_ensemble(A, B, SIGMA2))
    mismatched = K.model_projector(F.linear_gaussian_ensemble(mismatched_loading(SIGMA2 / 50), B, SIGMA2 / 50))
    grid = K.uniform_grid_points(-1.5, 1.5, 9)
    out = K.projected_grid({"true": true, "mismatched": mismatched}, grid)
    assert out["grid"].shape == (81, 2) and out["true"].shape == (1, 81, 2)
    # the true projection lands on the line b + span(A); the mismatched one barely moves x
    offsets = out["true"][0] - B.numpy()
    normal = np.array([-0.5, 1.0])
    np.testing.assert_allclose(offsets @ normal, 0.0, atol=1e-12)
    assert out["mismatched_mean_shift"][0] < 0.1 * out["true_mean_shift"][0]

    z, _, x = points(40, seed=6)
    g = K.HalfSpaceClassifier.tilted(line, 0.0, 1.3)
    y = K.manifold_labels(g, line, z).numpy()
    example = K.adversarial_example(g, x, y, np.linspace(0, 1, 11), {"true": true, "mismatched": mismatched},
                                    steps=10, restarts=1)
    flipped = g(torch.from_numpy(example["perturbed"])).numpy() != y       # the undefended attack worked
    attacked = flipped & np.isfinite(example["minimal_budget"])
    assert attacked.sum() >= 10
    restored_true = (example["true_label"] == y)[attacked].mean()
    restored_mismatched = (example["mismatched_label"] == y)[attacked].mean()
    assert restored_true > 0.8 and restored_mismatched < 0.2


def test_figure5_panel_draws(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    true = K.model_projector(F.linear_gaussian_ensemble(A, B, SIGMA2))
    out = K.projected_grid({"true": true}, K.uniform_grid_points(-1.0, 1.0, 5))
    z, _, x = points(3, seed=7)
    g = K.HalfSpaceClassifier.tilted(line, 0.0, 1.3)
    example = K.adversarial_example(g, x, K.manifold_labels(g, line, z), [0.0, 0.5, 1.0], {"true": true}, steps=5)
    fig, ax = plt.subplots()
    manifold = line(torch.linspace(-2, 2, 50, dtype=torch.float64).unsqueeze(-1)).numpy()
    plot_projection_panel(ax, manifold, out["grid"], out["true"][0], example, "true", g, "true model")
    fig.savefig(tmp_path / "panel.png")
    plt.close(fig)
    assert (tmp_path / "panel.png").stat().st_size > 0
