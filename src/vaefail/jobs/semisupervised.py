"""The semi-supervised training jobs (M2 on the Semi-Circles and the UCI data sets, Tables 3-6):
batched training over alpha x gamma [x sigma^2] x versions x restarts, and the evaluation of
the trained members."""
from __future__ import annotations

import math

import torch

from .. import grid
from ..data.dataset_files import dataset_labels, load_ss_versions
from ..data.datasets import example
from ..data.surrogate import GroundTruthDecoder
from ..engine.ensembles import build_m2_ensemble
from ..engine.m2_task import M2Task, validation_objective
from ..engine.sampling import StreamNoise, m2_samples
from ..engine.train import TrainSettings, train_ensemble
from ..evaluation.evaluate import json_number, bound_draws, knn_over_draws
from ..models.m2 import M2Ensemble
from ..randomness import MemberStreams
from .training_job import TrainingJob


# --- training jobs --------------------------------------------------------------------------
class M2TrainingJob(TrainingJob):
    """All (alpha, gamma[, sigma^2]) x versions x restarts of one setting as batched M2 ensembles.
    Ground-truth restarts start with the surrogate decoder and first fit their inference
    networks to it (decoder frozen) for gt_encoder_epochs on the ELBO version of their own
    objective."""

    def __init__(self, settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
                 data_paths: list[str], out_stems: list[str], device: str = "cpu", manifest: str | None = None):
        super().__init__(settings, experiment, dataset, setting_id, out_stems, device, manifest)
        uci = experiment == "uci"
        self.labels = dataset_labels(dataset)
        self.gt_decoder = GroundTruthDecoder(surrogate_pt) if "gt" in self.inits else None
        self.data = load_ss_versions(data_paths, self.labels, torch.float32, self.dev, self.setting.label_fraction,
                                     settings["seed"], dataset)
        self.data_dim = self.data["x_test"].shape[-1]
        self.hidden = settings["uci_hidden_layers"] if uci else settings["hidden_layers"]
        self.true_sigma2 = None if uci else example(dataset).noise_variance

    def seed_parts(self, member: grid.Member) -> tuple:
        return tuple(member)

    def member_fields(self, member: grid.Member) -> dict:
        return {"unlabelled_posterior": self.setting.unlabelled_posterior, "alpha": member.alpha,
                "gamma": member.gamma, "sigma2_setting": member.sigma2}

    def train_chunk(self, members, inits, streams):
        settings, setting, labels, dev = self.settings, self.setting, self.labels, self.dev
        versions = [m.version for m in members]
        rows = torch.tensor(versions)
        alpha = torch.tensor([m.alpha for m in members], dtype=torch.float32)
        gamma = torch.tensor([m.gamma for m in members], dtype=torch.float32)
        sigma2 = torch.tensor([self.true_sigma2 if m.sigma2 is None else m.sigma2 for m in members])
        model = build_m2_ensemble(self.data_dim, setting.latent_dim, labels, self.hidden, streams, inits,
                                  sigma2, self.gt_decoder, dev, setting.unlabelled_posterior)
        task = M2Task(setting.objective, setting.samples, self.data, rows, alpha, gamma, settings["batch_size"],
                      labels, setting.latent_dim)
        gt_rows = [j for j, init in enumerate(inits) if init == "gt"]
        if gt_rows:
            _fit_inference_to_true_decoder(model, self.data, rows, alpha, gamma, streams, gt_rows, settings, labels,
                                           setting.latent_dim, self.hidden, self.data_dim, dev)
        train_log = train_ensemble(model, task, streams, self.train_settings)
        results = evaluate_m2(model, task, streams.child("eval"), rows.to(dev), versions, setting.objective,
                              setting.samples, settings, train_log.failed)
        return model, train_log, results


def train_ss_job(settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
                 data_paths: list[str], out_stems: list[str], device: str = "cpu", manifest: str | None = None) -> None:
    """Train one setting of a semi-supervised experiment (semisupervised, uci or labelshare)."""
    M2TrainingJob(settings, experiment, dataset, setting_id, surrogate_pt, data_paths, out_stems, device,
                  manifest).run()


def _fit_inference_to_true_decoder(model, data, rows, alpha, gamma, streams, gt_rows, settings, labels, latent_dim,
                                   hidden, data_dim, device) -> None:
    """phi_GT for the ground-truth restarts: ELBO-version J ascent with the decoder frozen."""
    sub = M2Ensemble(data_dim, latent_dim, labels, hidden, len(gt_rows), device=device,
                     unlabelled_posterior=model.unlabelled_posterior)
    with torch.no_grad():
        sub.encoder.flat.copy_(model.encoder.flat[gt_rows])
        sub.decoder.flat.copy_(model.decoder.flat[gt_rows])
        sub.log_sigma2.copy_(model.log_sigma2[gt_rows])
    task = M2Task("elbo", 1, data, rows[gt_rows], alpha[gt_rows], gamma[gt_rows], settings["batch_size"],
                  labels, latent_dim)
    train_ensemble(sub, task, streams[gt_rows].child("gt-fit"), TrainSettings(
        objective="elbo", epochs=settings["gt_encoder_epochs"], batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"], train_decoder=False))
    with torch.no_grad():
        model.encoder.flat[gt_rows] = sub.encoder.flat


# --- evaluation -----------------------------------------------------------------------------
def evaluate_m2(model: M2Ensemble, task: M2Task, streams: MemberStreams, rows: torch.Tensor,
                versions: list[int], bound: str,
                samples: int, settings: dict, failed: torch.Tensor) -> list[dict]:
    """Per-member results: validation objective, smooth kNN statistics of p(x) (validation and
    test) and of each cohort p(x | y = c) (test), and the discriminator's test accuracy
    (discrete y) or RMSE (continuous y)."""
    d = task.data
    objective_valid = validation_objective(model, task, bound, *bound_draws(bound, samples, settings["eval_samples"]),
                                           streams, rows)

    def knn(split: str) -> dict[str, torch.Tensor]:
        x = d[f"x_{split}"]
        values = knn_over_draws(lambda purpose: m2_samples(model, x.shape[1], StreamNoise(streams, purpose)),
                                f"samples-{split}", x[rows], settings)
        return {suffix: v.cpu() for suffix, v in values.items()}

    knn_valid, knn_test = knn("valid"), knn("test")
    with torch.no_grad():
        out = model.classify(d["x_test"][rows])
        y_test = d["y_test"][rows]
        if model.labels.kind == "discrete":
            predictive = (out.argmax(-1) == y_test.long()).double().mean(1).cpu()
        else:
            predictive = ((out[..., 0] - y_test) ** 2).double().mean(1).sqrt().cpu()
    cohort_knn = [cohort_knn_statistics(model, streams, d["cohorts"], i, value, versions, settings)
                  for i, value in enumerate(d["cohort_values"])]
    knn_cohorts = torch.stack([values for values, _ in cohort_knn], -1)
    cohort_deficits = torch.stack([deficits for _, deficits in cohort_knn], -1)
    results = []
    for m in range(model.M):
        if bool(failed[m]) or not math.isfinite(float(objective_valid[m])):
            results.append({"status": "failed"})
            continue
        results.append({
            "status": "ok", "objective_valid": float(objective_valid[m]),
            "knn_valid": float(knn_valid[""][m]), "knn_test": float(knn_test[""][m]),
            "knn_test_deficit": json_number(float(knn_test["_deficit"][m])),
            "knn_test_draw_sd": json_number(float(knn_test["_draw_sd"][m])),
            "knn_cohort_test": knn_cohorts[m].tolist(),
            "knn_cohort_test_deficit": cohort_deficits[m].tolist(),
            "cohort_values": d["cohort_values"],
            ("accuracy_test" if model.labels.kind == "discrete" else "rmse_test"): float(predictive[m]),
            "sigma2": model.log_sigma2[m, 0].exp().double().cpu().tolist(),
        })
    return results


def cohort_knn_statistics(model: M2Ensemble, streams: MemberStreams, cohorts, i: int, value, versions: list[int],
                          settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth kNN statistic (mean over knn_draws) of each member's samples of p(x | y = value)
    against its version's cohort i (test points of that class, or ground-truth samples), and
    its unstandardised deficit: two (M,), NaN where the cohort has no more than knn_k points.
    Cohort sizes differ between UCI splits, so the members are evaluated in groups of equal
    size (samples are drawn per size, as many as the cohort)."""
    out = torch.full((model.M,), float("nan"), dtype=torch.float64)
    deficit = out.clone()
    sizes = [len(cohorts[v][i]) for v in versions]
    device = model.log_sigma2.device
    for n in sorted(set(sizes)):
        if n <= settings["knn_k"]:
            continue
        members = [m for m, size in enumerate(sizes) if size == n]
        truth = torch.stack([torch.as_tensor(cohorts[versions[m]][i], dtype=torch.float64) for m in members]).to(device)
        values = knn_over_draws(lambda purpose: m2_samples(model, n, StreamNoise(streams, purpose), value)[members],
                                f"samples-cohort{i}-n{n}", truth, settings)
        out[members], deficit[members] = values[""].cpu(), values["_deficit"].cpu()
    return out, deficit
