"""Metrics of trained ensemble members (batched over members where it pays).

Every random draw comes from the member's own counter-based streams, one purpose per
quantity, so a member's metrics do not depend on which other members shared its batch.
"""
from __future__ import annotations

import math

import torch

from .batched_metrics import ksg_mutual_information, smooth_knn_statistics
from ..models.vae import OBJECTIVES, VAEEnsemble, log_importance_weights, sigma2_closed_form
from ..randomness import MemberStreams
from ..engine.sampling import StreamNoise, vae_samples

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


@torch.no_grad()
def log_marginal_likelihood(model: VAEEnsemble, x: torch.Tensor, streams: MemberStreams,
                            samples: int) -> torch.Tensor:
    """Mean over points of the IWAE estimate of log p(x) with many samples, (M,)."""
    def per_chunk(xc, eps):
        log_w = log_importance_weights(model, xc, eps).double()
        return (torch.logsumexp(log_w, 2) - math.log(samples)).sum(1)
    return sum_over_chunks(per_chunk, x, streams, "log-px", (), (samples, model.K)) / x.shape[1]


@torch.no_grad()
def closed_form_sigma2(model: VAEEnsemble, x: torch.Tensor, streams: MemberStreams,
                       samples: int) -> torch.Tensor:
    """Theorem 2's sigma^2 for the trained (theta, phi) on data x (M, N, D) -> (M, D)."""
    total = sum_over_chunks(lambda xc, eps: sigma2_closed_form(model, xc, eps) * xc.shape[1],
                            x, streams, "sigma2", (), (samples, model.K))
    return total / x.shape[1]


@torch.no_grad()
def latent_codes(model: VAEEnsemble, x: torch.Tensor, streams: MemberStreams) -> torch.Tensor:
    """One draw z ~ q(z | x) per point, (M, N, K)."""
    mu, log_var = model.encode(x)
    eps = streams.normal("latent-codes", (), mu.shape[1:], mu.dtype)
    return mu + (0.5 * log_var).exp() * eps


def bound_draws(objective: str, samples: int, repeats: int) -> tuple[int, int]:
    """(samples per point, independent draws) with which a training objective is evaluated:
    the IWAE bound with the method's own S (its value depends on S), averaged over `repeats`
    draws; the ELBO with `repeats` samples in one draw (the same expectation)."""
    return (samples, repeats) if objective == "iwae" else (repeats, 1)


def evaluate_members(model: VAEEnsemble, data: dict[str, torch.Tensor], streams: MemberStreams, *,
                     objective: str,
                     samples: int, settings: dict, failed: torch.Tensor) -> list[dict]:
    """All per-restart metrics.  data[split]: (M, N, D) — each member's own version.

    objective_*: the method's own training objective (ELBO, or IWAE bound with its S),
    per data point; knn_*: smooth kNN statistic of model samples against that split
    (ground-truth samples); mi_test: KSG I(x; z_k) for each latent dimension on test data.
    """
    repeats = settings["eval_samples"]
    obj_samples, obj_repeats = bound_draws(objective, samples, repeats)
    metrics = {
        "objective_valid": mean_bound(model, data["valid"], streams, "objective-valid", objective,
                                      obj_samples, obj_repeats),
        "objective_test": mean_bound(model, data["test"], streams, "objective-test", objective,
                                     obj_samples, obj_repeats),
        "elbo_test": mean_bound(model, data["test"], streams, "elbo-test", "elbo", repeats, 1),
        "log_px_test": log_marginal_likelihood(model, data["test"], streams, settings["eval_logpx_samples"]),
        "sigma2_closed_form": closed_form_sigma2(model, data["train"], streams, repeats),
    }
    for split in ("valid", "test"):
        n = data[split].shape[1]
        knn = knn_over_draws(lambda purpose: vae_samples(model, n, StreamNoise(streams, purpose)),
                             f"samples-{split}", data[split], settings)
        metrics.update({f"knn_{split}{suffix}": values for suffix, values in knn.items()})
    codes = latent_codes(model, data["test"], streams)
    metrics["mi_test"] = torch.stack([ksg_mutual_information(data["test"].double(), codes[..., k].double(),
                                                             settings["mi_neighbours"])
                                      for k in range(model.K)], -1)
    metrics = {name: values.cpu() for name, values in metrics.items()}
    sigma2 = model.log_sigma2.detach().exp().squeeze(1).double().cpu()
    results = []
    for m in range(model.M):
        if bool(failed[m]):
            results.append({"status": "failed"})
            continue
        row = {"status": "ok"}
        for name, values in metrics.items():
            v = values[m]
            row[name] = v.tolist() if v.ndim else json_number(float(v))
        row["sigma2"] = sigma2[m].tolist()
        if not all(math.isfinite(v) for v in [row["objective_valid"], *row["sigma2"]]):
            results.append({"status": "failed", "reason": "non-finite evaluation"})
            continue
        results.append(row)
    return results


def knn_over_draws(draw_samples, purpose: str, true_x: torch.Tensor, settings: dict) -> dict[str, torch.Tensor]:
    """The smooth kNN statistic of each member's samples against true_x, averaged over
    `knn_draws` independent draws of the samples (draw_samples(purpose) -> (M, n, D); draw 0
    uses `purpose` itself, so one draw gives the numbers of a single evaluation), with:
    "" the mean statistic, "_deficit" the mean unstandardised statistic (the cross-sample
    deficit, 1 - t / E_null[t]) and "_draw_sd" the statistic's sd over the draws (the
    evaluation noise of one draw; NaN with one draw).  Each (M,) float64."""
    values, deficits = [], []
    for draw in range(settings["knn_draws"]):
        samples_x = draw_samples(purpose if draw == 0 else f"{purpose}-draw{draw}")
        value, deficit = smooth_knn_statistics(samples_x.double(), true_x.double(), settings["knn_k"],
                                               settings["knn_temperature"], with_deficit=True)
        values.append(value)
        deficits.append(deficit)
    values, deficits = torch.stack(values), torch.stack(deficits)
    spread = values.std(0) if len(values) > 1 else torch.full_like(values[0], math.nan)
    return {"": values.mean(0), "_deficit": deficits.mean(0), "_draw_sd": spread}


def json_number(value: float) -> float | None:
    """A metric for a result file: NaN (e.g. the draw sd of a single draw) as null."""
    return value if math.isfinite(value) else None
