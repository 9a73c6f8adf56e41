"""One function per workflow job: surrogate, data, GT encoders, training.

Each reads its inputs, does one step of the pipeline and writes its outputs atomically
(a temporary file in the same folder, synced and renamed into place), so an interrupted
job never leaves a half-written result that looks complete, and a write that fails (a
full disk) leaves whatever was at the path before as it was and raises ResultWriteError,
whose message names the file and the cause.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from . import grid
from .datasets import EMBEDDING, example, sample_split
from .evaluate import evaluate_members, mean_bound
from .files import load_npz, load_weights, save_npz, save_torch, write_json
from .model import VAEEnsemble
from .nets import FlatParameters, StackedMLP, random_init
from .posteriors import (
    ground_truth_log_likelihood,
    kl_optimal_gaussians,
    log_evidence_1d,
)
from .provenance import provenance
from .runtime import configure_device
from .surrogate import fit_surrogate
from .randomness import MemberStreams, derive_seed
from .train import (
    LinSettings,
    TrainSettings,
    fit_encoder_to_gaussians,
    train_vae,
)

log = logging.getLogger("vaefail.jobs")

# Rows per batched matmul on CPU: beyond ~20k the working set leaves the cache and IWAE
# with many samples slows down (shared/notes/measured-facts.md), so large ensembles are
# trained in chunks of members one after another.  GPUs take whole ensembles.
CPU_ROWS_PER_CHUNK = 20_000
RANDOM_INIT_SIGMA2 = 1.0
# phi_GT warm start (see fit_gt_encoders): the optimal Gaussians of this many training points,
# with variances floored (transition points have near-zero posterior width), fitted with a
# cosine-decayed rate from this value; the ELBO phase that follows uses a smaller rate than
# training, since a few steps of size 1e-3 throw narrow q's across the decoder's steps.
GT_ENCODER_TARGET_POINTS = 2000
GT_TARGET_MIN_LOG_VAR = math.log(1e-4)
GT_WARMSTART_LEARNING_RATE = 3e-3
GT_ELBO_LEARNING_RATE_FACTOR = 0.1   # learned sigma^2 of randomly initialised restarts starts here


def torch_device(device: str, settings: dict | None = None) -> torch.device:
    """The job's torch device, with the run's float32 matmul precision set for it."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no GPU "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
                           "install a CUDA build of torch or run with --config device=cpu")
    if settings is not None:
        configure_device(device, settings["matmul_precision"])
    return torch.device("cuda" if device == "cuda" else "cpu")


# --- surrogate ground-truth decoders -----------------------------------------------------
def make_surrogate(settings: dict, base: str, out_pt: str) -> None:
    ex = example(base)
    net, params, record = fit_surrogate(
        ex, settings["hidden_layers"], derive_seed(settings["seed"], "surrogate", base),
        settings["surrogate_adam_steps"], 1024, 3e-3, settings["surrogate_lbfgs_iterations"],
        settings["surrogate_grid_points"], settings["surrogate_target_mse"])
    record["provenance"] = provenance(settings, "cpu")
    save_torch(out_pt, {"sizes": net.sizes, "flat": params.flat[0].clone(), "record": record})
    write_json(Path(out_pt).with_suffix(".json"), record)


class GroundTruthDecoder:
    """The fitted surrogate as a function of its inputs (..., in) -> x-mean (..., D), embedded
    if needed; the input is z (unsupervised) or [label, z] (semi-supervised)."""

    def __init__(self, path: str | Path, embedded: bool = False):
        state = load_weights(path)
        self.net = StackedMLP(state["sizes"], "dec.")
        self.params = FlatParameters(self.net.shapes(), 1, dtype=torch.float64)
        with torch.no_grad():
            self.params.flat[0].copy_(state["flat"])
        self.params.set_requires_grad(False)
        self.embedded = embedded

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        out = self.net(self.params, z.reshape(1, -1, z.shape[-1]).to(torch.float64)).reshape(*lead, 2)
        return out @ EMBEDDING if self.embedded else out

    def decoder_weights(self) -> dict[str, torch.Tensor]:
        """Parameters for a VAE decoder of the same architecture (last layer embedded)."""
        weights = {name: view[0].clone() for name, view in self.params.views.items()}
        if self.embedded:
            last = len(self.net.sizes) - 2
            weights[f"dec.W{last}"] = weights[f"dec.W{last}"] @ EMBEDDING
            weights[f"dec.b{last}"] = weights[f"dec.b{last}"] @ EMBEDDING
        return weights


def dataset_example(settings: dict, dataset: str):
    """The example a data set is drawn from; appendix F's linear-Gaussian truth takes its
    parameters from the settings."""
    if dataset == grid.LINEAR_GAUSSIAN:
        from .appendix_f import truth   # imported here: it loads pandas and scipy, which a training job does not need
        return truth(settings)
    return example(dataset)


def make_dataset(settings: dict, dataset: str, surrogate_pt: str | None, out_paths: list[str]) -> None:
    if dataset == grid.LINEAR_GAUSSIAN:   # no surrogate: drawn from the linear model itself
        from .appendix_f import make_dataset as make_linear_gaussian_dataset
        return make_linear_gaussian_dataset(settings, out_paths)
    ex = example(dataset)
    if hasattr(ex, "label_kind"):   # a semi-supervised example
        from .semisupervised import make_ss_dataset
        return make_ss_dataset(settings, dataset, surrogate_pt, out_paths)
    decoder = GroundTruthDecoder(surrogate_pt)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}
    for version, path in enumerate(out_paths):
        split = sample_split(decoder, ex, sizes, derive_seed(settings["seed"], "data", dataset, version))
        save_npz(path, split)


def load_versions(paths: list[str], split: str, dtype, device) -> torch.Tensor:
    return torch.stack([torch.from_numpy(load_npz(p)[f"x_{split}"]) for p in paths]).to(dtype).to(device)


# --- building ensembles ------------------------------------------------------------------
def _copy_rows(params: FlatParameters, rows: list[int], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in weights.items():
            params[name][rows] = value.to(params.flat.dtype).to(params.flat.device)


def build_ensemble(settings: dict, ex, latent_dim: int, sigma2_mode: str, streams: MemberStreams,
                   inits: list[str],
                   gt_decoder: GroundTruthDecoder | None, gt_encoders: list[dict] | None,
                   versions: list[int], device) -> VAEEnsemble:
    """Random init for every member (from its own generator), then ground-truth weights for
    GT members: the surrogate decoder and the encoder fitted to it for that data version."""
    model = VAEEnsemble(ex.data_dim, latent_dim, settings["hidden_layers"], len(streams), sigma2_mode,
                        device=device)
    random_init(model.encoder, model.encoder_net.init_bounds(model.encoder), streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")
    truth = torch.full((model.M, 1, ex.data_dim), ex.noise_variance)
    if sigma2_mode == "learned":
        truth = torch.where(torch.tensor([i == "gt" for i in inits]).view(-1, 1, 1), truth,
                            torch.full_like(truth, RANDOM_INIT_SIGMA2))
    model.set_sigma2(truth)
    gt_rows = [m for m, init in enumerate(inits) if init == "gt"]
    if gt_rows:
        _copy_rows(model.decoder, gt_rows, gt_decoder.decoder_weights())
        for m in gt_rows:
            _copy_rows(model.encoder, [m], gt_encoders[versions[m]])
    return model


def member_state(model: VAEEnsemble, m: int) -> dict:
    return {"encoder": model.encoder.flat[m].detach().cpu().clone(),
            "decoder": model.decoder.flat[m].detach().cpu().clone(),
            "log_sigma2": model.log_sigma2[m].detach().cpu().clone(),
            "data_dim": model.D, "latent_dim": model.K, "hidden": model.hidden,
            "sigma2_mode": model.sigma2_mode}


def load_member(path: str | Path, device="cpu", dtype=torch.float64) -> VAEEnsemble:
    """A saved restart as a one-member ensemble."""
    state = load_weights(path)
    model = VAEEnsemble(state["data_dim"], state["latent_dim"], state["hidden"], 1,
                        state["sigma2_mode"], dtype=dtype, device=device)
    with torch.no_grad():
        model.encoder.flat[0].copy_(state["encoder"])
        model.decoder.flat[0].copy_(state["decoder"])
    model.set_sigma2(state["log_sigma2"].exp())
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return model


def _chunks(n_members: int, rows_per_member: int, device) -> list[range]:
    size = n_members if device.type == "cuda" else max(1, CPU_ROWS_PER_CHUNK // rows_per_member)
    return [range(s, min(s + size, n_members)) for s in range(0, n_members, size)]


# --- GT encoders -------------------------------------------------------------------------
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
        _copy_rows(model.decoder, list(range(model.M)), decoder.decoder_weights())
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


# --- training jobs -----------------------------------------------------------------------
def train_job(settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
              data_paths: list[str], gt_encoder_paths: list[str], out_stems: list[str],
              device: str = "cpu") -> None:
    """Train every restart of every data version of one setting, batched, and write one
    result file (metrics) and one weights file per restart."""
    dev = torch_device(device, settings)
    setting = grid.find_setting(settings, experiment, setting_id)
    ex = dataset_example(settings, dataset)
    epochs = grid.experiment_epochs(settings, experiment)
    R = grid.n_restarts(settings)
    members = [(v, r) for v in range(len(data_paths)) for r in range(R)]
    if len(out_stems) != len(members):
        raise ValueError(f"{len(out_stems)} output stems for {len(members)} restarts")
    inits = [grid.restart_init(settings, setting, r) for _, r in members]
    gt_decoder = GroundTruthDecoder(surrogate_pt, ex.embedded) if "gt" in inits else None
    gt_encoders = ([load_weights(p)["encoder"] for p in gt_encoder_paths]
                   if "gt" in inits else None)
    data = {split: load_versions(data_paths, split, torch.float32, dev)
            for split in ("train", "valid", "test")}
    train_settings = training_settings(settings, setting, epochs)
    prov = provenance(settings, device)
    chunks = _chunks(len(members), settings["batch_size"] * setting.samples, dev)
    n_failed = 0
    for c, chunk in enumerate(chunks):
        log.info("%s/%s/%s: training members %d-%d of %d (chunk %d/%d)", experiment, dataset, setting_id,
                 chunk.start, chunk.stop - 1, len(members), c + 1, len(chunks))
        seeds = [derive_seed(settings["seed"], experiment, dataset, setting_id, *members[i]) for i in chunk]
        streams = MemberStreams(seeds, dev)
        versions = [members[i][0] for i in chunk]
        model = build_ensemble(settings, ex, setting.latent_dim, setting.sigma2_mode, streams,
                               [inits[i] for i in chunk], gt_decoder, gt_encoders, versions, dev)
        version_index = torch.tensor(versions)
        train_log = train_vae(model, data["train"], data["valid"], version_index, streams, train_settings)
        member_data = {split: x[version_index.to(dev)] for split, x in data.items()}
        results = evaluate_members(model, member_data, streams.child("eval"), objective=setting.objective,
                                   samples=setting.samples, settings=settings, failed=train_log.failed)
        for j, i in enumerate(chunk):
            version, restart = members[i]
            result = dict(results[j])
            if result["status"] != "ok":
                result.setdefault("reason", failure_reason(train_log, j, epochs))
            record = {
                "experiment": experiment, "dataset": dataset, "setting": setting_id,
                "method": setting.method, "latent_dim": setting.latent_dim, "samples": setting.samples,
                "lin_threshold": setting.lin_threshold, "lin_inner_steps": setting.lin_inner_steps,
                "sigma2_mode": setting.sigma2_mode, "version": version, "restart": restart,
                "init": inits[i], "seed": seeds[j],
                "train": {"epochs": epochs, "final_loss": float(train_log.final_loss[j]),
                          "failed_epoch": int(train_log.failed_epoch[j]),
                          "lin_aggressive_epochs": int(train_log.aggressive_epochs[j]),
                          "lin_inner_steps_taken": int(train_log.inner_steps[j]),
                          "ensemble_size": len(chunk),
                          "ensemble_seconds": round(train_log.seconds, 2)},
                **result,
                "provenance": prov,
            }
            if record["status"] != "ok":
                n_failed += 1
                log.warning("%s: member failed: %s", out_stems[i], record["reason"])
            save_torch(out_stems[i] + ".pt", member_state(model, j))
            write_json(out_stems[i] + ".json", record)
    report_failures(f"{experiment}/{dataset}/{setting_id}", n_failed, len(members))


def training_settings(settings: dict, setting: grid.Setting, epochs: int) -> TrainSettings:
    """How one grid setting trains: its objective, S, LIN's T and R, and the shared optimiser."""
    lin = (LinSettings(setting.lin_threshold, setting.lin_inner_steps, settings["lin_mi_patience"])
           if setting.method == "lin" else None)
    return TrainSettings(objective=setting.objective, samples=setting.samples, epochs=epochs,
                         batch_size=settings["batch_size"], learning_rate=settings["learning_rate"], lin=lin)


def failure_reason(train_log, j: int, epochs: int) -> str:
    """Why member j of a training log failed, for its result file."""
    epoch = int(train_log.failed_epoch[j])
    if epoch >= 0:
        return f"non-finite training loss (NaN or inf) in epoch {epoch + 1} of {epochs}"
    return "non-finite evaluation"


def report_failures(job: str, n_failed: int, n_members: int) -> None:
    """End a training job with a summary of its failed members (selection skips them)."""
    if n_failed == n_members:
        log.error("%s: all %d members failed (see the warnings above); their results are recorded "
                  "with status 'failed' and selection leaves this setting out (a table cell with no "
                  "other setting of its method stays empty). A learning_rate too large for this "
                  "objective is a common cause.", job, n_members)
    elif n_failed:
        log.warning("%s: %d of %d members failed; selection skips them", job, n_failed, n_members)
