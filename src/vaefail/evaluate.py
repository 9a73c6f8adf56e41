"""Metrics of trained ensemble members (batched over members where it pays).

Every random draw comes from the member's own `eval` generator, so a member's metrics
do not depend on which other members shared its batch.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .metrics import ksg_mutual_information, smooth_knn_statistic
from .model import OBJECTIVES, VAEEnsemble, log_importance_weights, sigma2_closed_form
from .train import member_noise

DATA_CHUNK = 250   # data points per chunk of many-sample evaluations (bounds memory)


def eval_noise(rngs, shape, dtype, device):
    """One standard-normal draw per member from its own `eval` generator."""
    return member_noise(rngs, shape, dtype, device, purpose="eval")


@torch.no_grad()
def mean_bound(model: VAEEnsemble, x: torch.Tensor, rngs, objective: str, samples: int,
               repeats: int) -> torch.Tensor:
    """Mean over data points of a bound (ELBO or IWAE with `samples`), averaged over
    `repeats` independent draws: an unbiased estimate of the bound.  x: (M, N, D) -> (M,)."""
    bound = OBJECTIVES[objective]
    M, N = x.shape[:2]
    total = torch.zeros(M, dtype=torch.float64)
    for start in range(0, N, DATA_CHUNK):
        xc = x[:, start:start + DATA_CHUNK]
        for _ in range(repeats):
            eps = eval_noise(rngs, (xc.shape[1], samples, model.K), x.dtype, x.device)
            total += bound(model, xc, eps).sum(1).double().cpu()
    return total / (N * repeats)


@torch.no_grad()
def log_marginal_likelihood(model: VAEEnsemble, x: torch.Tensor, rngs, samples: int) -> torch.Tensor:
    """Mean over points of the IWAE estimate of log p(x) with many samples, (M,)."""
    M, N = x.shape[:2]
    total = torch.zeros(M, dtype=torch.float64)
    for start in range(0, N, DATA_CHUNK):
        xc = x[:, start:start + DATA_CHUNK]
        eps = eval_noise(rngs, (xc.shape[1], samples, model.K), x.dtype, x.device)
        log_w = log_importance_weights(model, xc, eps).double()
        total += (torch.logsumexp(log_w, 2) - math.log(samples)).sum(1).cpu()
    return total / N


@torch.no_grad()
def closed_form_sigma2(model: VAEEnsemble, x: torch.Tensor, rngs, samples: int) -> torch.Tensor:
    """Theorem 2's sigma^2 for the trained (theta, phi) on data x (M, N, D) -> (M, D)."""
    M, N = x.shape[:2]
    total = torch.zeros(M, model.D, dtype=torch.float64)
    for start in range(0, N, DATA_CHUNK):
        xc = x[:, start:start + DATA_CHUNK]
        eps = eval_noise(rngs, (xc.shape[1], samples, model.K), x.dtype, x.device)
        total += sigma2_closed_form(model, xc, eps).double().cpu() * xc.shape[1]
    return total / N


@torch.no_grad()
def model_samples(model: VAEEnsemble, n: int, rngs) -> torch.Tensor:
    """n ancestral samples x ~ p_theta(x) per member, (M, n, D)."""
    dtype, device = model.encoder.flat.dtype, model.encoder.flat.device
    eps_z = eval_noise(rngs, (n, model.K), dtype, device)
    eps_x = eval_noise(rngs, (n, model.D), dtype, device)
    return model.sample_x(eps_z, eps_x)


@torch.no_grad()
def latent_codes(model: VAEEnsemble, x: torch.Tensor, rngs) -> torch.Tensor:
    """One draw z ~ q(z | x) per point, (M, N, K)."""
    mu, log_var = model.encode(x)
    eps = eval_noise(rngs, mu.shape[1:], mu.dtype, mu.device)
    return mu + (0.5 * log_var).exp() * eps


def evaluate_members(model: VAEEnsemble, data: dict[str, torch.Tensor], rngs, *, objective: str,
                     samples: int, settings: dict, failed: torch.Tensor) -> list[dict]:
    """All per-restart metrics.  data[split]: (M, N, D) — each member's own version.

    objective_*: the method's own training objective (ELBO, or IWAE bound with its S),
    per data point; knn_*: smooth kNN statistic of model samples against that split
    (ground-truth samples); mi_test: KSG I(x; z_k) for each latent dimension on test data.
    """
    repeats = settings["eval_samples"]
    obj_samples = samples if objective == "iwae" else repeats
    obj_repeats = repeats if objective == "iwae" else 1
    metrics = {
        "objective_valid": mean_bound(model, data["valid"], rngs, objective, obj_samples, obj_repeats),
        "objective_test": mean_bound(model, data["test"], rngs, objective, obj_samples, obj_repeats),
        "elbo_test": mean_bound(model, data["test"], rngs, "elbo", repeats, 1),
        "log_px_test": log_marginal_likelihood(model, data["test"], rngs, settings["eval_logpx_samples"]),
        "sigma2_closed_form": closed_form_sigma2(model, data["train"], rngs, repeats),
    }
    sigma2 = model.log_sigma2.detach().exp().squeeze(1).double().cpu()
    samples_valid = model_samples(model, data["valid"].shape[1], rngs).double().cpu().numpy()
    samples_test = model_samples(model, data["test"].shape[1], rngs).double().cpu().numpy()
    codes = latent_codes(model, data["test"], rngs).double().cpu().numpy()
    x_valid = data["valid"].double().cpu().numpy()
    x_test = data["test"].double().cpu().numpy()
    results = []
    for m in range(model.M):
        if bool(failed[m]):
            results.append({"status": "failed"})
            continue
        row = {"status": "ok"}
        for name, values in metrics.items():
            v = values[m]
            row[name] = v.tolist() if v.ndim else float(v)
        row["sigma2"] = sigma2[m].tolist()
        if not all(math.isfinite(v) for v in [row["objective_valid"], *row["sigma2"]]):
            results.append({"status": "failed", "reason": "non-finite evaluation"})
            continue
        row["knn_valid"] = knn_statistic(samples_valid[m], x_valid[m], settings)
        row["knn_test"] = knn_statistic(samples_test[m], x_test[m], settings)
        row["mi_test"] = [ksg_mutual_information(x_test[m], codes[m][:, k], k=settings["mi_neighbours"])
                          for k in range(model.K)]
        results.append(row)
    return results


def knn_statistic(model_x: np.ndarray, true_x: np.ndarray, settings: dict) -> float:
    if not np.isfinite(model_x).all():
        return float("nan")
    return smooth_knn_statistic(model_x, true_x, k=settings["knn_k"], temperature=settings["knn_temperature"])
