"""Claims scored with their evidence (report.evidence, report.claims) and the convergence rule
(vaefail.convergence), on hand-made per-version frames whose answer is known."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vaefail.convergence import check_epochs, converged, tail_gain
from vaefail.report import claims as C
from vaefail.report import evidence as E

SETTINGS = {"epochs": 100, "uci_epochs": 100, "ss_epochs": 100, "linear_gaussian": {"epochs": 100},
            "ss_unlabelled_posteriors": ["x", "xy"], "ss_datasets": ["discrete-semicircle"],
            "latent_dims": [1, 2, 3], "latent_datasets": ["figure-8"], "noise_dataset": "spiral-dots"}


def selected(knn: dict[str, list[float]], dataset="figure-8", converged_flags=None) -> pd.DataFrame:
    """A selection table: one row per (method, version) with the given test kNN statistics."""
    rows = []
    for method, values in knn.items():
        for version, value in enumerate(values):
            rows.append({"dataset": dataset, "method": method, "version": version, "knn_test": value,
                         "converged": True if converged_flags is None else converged_flags[version]})
    return pd.DataFrame(rows)


def table1(frame: pd.DataFrame) -> pd.DataFrame:
    claims = C.Claims([])
    C.table1_claims(claims, frame, SETTINGS)
    return claims.frame().set_index("claim")


IWAE_VS_VAE = "Figure-8: IWAE learns $p(x)$ better than the VAE"


# --- verdicts --------------------------------------------------------------------------------
def test_a_large_consistent_effect_is_supported_and_its_reverse_contradicted():
    vae = [5.0, 6.1, 5.4, 5.8, 6.3]
    iwae = [1.0, 1.2, 0.9, 1.4, 1.1]
    row = table1(selected({"vae": vae, "iwae": iwae, "lin": vae})).loc[IWAE_VS_VAE]
    assert row["verdict"] == E.SUPPORTED and row["ci_low"] > 0 and row["n"] == 5 and row["p"] < 0.001
    reverse = table1(selected({"vae": iwae, "iwae": vae, "lin": vae})).loc[IWAE_VS_VAE]
    assert reverse["verdict"] == E.CONTRADICTED and reverse["ci_high"] < 0 and reverse["p"] > 0.99


def test_a_positive_but_noisy_effect_is_inconclusive():
    row = table1(selected({"vae": [3.0, 1.0, 6.0, 0.5, 4.0], "iwae": [2.0, 2.5, 1.0, 3.0, 3.5],
                           "lin": [1.0] * 5})).loc[IWAE_VS_VAE]
    assert row["effect"] > 0 and row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == E.INCONCLUSIVE


def test_two_versions_never_decide():
    row = table1(selected({"vae": [9.0, 9.1], "iwae": [1.0, 1.0], "lin": [5.0, 5.0]})).loc[IWAE_VS_VAE]
    assert row["n"] == 2 and row["verdict"] == E.INCONCLUSIVE and "no decision" in row["note"]


def test_a_claim_on_unconverged_models_is_inconclusive_with_the_note():
    frame = selected({"vae": [5.0, 6.1, 5.4], "iwae": [1.0, 1.2, 0.9], "lin": [3.0, 3.0, 3.0]},
                     converged_flags=[True, False, True])
    row = table1(frame).loc[IWAE_VS_VAE]
    assert row["verdict"] == E.INCONCLUSIVE and row["ci_low"] > 0
    assert "not converged: 3 of 9 selected models (100 epochs)" in row["note"]
    uci = selected({"vae": [5.0, 6.1, 5.4], "iwae": [1.0, 1.2, 0.9]}, dataset="titanic",
                   converged_flags=[False, False, False])
    claims = C.Claims([])
    C.uci_claims(claims, uci, SETTINGS)
    note = claims.frame()["note"].iloc[0]
    assert "not converged" in note and "100 of 20 000 epochs" in note


# --- pairing ------------------------------------------------------------------------------------
def test_pairing_is_by_version():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 3, 6)                      # version effects shared by both methods
    knn = {"vae": list(base + 1.0 + rng.normal(0, 0.1, 6)), "iwae": list(base + rng.normal(0, 0.1, 6)),
           "lin": list(base)}
    frame = selected(knn)
    paired = table1(frame).loc[IWAE_VS_VAE]
    assert paired["verdict"] == E.SUPPORTED         # the version effects cancel in the pairs
    # reordering the rows (all methods together) changes nothing
    assert table1(frame.sample(frac=1.0, random_state=1)).loc[IWAE_VS_VAE].equals(paired)
    # relabelling the versions of all methods together changes nothing either
    relabel = {v: (v + 2) % 6 for v in range(6)}
    assert table1(frame.assign(version=frame["version"].map(relabel))).loc[IWAE_VS_VAE][["effect", "ci_low", "ci_high"]] \
        .astype(float).round(12).equals(paired[["effect", "ci_low", "ci_high"]].astype(float).round(12))
    # shuffling one method's version labels breaks the pairs: a different interval
    shuffled = frame.copy()
    vae = shuffled["method"] == "vae"
    shuffled.loc[vae, "version"] = shuffled.loc[vae, "version"].to_numpy()[[1, 0, 3, 2, 5, 4]]
    broken = table1(shuffled).loc[IWAE_VS_VAE]
    assert broken["ci_high"] - broken["ci_low"] > 5 * (paired["ci_high"] - paired["ci_low"])


def test_the_interval_and_p_value_are_scipys():
    d = np.array([0.3, 1.2, -0.4, 0.9, 0.5, 1.1])
    ev = E.paired_t(d)
    reference = stats.ttest_1samp(d, 0.0)
    low, high = reference.confidence_interval(0.95)
    assert (ev.ci_low, ev.ci_high) == pytest.approx((low, high), rel=1e-12)
    assert ev.p == pytest.approx(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue, rel=1e-12)
    # a threshold moves the test, not the interval of the mean
    shifted = E.paired_t(d, threshold=-0.5)
    assert (shifted.ci_low, shifted.ci_high) == pytest.approx((low, high)) and shifted.p < ev.p


def test_welch_interval_from_summaries_equals_scipy_on_the_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.5, 4), rng.normal(0.2, 1.5, 5)
    low, high = E.welch_interval(a.mean(), a.std(ddof=1), 4, b.mean(), b.std(ddof=1), 5)
    reference = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((reference.low, reference.high), rel=1e-10)


def test_holm_adjusts_step_down_and_keeps_nan():
    adjusted = E.holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adjusted[2]) and adjusted[3] == pytest.approx(0.06)


def test_exact_and_paired_binary_verdicts():
    assert E.exact(0.2).verdict == E.EXACT and E.exact(-0.2).verdict == E.CONTRADICTED
    many = E.paired_binary(40, 5)
    assert many.verdict == E.SUPPORTED and many.p == pytest.approx(stats.binomtest(40, 45, 0.5, "greater").pvalue)
    assert E.paired_binary(20, 20).verdict == E.INCONCLUSIVE and E.paired_binary(0, 0).n == 0


# --- convergence --------------------------------------------------------------------------------
def test_a_flat_tail_converges_and_a_rising_one_does_not():
    epochs = check_epochs(100)
    assert epochs == list(range(5, 101, 5))
    flat = [-3.0 + 2.0 * (1 - math.exp(-e / 10)) for e in epochs]        # levelled off long before the end
    rising = [-3.0 + 0.02 * e for e in epochs]                           # still gaining 0.1 per 5 epochs
    assert converged(epochs, flat, 100) is True and tail_gain(epochs, flat, 100) < 0.01
    assert converged(epochs, rising, 100) is False
    # a tail that got worse has converged (it no longer improves on the best before it)
    assert converged(epochs, [*flat[:-2], flat[-3] - 0.5, flat[-3] - 0.6], 100) is True
    assert converged([100], [1.0], 100) is None                            # nothing before the tail


def test_comparing_two_runs_counts_decided_claims_class_changes_and_flips():
    first = pd.DataFrame({"claim": list("abcd"), "verdict": ["supported", "contradicted", "inconclusive", "exact"],
                          "effect": 1.0, "ci_low": 0.5, "ci_high": 1.5, "n": 5})
    second = first.assign(verdict=["contradicted", "inconclusive", "supported", "exact"])
    counts, changed = C.compare_verdicts(first, second)
    assert counts["decided_first"] == 3 and counts["decided_second"] == 3
    assert counts["changed_class"] == 3 and counts["flipped"] == 1
    assert sorted(changed["claim"]) == ["a", "b", "c"]


def test_compare_claims_prints_each_runs_evidence_beside_a_changed_verdict(tmp_path, capsys):
    first = pd.DataFrame({"claim": ["a", "b"], "verdict": ["supported", "exact"], "effect": [1.0, 0.0],
                          "ci_low": [0.5, None], "ci_high": [1.5, None], "n": [5, None]})
    second = first.assign(verdict=["inconclusive", "exact"], effect=[0.4, 0.0], ci_low=[-0.1, None],
                          ci_high=[0.9, None])
    first.to_csv(tmp_path / "first.csv", index=False)
    second.to_csv(tmp_path / "second.csv", index=False)
    counts = C.write_verdict_comparison(str(tmp_path / "first.csv"), str(tmp_path / "second.csv"))
    printed = capsys.readouterr().out
    assert counts["changed_class"] == 1 and counts["flipped"] == 0
    assert "supported 1 [0.5, 1.5] n=5" in printed and "inconclusive 0.4 [-0.1, 0.9] n=5" in printed
    assert "exact" not in printed.split("\n", 1)[1]          # an unchanged claim is not listed
