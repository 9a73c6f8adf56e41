"""Jobs of the semi-supervised half: data (Semi-Circles and UCI splits), batched M2
training over alpha x gamma x versions x restarts, and evaluation (Tables 3-6)."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from . import grid
from .datasets import example
from .evaluate import knn_statistics, point_chunks
from .files import load_npz, load_weights, save_npz, save_torch, write_json
from .jobs import (
    GroundTruthDecoder,
    _chunks,
    _copy_rows,
    failure_reason,
    provenance,
    report_failures,
    torch_device,
    training_settings,
)
from .m2 import BOUNDS, Labels, M2Ensemble, log_q_labels
from .nets import random_init
from .randomness import MemberStreams, derive_seed
from .train import M2Task, TrainSettings, train_ensemble
from .uci import split_uci, uci_spec

log = logging.getLogger("vaefail.semisupervised")


# --- data ----------------------------------------------------------------------------------
def _labelled_mask(n: int, fraction: float, gen: torch.Generator) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[torch.randperm(n, generator=gen)[:round(fraction * n)].numpy()] = True
    return mask


def make_ss_dataset(settings: dict, dataset: str, surrogate_pt: str, out_paths: list[str]) -> None:
    """Each version: y ~ p(y), z ~ N(0,1), x = f_GT(y, z) + noise for train/valid/test, a random
    `label_fraction` of train and valid labels observed, and n_test ground-truth samples of
    each cohort p(x | y = c) of Table 4."""
    ex = example(dataset)
    decoder = GroundTruthDecoder(surrogate_pt)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}

    def draw(y, gen):
        z = torch.randn(len(y), 1, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            mean = decoder(torch.cat([ex.encode_label(y), z], -1))
        noise = torch.randn(len(y), ex.data_dim, generator=gen, dtype=torch.float64)
        return (mean + math.sqrt(ex.noise_variance) * noise).numpy(), z.numpy()

    for version, path in enumerate(out_paths):
        gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "data", dataset, version))
        arrays = {"cohort_values": np.asarray(ex.cohorts, dtype=np.float64)}
        for split, n in sizes.items():
            y = ex.sample_labels(gen, n)
            arrays[f"x_{split}"], arrays[f"z_{split}"] = draw(y, gen)
            arrays[f"y_{split}"] = y.numpy()
            if split != "test":
                arrays[f"labelled_{split}"] = _labelled_mask(n, settings["label_fraction"], gen)
        for i, value in enumerate(ex.cohorts):
            y = torch.full((settings["n_test"],), value, dtype=torch.float64)
            arrays[f"x_cohort{i}"], _ = draw(y.long() if ex.label_kind == "discrete" else y, gen)
        save_npz(path, arrays)


def make_uci_splits(settings: dict, dataset: str, out_paths: list[str]) -> None:
    """Each split: thirds, training-set standardisation, exactly `label_fraction` labels
    observed (vaefail.uci.split_uci); the cohorts of Table 6 are the test points of each class."""
    for k, path in enumerate(out_paths):
        split = split_uci(dataset, split_index=k, seed=settings["seed"], label_fraction=settings["label_fraction"])
        arrays = {key: split[key] for key in ("x_train", "y_train", "labelled_train", "x_valid", "y_valid",
                                             "labelled_valid", "x_test", "y_test")}
        classes = np.arange(uci_spec(dataset).n_classes)
        arrays["cohort_values"] = classes.astype(np.float64)
        for c in classes:
            arrays[f"x_cohort{c}"] = split["x_test"][split["y_test"] == c]
        save_npz(path, arrays)


def dataset_labels(dataset: str) -> Labels:
    if dataset in grid.UCI_DATASETS:
        return Labels("discrete", uci_spec(dataset).n_classes)
    ex = example(dataset)
    return Labels(ex.label_kind, ex.classes)


def encode_labels(labels: Labels, y: np.ndarray) -> torch.Tensor:
    y = torch.as_tensor(y)
    if labels.kind == "discrete":
        return torch.nn.functional.one_hot(y.long(), labels.classes).to(torch.float64)
    return y.to(torch.float64).unsqueeze(-1)


def load_ss_versions(paths: list[str], labels: Labels, dtype, device) -> dict:
    """Stack each version's arrays: the training split as unlabelled/labelled parts, the
    validation split likewise and whole, the test split, and per-version cohort samples."""
    files = [load_npz(p) for p in paths]

    def stack(key, select=None, encode=False):
        parts = []
        for f in files:
            a = f[key] if select is None else f[key][f[select] if select.startswith("labelled") else ~f[select[1:]]]
            parts.append(encode_labels(labels, a) if encode else torch.from_numpy(np.asarray(a, dtype=np.float64)))
        return torch.stack(parts).to(dtype).to(device)

    return {
        "x_unlabelled": stack("x_train", "~labelled_train"),
        "x_labelled": stack("x_train", "labelled_train"),
        "y_labelled": stack("y_train", "labelled_train", encode=True),
        "x_valid": stack("x_valid"),
        "x_valid_unlabelled": stack("x_valid", "~labelled_valid"),
        "x_valid_labelled": stack("x_valid", "labelled_valid"),
        "y_valid_labelled": stack("y_valid", "labelled_valid", encode=True),
        "x_test": stack("x_test"),
        "y_test": stack("y_test"),
        "cohort_values": files[0]["cohort_values"].tolist(),
        "cohorts": [[f[f"x_cohort{i}"] for i in range(len(f["cohort_values"]))] for f in files],
    }


# --- models ---------------------------------------------------------------------------------
def build_m2_ensemble(data_dim: int, latent_dim: int, labels: Labels, hidden: list[int],
                      streams: MemberStreams, inits, sigma2: float, gt_decoder: GroundTruthDecoder | None,
                      device, unlabelled_posterior: str) -> M2Ensemble:
    model = M2Ensemble(data_dim, latent_dim, labels, hidden, len(streams), device=device,
                       unlabelled_posterior=unlabelled_posterior)
    bounds = model.encoder_init_bounds()
    random_init(model.encoder, bounds, streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")
    model.set_sigma2(sigma2)
    gt_rows = [m for m, init in enumerate(inits) if init == "gt"]
    if gt_rows:
        _copy_rows(model.decoder, gt_rows, gt_decoder.decoder_weights())
    return model


def m2_member_state(model: M2Ensemble, m: int) -> dict:
    return {"encoder": model.encoder.flat[m].detach().cpu().clone(),
            "decoder": model.decoder.flat[m].detach().cpu().clone(),
            "log_sigma2": model.log_sigma2[m].detach().cpu().clone(), "data_dim": model.D,
            "latent_dim": model.K, "hidden": model.hidden, "label_kind": model.labels.kind,
            "classes": model.labels.classes, "unlabelled_posterior": model.unlabelled_posterior}


def load_m2_member(path, device="cpu", dtype=torch.float64) -> M2Ensemble:
    """A saved semi-supervised restart as a one-member ensemble."""
    state = load_weights(path)
    model = M2Ensemble(state["data_dim"], state["latent_dim"], Labels(state["label_kind"], state["classes"]),
                       state["hidden"], 1, dtype=dtype, device=device,
                       unlabelled_posterior=state.get("unlabelled_posterior", "xy"))   # "xy" before it was a setting
    with torch.no_grad():
        model.encoder.flat[0].copy_(state["encoder"])
        model.decoder.flat[0].copy_(state["decoder"])
    model.log_sigma2.copy_(state["log_sigma2"].view(1, 1, -1))
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return model


# --- evaluation -----------------------------------------------------------------------------
def _encoded_prior_labels(model: M2Ensemble, streams: MemberStreams, purpose: str, n: int,
                          value=None) -> torch.Tensor:
    """n labels per member from p(y) (each member's own stream), or all equal to `value`."""
    labels, dtype, device = model.labels, model.log_sigma2.dtype, model.log_sigma2.device
    if value is not None:
        y = torch.full((model.M, n), float(value), device=device)
    elif labels.kind == "discrete":
        y = streams.randint(purpose, (), labels.classes, (n,))
    else:
        y = streams.normal(purpose, (), (n,), torch.float64)
    return encode_labels(labels, y).to(dtype).to(device)


@torch.no_grad()
def m2_samples(model: M2Ensemble, streams: MemberStreams, purpose: str, n: int, value=None) -> torch.Tensor:
    """n samples per member of p_theta(x), or of p_theta(x | y = value): (M, n, D)."""
    y = _encoded_prior_labels(model, streams, purpose + "/y", n, value)
    z = streams.normal(purpose + "/z", (), (n, model.K), y.dtype)
    eps = streams.normal(purpose + "/x", (), (n, model.D), y.dtype)
    return model.decode(y, z) + (0.5 * model.log_sigma2).exp() * eps


@torch.no_grad()
def validation_objective(model: M2Ensemble, task: M2Task, bound: str, samples: int, repeats: int,
                         streams: MemberStreams, rows: torch.Tensor) -> torch.Tensor:
    """J (eq. 4, per unlabelled point) on the validation split, averaged over `repeats` draws."""
    labelled_bound, unlabelled_bound = BOUNDS[bound]
    d = task.data
    x_u, x_l, y_l = d["x_valid_unlabelled"][rows], d["x_valid_labelled"][rows], d["y_valid_labelled"][rows]
    dtype, K = x_u.dtype, model.K
    total = torch.zeros(model.M, dtype=torch.float64, device=x_u.device)
    C = model.labels.noise_dim
    for repeat in range(repeats):
        u = torch.zeros(model.M, dtype=torch.float64, device=x_u.device)
        for sl in point_chunks(x_u.shape[1], model.M * samples, x_u.device):
            n = sl.stop - sl.start
            eps_y = streams.normal("objective-valid/y", (repeat,), (n, samples, C), dtype,
                                   offset=sl.start * samples * C)
            eps_z = streams.normal("objective-valid/z", (repeat,), (n, samples, K), dtype,
                                   offset=sl.start * samples * K)
            u += unlabelled_bound(model, x_u[:, sl], eps_y, eps_z).sum(1).double()
        eps_z = streams.normal("objective-valid/z-labelled", (repeat,), (x_l.shape[1], samples, K), dtype)
        lab = labelled_bound(model, x_l, y_l, eps_z).mean(1).double()
        disc = log_q_labels(model, x_l, y_l).mean(1).double()
        total += u / x_u.shape[1] + task.labelled_share * (task.gamma * lab + task.alpha * disc)
    return (total / repeats).cpu()


def evaluate_m2(model: M2Ensemble, task: M2Task, streams: MemberStreams, rows: torch.Tensor,
                versions: list[int], bound: str,
                samples: int, settings: dict, failed: torch.Tensor) -> list[dict]:
    """Per-member results: validation objective, smooth kNN statistics of p(x) (validation and
    test) and of each cohort p(x | y = c) (test), and the discriminator's test accuracy
    (discrete y) or RMSE (continuous y)."""
    d = task.data
    repeats = settings["eval_samples"]
    objective_valid = validation_objective(model, task, bound, samples if bound == "iwae" else repeats,
                                           repeats if bound == "iwae" else 1, streams, rows)
    n_valid, n_test = d["x_valid"].shape[1], d["x_test"].shape[1]
    knn_valid = knn_statistics(m2_samples(model, streams, "samples-valid", n_valid), d["x_valid"][rows], settings).cpu()
    knn_test = knn_statistics(m2_samples(model, streams, "samples-test", n_test), d["x_test"][rows], settings).cpu()
    with torch.no_grad():
        out = model.classify(d["x_test"][rows])
        y_test = d["y_test"][rows]
        if model.labels.kind == "discrete":
            predictive = (out.argmax(-1) == y_test.long()).double().mean(1).cpu()
        else:
            predictive = ((out[..., 0] - y_test) ** 2).double().mean(1).sqrt().cpu()
    knn_cohorts = torch.stack([cohort_knn_statistics(model, streams, d["cohorts"], i, value, versions, settings)
                               for i, value in enumerate(d["cohort_values"])], -1)
    results = []
    for m in range(model.M):
        if bool(failed[m]) or not math.isfinite(float(objective_valid[m])):
            results.append({"status": "failed"})
            continue
        results.append({
            "status": "ok", "objective_valid": float(objective_valid[m]),
            "knn_valid": float(knn_valid[m]), "knn_test": float(knn_test[m]),
            "knn_cohort_test": knn_cohorts[m].tolist(),
            "cohort_values": d["cohort_values"],
            ("accuracy_test" if model.labels.kind == "discrete" else "rmse_test"): float(predictive[m]),
            "sigma2": model.log_sigma2[m, 0].exp().double().cpu().tolist(),
        })
    return results


def cohort_knn_statistics(model: M2Ensemble, streams: MemberStreams, cohorts, i: int, value, versions: list[int],
                          settings: dict) -> torch.Tensor:
    """Smooth kNN statistic of each member's samples of p(x | y = value) against its version's
    cohort i (test points of that class, or ground-truth samples): (M,), NaN where the cohort
    has no more than knn_k points.  Cohort sizes differ between UCI splits, so the members are
    evaluated in groups of equal size (samples are drawn per size, as many as the cohort)."""
    out = torch.full((model.M,), float("nan"), dtype=torch.float64)
    sizes = [len(cohorts[v][i]) for v in versions]
    device = model.log_sigma2.device
    for n in sorted(set(sizes)):
        if n <= settings["knn_k"]:
            continue
        members = [m for m, size in enumerate(sizes) if size == n]
        samples = m2_samples(model, streams, f"samples-cohort{i}-n{n}", n, value)[members]
        truth = torch.stack([torch.as_tensor(cohorts[versions[m]][i], dtype=torch.float64) for m in members]).to(device)
        out[members] = knn_statistics(samples, truth, settings).cpu()
    return out


# --- training jobs --------------------------------------------------------------------------
def train_ss_job(settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
                 data_paths: list[str], out_stems: list[str], device: str = "cpu") -> None:
    """Train all (alpha, gamma[, sigma^2]) x versions x restarts of one setting as batched M2 ensembles
    and write one result and one weights file per restart.  Ground-truth restarts start with
    the surrogate decoder and first fit their inference networks to it (decoder frozen) for
    gt_encoder_epochs on the ELBO version of their own objective."""
    dev = torch_device(device, settings)
    setting = grid.find_setting(settings, experiment, setting_id, dataset)
    labels = dataset_labels(dataset)
    uci = experiment == "uci"
    members = grid.job_members(settings, experiment)
    if len(out_stems) != len(members):
        raise ValueError(f"{len(out_stems)} output stems for {len(members)} restarts")
    inits = [grid.restart_init(settings, setting, m.restart) for m in members]
    gt_decoder = GroundTruthDecoder(surrogate_pt) if "gt" in inits else None
    data = load_ss_versions(data_paths, labels, torch.float32, dev)
    data_dim = data["x_test"].shape[-1]
    hidden = settings["uci_hidden_layers"] if uci else settings["hidden_layers"]
    true_sigma2 = None if uci else example(dataset).noise_variance
    epochs = settings["uci_epochs"] if uci else settings["ss_epochs"]
    train_settings = training_settings(settings, setting, epochs)
    prov = provenance(settings, device)
    chunks = _chunks(len(members), settings["batch_size"] * setting.samples, dev)
    n_failed = 0
    for c, chunk in enumerate(chunks):
        log.info("%s/%s/%s: training members %d-%d of %d (chunk %d/%d)", experiment, dataset, setting_id,
                 chunk.start, chunk.stop - 1, len(members), c + 1, len(chunks))
        part = [members[i] for i in chunk]
        seeds = [derive_seed(settings["seed"], experiment, dataset, setting_id, *member) for member in part]
        streams = MemberStreams(seeds, dev)
        versions = [m.version for m in part]
        rows = torch.tensor(versions)
        alpha = torch.tensor([m.alpha for m in part], dtype=torch.float32)
        gamma = torch.tensor([m.gamma for m in part], dtype=torch.float32)
        sigma2 = torch.tensor([true_sigma2 if m.sigma2 is None else m.sigma2 for m in part])
        model = build_m2_ensemble(data_dim, setting.latent_dim, labels, hidden, streams, [inits[i] for i in chunk],
                                  sigma2, gt_decoder, dev, setting.unlabelled_posterior)
        task = M2Task(setting.objective, setting.samples, data, rows, alpha, gamma, settings["batch_size"],
                      labels, setting.latent_dim)
        gt_rows = [j for j, i in enumerate(chunk) if inits[i] == "gt"]
        if gt_rows:
            _fit_inference_to_true_decoder(model, data, rows, alpha, gamma, streams, gt_rows, settings, labels,
                                           setting.latent_dim, hidden, data_dim, dev)
        train_log = train_ensemble(model, task, streams, train_settings)
        results = evaluate_m2(model, task, streams.child("eval"), rows.to(dev), versions, setting.objective,
                              setting.samples,
                              settings, train_log.failed)
        for j, i in enumerate(chunk):
            member = members[i]
            record = {
                "experiment": experiment, "dataset": dataset, "setting": setting_id, "method": setting.method,
                "latent_dim": setting.latent_dim, "samples": setting.samples,
                "lin_threshold": setting.lin_threshold, "lin_inner_steps": setting.lin_inner_steps,
                "sigma2_mode": "fixed", "unlabelled_posterior": setting.unlabelled_posterior,
                "alpha": member.alpha, "gamma": member.gamma,
                "sigma2_setting": member.sigma2, "version": member.version, "restart": member.restart,
                "init": inits[i], "seed": seeds[j],
                "train": {"epochs": epochs, "final_loss": float(train_log.final_loss[j]),
                          "failed_epoch": int(train_log.failed_epoch[j]),
                          "lin_aggressive_epochs": int(train_log.aggressive_epochs[j]),
                          "lin_inner_steps_taken": int(train_log.inner_steps[j]),
                          "ensemble_size": len(chunk), "ensemble_seconds": round(train_log.seconds, 2)},
                **results[j], "provenance": prov,
            }
            if record["status"] != "ok":
                record["reason"] = failure_reason(train_log, j, epochs)
                n_failed += 1
                log.warning("%s: member failed: %s", out_stems[i], record["reason"])
            save_torch(out_stems[i] + ".pt", m2_member_state(model, j))
            write_json(out_stems[i] + ".json", record)
    report_failures(f"{experiment}/{dataset}/{setting_id}", n_failed, len(members))


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
