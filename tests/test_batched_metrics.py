"""Tests of the batched statistics (vaefail.evaluation.smooth_knn, .ksg and their neighbour
search, .neighbours) against the float64 reference in
tests/reference/metrics.py.

The reference is itself checked against brute force and closed forms in tests/test_metrics.py;
here every batched value is compared with it member by member (1e-6 relative or 1e-9 absolute,
the stated exactness; the actual differences are ~1e-13), over the input families the
evaluation meets (ties, duplicates, tiny to large temperatures, k = 1..5, n_1 != n_2, 2-D to
9-D), and on the code paths a GPU takes (several members per group, chunks spanning members,
larger tiles), forced on the CPU.
"""

import math

import numpy as np
import pytest
import torch

from reference.metrics import cross_sample_deficit as reference_deficit
from reference.metrics import ksg_mutual_information as reference_ksg
from reference.metrics import smooth_knn_statistic as reference_statistic
from vaefail.evaluation import neighbours, smooth_knn
from vaefail.evaluation.ksg import ksg_mutual_information
from vaefail.evaluation.smooth_knn import smooth_knn_statistics

RELATIVE = 1e-6
ABSOLUTE = 1e-9


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these tests on one thread: on a shared 2-core machine two OpenMP threads make each
    of the many small operations wait for a preempted worker (0.07 s became 0.1-3 s per call).
    The same tests pass with two threads (values differ by rounding at most)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_matches_reference(values, expected):
    values, expected = np.asarray(values, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(values, expected, rtol=RELATIVE, atol=ABSOLUTE)


def reference_statistics(sample_1, sample_2, k, temperature):
    return [reference_statistic(a, b, k, temperature) for a, b in zip(sample_1, sample_2)]


def reference_ksgs(x, y, k):
    return [reference_ksg(a, b, k) for a, b in zip(x, y)]


# --------------------------------------------------------------------------------------
# Input families, (members, points, dims) float64 arrays
# --------------------------------------------------------------------------------------


def gaussian(rng, members, n_1, n_2, dims, shift=0.3):
    return rng.standard_normal((members, n_1, dims)), rng.standard_normal((members, n_2, dims)) + shift


def curve(rng, members, n, noise, scale=1.0, phase=0.0):
    """The paper-like 2-D data: (cos 3z, sin 2z) plus Gaussian noise."""
    z = rng.standard_normal((members, n))
    points = np.stack([scale * np.cos(3 * z), np.sin(2 * z + phase)], -1)
    return points + noise * rng.standard_normal(points.shape)


def lattice(rng, members, n_1, n_2):
    """Integer grid points: many exactly tied distances, also at the k-th neighbour."""
    grid = np.stack(np.meshgrid(np.arange(14.0), np.arange(11.0)), -1).reshape(-1, 2)
    pooled = np.stack([rng.permutation(grid)[: n_1 + n_2] for _ in range(members)])
    return pooled[:, :n_1], pooled[:, n_1:]


def with_duplicates(rng, members, n_1, n_2, dims):
    """Exact duplicates within and across the samples, some three-fold."""
    base = rng.standard_normal((members, n_1 + n_2 - 15, dims))
    pooled = np.concatenate([base, base[:, :10], base[:, -5:]], 1)
    pooled = pooled[:, rng.permutation(n_1 + n_2)]
    return pooled[:, :n_1], pooled[:, n_1:]


# --------------------------------------------------------------------------------------
# Smoothed kNN statistic: agreement with the reference
# --------------------------------------------------------------------------------------

STATISTIC_CASES = {
    # name: (samples(rng), k, temperature)
    "2-D, k=1": (lambda rng: gaussian(rng, 3, 70, 130, 2), 1, 0.1),
    "2-D, k=3": (lambda rng: gaussian(rng, 3, 100, 80, 2), 3, 0.05),
    "2-D, tiny temperature (sparse)": (lambda rng: gaussian(rng, 3, 150, 90, 2), 5, 0.002),
    "2-D, extreme temperature": (lambda rng: gaussian(rng, 2, 60, 50, 2), 5, 1e-4),
    "2-D, large temperature (dense)": (lambda rng: gaussian(rng, 3, 60, 70, 2), 4, 1.0),
    "2-D, huge temperature": (lambda rng: gaussian(rng, 2, 50, 40, 2), 2, 50.0),
    "curve, 500 vs 400 at 0.01": (
        lambda rng: (curve(rng, 3, 500, 0.11, 1.03, 0.05), curve(rng, 3, 400, 0.1)), 5, 0.01
    ),
    "lattice, ties at the k-th": (lambda rng: lattice(rng, 3, 50, 60), 2, 0.05),
    "lattice, k=5": (lambda rng: lattice(rng, 3, 60, 61), 5, 0.02),
    "duplicates, 2-D": (lambda rng: with_duplicates(rng, 3, 40, 45, 2), 3, 0.05),
    "duplicates, k=1": (lambda rng: with_duplicates(rng, 2, 30, 35, 2), 1, 0.01),
    "3-D": (lambda rng: gaussian(rng, 3, 120, 100, 3), 4, 0.3),
    "5-D": (lambda rng: gaussian(rng, 3, 200, 170, 5), 5, 0.3),
    "9-D, few points": (lambda rng: gaussian(rng, 2, 40, 35, 9), 5, 0.5),
    "19-D": (lambda rng: gaussian(rng, 2, 60, 45, 19, shift=0.1), 3, 1.0),
    "tiny samples": (lambda rng: gaussian(rng, 3, 2, 3, 2), 2, 0.3),
    "partial blocks of one point": (lambda rng: gaussian(rng, 3, 17, 1, 2), 5, 0.05),
    "k = n - 2": (lambda rng: gaussian(rng, 2, 10, 8, 2), 16, 0.2),
}


@pytest.mark.parametrize("name", STATISTIC_CASES)
def test_statistic_matches_the_reference(name):
    make_samples, k, temperature = STATISTIC_CASES[name]
    sample_1, sample_2 = make_samples(np.random.default_rng(sorted(STATISTIC_CASES).index(name)))
    values = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), k, temperature)
    assert values.dtype == torch.float64 and values.shape == (len(sample_1),)
    assert_matches_reference(values, reference_statistics(sample_1, sample_2, k, temperature))


@pytest.mark.parametrize("name", ["2-D, k=3", "curve, 500 vs 400 at 0.01", "lattice, ties at the k-th", "5-D"])
def test_deficit_matches_the_reference_and_comes_with_the_same_statistic(name):
    make_samples, k, temperature = STATISTIC_CASES[name]
    sample_1, sample_2 = make_samples(np.random.default_rng(sorted(STATISTIC_CASES).index(name)))
    values, deficits = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), k, temperature,
                                             with_deficit=True)
    assert_matches_reference(values, reference_statistics(sample_1, sample_2, k, temperature))
    assert_matches_reference(deficits, [reference_deficit(a, b, k, temperature) for a, b in zip(sample_1, sample_2)])


def test_deficit_under_the_null_has_mean_zero_and_is_one_for_separated_samples():
    """Samples drawn twice from one distribution: the deficit's mean over many draws is the
    null's, 0, within three standard errors; disjoint samples miss every cross edge: 1."""
    rng = np.random.default_rng(7)
    sample_1, sample_2 = (curve(rng, 400, 60, 0.1) for _ in range(2))
    _, deficits = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), 5, 0.05, with_deficit=True)
    deficits = deficits.numpy()
    assert abs(deficits.mean()) < 3 * deficits.std(ddof=1) / math.sqrt(len(deficits)), deficits.mean()
    far = curve(rng, 2, 60, 0.1) + 100.0
    _, separated = smooth_knn_statistics(torch.tensor(sample_1[:2]), torch.tensor(far), 5, 0.05, with_deficit=True)
    np.testing.assert_allclose(separated.numpy(), 1.0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_statistic_matches_the_reference_for_every_k_at_the_evaluation_temperature(k):
    rng = np.random.default_rng(100 + k)
    sample_1 = curve(rng, 2, 300, 0.12, 1.05)
    sample_2 = curve(rng, 2, 250, 0.1)
    values = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), k, 0.01)
    assert_matches_reference(values, reference_statistics(sample_1, sample_2, k, 0.01))


@pytest.mark.parametrize(
    "block_size, chunk_entries, budget",
    [
        (16, 4096, 1 << 30),  # row blocks with more tiles than a chunk holds
        (32, 1 << 22, 1 << 30),  # larger tiles; chunks spanning all members
        (16, 1 << 22, 1 << 20),  # a small budget: small chunks, one member per group
    ],
)
def test_statistic_matches_the_reference_on_the_gpu_code_paths(
    monkeypatch, block_size, chunk_entries, budget
):
    # Several members per group and chunks spanning members, as a GPU run does, forced on the CPU.
    monkeypatch.setattr(smooth_knn, "ONE_MEMBER_PER_GROUP_ON_CPU", False)
    monkeypatch.setattr(neighbours, "CPU_CHUNK_ENTRIES", chunk_entries)
    rng = np.random.default_rng(7)
    sample_1, sample_2 = curve(rng, 3, 300, 0.12, 1.05), curve(rng, 3, 250, 0.1)
    values = smooth_knn_statistics(
        torch.tensor(sample_1), torch.tensor(sample_2), 5, 0.01,
        block_size=block_size, memory_budget_bytes=budget,
    )
    assert_matches_reference(values, reference_statistics(sample_1, sample_2, 5, 0.01))


def test_float32_arithmetic_stays_close_to_the_reference():
    rng = np.random.default_rng(8)
    sample_1, sample_2 = curve(rng, 3, 400, 0.13, 1.1, 0.1), curve(rng, 3, 400, 0.1)
    expected = np.array(reference_statistics(sample_1, sample_2, 5, 0.01))
    values = smooth_knn_statistics(
        torch.tensor(sample_1), torch.tensor(sample_2), 5, 0.01, dtype=torch.float32
    )
    assert values.dtype == torch.float64
    # Measured: ~1e-6 absolute (see the dtype parameter of smooth_knn_statistics).
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-5, atol=2e-5)


def test_statistic_accepts_float32_inputs_and_integer_coordinates():
    rng = np.random.default_rng(9)
    sample_1, sample_2 = lattice(rng, 2, 40, 50)
    expected = reference_statistics(sample_1, sample_2, 3, 0.05)
    sample_1, sample_2 = torch.tensor(sample_1), torch.tensor(sample_2)
    as_integers = smooth_knn_statistics(sample_1.long(), sample_2.long(), 3, 0.05)
    assert_matches_reference(as_integers, expected)
    # Lattice coordinates are exact in float32: only the arithmetic dtype (float64) matters.
    as_float32 = smooth_knn_statistics(sample_1.float(), sample_2.float(), 3, 0.05)
    assert_matches_reference(as_float32, expected)


# --------------------------------------------------------------------------------------
# Smoothed kNN statistic: members are independent
# --------------------------------------------------------------------------------------


def test_a_members_statistic_does_not_depend_on_the_other_members():
    rng = np.random.default_rng(10)
    sample_1, sample_2 = curve(rng, 4, 300, 0.12, 1.05), curve(rng, 4, 250, 0.1)
    together = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), 5, 0.01)
    alone = smooth_knn_statistics(torch.tensor(sample_1[2:3]), torch.tensor(sample_2[2:3]), 5, 0.01)
    assert together[2] == alone[0]
    # Other members replaced by very different data (far away, on a grid): unchanged.
    others_1, others_2 = (np.round(10 * sample) + 100.0 for sample in gaussian(rng, 4, 300, 250, 2))
    others_1[2], others_2[2] = sample_1[2], sample_2[2]
    changed = smooth_knn_statistics(torch.tensor(others_1), torch.tensor(others_2), 5, 0.01)
    assert changed[2] == together[2]


def test_non_finite_members_get_nan_and_leave_the_others_alone():
    rng = np.random.default_rng(11)
    sample_1, sample_2 = gaussian(rng, 4, 80, 90, 2)
    expected = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), 3, 0.05)
    sample_1[1, 5, 0] = np.nan
    sample_2[3, 0, 1] = np.inf
    values = smooth_knn_statistics(torch.tensor(sample_1), torch.tensor(sample_2), 3, 0.05)
    assert math.isnan(values[1]) and math.isnan(values[3])
    assert values[0] == expected[0] and values[2] == expected[2]
    all_bad = smooth_knn_statistics(torch.full((2, 5, 2), np.nan), torch.zeros((2, 5, 2)), 3, 0.05)
    assert torch.isnan(all_bad).all()


# --------------------------------------------------------------------------------------
# KSG mutual information
# --------------------------------------------------------------------------------------

KSG_CASES = {
    # name: (x, y)(rng), k
    "2-D x, 1-D y": (lambda rng: (lambda x: (x, x[..., 0] + 0.3 * rng.standard_normal(x.shape[:2])))(
        curve(rng, 3, 400, 0.1)), 3),
    "5-D x, 1-D y": (lambda rng: (lambda x: (x, x[..., 0] + 0.5 * rng.standard_normal(x.shape[:2])))(
        rng.standard_normal((3, 300, 5))), 3),
    "1-D x and y, k=1": (lambda rng: (lambda x: (x, np.sin(x) + 0.2 * rng.standard_normal(x.shape)))(
        rng.standard_normal((3, 200))), 1),
    "2-D y": (lambda rng: (rng.standard_normal((2, 250, 3)), rng.standard_normal((2, 250, 2))), 4),
    "discrete, rounded values": (lambda rng: (lambda x: (x, np.round(x + rng.standard_normal(x.shape), 1)))(
        np.round(rng.standard_normal((3, 300)), 1)), 4),
    "discrete, few values": (lambda rng: (rng.integers(0, 4, (3, 200, 2)).astype(float),
                                          rng.integers(0, 3, (3, 200)).astype(float)), 3),
    "duplicated points": (lambda rng: (lambda x: (np.concatenate([x, x[:, :20]], 1),
                                                  np.concatenate([x[..., 0], x[:, :20, 0]], 1)))(
        rng.standard_normal((2, 150, 2))), 5),
}


@pytest.mark.parametrize("name", KSG_CASES)
def test_ksg_matches_the_reference(name):
    make_inputs, k = KSG_CASES[name]
    x, y = make_inputs(np.random.default_rng(200 + sorted(KSG_CASES).index(name)))
    values = ksg_mutual_information(torch.tensor(x), torch.tensor(y), k)
    assert values.dtype == torch.float64 and values.shape == (len(x),)
    assert_matches_reference(values, reference_ksgs(x, y, k))


def test_ksg_members_are_independent_and_non_finite_members_get_nan():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 200, 2))
    y = x[..., 0] + 0.3 * rng.standard_normal((3, 200))
    together = ksg_mutual_information(torch.tensor(x), torch.tensor(y))
    assert together[1] == ksg_mutual_information(torch.tensor(x[1:2]), torch.tensor(y[1:2]))[0]
    y[0, 7] = np.nan
    values = ksg_mutual_information(torch.tensor(x), torch.tensor(y))
    assert math.isnan(values[0]) and values[1] == together[1] and values[2] == together[2]


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------

GOOD = torch.tensor(np.random.default_rng(16).standard_normal((2, 20, 2)))


@pytest.mark.parametrize(
    "arguments, name",
    [
        (dict(sample_1=GOOD[0]), "sample_1"),
        (dict(sample_2=GOOD[:, :, :1]), "sample_1 and sample_2"),
        (dict(sample_2=GOOD[:1]), "sample_1 and sample_2"),
        (dict(sample_1=torch.zeros((2, 0, 2))), "sample_1"),
        (dict(sample_1=GOOD > 0), "sample_1"),
        (dict(sample_1=[["a"]]), "sample_1"),
        (dict(sample_1=GOOD[:, :1], sample_2=GOOD[:, :2]), "sample_1 and sample_2"),
        (dict(k=0), "k"),
        (dict(k=2.5), "k"),
        (dict(k=True), "k"),
        (dict(k=39), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(temperature=1e-320), "temperature"),
        (dict(dtype=torch.float16), "dtype"),
        (dict(block_size=12), "block_size"),
        (dict(memory_budget_bytes=0), "memory_budget_bytes"),
    ],
)
def test_statistic_rejects_bad_input_naming_the_argument(arguments, name):
    arguments = dict(sample_1=GOOD, sample_2=GOOD + 1.0, k=3, temperature=0.1) | arguments
    with pytest.raises(ValueError, match=name):
        smooth_knn_statistics(**arguments)


@pytest.mark.parametrize(
    "arguments, name",
    [
        (dict(y=GOOD[:, :10, 0]), "x and y"),
        (dict(y=GOOD[:1, :, 0]), "x and y"),
        (dict(x=GOOD[0, :, 0]), "x"),
        (dict(y=torch.zeros((2, 20, 2, 2))), "y"),
        (dict(k=20), "k"),
        (dict(k=0), "k"),
    ],
)
def test_ksg_rejects_bad_input_naming_the_argument(arguments, name):
    arguments = dict(x=GOOD, y=GOOD[..., 0], k=3) | arguments
    with pytest.raises(ValueError, match=name):
        ksg_mutual_information(**arguments)


def test_each_knn_evaluation_logs_its_time(caplog):
    # A long job's evaluation must not be minutes of silence: each stage says what it did.
    from vaefail.evaluation.evaluate import knn_over_draws
    rng = np.random.default_rng(3)
    truth = torch.tensor(rng.normal(size=(2, 40, 2)))
    settings = {"knn_draws": 2, "knn_k": 3, "knn_temperature": 0.01}
    with caplog.at_level("INFO", logger="vaefail.evaluation.evaluate"):
        knn_over_draws(lambda purpose: truth + 0.1, "samples-test", truth, settings)
    assert any("evaluated 2 members: kNN statistic of samples-test (2 draws) in" in r.getMessage()
               for r in caplog.records)
