"""The geometry of appendix K's attack on the 5-D data, and its classifier.

Appendix K's classifier is a *learned* one: right on the true manifold (its labels are
y = g(f_GT(z)), eq. 40) and arbitrary off it, so that a perturbation off the manifold can cross
its boundary (the orange line of Figure 5).  The 5-D data make this exact: the true manifold
lies in the 2-D plane spanned by the rows of datasets.EMBEDDING, and every direction off that
plane is pure noise.  With Pi the orthogonal projection onto the plane, Q (D, 2) an orthonormal
basis of it and N2 (D, 2) two orthonormal directions off it (the first two of the
right-singular vectors of EMBEDDING that span its null space, signs fixed), the classifier is

    g(x) = g_plane(S x),   S = Q Q^T + gain * Q N2^T,

i.e. g_plane of the in-plane part of x plus `attack_gain` times its off-plane part (in N2)
turned into the plane.  On the plane g = g_plane, the true classifier; off it a step of
length r moves the point the classifier sees by gain * r, so without a defence a point at
in-plane distance d from the boundary falls with |eta| ~ d / gain, while behind a projection
that removes the off-plane part the attacker must move the point along the plane, |eta| ~ d.
gain = 0 is a classifier that ignores the noise directions (no defence needed).  g_plane:

  Figure-8  the sign of x_1 in the example's own 2-D coordinates (a half-space through the
            lemniscate's crossing point): on the manifold this is exactly the sign of z
            (z < 0 traces the left lobe, z > 0 the right one, z = 0 is the crossing), and the
            boundary crosses the manifold where its density is highest (z near 0), so the
            attack reaches many points.
  Clusters  the nearest true cluster centre: the centres are the means of f_GT(z) over each
            flat stretch of the staircase t(u(z)) (eq. 36), i.e. the cluster of Clusters;
            points on the sparse links are labelled by the nearer centre.
  other     (any other example among latent_datasets) a half-space through f_GT(0)
            perpendicular to the manifold's tangent there: the sign of z near z = 0.

Spiral-Dots (2-D) is in the denoising table and Figure 5b but not in the attack: in 2-D no
direction is off the manifold everywhere, so there is no learned classifier of this kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.datasets import EMBEDDING, example
from . import projection as PJ

DTYPE = torch.float64


@dataclass(frozen=True)
class Plane:
    """The plane of the true manifold in x-space: Q (D, 2) an orthonormal basis, N (D, D - 2)
    an orthonormal basis of the directions off it, and `to_2d` (D, 2), x -> the example's own
    2-D coordinates of the orthogonal projection of x onto the plane (the pseudo-inverse of
    the embedding; the identity for 2-D data)."""

    Q: torch.Tensor
    N: torch.Tensor
    to_2d: torch.Tensor
    from_2d: torch.Tensor

    @property
    def D(self) -> int:
        return self.Q.shape[0]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Pi x: the orthogonal projection onto the plane."""
        return (x @ self.Q) @ self.Q.T

    def coords(self, x) -> np.ndarray:
        """The example's 2-D coordinates of (the in-plane part of) x (..., D) -> (..., 2)."""
        return (torch.as_tensor(np.asarray(x), dtype=DTYPE) @ self.to_2d).numpy()

    def off_plane_norm(self, x) -> np.ndarray:
        x = torch.as_tensor(np.asarray(x), dtype=DTYPE)
        return (x @ self.N).norm(dim=-1).numpy() if self.N.shape[1] else np.zeros(x.shape[:-1])


def _fix_signs(basis: torch.Tensor) -> torch.Tensor:
    """Make each column's largest-magnitude entry positive (SVD signs are arbitrary)."""
    idx = basis.abs().argmax(0)
    signs = torch.sign(basis[idx, torch.arange(basis.shape[1])])
    return basis * torch.where(signs == 0, torch.ones_like(signs), signs)


def plane_of(dataset: str) -> Plane:
    """The plane of a data set's true manifold: span of EMBEDDING's rows (5-D), or all of x (2-D)."""
    if example(dataset).embedded:
        E = EMBEDDING.to(DTYPE)
        _, _, Vh = torch.linalg.svd(E, full_matrices=True)
        return Plane(_fix_signs(Vh[:2].T.contiguous()), _fix_signs(Vh[2:].T.contiguous()),
                     torch.linalg.pinv(E), E)
    eye = torch.eye(2, dtype=DTYPE)
    return Plane(eye, torch.zeros(2, 0, dtype=DTYPE), eye, eye)


class OffPlaneTiltedClassifier:
    """g(x) = base(S x) with S = Q Q^T + gain Q N2^T (module docstring): the true classifier
    `base` on the plane of the manifold, tilted off it so that an off-plane step of length r
    moves the point it sees by gain * r within the plane.  Has the interface of the
    classifiers of analyses.projection (call -> labels, margin(x, y) > 0 iff classified y)."""

    def __init__(self, base, plane: Plane, gain: float):
        self.base, self.plane, self.gain = base, plane, float(gain)
        S = plane.Q @ plane.Q.T
        if plane.N.shape[1] >= 2 and gain:
            S = S + self.gain * plane.Q @ plane.N[:, :2].T
        elif plane.N.shape[1] == 0:
            S = torch.eye(plane.D, dtype=DTYPE)
        self.S = S

    def seen(self, x: torch.Tensor) -> torch.Tensor:
        """S x: the in-plane point the classifier classifies."""
        return x @ self.S.T.to(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.seen(x))

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.margin(self.seen(x), y)

    def off_plane_partner(self, direction: torch.Tensor) -> torch.Tensor:
        """For an in-plane unit vector w, the off-plane unit vector n with S n = gain w."""
        if self.plane.N.shape[1] < 2:
            return torch.zeros_like(direction)
        return self.plane.N[:, :2] @ (self.plane.Q.T @ direction)


def cluster_index(z: torch.Tensor) -> torch.Tensor:
    """The flat stretch of the Clusters staircase t(u(z)) (eq. 36) that z falls on, 0..3."""
    u = 2 * math.pi / (1 + torch.exp(-0.5 * math.pi * z.reshape(-1)))
    return torch.floor((u + 1) / 2).long()


def prior_quantiles(n: int = 4001) -> torch.Tensor:
    """z at n equally spaced quantiles of N(0, 1), (n, 1): prior means by equal weights."""
    p = (torch.arange(n, dtype=DTYPE) + 0.5) / n
    return (math.sqrt(2) * torch.special.erfinv(2 * p - 1)).unsqueeze(-1)


def plane_classifier(dataset: str, decoder: Callable, plane: Plane):
    """(g_plane, description): the true classifier on the plane of the manifold (module docstring)."""
    base = example(dataset).base
    if base == "figure-8":
        return PJ.HalfSpaceClassifier(plane.to_2d[:, 0], 0.0), "sign of x_1 (= sign of z on the manifold)"
    if base == "clusters":
        return (PJ.NearestCentreClassifier.class_means(decoder, cluster_index, prior_quantiles()),
                "nearest true cluster centre")
    off = plane.N[:, 0] if plane.N.shape[1] else None
    return (PJ.HalfSpaceClassifier.tilted(decoder, 0.0, 0.0, off_manifold=off),
            "half-space through f(0) normal to the manifold (sign of z near 0)")
