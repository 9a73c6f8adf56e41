"""Metrics of trained ensemble members (batched over members where it pays).

Every random draw comes from the member's own counter-based streams, one purpose per
quantity, so a member's metrics do not depend on which other members shared its batch.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager

import torch

from ..engine.bounds import mean_bound, sum_over_chunks
from ..engine.sampling import StreamNoise, vae_samples
from ..models.vae import VAEEnsemble, log_importance_weights, sigma2_closed_form
from ..randomness import MemberStreams
from .ksg import ksg_mutual_information
from .smooth_knn import smooth_knn_statistics

log = logging.getLogger(__name__)


@contextmanager
def logged_stage(what: str, members: int, timings: dict | None = None, key: str | None = None):
    """Log how long one stage of an evaluation took: a long job's evaluation is minutes of
    silence otherwise.  With `timings`, also add the seconds to timings[key] (the bench's
    breakdown of an evaluation)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    log.info("evaluated %d members: %s in %.1f s", members, what, seconds)
    if timings is not None:
        timings[key or what] = timings.get(key or what, 0.0) + seconds


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
                     samples: int, settings: dict, failed: torch.Tensor,
                     timings: dict | None = None) -> list[dict]:
    """All per-restart metrics.  data[split]: (M, N, D) — each member's own version.

    objective_*: the method's own training objective (ELBO, or IWAE bound with its S),
    per data point; knn_*: smooth kNN statistic of model samples against that split
    (ground-truth samples); mi_test: KSG I(x; z_k) for each latent dimension on test data.
    """
    repeats = settings["eval_samples"]
    obj_samples, obj_repeats = bound_draws(objective, samples, repeats)
    with logged_stage(f"bounds and log p(x) ({settings['eval_logpx_samples']} samples)", model.M, timings, "bounds"):
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
                             f"samples-{split}", data[split], settings, timings)
        metrics.update({f"knn_{split}{suffix}": values for suffix, values in knn.items()})
    with logged_stage("KSG mutual information", model.M, timings, "ksg"):
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


def knn_over_draws(draw_samples, purpose: str, true_x: torch.Tensor, settings: dict,
                   timings: dict | None = None) -> dict[str, torch.Tensor]:
    """The smooth kNN statistic of each member's samples against true_x, averaged over
    `knn_draws` independent draws of the samples (draw_samples(purpose) -> (M, n, D); draw 0
    uses `purpose` itself, so one draw gives the numbers of a single evaluation), with:
    "" the mean statistic, "_deficit" the mean unstandardised statistic (the cross-sample
    deficit, 1 - t / E_null[t]) and "_draw_sd" the statistic's sd over the draws (the
    evaluation noise of one draw; NaN with one draw).  Each (M,) float64."""
    values, deficits = [], []
    with logged_stage(f"kNN statistic of {purpose} ({settings['knn_draws']} draws)", true_x.shape[0],
                      timings, "knn"):
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
