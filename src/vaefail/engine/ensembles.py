"""Building ensembles for training, and saving and loading their members.

Every member starts from its own random initialisation (from its own streams); members that
start at the ground truth then get the surrogate decoder's weights (and, unsupervised, the
encoder phi_GT fitted to it, load_gt_encoder).  A trained member is saved alone (member_state)
and loaded back as a one-member ensemble of its kind (load_member), VAE or M2 alike; the
ground truth with phi_GT loads as one too (load_ground_truth).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.surrogate import GroundTruthDecoder
from ..files import load_weights
from ..models.m2 import Labels, M2Ensemble
from ..models.nets import FlatParameters, random_init
from ..models.vae import VAEEnsemble
from ..randomness import MemberStreams

RANDOM_INIT_SIGMA2 = 1.0   # learned sigma^2 of randomly initialised restarts starts here


def copy_rows(params: FlatParameters, rows: list[int], weights: dict[str, torch.Tensor]) -> None:
    """Set these members' named parameters to `weights` (one value for all of them)."""
    with torch.no_grad():
        for name, value in weights.items():
            params[name][rows] = value.to(params.flat.dtype).to(params.flat.device)


def _random_init(model: VAEEnsemble | M2Ensemble, encoder_bounds: torch.Tensor, streams: MemberStreams) -> None:
    """nn.Linear's initialisation of every member's networks, from the member's own streams."""
    random_init(model.encoder, encoder_bounds, streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")


def build_ensemble(settings: dict, ex, latent_dim: int, sigma2_mode: str, streams: MemberStreams,
                   inits: list[str],
                   gt_decoder: GroundTruthDecoder | None, gt_encoders: list[dict] | None,
                   versions: list[int], device) -> VAEEnsemble:
    """Random init for every member (from its own generator), then ground-truth weights for
    GT members: the surrogate decoder and the encoder fitted to it for that data version."""
    model = VAEEnsemble(ex.data_dim, latent_dim, settings["hidden_layers"], len(streams), sigma2_mode,
                        device=device)
    _random_init(model, model.encoder_net.init_bounds(model.encoder), streams)
    truth = torch.full((model.M, 1, ex.data_dim), ex.noise_variance)
    if sigma2_mode == "learned":
        truth = torch.where(torch.tensor([i == "gt" for i in inits]).view(-1, 1, 1), truth,
                            torch.full_like(truth, RANDOM_INIT_SIGMA2))
    model.set_sigma2(truth)
    gt_rows = [m for m, init in enumerate(inits) if init == "gt"]
    if gt_rows:
        copy_rows(model.decoder, gt_rows, gt_decoder.decoder_weights())
        for m in gt_rows:
            copy_rows(model.encoder, [m], gt_encoders[versions[m]])
    return model


def build_m2_ensemble(data_dim: int, latent_dim: int, labels: Labels, hidden: list[int],
                      streams: MemberStreams, inits, sigma2: float, gt_decoder: GroundTruthDecoder | None,
                      device, unlabelled_posterior: str) -> M2Ensemble:
    """Random init for every member, then the surrogate decoder for GT members (their inference
    networks are fitted to it by the training job)."""
    model = M2Ensemble(data_dim, latent_dim, labels, hidden, len(streams), device=device,
                       unlabelled_posterior=unlabelled_posterior)
    _random_init(model, model.encoder_init_bounds(), streams)
    model.set_sigma2(sigma2)
    gt_rows = [m for m, init in enumerate(inits) if init == "gt"]
    if gt_rows:
        copy_rows(model.decoder, gt_rows, gt_decoder.decoder_weights())
    return model


def member_state(model: VAEEnsemble | M2Ensemble, m: int) -> dict:
    """Member m's weights and what it takes to rebuild it (a restart's .pt file)."""
    state = {"encoder": model.encoder.flat[m].detach().cpu().clone(),
             "decoder": model.decoder.flat[m].detach().cpu().clone(),
             "log_sigma2": model.log_sigma2[m].detach().cpu().clone(),
             "data_dim": model.D, "latent_dim": model.K, "hidden": model.hidden}
    if isinstance(model, M2Ensemble):
        state.update(label_kind=model.labels.kind, classes=model.labels.classes,
                     unlabelled_posterior=model.unlabelled_posterior)
    else:
        state["sigma2_mode"] = model.sigma2_mode
    return state


def load_member(path: str | Path, device="cpu", dtype=torch.float64) -> VAEEnsemble | M2Ensemble:
    """A saved restart as a one-member ensemble: an M2Ensemble if it has labels, else a VAEEnsemble."""
    state = load_weights(path)
    if "label_kind" in state:
        model = M2Ensemble(state["data_dim"], state["latent_dim"], Labels(state["label_kind"], state["classes"]),
                           state["hidden"], 1, dtype=dtype, device=device,
                           unlabelled_posterior=state.get("unlabelled_posterior", "xy"))   # "xy" before it was a setting
    else:
        model = VAEEnsemble(state["data_dim"], state["latent_dim"], state["hidden"], 1,
                            state["sigma2_mode"], dtype=dtype, device=device)
    with torch.no_grad():
        model.encoder.flat[0].copy_(state["encoder"])
        model.decoder.flat[0].copy_(state["decoder"])
        if isinstance(model, M2Ensemble):
            model.log_sigma2.copy_(state["log_sigma2"].view(1, 1, -1))
    if isinstance(model, VAEEnsemble):
        model.set_sigma2(state["log_sigma2"].exp())
    return _frozen(model)


def load_gt_encoder(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder phi_GT of one data version (jobs.gt_encoders), by parameter name."""
    return load_weights(path)["encoder"]


def load_ground_truth(gt_decoder: GroundTruthDecoder, gt_encoder_path: str | Path, data_dim: int, hidden: list[int],
                      noise_variance: float, device="cpu", dtype=torch.float64) -> VAEEnsemble:
    """The ground truth as a one-member ensemble: the surrogate decoder with the encoder phi_GT
    fitted to it for one data version, and sigma^2 at its true value."""
    model = VAEEnsemble(data_dim, 1, hidden, 1, "fixed", dtype=dtype, device=device)
    copy_rows(model.decoder, [0], gt_decoder.decoder_weights())
    copy_rows(model.encoder, [0], load_gt_encoder(gt_encoder_path))
    model.set_sigma2(torch.tensor(noise_variance, dtype=dtype))
    return _frozen(model)


def _frozen(model: VAEEnsemble | M2Ensemble) -> VAEEnsemble | M2Ensemble:
    """The model with its networks' parameters out of autograd: loaded to be evaluated, not trained."""
    model.encoder.set_requires_grad(False)
    model.decoder.set_requires_grad(False)
    return model
