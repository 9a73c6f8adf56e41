"""Batched training of an ensemble of VAEs: VAE (ELBO), IWAE, and LIN (He et al. 2019).

Each member has its own seed, initialisation, data order, noise and optimiser state,
drawn from its own random generators in an order that does not depend on the other
members, so a member trained in a batch follows the same trajectory as trained alone
(tests/test_train.py checks this in float64).  The loss summed over members is
backpropagated once per step; members never interact.

LIN (Lagging Inference Networks, He et al. 2019, following their public code):
while a member is "aggressive", before each outer step it takes inner encoder-only
steps on random minibatches, at most `LIN_MAX_INNER_STEPS`.  Every R inner steps
the mean loss of those R steps is compared with the previous R-step mean; the inner
loop stops when it improved by less than T nats (He et al. use T = 0).  The outer step
then updates the decoder only.  After each epoch the encoder's mutual information
I_q(x; z) is estimated on the validation set; aggressive mode ends the first time it
fails to increase.  Afterwards LIN trains like a VAE.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from .model import OBJECTIVES, VAEEnsemble, elbo, encoder_mutual_information
from .nets import MaskedAdam

log = logging.getLogger("vaefail.train")

LIN_MAX_INNER_STEPS = 100  # as in He et al.'s code: `while aggressive and sub_iter < 100`
LIN_INITIAL_PREVIOUS_LOSS = 1e4  # their starting "previous average", so the first check passes


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any sequence of printable parts."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class MemberRandomness:
    """Independent generators for each use of randomness of one member."""

    PURPOSES = ("init", "shuffle", "noise", "lin", "eval")

    def __init__(self, seed: int):
        self.seed = seed
        for purpose in self.PURPOSES:
            setattr(self, purpose, torch.Generator().manual_seed(derive_seed(seed, purpose)))


@dataclass
class LinSettings:
    threshold: float   # T: minimum improvement (nats) of the R-step mean loss to keep going
    inner_steps: int   # R: number of inner steps averaged before each comparison
    mi_patience: int = 1


@dataclass
class TrainSettings:
    objective: str = "elbo"          # 'elbo' or 'iwae'
    samples: int = 1                 # S: importance samples (IWAE) or MC samples (ELBO)
    epochs: int = 100
    batch_size: int = 100
    learning_rate: float = 1e-3
    lin: LinSettings | None = None
    train_decoder: bool = True       # False: fit the encoder to a frozen decoder


@dataclass
class TrainLog:
    final_loss: torch.Tensor                 # (M,) mean training loss over the last epoch
    failed: torch.Tensor                     # (M,) bool: loss became NaN/inf
    failed_epoch: torch.Tensor               # (M,) epoch of failure, -1 if none
    aggressive_epochs: torch.Tensor          # (M,) epochs spent in LIN's aggressive mode
    inner_steps: torch.Tensor                # (M,) LIN inner encoder steps taken in total
    seconds: float = 0.0
    history: list = field(default_factory=list)  # per epoch: mean loss of each member


def _member_noise(rngs, shape, dtype, device, members=None):
    """Stack one standard-normal draw of `shape` per member, each from its own generator."""
    members = range(len(rngs)) if members is None else members
    draws = [torch.randn(shape, generator=rngs[m].noise, dtype=dtype) for m in members]
    return torch.stack(draws).to(device)


def train_ensemble(model: VAEEnsemble, train_x: torch.Tensor, valid_x: torch.Tensor,
                   version_of_member: torch.Tensor, rngs: list[MemberRandomness],
                   settings: TrainSettings, progress_every: float = 10.0) -> TrainLog:
    """Train all members of `model` in place.

    train_x: (V, N, D) training data of each dataset version; member m uses version
    `version_of_member[m]`.  valid_x: (V, N_valid, D), used by LIN's mutual-information check.
    """
    M, K, S, B = model.M, model.K, settings.samples, settings.batch_size
    device, dtype = model.encoder.flat.device, model.encoder.flat.dtype
    N = train_x.shape[1]
    if N % B:
        raise ValueError(f"the training set size {N} is not a multiple of batch_size={B}")
    steps_per_epoch = N // B
    objective = OBJECTIVES[settings.objective]
    version_of_member = version_of_member.to(device)
    rows = version_of_member.view(M, 1)

    enc_opt = MaskedAdam(model.encoder, lr=settings.learning_rate)
    dec_opt = MaskedAdam(model.decoder, lr=settings.learning_rate) if settings.train_decoder else None
    model.decoder.set_requires_grad(settings.train_decoder)

    failed = torch.zeros(M, dtype=torch.bool, device=device)
    failed_epoch = torch.full((M,), -1, dtype=torch.long)
    lin = settings.lin
    aggressive = torch.full((M,), lin is not None, dtype=torch.bool, device=device)
    aggressive_epochs = torch.zeros(M, dtype=torch.long)
    inner_total = torch.zeros(M, dtype=torch.long)
    best_mi = torch.zeros(M, dtype=torch.float64)
    mi_misses = torch.zeros(M, dtype=torch.long)
    history = []
    start = last_report = time.perf_counter()

    for epoch in range(settings.epochs):
        order = torch.stack([torch.randperm(N, generator=r.shuffle) for r in rngs]).to(device)
        noise = _member_noise(rngs, (steps_per_epoch, B, S, K), dtype, device)
        epoch_loss = torch.zeros(M, dtype=torch.float64, device=device)
        for step in range(steps_per_epoch):
            x = train_x[rows, order[:, step * B:(step + 1) * B]]
            if lin is not None and bool(aggressive.any()):
                inner_total += _lin_inner_loop(model, enc_opt, x, train_x, rows, rngs,
                                               aggressive & ~failed, lin, B).cpu()
            loss = -objective(model, x, noise[:, step]).mean(1)
            failed |= ~torch.isfinite(loss.detach())
            _backward(model, torch.where(failed, 0.0, loss).sum())
            enc_opt.step(~failed & ~aggressive if settings.train_decoder else ~failed)
            if dec_opt is not None:
                dec_opt.step(~failed)
            epoch_loss += loss.detach().to(torch.float64)
        newly_failed = failed.cpu() & (failed_epoch < 0)
        failed_epoch[newly_failed] = epoch
        history.append((epoch_loss / steps_per_epoch).cpu())
        if lin is not None and bool(aggressive.any()):
            aggressive_epochs += aggressive.cpu().long()
            mi = _validation_mutual_information(model, valid_x, rows, rngs, aggressive, B)
            improved = mi - best_mi >= 0
            best_mi = torch.where(improved & aggressive.cpu(), mi, best_mi)
            mi_misses = torch.where(improved, mi_misses, mi_misses + aggressive.cpu().long())
            aggressive &= (mi_misses < lin.mi_patience).to(device)
        now = time.perf_counter()
        if now - last_report >= progress_every or epoch == settings.epochs - 1:
            last_report = now
            done = epoch + 1
            ok = ~failed.cpu()
            mean_loss = float(history[-1][ok].mean()) if ok.any() else float("nan")
            eta = (now - start) / done * (settings.epochs - done)
            log.info("epoch %d/%d  mean loss %.4f  failed %d/%d  aggressive %d  %.1fs elapsed, ETA %.0fs",
                     done, settings.epochs, mean_loss, int(failed.sum()), M, int(aggressive.sum()),
                     now - start, eta)
    return TrainLog(final_loss=history[-1] if history else torch.full((M,), float("nan")),
                    failed=failed.cpu(), failed_epoch=failed_epoch,
                    aggressive_epochs=aggressive_epochs, inner_steps=inner_total,
                    seconds=time.perf_counter() - start, history=history)


def fit_encoder_to_gaussians(model: VAEEnsemble, train_x: torch.Tensor, target_mean: torch.Tensor,
                             target_log_var: torch.Tensor, version_of_member: torch.Tensor,
                             rngs: list[MemberRandomness], epochs: int, batch_size: int,
                             learning_rate: float, members: torch.Tensor | None = None) -> None:
    """Fit each member's (or each member in the boolean mask `members`) encoder q(z|x) to given Gaussians N(m(x), v(x)) by minimising
    KL[q(z|x) || N(m(x), v(x))] averaged over points (cosine-decayed learning rate).

    A warm start for the encoder of a ground-truth decoder: where the decoder is flat in z
    (the dots of Spiral-Dots, the clusters of Clusters) a z on the wrong flat stretch gets
    no gradient from the ELBO, so ascent from a random encoder stalls far from the optimum.
    This KL weighs errors by the target's precision, as the ELBO does.
    train_x: (V, N, D); target_*: (V, N, K) per data version.
    """
    M, N, B = model.M, train_x.shape[1], batch_size
    device = model.encoder.flat.device
    rows = version_of_member.to(device).view(M, 1)
    opt = MaskedAdam(model.encoder, lr=learning_rate)
    update = torch.ones(M, dtype=torch.bool) if members is None else members
    steps, total = 0, epochs * (N // B)
    for _ in range(epochs):
        order = torch.stack([torch.randperm(N, generator=r.shuffle) for r in rngs]).to(device)
        for step in range(N // B):
            opt.hyper["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * steps / total))
            idx = order[:, step * B:(step + 1) * B]
            mu, log_var = model.encode(train_x[rows, idx])
            m, lv = target_mean[rows, idx], target_log_var[rows, idx]
            kl = 0.5 * (lv - log_var + (log_var.exp() + (mu - m) ** 2) / lv.exp() - 1).sum(-1).mean(1)
            model.encoder.zero_grad()
            kl.sum().backward()
            opt.step(update)
            steps += 1


def _backward(model: VAEEnsemble, total: torch.Tensor) -> None:
    model.encoder.zero_grad()
    model.decoder.zero_grad()
    total.backward()


def _lin_inner_loop(model, enc_opt, x, train_x, rows, rngs, active, lin: LinSettings, B):
    """LIN's aggressive inner loop: encoder-only ELBO steps until the loss stops improving.

    Returns the number of inner steps each member took, (M,).
    """
    M, K, N = model.M, model.K, train_x.shape[1]
    device, dtype = x.device, x.dtype
    active = active.clone()
    steps_taken = torch.zeros(M, dtype=torch.long, device=device)
    previous = torch.full((M,), LIN_INITIAL_PREVIOUS_LOSS, dtype=torch.float64, device=device)
    running = torch.zeros(M, dtype=torch.float64, device=device)
    model.decoder.set_requires_grad(False)
    batch = x
    sub_iter = 1
    while sub_iter < LIN_MAX_INNER_STEPS:
        members = active.nonzero().flatten().tolist()
        if not members:
            break
        eps = torch.zeros(M, B, 1, K, dtype=dtype, device=device)
        eps[members] = torch.stack([torch.randn(B, 1, K, generator=rngs[m].lin, dtype=dtype)
                                    for m in members]).to(device)
        loss = -elbo(model, batch, eps).mean(1)
        ok = active & torch.isfinite(loss.detach())
        running += torch.where(active, loss.detach().to(torch.float64), 0.0)
        _backward(model, torch.where(ok, loss, 0.0).sum())
        enc_opt.step(ok)
        steps_taken += active.long()
        # The next inner batch: B distinct random training points, drawn per active member.
        idx = torch.zeros(M, B, dtype=torch.long, device=device)
        idx[members] = torch.stack([torch.randperm(N, generator=rngs[m].lin)[:B]
                                    for m in members]).to(device)
        batch = train_x[rows, idx]
        if sub_iter % lin.inner_steps == 0:
            current = running / lin.inner_steps
            active &= (previous - current) >= lin.threshold
            previous, running = current, torch.zeros_like(running)
        sub_iter += 1
    model.decoder.set_requires_grad(True)
    return steps_taken


@torch.no_grad()
def _validation_mutual_information(model, valid_x, rows, rngs, aggressive, B):
    """Mean over validation minibatches of He et al.'s I_q(x; z) estimate, (M,) on CPU."""
    M, K = model.M, model.K
    device, dtype = valid_x.device, valid_x.dtype
    members = aggressive.nonzero().flatten().tolist()
    n_valid = valid_x.shape[1]
    total = torch.zeros(M, dtype=torch.float64)
    n_batches = math.ceil(n_valid / B)
    eps = torch.zeros(M, n_valid, K, dtype=dtype, device=device)
    eps[members] = torch.stack([torch.randn(n_valid, K, generator=rngs[m].lin, dtype=dtype)
                                for m in members]).to(device)
    member_valid = valid_x[rows.view(-1)]
    for b in range(n_batches):
        sl = slice(b * B, min((b + 1) * B, n_valid))
        mi = encoder_mutual_information(model, member_valid[:, sl], eps[:, sl])
        total += mi.cpu().to(torch.float64) * (sl.stop - sl.start)
    return total / n_valid
