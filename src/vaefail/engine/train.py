"""Batched training of an ensemble of VAEs: VAE (ELBO), IWAE, and LIN (He et al. 2019).

Each member has its own seed, initialisation, data order, noise and optimiser state; its
random numbers come from its own counter-based streams (vaefail.randomness), drawn for
all members at once on the training device and independent of the other members, so a
member trained in a batch follows the same trajectory as trained alone
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

import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..convergence import check_epochs
from ..models.nets import MaskedAdam
from ..models.vae import OBJECTIVES, VAEEnsemble, elbo, encoder_mutual_information
from ..randomness import MemberStreams
from .bounds import mean_bound

log = logging.getLogger(__name__)

LIN_MAX_INNER_STEPS = 100  # as in He et al.'s code: `while aggressive and sub_iter < 100`
LIN_INITIAL_PREVIOUS_LOSS = 1e4  # their starting "previous average", so the first check passes


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
    record_curve: bool = False       # record the validation objective at convergence.CHECKS epochs


@dataclass
class TrainLog:
    final_loss: torch.Tensor                 # (M,) mean training loss over the last epoch
    failed: torch.Tensor                     # (M,) bool: loss became NaN/inf
    failed_epoch: torch.Tensor               # (M,) epoch of failure, -1 if none
    aggressive_epochs: torch.Tensor          # (M,) epochs spent in LIN's aggressive mode
    inner_steps: torch.Tensor                # (M,) LIN inner encoder steps taken in total
    seconds: float = 0.0
    history: list = field(default_factory=list)  # per epoch: mean loss of each member
    # the validation curve: epochs done at each check, and each member's validation objective
    # (per point) there, (checks, M) float64 -- vaefail.convergence decides from it
    check_epochs: list = field(default_factory=list)
    valid_curve: torch.Tensor | None = None


class InnerBatches:
    """LIN's random inner-loop minibatches for one outer step: consecutive slices of fresh
    per-member permutations of range(n), so each is `size` distinct uniformly random points
    (He et al. draw `np.random.choice(n, size, replace=False)`) and successive ones do not
    repeat points until a permutation is used up.  Drawn on the device, for all members."""

    def __init__(self, streams: MemberStreams, purpose: str, index: tuple, n: int, size: int):
        self.streams, self.purpose, self.index, self.n, self.size = streams, purpose, index, n, size
        self.per_permutation = n // size
        self._round, self._order = -1, None

    def __call__(self, draw: int) -> torch.Tensor:
        """(M, size) indices of the draw-th inner batch (draw = 0, 1, ...)."""
        round_, slot = divmod(draw, self.per_permutation)
        if round_ != self._round:
            self._round = round_
            self._order = self.streams.permutation(self.purpose, (*self.index, round_), self.n)
        return self._order[:, slot * self.size:(slot + 1) * self.size]


class TrainingTask(Protocol):
    """What train_ensemble needs of a task: the data of every member and its objective.
    VAETask (below) and m2_task.M2Task are the two."""

    steps_per_epoch: int

    def start_epoch(self, streams: MemberStreams, epoch: int) -> None:
        """Each member's order of the data and the epoch's noise."""

    def select_batch(self, streams: MemberStreams, step: int) -> None:
        """The step's minibatch of each member (also the first of LIN's inner batches)."""

    def loss(self, model, step: int) -> torch.Tensor:
        """The step's loss of each member, (M,): minus the training objective per point."""

    def inner_loss(self, model, streams: MemberStreams, index: tuple) -> torch.Tensor:
        """LIN: the loss of the current inner batch, (M,)."""

    def draw_inner_batch(self, draw: int) -> None:
        """LIN: move to the next inner batch of random training points."""

    def mutual_information(self, model, streams: MemberStreams) -> torch.Tensor:
        """LIN: the encoder's I_q(x; z) on each member's validation data, (M,)."""

    def validation_objective(self, model, streams: MemberStreams) -> torch.Tensor:
        """The training objective per point on each member's validation data, (M,) float64,
        with the same noise at every call (the convergence check compares calls)."""


class VAETask:
    """Unsupervised VAE/IWAE training data and objective, as train_ensemble uses them.

    train_x: (V, N, D) training data of each dataset version; member m uses version
    `version_of_member[m]`.  valid_x: (V, N_valid, D), used by LIN's mutual-information check.
    """

    def __init__(self, objective: str, samples: int, train_x: torch.Tensor, valid_x: torch.Tensor,
                 version_of_member: torch.Tensor, batch_size: int, latent_dim: int):
        N, B = train_x.shape[1], batch_size
        if N % B:
            raise ValueError(f"the training set size {N} is not a multiple of batch_size={B}")
        self.objective, self.S, self.K, self.B = OBJECTIVES[objective], samples, latent_dim, B
        self.objective_name = objective
        self.train_x, self.valid_x = train_x, valid_x
        self.rows = version_of_member.to(train_x.device).view(-1, 1)
        self.steps_per_epoch = N // B

    def start_epoch(self, streams: MemberStreams, epoch: int) -> None:
        """Shuffle each member's data and draw the epoch's noise, for all steps at once."""
        self.epoch = epoch
        order = streams.permutation("shuffle", (epoch,), self.train_x.shape[1])
        self.epoch_x = self.train_x[self.rows, order]                    # (M, N, D) in this epoch's order
        self.noise = streams.normal("noise", (epoch,), (self.steps_per_epoch, self.B, self.S, self.K),
                                    self.train_x.dtype)

    def select_batch(self, streams: MemberStreams, step: int) -> None:
        B = self.B
        self.batch = self.inner_batch = self.epoch_x[:, step * B:(step + 1) * B]
        self.inner_batches = InnerBatches(streams, "lin-batch", (self.epoch, step), self.train_x.shape[1], B)

    def loss(self, model, step: int) -> torch.Tensor:
        return -self.objective(model, self.batch, self.noise[:, step]).mean(1)

    def inner_loss(self, model, streams: MemberStreams, index: tuple) -> torch.Tensor:
        eps = streams.normal("lin-noise", index, (self.B, 1, self.K), self.train_x.dtype)
        return -elbo(model, self.inner_batch, eps).mean(1)

    def draw_inner_batch(self, draw: int) -> None:
        self.inner_batch = self.train_x[self.rows, self.inner_batches(draw)]

    def mutual_information(self, model, streams: MemberStreams) -> torch.Tensor:
        return validation_mutual_information(model, self.valid_x, self.rows, streams, self.epoch, self.K, self.B)

    def validation_objective(self, model, streams: MemberStreams) -> torch.Tensor:
        return mean_bound(model, self.valid_x[self.rows.view(-1)], streams.child("valid-curve"), "objective",
                          self.objective_name, self.S, 1)


@torch.no_grad()
def validation_mutual_information(encoder, valid_x: torch.Tensor, rows: torch.Tensor, streams: MemberStreams,
                                  epoch: int, latent_dim: int, batch_size: int) -> torch.Tensor:
    """LIN's check: He et al.'s I_q(x; z) estimate of each member's encoder (anything with
    encode(x) -> mu, log var) on its validation data valid_x[rows] (V, N, D), averaged over
    minibatches weighted by their size, as He et al. do: (M,)."""
    x = valid_x[rows.view(-1)]
    eps = streams.normal("lin-mi", (epoch,), (x.shape[1], latent_dim), x.dtype)
    n = x.shape[1]
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        total += encoder_mutual_information(encoder, x[:, sl], eps[:, sl]).to(torch.float64) * (sl.stop - sl.start)
    return total / n


def train_vae(model: VAEEnsemble, train_x, valid_x, version_of_member, streams: MemberStreams,
              settings: TrainSettings, progress_every: float = 10.0) -> TrainLog:
    """Train a VAE/IWAE/LIN ensemble in place (see VAETask for the data layout)."""
    task = VAETask(settings.objective, settings.samples, train_x, valid_x, version_of_member,
                   settings.batch_size, model.K)
    return train_ensemble(model, task, streams, settings, progress_every)


def train_ensemble(model, task: TrainingTask, streams: MemberStreams, settings: TrainSettings,
                   progress_every: float = 10.0) -> TrainLog:
    """Train all members of `model` in place on `task` (VAETask, or m2_task.M2Task).

    `model.encoder` holds the inference networks, `model.decoder` the generative ones.
    Within an epoch nothing waits for the host (masks and losses stay on the device); the
    host looks once per epoch (progress, LIN's mutual-information check) and, in LIN's
    aggressive phase, once per R inner steps.
    """
    M = model.M
    device = model.encoder.flat.device
    enc_opt = MaskedAdam(model.encoder, lr=settings.learning_rate)
    dec_opt = MaskedAdam(model.decoder, lr=settings.learning_rate) if settings.train_decoder else None
    model.decoder.set_requires_grad(settings.train_decoder)

    failed = torch.zeros(M, dtype=torch.bool, device=device)
    failed_epoch = torch.full((M,), -1, dtype=torch.long)
    lin = settings.lin
    aggressive = torch.full((M,), lin is not None, dtype=torch.bool, device=device)
    aggressive_epochs = torch.zeros(M, dtype=torch.long)
    inner_total = torch.zeros(M, dtype=torch.long, device=device)
    best_mi = torch.zeros(M, dtype=torch.float64, device=device)
    mi_misses = torch.zeros(M, dtype=torch.long, device=device)
    history = []
    checks = set(check_epochs(settings.epochs)) if settings.record_curve else set()
    curve = []
    start = last_report = time.perf_counter()

    for epoch in range(settings.epochs):
        task.start_epoch(streams, epoch)
        any_aggressive = lin is not None and bool(aggressive.any())
        epoch_loss = torch.zeros(M, dtype=torch.float64, device=device)
        for step in range(task.steps_per_epoch):
            task.select_batch(streams, step)
            if any_aggressive:
                inner_total += _lin_inner_loop(model, task, enc_opt, streams, aggressive & ~failed, lin,
                                               (epoch, step))
            loss = task.loss(model, step)
            failed |= ~torch.isfinite(loss.detach())
            _backward(model, torch.where(failed, 0.0, loss).sum())
            enc_opt.step(~aggressive if lin is not None and settings.train_decoder else None, frozen=failed)
            if dec_opt is not None:
                dec_opt.step(frozen=failed)
            epoch_loss += loss.detach().to(torch.float64)
        failed_now = failed.cpu()
        failed_epoch[failed_now & (failed_epoch < 0)] = epoch
        history.append((epoch_loss / task.steps_per_epoch).cpu())
        if any_aggressive:
            aggressive_epochs += aggressive.cpu().long()
            mi = task.mutual_information(model, streams)
            improved = mi - best_mi >= 0
            best_mi = torch.where(improved & aggressive, mi, best_mi)
            mi_misses = torch.where(improved, mi_misses, mi_misses + aggressive.long())
            aggressive &= mi_misses < lin.mi_patience
        if epoch + 1 in checks:
            with torch.no_grad():
                curve.append(task.validation_objective(model, streams).to(torch.float64).cpu())
        now = time.perf_counter()
        if now - last_report >= progress_every or epoch == settings.epochs - 1:
            last_report = now
            done = epoch + 1
            ok = ~failed_now
            mean_loss = float(history[-1][ok].mean()) if ok.any() else float("nan")
            eta = (now - start) / done * (settings.epochs - done)
            log.info("epoch %d/%d  mean loss %.4f  failed %d/%d  aggressive %d  %.1fs elapsed, ETA %.0fs",
                     done, settings.epochs, mean_loss, int(failed_now.sum()), M, int(aggressive.sum()),
                     now - start, eta)
    return TrainLog(final_loss=history[-1] if history else torch.full((M,), float("nan")),
                    failed=failed.cpu(), failed_epoch=failed_epoch,
                    aggressive_epochs=aggressive_epochs, inner_steps=inner_total.cpu(),
                    seconds=time.perf_counter() - start, history=history,
                    check_epochs=sorted(checks), valid_curve=torch.stack(curve) if curve else None)


def _backward(model: VAEEnsemble, total: torch.Tensor) -> None:
    model.encoder.zero_grad()
    model.decoder.zero_grad()
    total.backward()


def _lin_inner_loop(model, task: TrainingTask, enc_opt, streams: MemberStreams, active, lin: LinSettings,
                    index: tuple) -> torch.Tensor:
    """LIN's aggressive inner loop: inference-network-only steps until the loss stops improving.

    Decided on the device: a member's `active` flag changes only at the end of each block of
    R inner steps (He et al.'s check), so the host looks once per block, to stop when no
    member is left.  Returns the number of inner steps each member took, (M,).
    """
    device = model.encoder.flat.device
    active = active.clone()
    steps_taken = torch.zeros(model.M, dtype=torch.long, device=device)
    previous = torch.full((model.M,), LIN_INITIAL_PREVIOUS_LOSS, dtype=torch.float64, device=device)
    running = torch.zeros(model.M, dtype=torch.float64, device=device)
    model.decoder.set_requires_grad(False)
    for sub_iter in range(1, LIN_MAX_INNER_STEPS):
        if (sub_iter - 1) % lin.inner_steps == 0 and not bool(active.any()):
            break
        loss = task.inner_loss(model, streams, (*index, sub_iter))
        ok = active & torch.isfinite(loss.detach())
        running += torch.where(active, loss.detach().to(torch.float64), 0.0)
        _backward(model, torch.where(ok, loss, 0.0).sum())
        enc_opt.step(active, frozen=~ok)
        steps_taken += active.long()
        task.draw_inner_batch(sub_iter - 1)   # as in He et al.: B distinct random training points
        if sub_iter % lin.inner_steps == 0:
            current = running / lin.inner_steps
            active &= (previous - current) >= lin.threshold
            previous, running = current, torch.zeros_like(running)
    model.decoder.set_requires_grad(True)
    return steps_taken
