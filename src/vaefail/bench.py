"""Benchmark: a plain one-model training loop vs the batched ensemble, and FLOP/s vs SGEMM.

    python -m vaefail.bench [--rounds 3] [--members 200] [--iwae-members 10]

Measured side by side in one process, alternating the variants over several rounds and
reporting medians (the machines are noisy).  The plain loop is what one would write
without batching: one nn.Module per model, torch.optim.Adam with its defaults, minibatches
sliced from a shuffled in-memory tensor.  The batched ensemble is vaefail's trainer.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from .m2 import Labels, M2Ensemble
from .model import VAEEnsemble
from .nets import uniform_init
from .runtime import configure_cpu
from .train import M2Task, MemberRandomness, TrainSettings, train_ensemble, train_vae

HIDDEN = [50, 50, 50]
BATCH = 100


def flops_per_model_step(samples: int, data_dim: int = 2, latent_dim: int = 1) -> float:
    """Matmul FLOPs of one training step of one model: forward 2*rows*in*out per layer,
    backward twice that (gradients for inputs and weights)."""
    def mlp(sizes):
        return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    encoder = BATCH * mlp([data_dim, *HIDDEN, 2 * latent_dim])
    decoder = BATCH * samples * mlp([latent_dim, *HIDDEN, data_dim])
    return 3 * 2 * (encoder + decoder)


def _data(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=gen)
    return torch.cat([torch.cos(3 * z), torch.sin(2 * z)], -1) + 0.1 * torch.randn(n, 2, generator=gen)


def plain_loop(samples: int, steps: int) -> float:
    """Model-steps per second of one ordinary PyTorch VAE/IWAE training loop."""
    def mlp(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.LeakyReLU())
        return nn.Sequential(*layers)

    torch.manual_seed(0)
    encoder, decoder = mlp([2, *HIDDEN, 2]), mlp([1, *HIDDEN, 2])
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    x_all = _data(5000)
    log_sigma2 = torch.log(torch.tensor(0.01))
    perm = torch.randperm(len(x_all))

    def step(i):
        idx = perm[(i * BATCH) % len(x_all):][:BATCH]
        x = x_all[idx]
        mu, log_var = encoder(x).chunk(2, -1)
        z = mu.unsqueeze(1) + (0.5 * log_var).exp().unsqueeze(1) * torch.randn(BATCH, samples, 1)
        x_hat = decoder(z)
        log_px_z = -0.5 * (((x.unsqueeze(1) - x_hat) ** 2) / log_sigma2.exp() + log_sigma2).sum(-1)
        log_pz = -0.5 * (z ** 2).sum(-1)
        log_qz = -0.5 * (((z - mu.unsqueeze(1)) ** 2) / log_var.exp().unsqueeze(1) + log_var.unsqueeze(1)).sum(-1)
        log_w = log_px_z + log_pz - log_qz
        loss = -(torch.logsumexp(log_w, 1) - torch.log(torch.tensor(float(samples)))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(10):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - start)


def batched(members: int, samples: int, epochs: int) -> float:
    """Model-steps per second of the batched ensemble trainer (members x 20 steps x epochs)."""
    model = VAEEnsemble(2, 1, HIDDEN, members)
    rngs = [MemberRandomness(s) for s in range(members)]
    uniform_init(model.encoder, model.encoder_net.init_bounds(model.encoder), [r.init for r in rngs])
    uniform_init(model.decoder, model.decoder_net.init_bounds(model.decoder), [r.init for r in rngs])
    model.set_sigma2(0.01)
    x = _data(2000).unsqueeze(0)
    settings = TrainSettings(objective="iwae" if samples > 1 else "elbo", samples=samples,
                             epochs=epochs, batch_size=BATCH)
    train_vae(model, x, x, torch.zeros(members, dtype=torch.long), rngs,
                   TrainSettings(objective=settings.objective, samples=samples, epochs=1), progress_every=1e9)
    start = time.perf_counter()
    train_vae(model, x, x, torch.zeros(members, dtype=torch.long), rngs, settings, progress_every=1e9)
    return members * 20 * epochs / (time.perf_counter() - start)


def batched_m2(members: int, epochs: int) -> float:
    """Model-steps per second of the batched semi-supervised (M2, VAE bounds) trainer on
    2-D data with a binary label, 10 % of labels observed."""
    labels = Labels("discrete", 2)
    model = M2Ensemble(2, 1, labels, HIDDEN, members)
    rngs = [MemberRandomness(s) for s in range(members)]
    bounds = model.encoder_net.init_bounds(model.encoder) + model.discriminator_net.init_bounds(model.encoder)
    uniform_init(model.encoder, bounds, [r.init for r in rngs])
    uniform_init(model.decoder, model.decoder_net.init_bounds(model.decoder), [r.init for r in rngs])
    model.set_sigma2(0.01)
    x = _data(2200)
    data = {"x_unlabelled": x[:2000].unsqueeze(0), "x_labelled": x[2000:].unsqueeze(0),
            "y_labelled": torch.nn.functional.one_hot(torch.arange(200) % 2, 2).float().unsqueeze(0),
            "x_valid": x[:200].unsqueeze(0)}
    zeros = torch.zeros(members, dtype=torch.long)
    weights = torch.ones(members)
    task = M2Task("elbo", 1, data, zeros, weights, weights, BATCH, labels, 1)
    train_ensemble(model, task, rngs, TrainSettings(epochs=1), progress_every=1e9)
    start = time.perf_counter()
    train_ensemble(model, task, rngs, TrainSettings(epochs=epochs), progress_every=1e9)
    return members * task.steps_per_epoch * epochs / (time.perf_counter() - start)


def sgemm_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=200, help="ensemble size for the VAE")
    parser.add_argument("--iwae-members", type=int, default=10, help="ensemble size for IWAE S=20")
    parser.add_argument("--m2-members", type=int, default=144,
                        help="ensemble size for the semi-supervised step (default: 12 alpha-gamma x 12)")
    args = parser.parse_args(argv)
    configure_cpu()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    runs = {k: [] for k in ("plain_vae", "batched_vae", "plain_iwae20", "batched_iwae20", "sgemm",
                            "m2_single", "m2_batched")}
    for r in range(args.rounds):
        runs["plain_vae"].append(plain_loop(1, 300))
        runs["batched_vae"].append(batched(args.members, 1, 3))
        runs["plain_iwae20"].append(plain_loop(20, 100))
        runs["batched_iwae20"].append(batched(args.iwae_members, 20, 2))
        runs["sgemm"].append(sgemm_flops())
        runs["m2_single"].append(batched_m2(1, 3))
        runs["m2_batched"].append(batched_m2(args.m2_members, 2))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in runs.items()), flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    vae_flops = med["batched_vae"] * flops_per_model_step(1)
    iwae_flops = med["batched_iwae20"] * flops_per_model_step(20)
    print(f"VAE      plain loop {med['plain_vae']:8.0f} model-steps/s | batched (M={args.members}) "
          f"{med['batched_vae']:8.0f} model-steps/s | speed-up {med['batched_vae'] / med['plain_vae']:.1f}x")
    print(f"IWAE S=20 plain loop {med['plain_iwae20']:7.0f} model-steps/s | batched (M={args.iwae_members}) "
          f"{med['batched_iwae20']:8.0f} model-steps/s | speed-up {med['batched_iwae20'] / med['plain_iwae20']:.1f}x")
    print(f"SGEMM 2048^3: {med['sgemm'] / 1e9:.1f} GFLOP/s | batched VAE {vae_flops / 1e9:.1f} GFLOP/s "
          f"({vae_flops / med['sgemm']:.0%}) | batched IWAE S=20 {iwae_flops / 1e9:.1f} GFLOP/s "
          f"({iwae_flops / med['sgemm']:.0%})")
    print(f"M2 (VAE bounds) one member {med['m2_single']:6.0f} model-steps/s | batched (M={args.m2_members}) "
          f"{med['m2_batched']:8.0f} model-steps/s | speed-up {med['m2_batched'] / med['m2_single']:.1f}x "
          "(same trainer, one member vs many)")
    print(json.dumps({"speedup_vae": round(med["batched_vae"] / med["plain_vae"], 2),
                      "speedup_iwae20": round(med["batched_iwae20"] / med["plain_iwae20"], 2),
                      "sgemm_fraction": round(vae_flops / med["sgemm"], 3),
                      "sgemm_fraction_iwae20": round(iwae_flops / med["sgemm"], 3),
                      "speedup_m2_batched_vs_single": round(med["m2_batched"] / med["m2_single"], 2)}))


if __name__ == "__main__":
    main()
