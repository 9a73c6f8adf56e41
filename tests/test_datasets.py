"""The generative processes of appendix H, against their formulas."""
import math

import numpy as np
import pytest
import torch

from vaefail.data.datasets import EMBEDDING, EXAMPLES, example, sample_split

Z = torch.tensor([[-2.0], [-0.3], [0.0], [0.7], [1.9]], dtype=torch.float64)


def Phi(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_figure_eight_formula():
    for z in Z.flatten().tolist():
        u = (0.6 + 1.8 * Phi(z)) * math.pi
        expected = [math.sqrt(2) / 2 * math.cos(u) / (math.sin(u) ** 2 + 1),
                    math.sqrt(2) * math.cos(u) * math.sin(u) / (math.sin(u) ** 2 + 1)]
        assert np.allclose(example("figure-8").decoder(torch.tensor([[z]], dtype=torch.float64))[0].numpy(), expected)


def test_circle_formula_and_tails_meet_at_one_zero():
    out = example("circle").decoder(Z)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(out[2], torch.tensor([-1.0, 0.0], dtype=torch.float64), atol=1e-12)
    tails = example("circle").decoder(torch.tensor([[-6.0], [6.0]], dtype=torch.float64))
    assert torch.allclose(tails, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), atol=1e-6)


def test_absolute_value_is_symmetric_in_z_and_uniform_on_the_diagonal():
    f = example("absolute-value").decoder
    assert torch.allclose(f(Z), f(-Z))
    assert torch.allclose(f(Z)[:, 0], f(Z)[:, 1])
    x = f(torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[:, 0]
    hist = np.histogram(x.numpy(), bins=10, range=(0, 1))[0] / len(x)
    assert np.allclose(hist, 0.1, atol=0.005)


def staircase(u, height):
    k = math.floor(u / 2)
    return height / 2 * math.tanh(10 * u - 20 * k - 10) + height * k + height / 2


def test_clusters_formula():
    for z in Z.flatten().tolist():
        u = 2 * math.pi / (1 + math.exp(-0.5 * math.pi * z))
        t = 2 * math.tanh(10 * u - 20 * math.floor(u / 2) - 10) + 4 * math.floor(u / 2) + 2
        assert t == pytest.approx(staircase(u, 4.0))
        assert np.allclose(example("clusters").decoder(torch.tensor([[z]], dtype=torch.float64))[0].numpy(), [math.cos(t), math.sin(t)])


def test_spiral_dots_formula():
    for z in Z.flatten().tolist():
        u = 4 * math.pi / (1 + math.exp(-0.5 * math.pi * z))
        t = math.tanh(10 * u - 20 * math.floor(u / 2) - 10) + 2 * math.floor(u / 2) + 1
        assert np.allclose(example("spiral-dots").decoder(torch.tensor([[z]], dtype=torch.float64))[0].numpy(),
                           [t * math.cos(t), t * math.sin(t)])


def test_noise_variances_are_the_papers():
    assert {n: e.noise_variance for n, e in EXAMPLES.items() if not e.embedded} == {
        "figure-8": 0.02, "circle": 0.01, "absolute-value": 0.01, "clusters": 0.2, "spiral-dots": 0.01}


@pytest.mark.parametrize("name", ["clusters", "figure-8-5d"])
def test_sampled_noise_has_the_stated_variance_and_versions_are_reproducible(name):
    ex = example(name)
    sizes = {"train": 20_000, "test": 10}
    a = sample_split(ex.decoder, ex, sizes, seed=3)
    b = sample_split(ex.decoder, ex, sizes, seed=3)
    c = sample_split(ex.decoder, ex, sizes, seed=4)
    assert np.array_equal(a["x_train"], b["x_train"]) and not np.array_equal(a["x_train"], c["x_train"])
    mean = ex.decoder(torch.from_numpy(a["z_train"]))
    if ex.embedded:
        mean = mean @ EMBEDDING
    residual = a["x_train"] - mean.numpy()
    assert a["x_train"].shape == (20_000, ex.data_dim)
    assert np.allclose(residual.var(0), ex.noise_variance, rtol=0.05)
