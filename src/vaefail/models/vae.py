"""The VAE of the paper and its training objectives, for an ensemble of M members.

Generative model (paper eq. 1):  z ~ N(0, I_K),  x | z ~ N(f_theta(z), diag(sigma^2)).
Inference model:                 q_phi(z | x) = N(mu_phi(x), diag(sigma_phi^2(x))).

Shapes: x is (M, B, D) — member m sees its own minibatch; eps is (M, B, S, K) standard
normal noise for S samples of z per data point.  Every objective returns a (M, B) tensor
of per-example values, to be averaged over B by the caller.
"""
from __future__ import annotations

import math
import warnings

import torch

from .nets import FlatParameters, StackedMLP

LOG_2PI = math.log(2 * math.pi)

# Gradients live in strided views of one flat buffer by design (see nets.FlatParameters).
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class VAEEnsemble:
    """M VAEs with encoder x -> (mu, log var) and decoder z -> f(z); sigma^2 per data dimension.

    sigma2_mode: 'fixed' (a buffer, e.g. the ground truth) or 'learned' (a parameter of the
    decoder, optimised jointly with theta and phi).
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: list[int], n_members: int,
                 sigma2_mode: str = "fixed", dtype=torch.float32, device="cpu"):
        if sigma2_mode not in ("fixed", "learned"):
            raise ValueError(f"sigma2_mode must be 'fixed' or 'learned', got {sigma2_mode!r}")
        self.D, self.K, self.M = data_dim, latent_dim, n_members
        self.hidden = list(hidden)
        self.sigma2_mode = sigma2_mode
        self.encoder_net = StackedMLP([data_dim, *hidden, 2 * latent_dim], "enc.")
        self.decoder_net = StackedMLP([latent_dim, *hidden, data_dim], "dec.")
        self.encoder = FlatParameters(self.encoder_net.shapes(), n_members, dtype, device)
        dec_shapes = self.decoder_net.shapes()
        if sigma2_mode == "learned":
            dec_shapes["dec.log_sigma2"] = (1, data_dim)
        self.decoder = FlatParameters(dec_shapes, n_members, dtype, device)
        self._fixed_log_sigma2 = torch.zeros(n_members, 1, data_dim, dtype=dtype, device=device)

    # --- the two networks -------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder_net(self.encoder, x)
        return out[..., : self.K], out[..., self.K:]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (M, ..., K) -> f_theta(z): (M, ..., D)."""
        lead = z.shape[1:-1]
        out = self.decoder_net(self.decoder, z.reshape(self.M, -1, self.K))
        return out.reshape(self.M, *lead, self.D)

    @property
    def log_sigma2(self) -> torch.Tensor:
        """(M, 1, D) log observation-noise variance."""
        if self.sigma2_mode == "learned":
            return self.decoder["dec.log_sigma2"]
        return self._fixed_log_sigma2

    def set_sigma2(self, sigma2: torch.Tensor | float) -> None:
        """Set sigma^2 for every member (fixed buffer, or the learned parameter's value)."""
        value = torch.as_tensor(sigma2, dtype=self.encoder.flat.dtype).log()
        value = value.expand(self.M, 1, self.D).to(self.encoder.flat.device)
        target = self.decoder["dec.log_sigma2"] if self.sigma2_mode == "learned" else self._fixed_log_sigma2
        with torch.no_grad():
            target.copy_(value)

    def sample_x(self, eps_z: torch.Tensor, eps_x: torch.Tensor) -> torch.Tensor:
        """Ancestral samples x = f(z) + sigma * eps_x with z = eps_z ~ N(0, I)."""
        return self.decode(eps_z) + (0.5 * self.log_sigma2).exp() * eps_x


# --- densities --------------------------------------------------------------------------
def log_normal(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag(exp(log_var))), summed over the last dimension."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 / log_var.exp()).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, diag(exp(log_var))) || N(0, I)], summed over the last dimension."""
    return 0.5 * (mu ** 2 + log_var.exp() - log_var - 1).sum(-1)


def reparameterize(mu: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps; mu, log_var: (M, B, K), eps: (M, B, S, K) -> (M, B, S, K)."""
    return mu.unsqueeze(2) + (0.5 * log_var).exp().unsqueeze(2) * eps


# Softmax weights below this get exactly zero gradient in `logsumexp`: see there.
NEGLIGIBLE_WEIGHT = 2.0 ** -64


class _LogSumExp(torch.autograd.Function):
    """torch.logsumexp whose backward sets weights below NEGLIGIBLE_WEIGHT to zero."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:
        result = torch.logsumexp(x, dim)
        ctx.save_for_backward(x, result)
        ctx.dim = dim
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, result = ctx.saved_tensors
        weights = (x - result.unsqueeze(ctx.dim)).exp()          # as torch's logsumexp_backward
        weights = weights.masked_fill_(weights < NEGLIGIBLE_WEIGHT, 0.0)
        return grad.unsqueeze(ctx.dim) * weights, None


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.logsumexp(x, dim), whose gradient leaves out samples of weight below 2^-64.

    An importance sample of negligible weight exp(x_s - logsumexp x) gets a gradient of that
    size, and in float32 it goes subnormal (below 1.2e-38) on its way back through the
    decoder: about 5 % of the decoder's gradients in IWAE S=20 training were, and the CPU
    handles subnormal floats ~10x slower (the epoch took 2.5-3x as long).  A contribution
    2^-64 times a sample's share of a sum is far below float32's (and float64's) resolution,
    so the sums it enters (weight gradients over rows, the encoder's over samples) come out
    the same; only a gradient made of nothing but such contributions changes (to exactly 0).
    The value is torch.logsumexp's, and so are the other samples' gradients, bit for bit."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.logsumexp(x, dim)
    return _LogSumExp.apply(x, dim)


# --- objectives (each per example, shape (M, B)) -----------------------------------------
def elbo(model: VAEEnsemble, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """ELBO (eq. 1) = E_q[log p(x|z)] - KL[q(z|x) || p(z)], the expectation by S samples."""
    mu, log_var = model.encode(x)
    z = reparameterize(mu, log_var, eps)
    log_px_given_z = log_normal(x.unsqueeze(2), model.decode(z), model.log_sigma2.unsqueeze(2))
    return log_px_given_z.mean(2) - kl_to_standard_normal(mu, log_var)


def log_importance_weights(model: VAEEnsemble, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x, z_s) - log q(z_s | x) for z_s ~ q(z|x): (M, B, S)."""
    mu, log_var = model.encode(x)
    z = reparameterize(mu, log_var, eps)
    log_joint = (log_normal(x.unsqueeze(2), model.decode(z), model.log_sigma2.unsqueeze(2))
                 + log_standard_normal(z))
    return log_joint - log_normal(z, mu.unsqueeze(2), log_var.unsqueeze(2))


def iwae_bound(model: VAEEnsemble, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """IWAE bound (Burda et al. 2016): E[log (1/S) sum_s p(x, z_s) / q(z_s | x)]."""
    log_w = log_importance_weights(model, x, eps)
    return logsumexp(log_w, 2) - math.log(log_w.shape[2])


def sigma2_closed_form(model: VAEEnsemble, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Theorem 2 (eq. 5): the sigma^2 minimising -ELBO for fixed (theta, phi), per dimension.

    sigma_d^2 = (1/N) sum_n E_{q(z|x_n)} (x_n^(d) - f(z)^(d))^2, the expectation by S samples.
    x: (M, N, D), eps: (M, N, S, K) -> (M, D).
    """
    mu, log_var = model.encode(x)
    z = reparameterize(mu, log_var, eps)
    return ((x.unsqueeze(2) - model.decode(z)) ** 2).mean(dim=(1, 2))


def encoder_mutual_information(model: VAEEnsemble, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """He et al. 2019's estimate of I_q(x; z) on a minibatch, used to stop LIN's aggressive phase.

    I = E_x E_{q(z|x)} log q(z|x) - E log q(z), with the aggregate posterior q(z) approximated
    by the minibatch mixture (1/B) sum_j q(z | x_j).  x: (M, B, D), eps: (M, B, K) -> (M,).
    """
    mu, log_var = model.encode(x)
    K = mu.shape[-1]
    neg_entropy = (-0.5 * K * LOG_2PI - 0.5 * (1 + log_var).sum(-1)).mean(1)
    z = mu + (0.5 * log_var).exp() * eps                              # (M, B, K)
    log_q_pairs = log_normal(z.unsqueeze(2), mu.unsqueeze(1), log_var.unsqueeze(1))  # (M, B_z, B_x)
    log_qz = torch.logsumexp(log_q_pairs, dim=2) - math.log(x.shape[1])
    return neg_entropy - log_qz.mean(1)


OBJECTIVES = {"elbo": elbo, "iwae": iwae_bound}
