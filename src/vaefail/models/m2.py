"""The semi-supervised M2 model (Kingma et al. 2014; the paper's eqs. 3-4 and Figure 4),
for an ensemble of M members.

Generative model (eq. 3):  z ~ N(0, I_K),  y ~ p(y),  x | y, z ~ N(f_theta(y, z), diag(sigma^2)).
Inference:                 q_phi(z | x, y) = N(mu_phi(x, y), diag(sigma_phi^2(x, y)))   (labelled bound)
                           q_phi(z | x)    = N(mu'_phi(x), diag(sigma'_phi^2(x)))       (unlabelled bound)
                           q_phi(y | x): categorical (discrete y) or N(m(x), s^2(x))  (discriminator)

The unlabelled bounds of the paper (eq. 30 and 32, Figure 4) draw z from q(z | x), a network
that does not see y, independently of y ~ q(y | x); the labelled ones (eq. 29, 31) use
q(z | x, y).  Kingma et al. (2014) use q(z | x, y) in both: the option
unlabelled_posterior="xy".  The difference matters for the collapse of Figure 2: with a
mean-field q(z | x), an x that two labels explain at different z has a bimodal posterior
that the ELBO can only make simple by letting f ignore y.

Discrete y enters the networks as a one-hot vector; in the unlabelled bound it is a relaxed
one-hot sample (Gumbel-softmax / Concrete, temperature 2.2, appendix J) so that the bound can
be reparameterised.  The density terms of y use the categorical probabilities of the hard
sample argmax(logits + Gumbel noise), whose law is exactly q(y|x): the IWAE bounds with S = 1
then equal the VAE bounds in expectation, and a one-hot q(y|x) at the true label turns U(x)
into L(x, y).  Continuous y is a reparameterised Gaussian sample.  p(y) is uniform over the
classes for discrete y and N(0, 1) for continuous y.

Shapes: x (M, B, D) per member; labels y (M, B, Y) encoded (one-hot or value); every bound
returns (M, B) per-example values.  Noise for S samples per point: eps_z (M, B, S, K) and,
for the unlabelled bounds, eps_y (M, B, S, C) normal draws (turned into Gumbel noise) or
(M, B, S, 1) for continuous y.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .nets import FlatParameters, StackedMLP
from .vae import (kl_to_standard_normal, log_normal, log_standard_normal, logsumexp, reparameterize)

RELAXATION_TEMPERATURE = 2.2


@dataclass(frozen=True)
class Labels:
    kind: str          # 'discrete' | 'continuous'
    classes: int = 2   # number of classes (discrete)

    @property
    def dim(self) -> int:
        """Width of the label as a network input."""
        return self.classes if self.kind == "discrete" else 1

    @property
    def noise_dim(self) -> int:
        return self.classes if self.kind == "discrete" else 1


def encode_labels(labels: Labels, y) -> torch.Tensor:
    """Labels y (..., any integer or float array) as the networks take them, float64: one-hot
    (..., C) for discrete y, the value (..., 1) for continuous y."""
    y = torch.as_tensor(y)
    if labels.kind == "discrete":
        return torch.nn.functional.one_hot(y.long(), labels.classes).to(torch.float64)
    return y.to(torch.float64).unsqueeze(-1)


UNLABELLED_POSTERIORS = ("x", "xy")   # q(z | x) as the paper writes U; q(z | x, y) as Kingma et al.


class M2Ensemble:
    """M M2 models.  `encoder` holds the inference networks (q(z|x,y), q(y|x) and, for the
    paper's unlabelled bounds, q(z|x)); `decoder` the generative network f(y, z).  sigma^2 is
    fixed per member (a hyperparameter)."""

    def __init__(self, data_dim: int, latent_dim: int, labels: Labels, hidden: list[int], n_members: int,
                 dtype=torch.float32, device="cpu", unlabelled_posterior: str = "x"):
        if unlabelled_posterior not in UNLABELLED_POSTERIORS:
            raise ValueError(f"unlabelled_posterior must be one of {UNLABELLED_POSTERIORS}; "
                             f"got {unlabelled_posterior!r}")
        self.D, self.K, self.M, self.labels = data_dim, latent_dim, n_members, labels
        self.hidden = list(hidden)
        self.unlabelled_posterior = unlabelled_posterior
        Y = labels.dim
        self.encoder_net = StackedMLP([data_dim + Y, *hidden, 2 * latent_dim], "enc.")
        self.discriminator_net = StackedMLP([data_dim, *hidden, labels.classes if labels.kind == "discrete" else 2],
                                            "disc.")
        self.inference_nets = [self.encoder_net, self.discriminator_net]
        if unlabelled_posterior == "x":
            self.unlabelled_encoder_net = StackedMLP([data_dim, *hidden, 2 * latent_dim], "uenc.")
            self.inference_nets.append(self.unlabelled_encoder_net)
        self.decoder_net = StackedMLP([Y + latent_dim, *hidden, data_dim], "dec.")
        self.encoder = FlatParameters({name: shape for net in self.inference_nets for name, shape in net.shapes().items()},
                                      n_members, dtype, device)
        self.decoder = FlatParameters(self.decoder_net.shapes(), n_members, dtype, device)
        self.log_sigma2 = torch.zeros(n_members, 1, data_dim, dtype=dtype, device=device)

    def encoder_init_bounds(self) -> torch.Tensor:
        """nn.Linear's init bounds of every inference network, laid out as `encoder`."""
        return sum(net.init_bounds(self.encoder) for net in self.inference_nets)

    def set_sigma2(self, sigma2) -> None:
        value = torch.as_tensor(sigma2, dtype=self.log_sigma2.dtype).log()
        self.log_sigma2.copy_(value.reshape(-1, 1, 1).expand_as(self.log_sigma2) if value.numel() > 1
                              else value.expand_as(self.log_sigma2))

    def _apply(self, net: StackedMLP, params: FlatParameters, h: torch.Tensor) -> torch.Tensor:
        lead = h.shape[1:-1]
        return net(params, h.reshape(self.M, -1, h.shape[-1])).reshape(self.M, *lead, -1)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y): x (M, ..., D), y (M, ..., Y) -> mu, log var, each (M, ..., K)."""
        out = self._apply(self.encoder_net, self.encoder, torch.cat([x, y], -1))
        return out[..., :self.K], out[..., self.K:]

    def encode_unlabelled(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The z-posterior of the unlabelled bound at (x, y): q(z | x), the same for every y
        (the paper), or q(z | x, y) (Kingma et al.).  Shapes as `encode`."""
        if self.unlabelled_posterior == "xy":
            return self.encode(x, y)
        out = self._apply(self.unlabelled_encoder_net, self.encoder, x)
        lead = torch.broadcast_shapes(x.shape[:-1], y.shape[:-1])
        return out[..., :self.K].expand(*lead, self.K), out[..., self.K:].expand(*lead, self.K)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x): logits (M, ..., C), or (mean, log var) as (M, ..., 2) for continuous y."""
        return self._apply(self.discriminator_net, self.encoder, x)

    def decode(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f_theta(y, z): (M, ..., Y), (M, ..., K) -> (M, ..., D)."""
        return self._apply(self.decoder_net, self.decoder, torch.cat([y, z], -1))


# --- label distributions -----------------------------------------------------------------
def log_prior_labels(labels: Labels, y: torch.Tensor) -> torch.Tensor:
    """log p(y) of encoded labels y (M, ..., Y) -> (M, ...)."""
    if labels.kind == "discrete":
        return torch.full(y.shape[:-1], -math.log(labels.classes), dtype=y.dtype, device=y.device)
    return log_standard_normal(y)


def log_q_labels(model: M2Ensemble, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log q(y | x) of observed labels (the discriminator term of eq. 4): (M, B)."""
    out = model.classify(x)
    if model.labels.kind == "discrete":
        return (torch.log_softmax(out, -1) * y).sum(-1)
    return log_normal(y, out[..., :1], out[..., 1:])


def relaxed_one_hot(log_pi: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
    """A Concrete / Gumbel-softmax sample: softmax((log pi + g) / temperature), on the simplex."""
    return torch.softmax((log_pi + gumbel) / temperature, -1)


def gumbel_from_normal(eps: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from standard normal draws (through the uniform Phi(eps)).

    Phi(eps) is kept strictly below 1, where -log(-log u) would be +inf and the relaxed
    one-hot NaN.  In float32 Phi(eps) rounds to 1.0 for eps >= 5.35 (4.5e-8 of all draws)
    and 1 - 1e-12 rounds to 1.0 too, so there the bound is the largest float32 below 1,
    1 - 2^-24 (a Gumbel value of 16.6); every value below the bound is left as it was.
    """
    upper = min(1 - 1e-12, 1 - torch.finfo(eps.dtype).eps / 2)
    u = torch.special.ndtr(eps).clamp(1e-12, upper)
    return -torch.log(-torch.log(u))


def sample_labels(model: M2Ensemble, x: torch.Tensor, eps_y: torch.Tensor):
    """Reparameterised samples y_s ~ q(y | x) for the unlabelled bounds.

    Returns (y_input (M,B,S,Y), log q(y_s|x) (M,B,S), log p(y_s) (M,B,S), KL[q(y|x) || p(y)] (M,B)).
    """
    out = model.classify(x)
    labels = model.labels
    if labels.kind == "discrete":
        log_pi = torch.log_softmax(out, -1).unsqueeze(2)                     # (M,B,1,C)
        gumbel = gumbel_from_normal(eps_y)
        perturbed = log_pi + gumbel
        y_relaxed = relaxed_one_hot(log_pi, gumbel, RELAXATION_TEMPERATURE)
        hard = perturbed.argmax(-1, keepdim=True)                           # ~ Categorical(q(y|x))
        log_q = log_pi.expand_as(perturbed).gather(-1, hard).squeeze(-1)
        log_p = torch.full_like(log_q, -math.log(labels.classes))
        pi = log_pi.squeeze(2).exp()
        kl = (pi * (log_pi.squeeze(2) + math.log(labels.classes))).sum(-1)
        return y_relaxed, log_q, log_p, kl
    mean, log_var = out[..., :1], out[..., 1:]
    y = reparameterize(mean, log_var, eps_y)                                 # (M,B,S,1)
    log_q = log_normal(y, mean.unsqueeze(2), log_var.unsqueeze(2))
    return y, log_q, log_standard_normal(y), kl_to_standard_normal(mean, log_var)


def _log_likelihood(model: M2Ensemble, x, y, z):
    """log p(x | y, z) for S samples: x (M,B,D), y (M,B,S,Y), z (M,B,S,K) -> (M,B,S)."""
    return log_normal(x.unsqueeze(2), model.decode(y, z), model.log_sigma2.unsqueeze(2))


# --- the bounds of Figure 4 ----------------------------------------------------------------
def labelled_elbo(model: M2Ensemble, x, y, eps_z) -> torch.Tensor:
    """L(x, y), eq. 29: E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL[q(z|x,y) || p(z)]."""
    mu, log_var = model.encode(x, y)
    z = reparameterize(mu, log_var, eps_z)
    y_s = y.unsqueeze(2).expand(*z.shape[:3], y.shape[-1])
    return (_log_likelihood(model, x, y_s, z).mean(2) + log_prior_labels(model.labels, y)
            - kl_to_standard_normal(mu, log_var))


def _unlabelled_posterior(model: M2Ensemble, x, y):
    """mu, log var of z for each sample y_s of the unlabelled bound: (M,B,S,K)."""
    if model.unlabelled_posterior == "x":      # q(z | x): one encoding per point, shared by its samples
        mu, log_var = model.encode_unlabelled(x, x[..., :0])
        return (mu.unsqueeze(2).expand(*y.shape[:3], model.K), log_var.unsqueeze(2).expand(*y.shape[:3], model.K))
    return model.encode_unlabelled(x.unsqueeze(2).expand(*y.shape[:3], x.shape[-1]), y)


def unlabelled_elbo(model: M2Ensemble, x, eps_y, eps_z) -> torch.Tensor:
    """U(x), eq. 30: E_q(y|x) q(z|x)[log p(x|y,z)] - KL[q(y|x) || p(y)] - KL[q(z|x) || p(z)]
    (with q(z|x, y) in place of q(z|x) for Kingma et al.'s variant, inside the expectation over y)."""
    y, _, _, kl_y = sample_labels(model, x, eps_y)
    mu, log_var = _unlabelled_posterior(model, x, y)                          # (M,B,S,K)
    z = mu + (0.5 * log_var).exp() * eps_z
    return (_log_likelihood(model, x, y, z) - kl_to_standard_normal(mu, log_var)).mean(2) - kl_y


def labelled_iwae(model: M2Ensemble, x, y, eps_z) -> torch.Tensor:
    """L(x, y), eq. 31: E log (1/S) sum_s p(x, y, z_s) / q(z_s | x, y)."""
    mu, log_var = model.encode(x, y)
    z = reparameterize(mu, log_var, eps_z)
    y_s = y.unsqueeze(2).expand(*z.shape[:3], y.shape[-1])
    log_w = (_log_likelihood(model, x, y_s, z) + log_standard_normal(z)
             - log_normal(z, mu.unsqueeze(2), log_var.unsqueeze(2)))
    return logsumexp(log_w, 2) - math.log(log_w.shape[2]) + log_prior_labels(model.labels, y)


def unlabelled_iwae(model: M2Ensemble, x, eps_y, eps_z) -> torch.Tensor:
    """U(x), eq. 32: E log (1/S) sum_s p(x, y_s, z_s) / (q(y_s|x) q(z_s|x)), joint samples
    (q(z_s|x, y_s) for Kingma et al.'s variant)."""
    y, log_q_y, log_p_y, _ = sample_labels(model, x, eps_y)
    mu, log_var = _unlabelled_posterior(model, x, y)
    z = mu + (0.5 * log_var).exp() * eps_z
    log_w = (_log_likelihood(model, x, y, z) + log_standard_normal(z) - log_normal(z, mu, log_var)
             + log_p_y - log_q_y)
    return logsumexp(log_w, 2) - math.log(log_w.shape[2])


BOUNDS = {"elbo": (labelled_elbo, unlabelled_elbo), "iwae": (labelled_iwae, unlabelled_iwae)}


def objective(model: M2Ensemble, bound: str, x_unlabelled, eps_y, eps_z_unlabelled, x_labelled, y_labelled,
              eps_z_labelled, alpha: torch.Tensor, gamma: torch.Tensor, labelled_share: float) -> torch.Tensor:
    """J (eq. 4) per member, divided by the number of unlabelled points:
    mean U + gamma * (M/N) mean L + alpha * (M/N) mean log q(y|x), with M/N = `labelled_share`
    the ratio of labelled to unlabelled training points.  alpha, gamma: (M,)."""
    labelled_bound, unlabelled_bound = BOUNDS[bound]
    u = unlabelled_bound(model, x_unlabelled, eps_y, eps_z_unlabelled).mean(1)
    lab = labelled_bound(model, x_labelled, y_labelled, eps_z_labelled).mean(1)
    disc = log_q_labels(model, x_labelled, y_labelled).mean(1)
    return u + labelled_share * (gamma * lab + alpha * disc)
