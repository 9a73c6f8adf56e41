"""Time the batched metrics (vaefail.evaluation.smooth_knn and .ksg) against the reference
(reference.metrics) on data like the paper's 2-D examples, seconds per member.

    PYTHONPATH=src:tests python -m reference.benchmark [--members 12] [--threads 1] [--repeats 3]
"""
import time

import numpy as np
import torch

from reference import metrics
from vaefail.evaluation.ksg import ksg_mutual_information
from vaefail.evaluation.smooth_knn import smooth_knn_statistics


def _realistic_samples(n_members: int, n_points: int, seed: int = 0):
    """Data like the paper's 2-D examples, x = (cos 3z, sin 2z) + 0.1 noise, and model samples
    from a slightly perturbed copy, (M, n, 2) float64 each."""
    generator = torch.Generator().manual_seed(seed)

    def draw(scale, phase, noise):
        z = torch.randn(n_members, n_points, generator=generator, dtype=torch.float64)
        curve = torch.stack([scale * torch.cos(3 * z), torch.sin(2 * z + phase)], -1)
        return curve + noise * torch.randn(curve.shape, generator=generator, dtype=torch.float64)

    return draw(1.03, 0.05, 0.11), draw(1.0, 0.0, 0.1)


def benchmark(n_members: int = 12, n_points: int = 2000, repeats: int = 3) -> None:
    """Print seconds per member of the reference (member by member) and of the batched
    functions, run alternately, medians of `repeats` runs: wall time, and CPU time (on a shared
    machine the wall time also counts the time spent waiting for a core)."""
    model_x, data_x = _realistic_samples(n_members, n_points)
    codes = model_x[..., 0] + 0.3 * data_x[..., 1]
    n_reference = min(n_members, 3)
    variants = {
        "smooth kNN, reference": (n_reference, lambda: [
            metrics.smooth_knn_statistic(model_x[m].numpy(), data_x[m].numpy(), 5, 0.01)
            for m in range(n_reference)]),
        "smooth kNN, batched float64": (n_members, lambda: smooth_knn_statistics(model_x, data_x, 5, 0.01)),
        "smooth kNN, batched float32": (n_members, lambda: smooth_knn_statistics(
            model_x, data_x, 5, 0.01, dtype=torch.float32)),
        "KSG, reference": (n_reference, lambda: [
            metrics.ksg_mutual_information(data_x[m].numpy(), codes[m].numpy(), 3)
            for m in range(n_reference)]),
        "KSG, batched": (n_members, lambda: ksg_mutual_information(data_x, codes, 3)),
    }
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (members, function) in variants.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            function()
            wall[name].append((time.perf_counter() - wall_start) / members)
            cpu[name].append((time.process_time() - cpu_start) / members)
    print(f"M={n_members}, {n_points} vs {n_points} points in 2-D, k=5, temperature=0.01, KSG k=3; "
          f"torch threads={torch.get_num_threads()}; seconds per member, median of {repeats}:")
    for name in variants:
        print(f"  {name:30s} wall {float(np.median(wall[name])):.4f}   CPU {float(np.median(cpu[name])):.4f}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=benchmark.__doc__)
    parser.add_argument("--members", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    benchmark(arguments.members, repeats=arguments.repeats)
