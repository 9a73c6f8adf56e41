"""Tests of the reference metrics (tests/reference/metrics.py) against closed forms, brute force
and known null behaviour.

The smoothed-kNN marginals are checked against (a) a softmax for k = 1, (b) enumeration of all
k-subsets on tiny inputs and (c) an independent log-space forward/backward dynamic programme over
ALL n - 1 candidates (no truncation), written here from the definition. The standardised
statistic is checked against a direct dense evaluation of its formula, against the permutation
null it standardises for, and for power under a mean shift. The KSG estimator is checked against
a brute-force O(n^2) evaluation and against Gaussian closed forms.
"""

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import digamma, logsumexp

from reference.metrics import (
    _soft_knn_graph,
    _soft_knn_graph_sums,
    _standardised_cross_count,
    ksg_mutual_information,
    smooth_knn_marginals,
    smooth_knn_statistic,
)

# --------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------


def enumerated_marginals(points, k, temperature):
    """margs[i, j] = P(j in S) by summing over every k-subset S of the other points."""
    distances = cdist(points, points)
    n = len(points)
    marginals = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        subsets = list(itertools.combinations(others, k))
        log_weights = np.array([-distances[i, list(s)].sum() / temperature for s in subsets])
        probabilities = np.exp(log_weights - logsumexp(log_weights))
        for subset, probability in zip(subsets, probabilities):
            marginals[i, list(subset)] += probability
    return marginals


def log_space_dp_marginals(points, k, temperature):
    """Marginals over all n - 1 candidates by a log-space forward/backward recursion.

    forward[p][i, m] = log e_m(first p candidates of row i), backward[p][i, m] = log e_m(candidates
    p.. of row i); candidate p's marginal is w_p e_{k-1}(others) / e_k(all).
    """
    n = len(points)
    distances = cdist(points, points)
    candidates = np.array([[j for j in range(n) if j != i] for i in range(n)])
    log_weights = -np.take_along_axis(distances, candidates, axis=1) / temperature
    # Relative to the k-th largest weight (the ratios are unchanged), to keep the logs small.
    log_weights -= np.sort(log_weights, axis=1)[:, -k][:, None]
    n_candidates = n - 1

    def step(table, log_weight):
        new = table.copy()
        new[:, 1:] = np.logaddexp(table[:, 1:], table[:, :-1] + log_weight[:, None])
        return new

    empty = np.full((n, k + 1), -np.inf)
    empty[:, 0] = 0.0
    forward = [empty]
    for p in range(n_candidates):
        forward.append(step(forward[-1], log_weights[:, p]))
    backward = [empty]
    for p in reversed(range(n_candidates)):
        backward.append(step(backward[-1], log_weights[:, p]))
    backward = backward[::-1]  # backward[p] covers candidates p, ..., n_candidates - 1
    log_e_k = forward[-1][:, k]
    marginals = np.zeros((n, n))
    for p in range(n_candidates):
        # e_{k-1}(all without p) = sum_a e_a(before p) e_{k-1-a}(after p)
        pairs = forward[p][:, :k] + backward[p + 1][:, k - 1 :: -1]
        log_marginal = log_weights[:, p] + logsumexp(pairs, axis=1) - log_e_k
        marginals[np.arange(n), candidates[:, p]] = np.exp(log_marginal)
    return marginals


def statistic_from_matrix(margs, n_1):
    """The standardised statistic evaluated directly from a dense marginal matrix."""
    in_first = np.arange(margs.shape[0]) < n_1
    cross = margs[in_first[:, None] != in_first[None, :]].sum()
    mean, variance = null_mean_and_variance(margs, n_1)
    return -(cross - mean) / np.sqrt(1e-5 + variance)


def null_mean_and_variance(margs, n_1):
    """Closed-form permutation-null mean and variance of the cross-sample edge mass t."""
    n = margs.shape[0]
    n_2 = n - n_1
    total = margs.sum()
    chi_1 = n_1 * n_2 / (n * (n - 1))
    chi_2 = 4 * (n_1 - 1) * (n_2 - 1) / ((n - 2) * (n - 3))
    degree_square_sum = ((margs.sum(axis=0) + margs.sum(axis=1)) ** 2).sum()
    variance = (
        chi_1 * (1 - chi_2) * degree_square_sum
        + chi_1 * chi_2 * (margs**2).sum()
        + chi_1 * chi_2 * (margs * margs.T).sum()
        + chi_1 * (chi_2 - 4 * chi_1) * total**2
    )
    return 2 * total * n_1 * n_2 / (n * (n - 1)), variance


def brute_force_ksg(x, y, k):
    """KSG algorithm 1 with all pairwise max-norm distances."""
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    distance_x = np.abs(x[:, None, :] - x[None, :, :]).max(axis=-1)
    distance_y = np.abs(y[:, None, :] - y[None, :, :]).max(axis=-1)
    distance_joint = np.maximum(distance_x, distance_y)
    for matrix in (distance_x, distance_y, distance_joint):
        np.fill_diagonal(matrix, np.inf)
    eps = np.sort(distance_joint, axis=1)[:, k - 1]
    n_x = (distance_x < eps[:, None]).sum(axis=1)
    n_y = (distance_y < eps[:, None]).sum(axis=1)
    return digamma(k) + digamma(len(x)) - np.mean(digamma(n_x + 1) + digamma(n_y + 1))


def noisy_circle(rng, n, noise=0.1):
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.c_[np.cos(angle), np.sin(angle)] + noise * rng.standard_normal((n, 2))


# --------------------------------------------------------------------------------------
# Marginals
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["auto", "dense", "sparse"])
@pytest.mark.parametrize("k, temperature", [(1, 0.05), (3, 0.01), (5, 0.3), (8, 2.0)])
def test_marginal_rows_sum_to_k_with_zero_diagonal(path, k, temperature):
    points = np.random.default_rng(0).standard_normal((120, 2))
    margs = _soft_knn_graph(points, k, temperature, path=path).to_csr().toarray()
    np.testing.assert_allclose(margs.sum(axis=1), k, rtol=0, atol=1e-12)
    assert np.all(np.diag(margs) == 0.0)
    assert margs.min() >= 0.0 and margs.max() <= 1.0 + 1e-15


@pytest.mark.parametrize("temperature", [0.02, 0.2, 3.0])
def test_k1_marginals_are_a_softmax_over_other_points(temperature):
    points = np.random.default_rng(1).standard_normal((30, 2))
    logits = -cdist(points, points) / temperature
    np.fill_diagonal(logits, -np.inf)
    softmax = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    margs = smooth_knn_marginals(points, 1, temperature).toarray()
    np.testing.assert_allclose(margs, softmax, rtol=0, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("temperature", [0.03, 0.3, 3.0])
def test_marginals_equal_enumeration_of_all_k_subsets(k, temperature):
    points = np.random.default_rng(2).standard_normal((8, 2))
    expected = enumerated_marginals(points, k, temperature)
    for path in ("dense", "sparse"):
        margs = _soft_knn_graph(points, k, temperature, path=path).to_csr().toarray()
        np.testing.assert_allclose(margs, expected, rtol=0, atol=1e-13)


def test_truncated_candidate_lists_give_the_all_candidates_answer():
    rng = np.random.default_rng(3)
    points = np.vstack([rng.standard_normal((200, 2)), noisy_circle(rng, 200)])
    k, temperature = 4, 0.01
    truncated = _soft_knn_graph(points, k, temperature, path="sparse")
    assert truncated.columns.shape[1] < len(points) - 1  # truncation really happens
    reference = log_space_dp_marginals(points, k, temperature)
    np.testing.assert_allclose(truncated.to_csr().toarray(), reference, rtol=0, atol=1e-12)
    dense = _soft_knn_graph(points, k, temperature, path="dense").to_csr().toarray()
    np.testing.assert_allclose(dense, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "temperature, reference_accuracy", [(1e-4, 1e-10), (1e-3, 1e-11), (50.0, 1e-13)]
)
def test_extreme_temperatures_match_the_log_space_reference(temperature, reference_accuracy):
    # Tiny temperatures make head weights astronomically large (e^1000s), huge ones make every
    # point a near-equal candidate; both must stay exact. The log-space reference itself is only
    # accurate to about 1e-16 times the size of its logs (up to ~1e4 here), hence the tolerance.
    points = np.random.default_rng(4).standard_normal((60, 5))
    k = 5
    reference = log_space_dp_marginals(points, k, temperature)
    for path in ("auto", "dense", "sparse"):
        margs = _soft_knn_graph(points, k, temperature, path=path).to_csr().toarray()
        np.testing.assert_allclose(margs, reference, rtol=0, atol=reference_accuracy)
        np.testing.assert_allclose(margs.sum(axis=1), k, rtol=0, atol=1e-12)


def test_duplicate_points_are_handled():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 2))
    points = np.vstack([base, base[:10], base[:3]])  # exact duplicates, some three-fold
    for k in (1, 3):
        reference = log_space_dp_marginals(points, k, 0.05)
        for path in ("dense", "sparse"):
            margs = _soft_knn_graph(points, k, 0.05, path=path).to_csr().toarray()
            np.testing.assert_allclose(margs, reference, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# The standardised statistic
# --------------------------------------------------------------------------------------


def gaussian_samples(n_1, n_2):
    rng = np.random.default_rng(6)
    return rng.standard_normal((n_1, 2)), rng.standard_normal((n_2, 2)) + [0.3, 0.0]


def lattice_samples(n_1, n_2):
    # Integer grid points: many exactly tied distances, also at the k-th neighbour.
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(10.0)), axis=-1).reshape(-1, 2)
    grid = np.random.default_rng(6).permutation(grid)[: n_1 + n_2]
    return grid[:n_1], grid[n_1:]


@pytest.mark.parametrize("path", ["auto", "dense", "sparse"])
@pytest.mark.parametrize(
    "make_samples, n_1, n_2, k, temperature",
    [
        (gaussian_samples, 70, 130, 1, 0.1),
        (gaussian_samples, 100, 100, 3, 0.05),
        (gaussian_samples, 150, 90, 5, 0.005),
        (gaussian_samples, 60, 60, 4, 1.0),
        (gaussian_samples, 700, 500, 5, 0.002),
        (lattice_samples, 50, 60, 2, 0.05),
        (lattice_samples, 60, 60, 6, 0.02),
    ],
)
def test_statistic_equals_its_formula_on_the_marginal_matrix(
    path, make_samples, n_1, n_2, k, temperature
):
    sample_1, sample_2 = make_samples(n_1, n_2)
    points = np.vstack([sample_1, sample_2])
    margs = smooth_knn_marginals(points, k, temperature).toarray()
    expected = statistic_from_matrix(margs, n_1)
    sums = _soft_knn_graph_sums(points, k, temperature, n_1, path=path)
    assert _standardised_cross_count(sums, n_1, n_2) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    if path == "auto":
        assert smooth_knn_statistic(sample_1, sample_2, k, temperature) == pytest.approx(
            expected, rel=1e-10, abs=1e-10
        )


def test_permutation_null_moments_match_the_closed_form():
    # One pooled sample, many random splits into groups of n_1 and n_2: the empirical mean and
    # variance of t must match the closed form the statistic uses (which is exact).
    rng = np.random.default_rng(7)
    n_1, n_2, k = 70, 130, 3
    n = n_1 + n_2
    margs = smooth_knn_marginals(rng.standard_normal((n, 2)), k, 0.1).toarray()
    n_permutations = 4000
    labels = np.zeros((n_permutations, n))
    for row in labels:
        row[rng.permutation(n)[:n_1]] = 1.0
    # t = sum_ij margs_ij [label_i != label_j] = s.rowsum + s.colsum - 2 s' margs s
    t = labels @ margs.sum(axis=1) + labels @ margs.sum(axis=0) - 2.0 * np.einsum(
        "pi,ij,pj->p", labels, margs, labels
    )
    mean, variance = null_mean_and_variance(margs, n_1)
    assert t.mean() == pytest.approx(mean, rel=0.01)
    assert t.var() == pytest.approx(variance, rel=0.10)


def test_statistic_is_standardised_under_the_null():
    rng = np.random.default_rng(8)
    values = np.array(
        [
            smooth_knn_statistic(
                rng.standard_normal((100, 2)), rng.standard_normal((100, 2)), 3, 0.1
            )
            for _ in range(200)
        ]
    )
    assert abs(values.mean()) < 0.25
    assert 0.7 < values.std() < 1.3


def test_statistic_grows_with_a_mean_shift():
    rng = np.random.default_rng(9)
    shifts = [0.0, 0.5, 1.0, 2.0]
    mean_statistic = [
        np.mean(
            [
                smooth_knn_statistic(
                    rng.standard_normal((150, 2)),
                    rng.standard_normal((150, 2)) + [shift, 0.0],
                    5,
                    0.1,
                )
                for _ in range(5)
            ]
        )
        for shift in shifts
    ]
    assert np.all(np.diff(mean_statistic) > 0), mean_statistic
    large = smooth_knn_statistic(
        rng.standard_normal((500, 2)), rng.standard_normal((500, 2)) + [2.0, 0.0], 5, 0.1
    )
    assert large > 3.0


def test_statistic_is_invariant_to_swapping_the_samples():
    rng = np.random.default_rng(10)
    sample_1, sample_2 = noisy_circle(rng, 300), noisy_circle(rng, 200) * 1.1
    forward = smooth_knn_statistic(sample_1, sample_2, 5, 0.05)
    backward = smooth_knn_statistic(sample_2, sample_1, 5, 0.05)
    assert forward == pytest.approx(backward, rel=1e-9)


# --------------------------------------------------------------------------------------
# KSG mutual information
# --------------------------------------------------------------------------------------


def test_ksg_equals_brute_force_evaluation():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 5))
    y = x[:, 0] + 0.3 * rng.standard_normal(300)
    assert ksg_mutual_information(x, y, k=3) == pytest.approx(brute_force_ksg(x, y, 3), abs=1e-12)
    # Rounded data has many ties: the strict inequalities must still match the definition.
    x_rounded = np.round(rng.standard_normal(300), 1)
    y_rounded = np.round(x_rounded + rng.standard_normal(300), 1)
    assert ksg_mutual_information(x_rounded, y_rounded, k=4) == pytest.approx(
        brute_force_ksg(x_rounded, y_rounded, 4), abs=1e-12
    )


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_ksg_matches_bivariate_gaussian_closed_form(rho):
    rng = np.random.default_rng(12)
    z = rng.standard_normal((2000, 2))
    x = z[:, 0]
    y = rho * z[:, 0] + np.sqrt(1.0 - rho**2) * z[:, 1]
    assert ksg_mutual_information(x, y) == pytest.approx(-0.5 * np.log(1.0 - rho**2), abs=0.05)


def test_ksg_is_near_zero_for_independent_5d_x_and_1d_y():
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((2000, 5)), rng.standard_normal(2000)
    assert abs(ksg_mutual_information(x, y)) < 0.05


def test_ksg_is_large_for_5d_x_that_determines_y():
    # y = x_1 + noise: I = 0.5 log(1 + 1 / noise^2). KSG is known to underestimate strong
    # dependence in higher-dimensional joint spaces (here 6-D with 4 irrelevant coordinates), so
    # we ask for a large positive value below the truth and within 25% of it.
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2000, 5))
    noise = 0.5
    y = x[:, 0] + noise * rng.standard_normal(2000)
    truth = 0.5 * np.log(1.0 + 1.0 / noise**2)
    estimate = ksg_mutual_information(x, y)
    assert 0.75 * truth < estimate < truth


def test_ksg_is_symmetric_and_accepts_1d_arrays():
    rng = np.random.default_rng(15)
    x = rng.standard_normal(500)
    y = np.sin(x) + 0.2 * rng.standard_normal(500)
    assert ksg_mutual_information(x, y) == ksg_mutual_information(y, x)
    assert ksg_mutual_information(x, y) == ksg_mutual_information(x[:, None], y[:, None])


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------

GOOD = np.random.default_rng(16).standard_normal((20, 2))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(sample_1=GOOD[:, 0]), "sample_1"),
        (dict(sample_2=np.zeros((10, 3))), "sample_1 and sample_2"),
        (dict(sample_2=np.where(np.arange(20)[:, None] == 4, np.nan, GOOD)), "sample_2"),
        (dict(sample_1=np.full((3, 2), np.inf)), "sample_1"),
        (dict(sample_1=np.array([["a", "b"]])), "sample_1"),
        (dict(k=0), "k"),
        (dict(k=2.5), "k"),
        (dict(k=39), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
    ],
)
def test_statistic_rejects_bad_input_naming_the_argument(kwargs, argument):
    arguments = dict(sample_1=GOOD, sample_2=GOOD + 1.0, k=3, temperature=0.1) | kwargs
    with pytest.raises(ValueError, match=argument):
        smooth_knn_statistic(**arguments)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(points=np.zeros(5)), "points"),
        (dict(k=19), "k"),
        (dict(temperature="hot"), "temperature"),
    ],
)
def test_marginals_reject_bad_input_naming_the_argument(kwargs, argument):
    arguments = dict(points=GOOD, k=3, temperature=0.1) | kwargs
    with pytest.raises(ValueError, match=argument):
        smooth_knn_marginals(**arguments)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(y=GOOD[:10]), "x and y"),
        (dict(x=np.full((20, 2), np.nan)), "x"),
        (dict(y=np.zeros((20, 2, 2))), "y"),
        (dict(k=20), "k"),
        (dict(k=0), "k"),
    ],
)
def test_ksg_rejects_bad_input_naming_the_argument(kwargs, argument):
    arguments = dict(x=GOOD, y=GOOD[:, 0], k=3) | kwargs
    with pytest.raises(ValueError, match=argument):
        ksg_mutual_information(**arguments)
