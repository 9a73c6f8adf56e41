"""Semi-supervised M2 training (objective J, eq. 4) as the training engine
(engine.train.train_ensemble) takes it: a TrainingTask over labelled and unlabelled data."""
from __future__ import annotations

import torch

from ..models import m2
from ..models.m2 import BOUNDS, M2Ensemble, log_q_labels
from ..randomness import MemberStreams
from .bounds import point_chunks
from .train import InnerBatches, validation_mutual_information


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

    def mutual_information(self, model, streams: MemberStreams) -> torch.Tensor:
        """He et al.'s I_q(x; z) on validation data, for the encoder q(z | x, y) given the
        discriminator's mean label (class probabilities, or the Gaussian's mean)."""
        return validation_mutual_information(_EncoderAtMeanLabel(model), self.data["x_valid"], self.rows, streams,
                                             self.epoch, self.K, self.B)

    def validation_objective(self, model, streams: MemberStreams) -> torch.Tensor:
        """J per unlabelled point on the validation split, one draw of the training bound's samples."""
        return validation_objective(model, self, self.bound, self.S, 1, streams.child("valid-curve"),
                                    self.rows.view(-1))


class _EncoderAtMeanLabel:
    """The unlabelled bound's z-posterior at y-bar(x) as an unsupervised encoder, for the
    mutual-information check: q(z | x) itself, or q(z | x, y-bar(x)) (Kingma et al.)."""

    def __init__(self, model):
        self.model = model

    def encode(self, x):
        out = self.model.classify(x)
        y = torch.softmax(out, -1) if self.model.labels.kind == "discrete" else out[..., :1]
        return self.model.encode_unlabelled(x, y)


@torch.no_grad()
def validation_objective(model: M2Ensemble, task: M2Task, bound: str, samples: int, repeats: int,
                         streams: MemberStreams, rows: torch.Tensor) -> torch.Tensor:
    """J (eq. 4, per unlabelled point) on the validation split, averaged over `repeats` draws: (M,)."""
    total = torch.zeros(model.M, dtype=torch.float64, device=task.data["x_valid"].device)
    for draw in validation_objective_draws(model, task, bound, samples, repeats, streams, rows):
        total += draw
    return (total / repeats).cpu()


def validation_objective_draws(model: M2Ensemble, task: M2Task, bound: str, samples: int, repeats: int,
                               streams: MemberStreams, rows: torch.Tensor):
    """J per unlabelled point on the validation split for each of `repeats` independent draws
    of the bound's noise (float64 (M,) each, on the model's device): their mean estimates J,
    their spread its Monte-Carlo error."""
    labelled_bound, unlabelled_bound = BOUNDS[bound]
    d = task.data
    x_u, x_l, y_l = d["x_valid_unlabelled"][rows], d["x_valid_labelled"][rows], d["y_valid_labelled"][rows]
    dtype, K = x_u.dtype, model.K
    C = model.labels.noise_dim
    for repeat in range(repeats):
        with torch.no_grad():
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
            yield u / x_u.shape[1] + task.labelled_share * (task.gamma * lab + task.alpha * disc)
