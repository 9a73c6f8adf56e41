"""The ground-truth encoders phi_GT of appendix J: for each data version, the encoder that
maximises the ELBO with the decoder frozen at the ground truth (the surrogate) and sigma^2 at
its true value.  GT-initialised restarts start from it; appendix K projects with it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.dataset_files import load_versions
from ..data.datasets import example
from ..data.surrogate import GroundTruthDecoder
from ..engine.bounds import mean_bound
from ..engine.ensembles import build_ensemble, copy_rows
from ..engine.train import TrainSettings, train_vae
from ..evaluation.posteriors import (
    ground_truth_log_likelihood,
    kl_optimal_gaussians,
    log_evidence_1d,
)
from ..files import save_torch, write_json
from ..models.nets import MaskedAdam
from ..models.vae import VAEEnsemble
from ..provenance import provenance
from ..randomness import MemberStreams, derive_seed
from ..runtime import torch_device

# phi_GT warm start (see fit_gt_encoders): the optimal Gaussians of this many training points,
# with variances floored (transition points have near-zero posterior width), fitted with a
# cosine-decayed rate from this value; the ELBO phase that follows uses a smaller rate than
# training, since a few steps of size 1e-3 throw narrow q's across the decoder's steps.
GT_ENCODER_TARGET_POINTS = 2000
GT_TARGET_MIN_LOG_VAR = math.log(1e-4)
GT_WARMSTART_LEARNING_RATE = 3e-3
GT_ELBO_LEARNING_RATE_FACTOR = 0.1


def fit_gt_encoders(settings: dict, dataset: str, surrogate_pt: str, data_paths: list[str],
                    out_paths: list[str], device: str = "cpu") -> None:
    """Appendix J: the encoder phi_GT maximises the ELBO with the decoder frozen at the
    ground truth and sigma^2 at its true value; the best of `gt_encoder_restarts` random
    restarts (by validation ELBO) is kept for each data version.

    Half the restarts ("warm") are first fitted to the ELBO-optimal Gaussian of each point's
    exact posterior (posteriors.kl_optimal_gaussians), then ascend the ELBO at a tenth of
    the learning rate: from a random encoder, ascent stalls where the true decoder is flat
    in z (a z on the wrong flat stretch gets no gradient), and full-rate steps throw the
    narrow q's across the decoder's steps.  The other half ascend the ELBO from random at
    the full rate, which can find wide q's spanning several posterior modes."""
    dev = torch_device(device, settings)
    ex = example(dataset)
    decoder = GroundTruthDecoder(surrogate_pt, ex.embedded)
    log_lik = ground_truth_log_likelihood(decoder, ex.noise_variance)
    V = len(data_paths)
    train_x = load_versions(data_paths, "train", torch.float32, dev)
    valid_x = load_versions(data_paths, "valid", torch.float32, dev)
    n_targets = min(train_x.shape[1], GT_ENCODER_TARGET_POINTS)
    targets = [kl_optimal_gaussians(decoder, ex.noise_variance, train_x[v, :n_targets].double().cpu())
               for v in range(V)]
    target_mean = torch.stack([m for m, _ in targets]).unsqueeze(-1).to(train_x)
    target_log_var = torch.stack([lv for _, lv in targets]).unsqueeze(-1).clamp(min=GT_TARGET_MIN_LOG_VAR)
    restarts = range(settings["gt_encoder_restarts"])
    candidates = {v: [] for v in range(V)}   # (valid ELBO, warm?, encoder weights)
    for warm in (True, False):
        members = [(v, j) for v in range(V) for j in restarts if (j % 2 == 0) == warm]
        if not members:
            continue
        streams = MemberStreams([derive_seed(settings["seed"], "gt-encoder", dataset, v, j) for v, j in members], dev)
        version_index = torch.tensor([v for v, _ in members])
        model = build_ensemble(settings, ex, 1, "fixed", streams, ["random"] * len(members), None, None,
                               version_index.tolist(), dev)
        copy_rows(model.decoder, list(range(model.M)), decoder.decoder_weights())
        if warm:
            fit_encoder_to_gaussians(model, train_x[:, :n_targets], target_mean, target_log_var.to(train_x),
                                     version_index, streams.child("warm-start"),
                                     settings["gt_encoder_warmstart_epochs"],
                                     settings["batch_size"], GT_WARMSTART_LEARNING_RATE)
        rate = settings["learning_rate"] * (GT_ELBO_LEARNING_RATE_FACTOR if warm else 1.0)
        train_log = train_vae(model, train_x, valid_x, version_index, streams, TrainSettings(
            objective="elbo", samples=1, epochs=settings["gt_encoder_epochs"],
            batch_size=settings["batch_size"], learning_rate=rate, train_decoder=False))
        valid_elbo = mean_bound(model, valid_x[version_index.to(dev)], streams, "elbo-valid", "elbo",
                                settings["eval_samples"], 1).cpu()
        valid_elbo[train_log.failed] = -math.inf
        for m, (v, _) in enumerate(members):
            weights = {name: view[m].detach().cpu().clone() for name, view in model.encoder.views.items()}
            candidates[v].append((float(valid_elbo[m]), warm, weights))
    for v, path in enumerate(out_paths):
        best = max(range(len(candidates[v])), key=lambda i: candidates[v][i][0])
        record = {"dataset": dataset, "version": v, "chosen_restart": best,
                  "warm_started": [c[1] for c in candidates[v]],
                  "valid_elbo": [c[0] for c in candidates[v]],
                  # the ground truth's exact log-likelihood: the ELBO's gap to it is what phi_GT leaves
                  "valid_exact_log_px": float(log_evidence_1d(log_lik, valid_x[v].double().cpu()).mean()),
                  "provenance": provenance(settings, device)}
        save_torch(path, {"encoder": candidates[v][best][2], "record": record})
        write_json(Path(path).with_suffix(".json"), record)


def fit_encoder_to_gaussians(model: VAEEnsemble, train_x: torch.Tensor, target_mean: torch.Tensor,
                             target_log_var: torch.Tensor, version_of_member: torch.Tensor,
                             streams: MemberStreams, epochs: int, batch_size: int,
                             learning_rate: float) -> None:
    """Fit each member's encoder q(z|x) to given Gaussians N(m(x), v(x)) by minimising
    KL[q(z|x) || N(m(x), v(x))] averaged over points (cosine-decayed learning rate).

    A warm start for the encoder of a ground-truth decoder: where the decoder is flat in z
    (the dots of Spiral-Dots, the clusters of Clusters) a z on the wrong flat stretch gets
    no gradient from the ELBO, so ascent from a random encoder stalls far from the optimum.
    This KL weighs errors by the target's precision, as the ELBO does.
    train_x: (V, N, D); target_*: (V, N, K) per data version.
    """
    M, N, B = model.M, train_x.shape[1], batch_size
    rows = version_of_member.to(train_x.device).view(M, 1)
    opt = MaskedAdam(model.encoder, lr=learning_rate)
    steps, total = 0, epochs * (N // B)
    for epoch in range(epochs):
        order = streams.permutation("shuffle", (epoch,), N)
        for step in range(N // B):
            opt.lr = learning_rate * 0.5 * (1 + math.cos(math.pi * steps / total))
            idx = order[:, step * B:(step + 1) * B]
            mu, log_var = model.encode(train_x[rows, idx])
            m, lv = target_mean[rows, idx], target_log_var[rows, idx]
            kl = 0.5 * (lv - log_var + (log_var.exp() + (mu - m) ** 2) / lv.exp() - 1).sum(-1).mean(1)
            model.encoder.zero_grad()
            kl.sum().backward()
            opt.step()
            steps += 1
