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
from . import m2
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


def member_noise(rngs, shape, dtype, device, members=None, purpose="noise"):
    """Stack one standard-normal draw of `shape` per member, each from its own generator."""
    members = range(len(rngs)) if members is None else members
    draws = [torch.randn(shape, generator=getattr(rngs[m], purpose), dtype=dtype) for m in members]
    return torch.stack(draws).to(device)


def masked_noise(rngs, members, M, shape, dtype, device, purpose="lin"):
    """(M, *shape) noise drawn only for `members` (zeros elsewhere), so that a member's
    generator is consumed exactly as if it were trained alone."""
    out = torch.zeros(M, *shape, dtype=dtype, device=device)
    if members:
        out[members] = member_noise(rngs, shape, dtype, device, members, purpose)
    return out


def random_batches(rngs, members, M, n, batch_size, device, purpose="lin"):
    """(M, B) indices of B distinct random points of n, drawn only for `members`."""
    idx = torch.zeros(M, batch_size, dtype=torch.long, device=device)
    if members:
        idx[members] = torch.stack([torch.randperm(n, generator=getattr(rngs[m], purpose))[:batch_size]
                                    for m in members]).to(device)
    return idx


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

    def start_epoch(self, rngs) -> None:
        dtype, device = self.train_x.dtype, self.train_x.device
        self.order = torch.stack([torch.randperm(self.train_x.shape[1], generator=r.shuffle)
                                  for r in rngs]).to(device)
        self.noise = member_noise(rngs, (self.steps_per_epoch, self.B, self.S, self.K), dtype, device)

    def select_batch(self, step: int) -> None:
        B = self.B
        self.batch = self.inner_batch = self.train_x[self.rows, self.order[:, step * B:(step + 1) * B]]

    def loss(self, model, step: int) -> torch.Tensor:
        return -self.objective(model, self.batch, self.noise[:, step]).mean(1)

    def inner_loss(self, model, rngs, members: list[int]) -> torch.Tensor:
        eps = masked_noise(rngs, members, model.M, (self.B, 1, self.K), self.train_x.dtype, self.train_x.device)
        return -elbo(model, self.inner_batch, eps).mean(1)

    def draw_inner_batch(self, rngs, members: list[int]) -> None:
        idx = random_batches(rngs, members, len(self.rows), self.train_x.shape[1], self.B, self.train_x.device)
        self.inner_batch = self.train_x[self.rows, idx]

    @torch.no_grad()
    def mutual_information(self, model, rngs, members: list[int]) -> torch.Tensor:
        """Mean over validation minibatches of He et al.'s I_q(x; z) estimate, (M,) on CPU."""
        n_valid, B = self.valid_x.shape[1], self.B
        eps = masked_noise(rngs, members, model.M, (n_valid, self.K), self.valid_x.dtype, self.valid_x.device)
        member_valid = self.valid_x[self.rows.view(-1)]
        total = torch.zeros(model.M, dtype=torch.float64)
        for start in range(0, n_valid, B):
            sl = slice(start, min(start + B, n_valid))
            mi = encoder_mutual_information(model, member_valid[:, sl], eps[:, sl])
            total += mi.cpu().to(torch.float64) * (sl.stop - sl.start)
        return total / n_valid


def train_vae(model: VAEEnsemble, train_x, valid_x, version_of_member, rngs, settings: TrainSettings,
              progress_every: float = 10.0) -> TrainLog:
    """Train a VAE/IWAE/LIN ensemble in place (see VAETask for the data layout)."""
    task = VAETask(settings.objective, settings.samples, train_x, valid_x, version_of_member,
                   settings.batch_size, model.K)
    return train_ensemble(model, task, rngs, settings, progress_every)


def train_ensemble(model, task, rngs: list[MemberRandomness], settings: TrainSettings,
                   progress_every: float = 10.0) -> TrainLog:
    """Train all members of `model` in place on `task` (VAETask, or m2.M2Task).

    `model.encoder` holds the inference networks, `model.decoder` the generative ones.
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
    inner_total = torch.zeros(M, dtype=torch.long)
    best_mi = torch.zeros(M, dtype=torch.float64)
    mi_misses = torch.zeros(M, dtype=torch.long)
    history = []
    start = last_report = time.perf_counter()

    for epoch in range(settings.epochs):
        task.start_epoch(rngs)
        epoch_loss = torch.zeros(M, dtype=torch.float64, device=device)
        for step in range(task.steps_per_epoch):
            task.select_batch(step)
            if lin is not None and bool(aggressive.any()):
                inner_total += _lin_inner_loop(model, task, enc_opt, rngs, aggressive & ~failed, lin).cpu()
            loss = task.loss(model, step)
            failed |= ~torch.isfinite(loss.detach())
            _backward(model, torch.where(failed, 0.0, loss).sum())
            enc_opt.step(~failed & ~aggressive if settings.train_decoder else ~failed)
            if dec_opt is not None:
                dec_opt.step(~failed)
            epoch_loss += loss.detach().to(torch.float64)
        newly_failed = failed.cpu() & (failed_epoch < 0)
        failed_epoch[newly_failed] = epoch
        history.append((epoch_loss / task.steps_per_epoch).cpu())
        if lin is not None and bool(aggressive.any()):
            aggressive_epochs += aggressive.cpu().long()
            mi = task.mutual_information(model, rngs, aggressive.nonzero().flatten().tolist())
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


def _lin_inner_loop(model, task, enc_opt, rngs, active, lin: LinSettings):
    """LIN's aggressive inner loop: inference-network-only steps until the loss stops improving.

    Returns the number of inner steps each member took, (M,).
    """
    M = model.M
    device = model.encoder.flat.device
    active = active.clone()
    steps_taken = torch.zeros(M, dtype=torch.long, device=device)
    previous = torch.full((M,), LIN_INITIAL_PREVIOUS_LOSS, dtype=torch.float64, device=device)
    running = torch.zeros(M, dtype=torch.float64, device=device)
    model.decoder.set_requires_grad(False)
    sub_iter = 1
    while sub_iter < LIN_MAX_INNER_STEPS:
        members = active.nonzero().flatten().tolist()
        if not members:
            break
        loss = task.inner_loss(model, rngs, members)
        ok = active & torch.isfinite(loss.detach())
        running += torch.where(active, loss.detach().to(torch.float64), 0.0)
        _backward(model, torch.where(ok, loss, 0.0).sum())
        enc_opt.step(ok)
        steps_taken += active.long()
        task.draw_inner_batch(rngs, members)   # as in He et al.: B distinct random training points
        if sub_iter % lin.inner_steps == 0:
            current = running / lin.inner_steps
            active &= (previous - current) >= lin.threshold
            previous, running = current, torch.zeros_like(running)
        sub_iter += 1
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

    def start_epoch(self, rngs) -> None:
        x = self.data["x_unlabelled"]
        dtype, device, steps = x.dtype, x.device, self.steps_per_epoch
        self.order_u = torch.stack([torch.randperm(self.N_u, generator=r.shuffle) for r in rngs]).to(device)
        repeats = -(-steps * self.B_l // self.N_l)
        self.order_l = torch.stack([torch.cat([torch.randperm(self.N_l, generator=r.shuffle)
                                               for _ in range(repeats)]) for r in rngs]).to(device)
        self.noise = [member_noise(rngs, (steps, *shape), dtype, device)
                      for shape in self._noise_shapes(self.B, self.B_l, self.S)]

    def _gather(self, idx_u, idx_l):
        d = self.data
        return (d["x_unlabelled"][self.rows, idx_u], d["x_labelled"][self.rows, idx_l],
                d["y_labelled"][self.rows, idx_l])

    def select_batch(self, step: int) -> None:
        B, B_l = self.B, self.B_l
        self.batch = self.inner_batch = self._gather(self.order_u[:, step * B:(step + 1) * B],
                                                     self.order_l[:, step * B_l:(step + 1) * B_l])

    def _loss(self, model, batch, bound, noise) -> torch.Tensor:
        x_u, x_l, y_l = batch
        eps_y, eps_zu, eps_zl = noise
        return -m2.objective(model, bound, x_u, eps_y, eps_zu, x_l, y_l, eps_zl,
                             self.alpha, self.gamma, self.labelled_share)

    def loss(self, model, step: int) -> torch.Tensor:
        return self._loss(model, self.batch, self.bound, [n[:, step] for n in self.noise])

    def inner_loss(self, model, rngs, members: list[int]) -> torch.Tensor:
        x = self.data["x_unlabelled"]
        noise = [masked_noise(rngs, members, model.M, shape, x.dtype, x.device)
                 for shape in self._noise_shapes(self.B, self.B_l, 1)]
        return self._loss(model, self.inner_batch, "elbo", noise)   # LIN trains the VAE bounds

    def draw_inner_batch(self, rngs, members: list[int]) -> None:
        device = self.data["x_unlabelled"].device
        M = len(self.rows)
        self.inner_batch = self._gather(random_batches(rngs, members, M, self.N_u, self.B, device),
                                        random_batches(rngs, members, M, self.N_l, self.B_l, device))

    @torch.no_grad()
    def mutual_information(self, model, rngs, members: list[int]) -> torch.Tensor:
        """He et al.'s I_q(x; z) on validation data, for the encoder q(z | x, y) given the
        discriminator's mean label (class probabilities, or the Gaussian's mean)."""
        x_valid = self.data["x_valid"]
        n_valid, B = x_valid.shape[1], self.B
        eps = masked_noise(rngs, members, model.M, (n_valid, self.K), x_valid.dtype, x_valid.device)
        member_valid = x_valid[self.rows.view(-1)]
        total = torch.zeros(model.M, dtype=torch.float64)
        for start in range(0, n_valid, B):
            sl = slice(start, min(start + B, n_valid))
            mi = encoder_mutual_information(_EncoderAtMeanLabel(model), member_valid[:, sl], eps[:, sl])
            total += mi.cpu().to(torch.float64) * (sl.stop - sl.start)
        return total / n_valid


class _EncoderAtMeanLabel:
    """q(z | x, y-bar(x)) as an unsupervised encoder, for the mutual-information check."""

    def __init__(self, model):
        self.model = model

    def encode(self, x):
        out = self.model.classify(x)
        y = torch.softmax(out, -1) if self.model.labels.kind == "discrete" else out[..., :1]
        return self.model.encode(x, y)
