"""Checks that need an NVIDIA GPU (skipped without one): the CUDA path gives the CPU's numbers
up to floating-point rounding.  Run by tests/gpu/run.sh on a lent GPU machine."""
import pytest
import torch

from vaefail.engine.train import TrainSettings, train_ensemble, train_vae
from vaefail.evaluation.evaluate import evaluate_members
from vaefail.models.m2 import Labels
from vaefail.randomness import MemberStreams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_random_bits_are_identical_and_normals_agree_on_cpu_and_gpu():
    cpu, gpu = MemberStreams([1, 2, 3]), MemberStreams([1, 2, 3], "cuda")
    for a, b in zip(cpu.words("noise", (4,), 10_000), gpu.words("noise", (4,), 10_000)):
        assert torch.equal(a, b.cpu())
    assert torch.equal(cpu.permutation("shuffle", (0,), 5000), gpu.permutation("shuffle", (0,), 5000).cpu())
    z_cpu = cpu.normal("noise", (0,), (100_000,), torch.float64)
    z_gpu = gpu.normal("noise", (0,), (100_000,), torch.float64).cpu()
    assert torch.allclose(z_cpu, z_gpu, rtol=1e-13, atol=1e-13)


def _double_vae(device, members=3):
    from vaefail.bench import vae_ensemble
    return vae_ensemble(members, device, dtype=torch.float64)


@pytest.mark.parametrize("objective, samples", [("elbo", 1), ("iwae", 5)])
def test_training_on_the_gpu_follows_the_cpu_to_rounding(objective, samples):
    from vaefail.bench import _toy_data
    x = _toy_data(400, 2).double().unsqueeze(0)
    settings = TrainSettings(objective=objective, samples=samples, epochs=3, batch_size=100)
    results = {}
    for device in ("cpu", "cuda"):
        model, streams = _double_vae(device)
        train_vae(model, x.to(device), x.to(device), torch.zeros(3, dtype=torch.long), streams, settings,
                  progress_every=1e9)
        results[device] = model.decoder.flat.cpu()
    assert torch.allclose(results["cpu"], results["cuda"], rtol=0, atol=1e-9)


def test_m2_training_on_the_gpu_follows_the_cpu_to_rounding():
    from vaefail.bench import m2_ensemble, m2_task
    labels = Labels("discrete", 2)
    results = {}
    for device in ("cpu", "cuda"):
        model, streams = m2_ensemble(3, 2, 1, labels, [16, 16], device, torch.float64)
        task = m2_task("iwae", 3, 3, 400, 40, 2, labels, 1, device, torch.float64)
        train_ensemble(model, task, streams, TrainSettings(objective="iwae", samples=3, epochs=2), progress_every=1e9)
        results[device] = model.decoder.flat.cpu()
    assert torch.allclose(results["cpu"], results["cuda"], rtol=0, atol=1e-9)


def test_evaluation_on_the_gpu_gives_the_cpu_numbers():
    from vaefail.bench import _toy_data, paper_settings
    settings = dict(paper_settings(), eval_logpx_samples=50)
    rows = {}
    for device in ("cpu", "cuda"):
        model, streams = _double_vae(device)
        data = {k: _toy_data(n, 2, seed).double().unsqueeze(0).expand(3, -1, -1).to(device)
                for k, n, seed in (("train", 500, 1), ("valid", 300, 2), ("test", 300, 3))}
        rows[device] = evaluate_members(model, data, streams, objective="iwae", samples=5, settings=settings,
                                        failed=torch.zeros(3, dtype=torch.bool))
    for cpu_row, gpu_row in zip(rows["cpu"], rows["cuda"]):
        for key, value in cpu_row.items():
            if isinstance(value, float):
                assert gpu_row[key] == pytest.approx(value, rel=1e-8, abs=1e-8), key
