"""How sure a claim is: its effect per data version, a 95 % interval, a one-sided p-value and
a verdict, with scipy.stats doing every test and interval.

The unit of replication is the data version (for UCI, the split): each version's selected
model is one observation.  A claim is turned into one number per version, oriented so that a
positive value means "as the paper claims" (e.g. d_v = kNN_VAE(v) - kNN_IWAE(v) for "IWAE
learns p(x) better than the VAE"), paired wherever the models compared saw the same data.
With n <= 10 versions a t-interval is the honest choice (a bootstrap over 3 values has 10
distinct resamples); with n < 3 no interval decides anything, and the verdict says so.

Verdicts: `supported` (the 95 % interval lies above the claim's threshold), `contradicted`
(below it), `inconclusive` (otherwise, always when n < 3, and when a claim reads models that
did not converge), and `exact` (a closed-form claim, no sampling of models).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

SUPPORTED, CONTRADICTED, INCONCLUSIVE, EXACT = "supported", "contradicted", "inconclusive", "exact"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, EXACT)
LEVEL = 0.95
# A decision needs at least this many versions: with two, a t-interval has one degree of
# freedom (its half-width is 12.7 standard errors) and decides only the absurd.
MIN_VERSIONS = 3
# Holm's correction: a supported claim stays supported when its adjusted one-sided p-value is
# below this (the one-sided level that matches a two-sided 95 % interval above the threshold).
FAMILY_ALPHA = (1 - LEVEL) / 2


@dataclass(frozen=True)
class Evidence:
    effect: float      # mean over versions of the oriented statistic, minus nothing (threshold apart)
    ci_low: float      # 95 % interval of the mean
    ci_high: float
    n: int             # versions (or pairs) observed
    p: float           # one-sided p-value of "effect > threshold"; NaN where no test applies
    verdict: str
    test: str          # which test made the interval
    threshold: float = 0.0
    note: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def _verdict(low: float, high: float, threshold: float, n: int) -> str:
    if n < MIN_VERSIONS or not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if low > threshold:
        return SUPPORTED
    if high < threshold:
        return CONTRADICTED
    return INCONCLUSIVE


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def paired_t(values, threshold: float = 0.0, note: str = "") -> Evidence:
    """One value per version (already a paired difference where methods are compared):
    Student's t on their mean against `threshold` (scipy.stats.ttest_1samp), its 95 % interval
    and one-sided p-value for "mean > threshold".  Non-finite values are dropped."""
    d = np.asarray([v for v in np.asarray(values, dtype=float).ravel() if math.isfinite(v)])
    n = len(d)
    if n == 0:
        return Evidence(math.nan, math.nan, math.nan, 0, math.nan, INCONCLUSIVE, "paired t", threshold,
                        _join("no finite value", note))
    effect = float(d.mean())
    if n < 2:
        return Evidence(effect, math.nan, math.nan, n, math.nan, INCONCLUSIVE, "paired t", threshold,
                        _join("one version: no interval", note))
    if float(d.std()) == 0.0:
        # every version agrees exactly (e.g. a deterministic quantity): no spread to test
        verdict = _verdict(effect, effect, threshold, n)
        return Evidence(effect, effect, effect, n, 0.0 if effect > threshold else 1.0, verdict, "paired t",
                        threshold, _join("no spread over versions", note))
    low, high = stats.ttest_1samp(d, popmean=threshold).confidence_interval(LEVEL)
    p = float(stats.ttest_1samp(d, popmean=threshold, alternative="greater").pvalue)
    # the interval of the mean itself (ttest_1samp's is of the mean, whatever popmean is)
    low, high = float(low), float(high)
    return Evidence(effect, low, high, n, p, _verdict(low, high, threshold, n), "paired t", threshold,
                    _join(f"n = {n} < {MIN_VERSIONS}: no decision" if n < MIN_VERSIONS else "", note))


def exact(value: float, threshold: float = 0.0, n: int = 0, note: str = "") -> Evidence:
    """A closed-form quantity (no trained model, no sampling): `exact` when it is above the
    threshold, `contradicted` when not."""
    if not math.isfinite(value):
        return Evidence(value, math.nan, math.nan, n, math.nan, INCONCLUSIVE, "closed form", threshold,
                        _join("not computed", note))
    verdict = EXACT if value > threshold else CONTRADICTED
    return Evidence(value, value, value, n, math.nan, verdict, "closed form", threshold, note)


def paired_binary(first_only: int, second_only: int, note: str = "") -> Evidence:
    """Paired yes/no outcomes (e.g. an attack succeeds on the same point against two defences):
    McNemar's exact test, a binomial test on the discordant pairs (scipy.stats.binomtest).
    The effect is the share of discordant pairs won by the first, minus 1/2, with its 95 %
    Clopper-Pearson interval; positive means the first succeeds more often."""
    n = int(first_only + second_only)
    if n == 0:
        return Evidence(math.nan, math.nan, math.nan, 0, math.nan, INCONCLUSIVE, "McNemar (exact)", 0.0,
                        _join("no discordant pair", note))
    result = stats.binomtest(int(first_only), n, 0.5, alternative="greater")
    low, high = stats.binomtest(int(first_only), n, 0.5).proportion_ci(LEVEL)
    effect, low, high = first_only / n - 0.5, float(low) - 0.5, float(high) - 0.5
    # pairs, not versions, are the unit here; n >= MIN_VERSIONS still gates a verdict
    return Evidence(effect, low, high, n, float(result.pvalue), _verdict(low, high, 0.0, n), "McNemar (exact)", 0.0,
                    note)


def not_converged(evidence: Evidence, note: str) -> Evidence:
    """The same numbers, but inconclusive: the models it reads did not converge."""
    return Evidence(**{**asdict(evidence), "verdict": INCONCLUSIVE, "note": _join(note, evidence.note)})


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN): p_(i) * (m - i + 1), made monotone,
    capped at 1, over the m finite p-values."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, p[index] * (m - rank)))
        adjusted[index] = running
    return adjusted


def welch_interval(mean_1: float, sd_1: float, n_1: int, mean_2: float, sd_2: float, n_2: int):
    """95 % Welch interval of mean_1 - mean_2 from summary statistics (the paper reports only
    mean +- sd over its 5 versions): scipy's ttest_ind on two pseudo-samples with exactly those
    means, standard deviations and sizes, which is all Welch's interval depends on.
    Returns (low, high), NaN where a sample has fewer than 2 values or no finite sd."""
    if min(n_1, n_2) < 2 or not all(math.isfinite(v) for v in (mean_1, sd_1, mean_2, sd_2)):
        return math.nan, math.nan
    result = stats.ttest_ind(_pseudo_sample(mean_1, sd_1, n_1), _pseudo_sample(mean_2, sd_2, n_2), equal_var=False)
    low, high = result.confidence_interval(LEVEL)
    return float(low), float(high)


def _pseudo_sample(mean: float, sd: float, n: int) -> np.ndarray:
    base = np.arange(n, dtype=float)
    base = (base - base.mean()) / base.std(ddof=1)       # mean 0, sample sd 1
    return mean + sd * base
