"""The synthetic data sets of the paper (appendix H) and their ground-truth decoders.

Each example has a closed-form decoder f_GT(z) of a 1-D latent z ~ N(0, 1) and an
observation-noise variance.  As in the paper, the data are generated not by the closed
form but by a surrogate network of the decoder's architecture, fitted to it by full
supervision until its mean squared error is below 1e-4; the surrogate then also serves
as the ground-truth decoder for GT-initialised restarts and for exact posteriors.

A "-5d" variant embeds an example linearly into 5-D (appendix F, Table 2):
x = A^T f_GT(z) + eps with eps ~ N(0, sigma^2 I_5) — the noise is added in 5-D,
otherwise the data would lie exactly on a 2-D plane and sigma^2 could shrink to zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Phi = torch.special.ndtr  # the standard normal CDF

# The linear embedding of appendix F (a 2 x 5 matrix: x_5d = x_2d @ EMBEDDING).
EMBEDDING = torch.tensor([[1.0, 0.0, 0.5, 0.2, -0.8],
                          [0.0, 1.0, -0.5, 0.3, -0.1]], dtype=torch.float64)


# Each closed-form decoder maps z of shape (..., 1) to f(z) of shape (..., 2).

def figure_eight(z: torch.Tensor) -> torch.Tensor:
    """Eq. 33: a lemniscate traversed as Phi(z) goes from 0 to 1."""
    z = z.squeeze(-1)
    u = (0.6 + 1.8 * Phi(z)) * math.pi
    denominator = torch.sin(u) ** 2 + 1
    return torch.stack([math.sqrt(2) / 2 * torch.cos(u) / denominator,
                        math.sqrt(2) * torch.cos(u) * torch.sin(u) / denominator], -1)


def circle(z: torch.Tensor) -> torch.Tensor:
    """Eq. 34: the unit circle, both tails of z meeting at (1, 0)."""
    z = z.squeeze(-1)
    angle = 2 * math.pi * Phi(z)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


def absolute_value(z: torch.Tensor) -> torch.Tensor:
    """Eq. 35, read as the folded CDF (|2 Phi(z) - 1|, |2 Phi(z) - 1|).

    As printed, eq. 35 is |Phi(z)| = Phi(z): monotone in z, so its posteriors would be
    unimodal, contradicting appendix H.3 (true posteriors a Gaussian cannot fit, Figure 7d).
    Folding gives z and -z the same x, hence bimodal posteriors, while p(x) stays exactly
    that of the printed Phi(z) (uniform on the diagonal segment): the printed map is then
    the "alternative f with simpler posteriors that explains p(x) equally well" of H.3.
    """
    v = (2 * Phi(z.squeeze(-1)) - 1).abs()
    return torch.stack([v, v], -1)


def _staircase(u: torch.Tensor, height: float) -> torch.Tensor:
    """t(u) of eqs. 36-37: steps of `height` at odd u, flat in between."""
    k = torch.floor(u / 2)
    return (height / 2) * torch.tanh(10 * u - 20 * k - 10) + height * k + height / 2


def clusters(z: torch.Tensor) -> torch.Tensor:
    """Eq. 36: a step function embedded on the unit circle (dense clusters, sparse links)."""
    z = z.squeeze(-1)
    u = 2 * math.pi / (1 + torch.exp(-0.5 * math.pi * z))
    t = _staircase(u, 4.0)
    return torch.stack([torch.cos(t), torch.sin(t)], -1)


def spiral_dots(z: torch.Tensor) -> torch.Tensor:
    """Eq. 37: a step function embedded on a spiral (dots along an Archimedean spiral)."""
    z = z.squeeze(-1)
    u = 4 * math.pi / (1 + torch.exp(-0.5 * math.pi * z))
    t = _staircase(u, 2.0)
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], -1)


@dataclass(frozen=True)
class Example:
    name: str
    decoder: Callable[[torch.Tensor], torch.Tensor]
    noise_variance: float
    embedded: bool = False     # the 5-D linear embedding of appendix F

    @property
    def base(self) -> str:
        """The 2-D example whose surrogate decoder this data set uses."""
        return self.name.removesuffix("-5d")

    @property
    def data_dim(self) -> int:
        return EMBEDDING.shape[1] if self.embedded else 2


_BASE = {
    "figure-8": (figure_eight, 0.02),
    "circle": (circle, 0.01),
    "absolute-value": (absolute_value, 0.01),
    "clusters": (clusters, 0.2),
    "spiral-dots": (spiral_dots, 0.01),
}
EXAMPLES: dict[str, Example] = {name: Example(name, f, s2) for name, (f, s2) in _BASE.items()}
EXAMPLES.update({f"{name}-5d": Example(f"{name}-5d", f, s2, embedded=True)
                 for name, (f, s2) in _BASE.items()})
TITLES = {"figure-8": "Figure-8", "circle": "Circle", "absolute-value": "Absolute-Value",
          "clusters": "Clusters", "spiral-dots": "Spiral-Dots"}


def example(name: str) -> Example:
    try:
        return EXAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(EXAMPLES)}") from None


def sample_split(decoder: Callable[[torch.Tensor], torch.Tensor], ex: Example, sizes: dict[str, int],
                 seed: int) -> dict[str, np.ndarray]:
    """Draw z ~ N(0,1), x = f(z) (embedded if the example says so) + N(0, sigma^2 I) noise.

    Returns float64 arrays z_<split> (n, 1) and x_<split> (n, D) for each split in `sizes`.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in sizes.items():
        z = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            mean = decoder(z).to(torch.float64)
        if ex.embedded:
            mean = mean @ EMBEDDING
        noise = torch.randn(n, ex.data_dim, generator=gen, dtype=torch.float64)
        out[f"z_{split}"] = z.numpy()
        out[f"x_{split}"] = (mean + math.sqrt(ex.noise_variance) * noise).numpy()
    return out
