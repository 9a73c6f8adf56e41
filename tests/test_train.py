"""The batched trainer: each member trains as it would alone; failures stay contained."""
import pytest
import torch

from vaefail.engine.train import LinSettings, TrainSettings, train_vae
from vaefail.models.nets import FlatParameters, MaskedAdam, StackedMLP, random_init
from vaefail.models.vae import VAEEnsemble
from vaefail.randomness import MemberStreams


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_matches_torch_fused_adam_per_member(dtype):
    net = StackedMLP([2, 8, 3], "n.")
    params = FlatParameters(net.shapes(), 3, dtype=dtype)
    random_init(params, net.init_bounds(params), MemberStreams(range(3)), "init")
    reference = params.flat[1].detach().clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([reference], lr=1e-2, fused=True)
    ours = MaskedAdam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(9)
    for _ in range(20):
        grad = torch.randn(params.flat.shape, generator=gen, dtype=dtype)
        params.grad.copy_(grad)
        reference.grad = grad[1].clone()
        ours.step(torch.ones(3, dtype=torch.bool))
        torch_adam.step()
    # Equal to rounding: the kernel's vector lanes fall differently on a row than on a tensor.
    assert torch.allclose(params.flat[1], reference.detach(), rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_adam_matches_torch_adam_on_each_member_that_updates(dtype):
    """With masks the step counts differ per member: each member still follows torch's Adam
    taking exactly the steps its mask allowed."""
    net = StackedMLP([2, 8, 3], "n.")
    params = FlatParameters(net.shapes(), 3, dtype=dtype)
    random_init(params, net.init_bounds(params), MemberStreams(range(3)), "init")
    references = [params.flat[m].detach().clone().requires_grad_(True) for m in range(3)]
    torch_adams = [torch.optim.Adam([r], lr=1e-2, fused=True) for r in references]
    ours = MaskedAdam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(9)
    for step in range(30):
        grad = torch.randn(params.flat.shape, generator=gen, dtype=dtype)
        mask = torch.tensor([True, step % 3 != 1, step < 10 or step % 2 == 0])
        params.grad.copy_(grad)
        params.grad[~mask] = float("nan")        # what a masked (failed) member may hold
        ours.step(mask)
        for m in range(3):
            if mask[m]:
                references[m].grad = grad[m].clone()
                torch_adams[m].step()
    for m in range(3):
        assert torch.allclose(params.flat[m], references[m].detach(), rtol=0,
                              atol=1e-6 if dtype == torch.float32 else 1e-14)
    assert ours.steps.tolist() == [30, 20, 20]


def test_masked_member_is_left_exactly_as_it_was_even_with_nan_gradients():
    net = StackedMLP([2, 8, 3], "n.")
    params = FlatParameters(net.shapes(), 3, dtype=torch.float64)
    random_init(params, net.init_bounds(params), MemberStreams(range(3)), "init")
    opt = MaskedAdam(params)
    params.grad.fill_(0.5)
    opt.step(torch.ones(3, dtype=torch.bool))
    before = params.flat.clone()
    params.grad.fill_(0.5)
    params.grad[2] = float("nan")
    opt.step(torch.tensor([True, True, False]))
    assert torch.equal(params.flat[2], before[2])
    assert torch.isfinite(params.flat).all()
    assert opt.steps.tolist() == [2, 2, 1]
    assert not torch.equal(params.flat[0], before[0])


def _data(n_versions=2, n=400, gen_seed=0):
    gen = torch.Generator().manual_seed(gen_seed)
    z = torch.randn(n_versions, n, 1, generator=gen, dtype=torch.float64)
    x = torch.cat([torch.cos(3 * z), torch.sin(2 * z)], -1) + 0.1 * torch.randn(
        n_versions, n, 2, generator=gen, dtype=torch.float64)
    return x


def _ensemble(seeds, sigma2_mode="fixed"):
    model = VAEEnsemble(2, 1, [16, 16], len(seeds), sigma2_mode, dtype=torch.float64)
    streams = MemberStreams(seeds)
    random_init(model.encoder, model.encoder_net.init_bounds(model.encoder), streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")
    model.set_sigma2(0.05)
    return model, streams


CASES = {
    "vae": (TrainSettings(objective="elbo", epochs=50, batch_size=100), "learned"),       # 200 steps
    "iwae": (TrainSettings(objective="iwae", samples=5, epochs=8, batch_size=100), "fixed"),  # 32 steps
    "lin": (TrainSettings(objective="elbo", epochs=6, batch_size=100,
                          lin=LinSettings(threshold=0.05, inner_steps=5)), "fixed"),
    "encoder-only": (TrainSettings(objective="elbo", epochs=20, batch_size=100, train_decoder=False), "fixed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_batched_training_equals_training_each_member_alone(case):
    settings, sigma2_mode = CASES[case]
    train_x, valid_x = _data(), _data(gen_seed=1)
    seeds = [11, 12, 13]
    versions = torch.tensor([0, 1, 1])
    batched, rngs = _ensemble(seeds, sigma2_mode)
    log = train_vae(batched, train_x, valid_x, versions, rngs, settings, progress_every=1e9)
    assert not log.failed.any()
    if settings.lin is not None:
        assert log.inner_steps.sum() > 0
        # the members really took different paths through LIN's inner loops
        assert len(set(log.inner_steps.tolist())) > 1 or len(set(log.aggressive_epochs.tolist())) > 1
    for m, seed in enumerate(seeds):
        alone, alone_rngs = _ensemble([seed], sigma2_mode)
        alone_log = train_vae(alone, train_x, valid_x, versions[m:m + 1], alone_rngs, settings,
                                   progress_every=1e9)
        assert torch.allclose(batched.encoder.flat[m], alone.encoder.flat[0], rtol=0, atol=1e-10)
        assert torch.allclose(batched.decoder.flat[m], alone.decoder.flat[0], rtol=0, atol=1e-10)
        assert alone_log.inner_steps[0] == log.inner_steps[m]
        assert alone_log.aggressive_epochs[0] == log.aggressive_epochs[m]


def test_encoder_only_training_leaves_the_decoder_untouched():
    settings, _ = CASES["encoder-only"]
    model, rngs = _ensemble([1, 2])
    decoder_before = model.decoder.flat.clone()
    encoder_before = model.encoder.flat.clone()
    train_vae(model, _data(), _data(gen_seed=1), torch.tensor([0, 1]), rngs, settings, progress_every=1e9)
    assert torch.equal(model.decoder.flat, decoder_before)
    assert not torch.equal(model.encoder.flat, encoder_before)


def test_a_diverging_member_is_marked_failed_and_the_others_are_unaffected():
    settings = TrainSettings(objective="elbo", epochs=5, batch_size=100)
    train_x, valid_x = _data(), _data(gen_seed=1)
    model, rngs = _ensemble([21, 22, 23])
    with torch.no_grad():
        model.decoder["dec.W0"][1] = 1e300   # member 1 overflows to inf/NaN at once
    log = train_vae(model, train_x, valid_x, torch.tensor([0, 0, 1]), rngs, settings, progress_every=1e9)
    assert log.failed.tolist() == [False, True, False]
    assert log.failed_epoch.tolist() == [-1, 0, -1]
    for m, seed, version in ((0, 21, 0), (2, 23, 1)):
        alone, alone_rngs = _ensemble([seed])
        train_vae(alone, train_x, valid_x, torch.tensor([version]), alone_rngs, settings, progress_every=1e9)
        assert torch.allclose(model.decoder.flat[m], alone.decoder.flat[0], rtol=0, atol=1e-10)
        assert torch.isfinite(model.encoder.flat[m]).all()


def test_training_reduces_the_loss():
    settings = TrainSettings(objective="elbo", epochs=30, batch_size=100)
    model, rngs = _ensemble([5, 6])
    log = train_vae(model, _data(), _data(gen_seed=1), torch.tensor([0, 1]), rngs, settings, progress_every=1e9)
    assert (log.history[-1] < log.history[0] - 1.0).all()


def _float32_ensemble(seeds):
    model = VAEEnsemble(2, 1, [16, 16], len(seeds), "fixed", dtype=torch.float32)
    streams = MemberStreams(seeds)
    random_init(model.encoder, model.encoder_net.init_bounds(model.encoder), streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")
    model.set_sigma2(0.05)
    return model, streams


def test_in_float32_a_member_is_bit_identical_at_any_position_and_beside_a_failing_member():
    """Members' rows are equally aligned (nets.ROW_ALIGNMENT) and a failed member is frozen
    without moving the others off the fused Adam kernel: bitwise equality, not just rounding,
    between any two ensembles of two or more members.  (An ensemble of one member is equal only
    to rounding: MKL multiplies a single matrix by another path than a batch of them.)"""
    settings = TrainSettings(objective="iwae", samples=3, epochs=3, batch_size=100)
    train_x, valid_x = _data().float(), _data(gen_seed=1).float()
    batch, streams = _float32_ensemble([31, 32, 33, 34])
    with torch.no_grad():
        batch.decoder["dec.W0"][0] = 1e30     # member 0 overflows at once and is frozen
    log = train_vae(batch, train_x, valid_x, torch.tensor([0, 1, 0, 1]), streams, settings, progress_every=1e9)
    assert log.failed.tolist() == [True, False, False, False]
    for m, (seed, version) in enumerate(((32, 1), (33, 0), (34, 1)), start=1):
        # the same member in another ensemble, at the other position, beside a healthy member
        other, other_streams = _float32_ensemble([99, seed])
        train_vae(other, train_x, valid_x, torch.tensor([0, version]), other_streams, settings, progress_every=1e9)
        assert torch.equal(batch.decoder.flat[m], other.decoder.flat[1]), m
        assert torch.equal(batch.encoder.flat[m], other.encoder.flat[1]), m


def test_the_vae_and_m2_tasks_have_every_method_of_the_task_interface():
    from vaefail.engine.m2_task import M2Task
    from vaefail.engine.train import TrainingTask, VAETask

    methods = {name for name, value in vars(TrainingTask).items() if callable(value) and not name.startswith("_")}
    assert methods >= {"start_epoch", "select_batch", "loss", "inner_loss", "draw_inner_batch", "mutual_information"}
    for task in (VAETask, M2Task):
        assert all(callable(getattr(task, name, None)) for name in methods), task
