"""Appendix F's truth and its data (the `disentangle` experiment): a linear-Gaussian model

    z ~ N(0, I_2),   x = A z + eps,   eps ~ N(0, sigma2 I_5),   A = U diag(singular_values) R(angle)^T

(config key `linear_gaussian`; entangled_linear_map: U spans the plane of the appendix's 5-D
embedding), b = 0 (an offset changes neither the posteriors nor the codes' information).  Its
posteriors are correlated unless the angle is 0 or the singular values are equal, and the
rotation that maximises the ELBO turns the latents by the angle (analyses.disentanglement): at
45 degrees the latents the ELBO prefers mix both true ones equally.

Conventions: float64 torch; A is (D, K) (or batched (..., D, K)); s2 is a scalar, (D,) or
batched (..., D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .. import grid
from ..files import save_npz
from ..randomness import derive_seed
from .datasets import EMBEDDING

DTYPE = torch.float64


def as_float64(a) -> torch.Tensor:
    """a as a float64 tensor on the CPU (detached)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(device="cpu", dtype=DTYPE)
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


def noise_variances(s2, A: torch.Tensor) -> torch.Tensor:
    """s2 as per-dimension variances broadcastable against A's rows: (..., D)."""
    s2 = as_float64(s2)
    return s2.expand(A.shape[:-1]) if s2.dim() == 0 else s2.expand(*A.shape[:-2], A.shape[-2])


def sample_linear_gaussian(A, b, s2, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n draws z ~ N(0, I_K), x = A z + b + eps, eps ~ N(0, diag(s2)): (z (n, K), x (n, D))."""
    A, b = as_float64(A), as_float64(b)
    D, K = A.shape
    z = torch.randn(n, K, generator=generator, dtype=DTYPE)
    eps = torch.randn(n, D, generator=generator, dtype=DTYPE)
    return z, z @ A.T + b + noise_variances(s2, A).sqrt() * eps


def linear_gaussian_split(A, b, s2, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Data sets of the appendix-F model in the layout of datasets.sample_split: float64 arrays
    z_<split> (n, K) and x_<split> (n, D) for each split of `sizes`, from torch.Generator(seed)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for split, n in sizes.items():
        z, x = sample_linear_gaussian(A, b, s2, n, gen)
        out[f"z_{split}"], out[f"x_{split}"] = z.numpy(), x.numpy()
    return out


def rotation(angle) -> torch.Tensor:
    """The 2 x 2 rotation by `angle` (radians); a tensor of angles gives (..., 2, 2)."""
    a = as_float64(angle)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def entangled_linear_map(singular_values: Sequence[float], angle: float, column_space=None) -> torch.Tensor:
    """A = U diag(singular_values) R(angle)^T for K = 2: a map whose ELBO-preferred latents are the
    true ones rotated by `angle` (analyses.disentanglement.elbo_maximising_rotation(A) = R(angle) up
    to signs/permutation).
    angle = 0 gives orthogonal columns (no preference); pi/4 with distinct singular values the
    most entangled preference.  U: an orthonormal basis of `column_space` (D, 2), by default the
    plane of appendix F's 5-D embedding (datasets.EMBEDDING^T)."""
    basis = EMBEDDING.T if column_space is None else as_float64(column_space)
    U, _ = torch.linalg.qr(basis.to(DTYPE))
    return U @ torch.diag(as_float64(singular_values)) @ rotation(angle).T


@dataclass(frozen=True, eq=False)
class LinearGaussianTruth:
    """Appendix F's truth, with what a training job asks of an example (datasets.Example)."""

    A: torch.Tensor                  # (D, K) float64
    noise_variance: float            # sigma^2, isotropic
    name: str = grid.LINEAR_GAUSSIAN
    embedded: bool = False

    @property
    def b(self) -> torch.Tensor:
        return torch.zeros(self.data_dim, dtype=torch.float64)

    @property
    def data_dim(self) -> int:
        return self.A.shape[0]


def truth(settings: dict) -> LinearGaussianTruth:
    spec = settings["linear_gaussian"]
    A = entangled_linear_map(spec["singular_values"], math.radians(spec["angle_degrees"]))
    return LinearGaussianTruth(A, float(spec["sigma2"]))


def make_dataset(settings: dict, out_paths: list[str]) -> None:
    """Every version of the linear-Gaussian data, with the true z of each point (for the MIG)."""
    t = truth(settings)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}
    for version, path in enumerate(out_paths):
        seed = derive_seed(settings["seed"], "data", grid.LINEAR_GAUSSIAN, version)
        save_npz(path, linear_gaussian_split(t.A, t.b, t.noise_variance, sizes, seed))
