"""A bound averaged over data points, for every member of an ensemble at once, in chunks of
points sized for the device, with each point's noise from its member's streams.

The trainer's validation curve, the choice among the ground-truth encoders and the evaluation
of trained members take their bounds from here (and M2's task its chunks), so a bound gets the
same chunks and the same noise wherever it is computed.
"""
from __future__ import annotations

import math

import torch

from ..models.vae import OBJECTIVES, VAEEnsemble
from ..randomness import MemberStreams

# Rows (members x points x samples) per batched forward pass.  On the CPU, activations of
# ~32k rows stay in the cache: 6x faster per member than 600k-row passes (measured here, M=12,
# IWAE log p(x) with 200 samples); a GPU wants few, large launches.
CPU_ROWS_PER_PASS = 1 << 15
GPU_ROWS_PER_PASS = 1 << 22
NOISE_ELEMENTS_PER_DRAW = 1 << 22


def point_chunks(n_points: int, rows_per_point: int, device: torch.device) -> list[slice]:
    """Slices of range(n_points) whose forward passes hold about the device's rows per pass."""
    budget = CPU_ROWS_PER_PASS if device.type == "cpu" else GPU_ROWS_PER_PASS
    size = max(1, budget // max(1, rows_per_point))
    return [slice(s, min(s + size, n_points)) for s in range(0, n_points, size)]


def sum_over_chunks(per_chunk, x: torch.Tensor, streams: MemberStreams, purpose: str, index: tuple,
                    noise_shape: tuple) -> torch.Tensor:
    """Sum over chunks of points of per_chunk(x_chunk, eps_chunk) -> (M, ...), where each point
    gets noise of `noise_shape` (samples first) from the stream (purpose, index).  The noise
    of point n is the same however the points are chunked (element offsets of the stream).
    Noise is drawn for several chunks at a time: each draw has a fixed cost of ~200 small
    tensor operations, which would dominate cache-sized chunks on the CPU."""
    M, N = x.shape[:2]
    per_point = math.prod(noise_shape)
    chunks = point_chunks(N, M * noise_shape[0], x.device)
    per_draw = max(1, NOISE_ELEMENTS_PER_DRAW // (M * per_point * (chunks[0].stop - chunks[0].start)))
    total = 0.0
    for first in range(0, len(chunks), per_draw):
        group = chunks[first:first + per_draw]
        start, stop = group[0].start, group[-1].stop
        eps = streams.normal(purpose, index, (stop - start, *noise_shape), x.dtype, offset=start * per_point)
        for sl in group:
            total = total + per_chunk(x[:, sl], eps[:, sl.start - start:sl.stop - start]).double()
    return total


@torch.no_grad()
def mean_bound(model: VAEEnsemble, x: torch.Tensor, streams: MemberStreams, purpose: str,
               objective: str, samples: int, repeats: int) -> torch.Tensor:
    """Mean over data points of a bound (ELBO or IWAE with `samples`), averaged over
    `repeats` independent draws: an unbiased estimate of the bound.  x: (M, N, D) -> (M,)."""
    bound = OBJECTIVES[objective]
    total = sum(sum_over_chunks(lambda xc, eps: bound(model, xc, eps).sum(1), x, streams, purpose,
                                (repeat,), (samples, model.K))
                for repeat in range(repeats))
    return total / (x.shape[1] * repeats)
