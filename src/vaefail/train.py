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
import math
import time
from dataclasses import dataclass, field

import torch

from .model import OBJECTIVES, VAEEnsemble, elbo, encoder_mutual_information
from . import m2
from .nets import MaskedAdam
from .randomness import MemberStreams

log = logging.getLogger("vaefail.train")

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


@dataclass
class TrainLog:
    final_loss: torch.Tensor                 # (M,) mean training loss over the last epoch
    failed: torch.Tensor                     # (M,) bool: loss became NaN/inf
    failed_epoch: torch.Tensor               # (M,) epoch of failure, -1 if none
    aggressive_epochs: torch.Tensor          # (M,) epochs spent in LIN's aggressive mode
    inner_steps: torch.Tensor                # (M,) LIN inner encoder steps taken in total
    seconds: float = 0.0
    history: list = field(default_factory=list)  # per epoch: mean loss of each member


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

    @torch.no_grad()
    def mutual_information(self, model, streams: MemberStreams) -> torch.Tensor:
        """Mean over validation minibatches of He et al.'s I_q(x; z) estimate, (M,)."""
        member_valid = self.valid_x[self.rows.view(-1)]
        eps = streams.normal("lin-mi", (self.epoch,), (member_valid.shape[1], self.K), member_valid.dtype)
        return minibatch_mean(lambda x, e: encoder_mutual_information(model, x, e), member_valid, eps, self.B)


def minibatch_mean(estimate, x: torch.Tensor, eps: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Mean over minibatches of x (M, N, D) of estimate(x_batch, eps_batch) -> (M,), weighted
    by batch size (He et al. average their I_q estimate over minibatches this way)."""
    n = x.shape[1]
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        total += estimate(x[:, sl], eps[:, sl]).to(torch.float64) * (sl.stop - sl.start)
    return total / n


def train_vae(model: VAEEnsemble, train_x, valid_x, version_of_member, streams: MemberStreams,
              settings: TrainSettings, progress_every: float = 10.0) -> TrainLog:
    """Train a VAE/IWAE/LIN ensemble in place (see VAETask for the data layout)."""
    task = VAETask(settings.objective, settings.samples, train_x, valid_x, version_of_member,
                   settings.batch_size, model.K)
    return train_ensemble(model, task, streams, settings, progress_every)


def train_ensemble(model, task, streams: MemberStreams, settings: TrainSettings,
                   progress_every: float = 10.0) -> TrainLog:
    """Train all members of `model` in place on `task` (VAETask, or m2.M2Task).

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
                    seconds=time.perf_counter() - start, history=history)


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


def _backward(model: VAEEnsemble, total: torch.Tensor) -> None:
    model.encoder.zero_grad()
    model.decoder.zero_grad()
    total.backward()


def _lin_inner_loop(model, task, enc_opt, streams: MemberStreams, active, lin: LinSettings,
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


class M2Task:
    """Semi-supervised M2 training (objective J, eq. 4) as train_ensemble uses it.

    data (per data version, stacked on a leading V axis): x_unlabelled (V, N_u, D),
    x_labelled (V, N_l, D), y_labelled (V, N_l, Y) encoded labels, x_valid (V, N_v, D).
    Each step sees B unlabelled points and B_l = round(B N_l / N_u) labelled ones, each
    member cycling through its own permutations; alpha, gamma: (M,) per member.
    """

    def __init__(self, bound: str, samples: int, data: dict, version_of_member: torch.Tensor,
                 alpha: torch.Tensor, gamma: torch.Tensor, batch_size: int, labels, latent_dim: int):
        self.bound, self.S, self.K, self.labels = bound, samples, latent_dim, labels
        self.data = data
        device = data["x_unlabelled"].device
        self.rows = version_of_member.to(device).view(-1, 1)
        self.alpha, self.gamma = alpha.to(device), gamma.to(device)
        self.N_u, self.N_l = data["x_unlabelled"].shape[1], data["x_labelled"].shape[1]
        self.B = min(batch_size, self.N_u)
        self.B_l = max(1, round(self.B * self.N_l / self.N_u))
        self.labelled_share = self.N_l / self.N_u
        self.steps_per_epoch = self.N_u // self.B

    def _noise_shapes(self, n_u, n_l, S):
        return (n_u, S, self.labels.noise_dim), (n_u, S, self.K), (n_l, S, self.K)

    def start_epoch(self, streams: MemberStreams, epoch: int) -> None:
        """Each member's permutations of its unlabelled and (cycled) labelled points, and the
        epoch's noise, for all steps at once."""
        x = self.data["x_unlabelled"]
        steps = self.steps_per_epoch
        self.epoch = epoch
        self.order_u = streams.permutation("shuffle", (epoch,), self.N_u)
        repeats = -(-steps * self.B_l // self.N_l)
        self.order_l = torch.cat([streams.permutation("shuffle-labelled", (epoch, r), self.N_l)
                                  for r in range(repeats)], dim=1)
        self.noise = [streams.normal(name, (epoch,), (steps, *shape), x.dtype)
                      for name, shape in zip(self.NOISE, self._noise_shapes(self.B, self.B_l, self.S))]

    NOISE = ("noise-y", "noise-z-unlabelled", "noise-z-labelled")

    def _gather(self, idx_u, idx_l):
        d = self.data
        return (d["x_unlabelled"][self.rows, idx_u], d["x_labelled"][self.rows, idx_l],
                d["y_labelled"][self.rows, idx_l])

    def select_batch(self, streams: MemberStreams, step: int) -> None:
        B, B_l = self.B, self.B_l
        self.batch = self.inner_batch = self._gather(self.order_u[:, step * B:(step + 1) * B],
                                                     self.order_l[:, step * B_l:(step + 1) * B_l])
        self.inner_batches = (InnerBatches(streams, "lin-batch", (self.epoch, step), self.N_u, B),
                              InnerBatches(streams, "lin-batch-labelled", (self.epoch, step), self.N_l, B_l))

    def _loss(self, model, batch, bound, noise) -> torch.Tensor:
        x_u, x_l, y_l = batch
        eps_y, eps_zu, eps_zl = noise
        return -m2.objective(model, bound, x_u, eps_y, eps_zu, x_l, y_l, eps_zl,
                             self.alpha, self.gamma, self.labelled_share)

    def loss(self, model, step: int) -> torch.Tensor:
        return self._loss(model, self.batch, self.bound, [n[:, step] for n in self.noise])

    def inner_loss(self, model, streams: MemberStreams, index: tuple) -> torch.Tensor:
        dtype = self.data["x_unlabelled"].dtype
        noise = [streams.normal("lin-" + name, index, shape, dtype)
                 for name, shape in zip(self.NOISE, self._noise_shapes(self.B, self.B_l, 1))]
        return self._loss(model, self.inner_batch, "elbo", noise)   # LIN trains the VAE bounds

    def draw_inner_batch(self, draw: int) -> None:
        unlabelled, labelled = self.inner_batches
        self.inner_batch = self._gather(unlabelled(draw), labelled(draw))

    @torch.no_grad()
    def mutual_information(self, model, streams: MemberStreams) -> torch.Tensor:
        """He et al.'s I_q(x; z) on validation data, for the encoder q(z | x, y) given the
        discriminator's mean label (class probabilities, or the Gaussian's mean)."""
        member_valid = self.data["x_valid"][self.rows.view(-1)]
        eps = streams.normal("lin-mi", (self.epoch,), (member_valid.shape[1], self.K), member_valid.dtype)
        encoder = _EncoderAtMeanLabel(model)
        return minibatch_mean(lambda x, e: encoder_mutual_information(encoder, x, e), member_valid, eps, self.B)


class _EncoderAtMeanLabel:
    """The unlabelled bound's z-posterior at y-bar(x) as an unsupervised encoder, for the
    mutual-information check: q(z | x) itself, or q(z | x, y-bar(x)) (Kingma et al.)."""

    def __init__(self, model):
        self.model = model

    def encode(self, x):
        out = self.model.classify(x)
        y = torch.softmax(out, -1) if self.model.labels.kind == "discrete" else out[..., :1]
        return self.model.encode_unlabelled(x, y)
