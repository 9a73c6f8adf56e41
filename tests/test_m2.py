"""The semi-supervised M2 bounds (Figure 4) and their batched training."""
import math

import pytest
import torch

from vaefail.engine.m2_task import M2Task
from vaefail.engine.train import LinSettings, TrainSettings, train_ensemble
from vaefail.models import m2
from vaefail.models.m2 import Labels, M2Ensemble
from vaefail.models.nets import random_init
from vaefail.randomness import MemberStreams


# closed forms in float64; the fixture restores torch's default dtype after each test
pytestmark = pytest.mark.usefixtures("float64_by_default")


def _model(labels, M=1, seed=0, K=1, D=2, unlabelled_posterior="x"):
    model = M2Ensemble(D, K, labels, [16, 16], M, dtype=torch.float64, unlabelled_posterior=unlabelled_posterior)
    streams = MemberStreams([seed + m for m in range(M)])
    # the discriminator's init bounds live in the same flat tensor as the encoder's
    bounds = model.encoder_init_bounds()
    random_init(model.encoder, bounds, streams, "init-encoder")
    random_init(model.decoder, model.decoder_net.init_bounds(model.decoder), streams, "init-decoder")
    model.set_sigma2(0.1)
    return model


def _labels_for(labels, n, gen):
    if labels.kind == "discrete":
        return torch.nn.functional.one_hot(torch.randint(0, labels.classes, (1, n), generator=gen),
                                           labels.classes).double()
    return torch.randn(1, n, 1, generator=gen)


@pytest.mark.parametrize("unlabelled_posterior", ["x", "xy"])
@pytest.mark.parametrize("labels", [Labels("discrete", 3), Labels("continuous")])
def test_iwae_bounds_with_one_sample_equal_the_vae_bounds_in_expectation(labels, unlabelled_posterior):
    model = _model(labels, unlabelled_posterior=unlabelled_posterior)
    gen = torch.Generator().manual_seed(1)
    n, draws = 4, 200_000
    x = torch.randn(1, n, 2, generator=gen).repeat_interleave(draws, 1)
    y = _labels_for(labels, n, gen).repeat_interleave(draws, 1)
    eps_z = torch.randn(1, n * draws, 1, 1, generator=gen)
    eps_y = torch.randn(1, n * draws, 1, labels.noise_dim, generator=gen)
    with torch.no_grad():
        for vae, iwae, args in ((m2.labelled_elbo, m2.labelled_iwae, (x, y, eps_z)),
                                (m2.unlabelled_elbo, m2.unlabelled_iwae, (x, eps_y, eps_z))):
            a = vae(model, *args).view(n, draws).mean(1)
            b = iwae(model, *args).view(n, draws).mean(1)
            spread = iwae(model, *args).view(n, draws).std(1) / math.sqrt(draws)
            assert torch.all((a - b).abs() < 5 * spread + 1e-3), (vae.__name__, a, b)


@pytest.mark.parametrize("unlabelled_posterior", ["x", "xy"])
def test_unlabelled_bound_with_a_one_hot_discriminator_at_the_true_label_is_the_labelled_bound(unlabelled_posterior):
    """With q(y|x) one-hot at the true y, U(x) is L(x, y) with the unlabelled bound's
    z-posterior: q(z|x, y) itself for Kingma et al.'s variant, q(z|x) for the paper's."""
    labels = Labels("discrete", 3)
    model = _model(labels, unlabelled_posterior=unlabelled_posterior)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 2, generator=gen)
    y = _labels_for(labels, 6, gen)
    eps_z = torch.randn(1, 6, 5, 1, generator=gen)
    eps_y = torch.randn(1, 6, 5, 3, generator=gen)
    with torch.no_grad():
        model.classify = lambda x_: torch.where(y.bool(), 0.0, -1e4).expand(*x_.shape[:-1], 3)
        unlabelled = [m2.unlabelled_elbo(model, x, eps_y, eps_z), m2.unlabelled_iwae(model, x, eps_y, eps_z)]
        z_posterior = model.encode_unlabelled(x, y)
        model.encode = lambda x_, y_: z_posterior   # L(x, y) with the unlabelled z-posterior
        labelled = [m2.labelled_elbo(model, x, y, eps_z), m2.labelled_iwae(model, x, y, eps_z)]
    for u, lab in zip(unlabelled, labelled):
        assert torch.allclose(u, lab, atol=1e-9)


def test_the_papers_unlabelled_posterior_does_not_see_the_label_and_kingmas_does():
    labels = Labels("discrete", 2)
    x = torch.randn(1, 5, 2, generator=torch.Generator().manual_seed(4))
    y0 = torch.nn.functional.one_hot(torch.zeros(1, 5, dtype=torch.long), 2).double()
    y1 = torch.nn.functional.one_hot(torch.ones(1, 5, dtype=torch.long), 2).double()
    with torch.no_grad():
        paper, kingma = _model(labels, unlabelled_posterior="x"), _model(labels, unlabelled_posterior="xy")
        assert torch.equal(paper.encode_unlabelled(x, y0)[0], paper.encode_unlabelled(x, y1)[0])
        assert not torch.allclose(kingma.encode_unlabelled(x, y0)[0], kingma.encode_unlabelled(x, y1)[0])
    assert paper.encoder.size > kingma.encoder.size   # the extra network q(z|x)


def test_relaxed_samples_lie_on_the_simplex_and_sharpen_as_the_temperature_falls():
    gen = torch.Generator().manual_seed(3)
    log_pi = torch.log_softmax(torch.randn(5000, 4, generator=gen), -1)
    gumbel = m2.gumbel_from_normal(torch.randn(5000, 4, generator=gen))
    max_mass = []
    for temperature in (5.0, 2.2, 0.5, 0.05):
        y = m2.relaxed_one_hot(log_pi, gumbel, temperature)
        assert torch.all(y >= 0) and torch.allclose(y.sum(-1), torch.ones(5000))
        max_mass.append(y.max(-1).values.mean().item())
    assert all(a < b for a, b in zip(max_mass, max_mass[1:])) and max_mass[-1] > 0.95
    # the hard sample argmax(log pi + g) follows the categorical q exactly
    hard = (log_pi[:1] + m2.gumbel_from_normal(torch.randn(200_000, 4, generator=gen))).argmax(-1)
    freq = torch.bincount(hard, minlength=4) / 200_000
    assert torch.allclose(freq, log_pi[0].exp(), atol=0.005)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gumbel_noise_is_finite_for_every_normal_draw(dtype):
    """Box-Muller draws reach |eps| = 8.6; in float32 Phi(eps) rounds to 1 from eps = 5.35 on,
    which once made the Gumbel +inf and the member's loss NaN.  Below the bound nothing changes."""
    eps = torch.cat([torch.linspace(-8.6, 8.6, 20001), torch.tensor([5.3475, 6.0, 8.57])]).to(dtype)
    g = m2.gumbel_from_normal(eps)
    assert torch.isfinite(g).all()
    inside = torch.special.ndtr(eps) < 1 - 1e-12 if dtype == torch.float64 else torch.special.ndtr(eps) < 1
    u = torch.special.ndtr(eps[inside]).clamp(min=1e-12)
    assert torch.equal(g[inside], -torch.log(-torch.log(u)))
    log_pi = torch.log(torch.tensor([0.3, 0.7], dtype=dtype))
    y = m2.relaxed_one_hot(log_pi, torch.stack([torch.zeros_like(g), g], -1), m2.RELAXATION_TEMPERATURE)
    assert torch.isfinite(y).all()


def _m2_data(labels, V=2, n_u=300, n_l=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"x_unlabelled": torch.randn(V, n_u, 2, generator=gen), "x_labelled": torch.randn(V, n_l, 2, generator=gen),
            "y_labelled": torch.cat([_labels_for(labels, n_l, gen) for _ in range(V)]),
            "x_valid": torch.randn(V, 100, 2, generator=gen)}


@pytest.mark.parametrize("bound, lin", [("elbo", None), ("iwae", None), ("elbo", LinSettings(0.05, 5))])
@pytest.mark.parametrize("labels", [Labels("discrete", 2), Labels("continuous")])
def test_batched_m2_training_equals_training_each_member_alone(labels, bound, lin):
    data = _m2_data(labels)
    seeds, versions = [5, 6, 7], torch.tensor([0, 1, 1])
    alpha, gamma = torch.tensor([0.0, 0.1, 1.0]), torch.tensor([0.5, 2.0, 5.0])
    settings = TrainSettings(objective=bound, samples=3 if bound == "iwae" else 1, epochs=6, batch_size=100, lin=lin)

    def run(members):
        model = _model(labels, M=len(members), seed=100)
        for j, m in enumerate(members):   # same initial weights whether batched or alone
            ref = _model(labels, M=3, seed=100)
            with torch.no_grad():
                model.encoder.flat[j].copy_(ref.encoder.flat[m])
                model.decoder.flat[j].copy_(ref.decoder.flat[m])
        streams = MemberStreams([seeds[m] for m in members])
        task = M2Task(bound, settings.samples, data, versions[members], alpha[members], gamma[members],
                      100, labels, 1)
        log = train_ensemble(model, task, streams, settings, progress_every=1e9)
        return model, log

    batched, log = run([0, 1, 2])
    assert not log.failed.any()
    for m in range(3):
        alone, alone_log = run([m])
        assert torch.allclose(batched.encoder.flat[m], alone.encoder.flat[0], rtol=0, atol=1e-10)
        assert torch.allclose(batched.decoder.flat[m], alone.decoder.flat[0], rtol=0, atol=1e-10)
        assert alone_log.inner_steps[0] == log.inner_steps[m]
