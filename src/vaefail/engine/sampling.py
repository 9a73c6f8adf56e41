"""Ancestral samples x ~ p_theta(x) of the learned models: one sampler per model kind.

The samplers draw their noise from a noise source: each member's counter-based streams when
a training job evaluates its ensemble (StreamNoise), or one torch.Generator when a figure
draws a one-member model (GeneratorNoise).  Either way the same quantities are drawn in the
same order (label, z, observation noise), so the two uses share one sampler.
"""
from __future__ import annotations

import torch

from ..models.m2 import M2Ensemble, encode_labels
from ..models.vae import VAEEnsemble
from ..randomness import MemberStreams


class StreamNoise:
    """Draws of each member's own streams, the quantity named under `purpose`: (M, *shape)."""

    def __init__(self, streams: MemberStreams, purpose: str):
        self.streams, self.purpose = streams, purpose

    def normal(self, quantity: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return self.streams.normal(f"{self.purpose}/{quantity}", (), shape, dtype)

    def integers(self, quantity: str, high: int, shape: tuple) -> torch.Tensor:
        return self.streams.randint(f"{self.purpose}/{quantity}", (), high, shape)


class GeneratorNoise:
    """Draws of one torch.Generator in the order asked, for a one-member model: (1, *shape)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def normal(self, quantity: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(1, *shape, generator=self.generator, dtype=dtype)

    def integers(self, quantity: str, high: int, shape: tuple) -> torch.Tensor:
        return torch.randint(0, high, (1, *shape), generator=self.generator)


@torch.no_grad()
def vae_samples(model: VAEEnsemble, n: int, noise: StreamNoise | GeneratorNoise) -> torch.Tensor:
    """n samples x = f(z) + sigma eps_x, z ~ N(0, I), per member: (M, n, D)."""
    dtype = model.encoder.flat.dtype
    eps_z = noise.normal("z", (n, model.K), dtype)
    eps_x = noise.normal("x", (n, model.D), dtype)
    return model.sample_x(eps_z, eps_x)


@torch.no_grad()
def m2_samples(model: M2Ensemble, n: int, noise: StreamNoise | GeneratorNoise, value=None) -> torch.Tensor:
    """n samples per member of p_theta(x) (y ~ p(y)), or of p_theta(x | y = value): (M, n, D)."""
    labels, dtype, device = model.labels, model.log_sigma2.dtype, model.log_sigma2.device
    if value is not None:
        y = torch.full((model.M, n), float(value), dtype=torch.float64, device=device)
    elif labels.kind == "discrete":
        y = noise.integers("y", labels.classes, (n,))
    else:
        y = noise.normal("y", (n,), torch.float64)
    y = encode_labels(labels, y).to(dtype).to(device)
    z = noise.normal("z", (n, model.K), dtype)
    eps = noise.normal("x", (n, model.D), dtype)
    return model.decode(y, z) + (0.5 * model.log_sigma2).exp() * eps
