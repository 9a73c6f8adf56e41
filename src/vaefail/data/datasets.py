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


def _normal_grid(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A z-grid on [-6, 6] with N(0, 1)-density quadrature weights summing to 1."""
    grid = torch.linspace(-6.0, 6.0, points, dtype=torch.float64)
    weights = torch.exp(-0.5 * grid ** 2)
    return grid, weights / weights.sum()


@dataclass(frozen=True)
class Example:
    """An unsupervised example: decoder input is z (1-D)."""

    name: str
    decoder: Callable[[torch.Tensor], torch.Tensor]
    noise_variance: float
    embedded: bool = False     # the 5-D linear embedding of appendix F
    input_dim: int = 1         # width of the decoder network's input

    @property
    def base(self) -> str:
        """The 2-D example whose surrogate decoder this data set uses."""
        return self.name.removesuffix("-5d")

    @property
    def data_dim(self) -> int:
        return EMBEDDING.shape[1] if self.embedded else 2

    # The surrogate fit sees the decoder as a map from network inputs to x-means.
    def sample_inputs(self, gen: torch.Generator, n: int) -> torch.Tensor:
        return torch.randn(n, 1, generator=gen, dtype=torch.float64)

    def quadrature(self, points: int) -> tuple[torch.Tensor, torch.Tensor]:
        grid, weights = _normal_grid(points)
        return grid.unsqueeze(-1), weights

    def decoder_of_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.decoder(inputs)


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


def example(name: str):
    """The Example or SemiSupervisedExample of this name."""
    try:
        return {**EXAMPLES, **SEMI_SUPERVISED}[name]
    except KeyError:
        known = ", ".join([*EXAMPLES, *SEMI_SUPERVISED])
        raise ValueError(f"unknown data set {name!r}; known: {known}") from None


# --- semi-supervised examples (appendix I) ------------------------------------------------
def _semicircle_angle(weight_sqrt: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """pi * (w sqrt(Phi(z)) + (1 - w) Phi(z)^3): w = 1 and w = 0 are the two halves' laws."""
    u = Phi(z)
    return math.pi * (weight_sqrt * torch.sqrt(u) + (1 - weight_sqrt) * u ** 3)


def discrete_semicircle(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 38: y in {0, 1} picks sqrt(Phi(z)) or Phi(z)^3 as the position on the upper semi-circle."""
    angle = _semicircle_angle((y == 0).to(z.dtype), z)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


def beta_inverse_cdf_of_normal(y: torch.Tensor) -> torch.Tensor:
    """h(y) = B^{-1}(Phi(y); 0.2, 0.2): pushes y ~ N(0,1) to a U-shaped Beta(0.2, 0.2) weight."""
    from scipy.special import betaincinv
    u = Phi(y.detach().to(torch.float64)).numpy()
    return torch.from_numpy(betaincinv(0.2, 0.2, u)).to(y.dtype)


def continuous_semicircle(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 39: the weight h(y) mixes the two laws of eq. 38 continuously."""
    angle = _semicircle_angle(beta_inverse_cdf_of_normal(y), z)
    return torch.stack([torch.cos(angle), torch.sin(angle)], -1)


@dataclass(frozen=True)
class SemiSupervisedExample:
    """x = f(y, z) + eps with z ~ N(0, 1) and a discrete (Bernoulli(1/2)) or continuous
    (N(0, 1)) label y.  The decoder network's input is [one-hot(y), z] or [y, z]."""

    name: str
    closed_form: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    noise_variance: float
    label_kind: str            # 'discrete' | 'continuous'
    cohorts: tuple             # the label values whose p(x | y) Tables 4 compares
    classes: int = 2
    embedded: bool = False
    data_dim: int = 2

    @property
    def base(self) -> str:
        return self.name

    @property
    def label_dim(self) -> int:
        return self.classes if self.label_kind == "discrete" else 1

    @property
    def input_dim(self) -> int:
        return self.label_dim + 1

    def encode_label(self, y: torch.Tensor) -> torch.Tensor:
        """(n,) labels -> (n, label_dim) decoder/encoder input (one-hot, or the value)."""
        if self.label_kind == "discrete":
            return torch.nn.functional.one_hot(y.long(), self.classes).to(torch.float64)
        return y.to(torch.float64).unsqueeze(-1)

    def sample_labels(self, gen: torch.Generator, n: int) -> torch.Tensor:
        if self.label_kind == "discrete":
            return torch.randint(0, self.classes, (n,), generator=gen)
        return torch.randn(n, generator=gen, dtype=torch.float64)

    def sample_inputs(self, gen: torch.Generator, n: int) -> torch.Tensor:
        y = self.sample_labels(gen, n)
        return torch.cat([self.encode_label(y), torch.randn(n, 1, generator=gen, dtype=torch.float64)], -1)

    def quadrature(self, points: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.label_kind == "discrete":
            z, w = _normal_grid(points)
            inputs = torch.cat([torch.cat([self.encode_label(torch.full_like(z, c)), z.unsqueeze(-1)], -1)
                                for c in range(self.classes)])
            return inputs, torch.cat([w / self.classes] * self.classes)
        side = max(int(math.sqrt(points)), 11)
        g, w = _normal_grid(side)
        yy, zz = torch.meshgrid(g, g, indexing="ij")
        return torch.stack([yy.flatten(), zz.flatten()], -1), (w[:, None] * w[None, :]).flatten()

    def decoder_of_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        z = inputs[..., -1]
        y = inputs[..., :-1].argmax(-1) if self.label_kind == "discrete" else inputs[..., 0]
        return self.closed_form(y, z)


SEMI_SUPERVISED = {
    "discrete-semicircle": SemiSupervisedExample("discrete-semicircle", discrete_semicircle, 0.01,
                                                 "discrete", cohorts=(0, 1)),
    "continuous-semicircle": SemiSupervisedExample("continuous-semicircle", continuous_semicircle, 0.01,
                                                   "continuous", cohorts=(-3.5, 3.5)),
}


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
