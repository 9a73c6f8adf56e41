"""The benchmark's arithmetic: the FLOPs it divides by must be the FLOPs the code runs."""
import torch
from torch.profiler import ProfilerActivity, profile

from vaefail import bench
from vaefail.evaluation.evaluate import evaluate_members


def test_evaluation_flops_equal_the_matmul_flops_the_profiler_counts():
    """evaluation_flops (which the bench's evaluation rate divides by) counts every batched
    matmul of an evaluation: the profiler's count of the same call agrees exactly."""
    settings = dict(bench.paper_settings(), eval_samples=3, eval_logpx_samples=7, knn_draws=2)
    sizes = {"train": 50, "valid": 30, "test": 20}
    members, samples = 2, 5
    model, streams = bench.vae_ensemble(members, "cpu")
    data = {split: bench._toy_data(n, 2, 1).unsqueeze(0).expand(members, -1, -1) for split, n in sizes.items()}
    timings = {}
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        evaluate_members(model, data, streams, objective="iwae", samples=samples, settings=settings,
                         failed=torch.zeros(members, dtype=torch.bool), timings=timings)
    counted = sum(event.flops for event in prof.key_averages() if event.key in ("aten::bmm", "aten::baddbmm"))
    assert counted == members * sum(bench.evaluation_flops(settings, samples, sizes).values())
    assert set(timings) == {"bounds", "knn", "ksg"} and all(t > 0 for t in timings.values())
