"""Every claim of the paper that our results can test, scored with its evidence: tables/claims.csv.

A claim becomes one number per data version (for UCI, per split), each version's selected
model(s) being one observation, paired wherever the models compared saw the same data and
oriented so that a positive value means "as the paper claims"; report.evidence turns those
numbers into an effect, a 95 % interval, a one-sided p-value and a verdict (supported,
contradicted, inconclusive, exact).  A claim that reads models that did not converge
(vaefail.convergence) is inconclusive whatever its interval says.

One row per claim: `claim` (our wording), `section` (the part of the paper, for grouping),
`source` (where the paper makes it), `measured` (the numbers behind it, mean over versions),
then `effect, ci_low, ci_high, n, p, threshold, test, verdict, note` and `p_holm` (Holm's
step-down adjustment over every claim with a p-value).  The thresholds that turn a claim
into an inequality are named below, with the reason for each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import grid
from ..catalogue import (APPENDIX_K_POINTS, COLLAPSE_TABLE, DATASET_TITLES, DISENTANGLEMENT_MODEL_ROWS,
                         DISENTANGLEMENT_VERSIONS, ELBO, LOG_PX, METHOD_TITLES, MIG, claim_inputs,
                         disentanglement_row)
from ..criteria import (ATTACK_BUDGET_IN_SIGMA, COLLAPSED_FRACTION, EQUAL_LOG_PX, K_MARGIN, LARGE_PORTION,
                        NO_BETTER_MARGIN)
from ..files import read_csv, write_bytes
from . import evidence as E
from .tables import decimals

COLUMNS = ["claim", "section", "source", "measured", "effect", "ci_low", "ci_high", "n", "p", "p_holm",
           "threshold", "test", "verdict", "note"]
SECTIONS = ("Section 2: Theorems 1-2, Table 1", "Section 3: representations (Table 2, appendices F, K)",
            "Appendix G: semi-supervised synthetic (Tables 3-4, Figures 2, 18)", "Section 3: UCI (Tables 5-6)")
S2, S3, SG, SU = SECTIONS
# The data sets on which the paper says condition (1) holds (appendix H: all but the Circle).
CONDITION_1_DATASETS = ("figure-8", "absolute-value", "clusters", "spiral-dots")
# The paper's training lengths (appendix J), for the notes on unconverged models.
PAPER_EPOCHS = {"uci": 20000}


@dataclass
class Claims:
    rows: list

    def add(self, claim: str, section: str, source: str, measured: str, ev: E.Evidence) -> None:
        self.rows.append({"claim": claim, "section": section, "source": source, "measured": measured,
                          **ev.as_row()})

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows).reindex(columns=[c for c in COLUMNS if c != "p_holm"])
        frame["p_holm"] = E.holm(frame["p"].to_numpy(dtype=float)) if len(frame) else []
        return frame[COLUMNS]


# --- per-version frames -------------------------------------------------------------------------
def by_version(rows: pd.DataFrame, column: str, key: str = "method") -> pd.DataFrame:
    """One row per version, one column per `key` value (e.g. method): the pairing of every
    comparison below.  Each (version, key) must be unique."""
    if rows.empty:
        return pd.DataFrame()
    return rows.pivot_table(index="version", columns=key, values=column, aggfunc="first", dropna=False)


def _column(frame: pd.DataFrame, name) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)


def _subset(selected: pd.DataFrame, dataset: str, **equal) -> pd.DataFrame:
    rows = selected[selected["dataset"] == dataset] if len(selected) else selected
    for key, value in equal.items():
        rows = rows[rows[key] == value]
    return rows


def unconverged(rows: pd.DataFrame, experiment: str, settings: dict) -> str:
    """'' when every model in `rows` converged, else the note that makes a claim inconclusive."""
    if rows.empty or "converged" not in rows:
        return ""
    flags = rows["converged"]
    if flags.isna().all():
        return ""
    bad = int((flags == False).sum())  # noqa: E712 (NaN: undecided, counts as neither)
    if bad == 0:
        return ""
    epochs = grid.experiment_epochs(settings, experiment)
    paper = PAPER_EPOCHS.get(experiment)
    length = f"{epochs} of {paper:,} epochs".replace(",", " ") if paper and epochs < paper else f"{epochs} epochs"
    return f"not converged: {bad} of {len(rows)} selected models ({length})"


def _gate(ev: E.Evidence, note: str) -> E.Evidence:
    return E.not_converged(ev, note) if note else ev


# --- Section 2: Table 1, Theorems 1 and 2 --------------------------------------------------------
def table1_claims(claims: Claims, selected: pd.DataFrame, settings: dict) -> None:
    """On Figure-8 and Clusters, IWAE learns p(x) better than LIN, which beats the VAE (section
    2.2, Table 1): paired differences of the test kNN statistic (lower is better)."""
    for dataset in ("figure-8", "clusters"):
        rows = _subset(selected, dataset)
        if rows.empty:
            continue
        knn = by_version(rows, "knn_test")
        iwae, lin, vae = (_column(knn, m) for m in ("iwae", "lin", "vae"))
        title, note = DATASET_TITLES[dataset], unconverged(rows, "unsupervised", settings)
        measured = f"kNN IWAE {decimals(iwae.mean())}, LIN {decimals(lin.mean())}, VAE {decimals(vae.mean())}"
        for better, worse, b, w, source in (("IWAE", "the VAE", iwae, vae, "Table 1, Figure 1"),
                                            ("IWAE", "LIN", iwae, lin, "Table 1"),
                                            ("LIN", "the VAE", lin, vae, "Table 1")):
            claims.add(f"{title}: {better} learns $p(x)$ better than {worse}", S2, source, measured,
                       _gate(E.paired_t(w - b), note))


def theorem1_claims(claims: Claims, shares: pd.DataFrame, selected: pd.DataFrame, settings: dict) -> None:
    """Theorem 1's condition (1) and consequence (A): where the true posterior is far from a MFG
    for a large portion of x's, the VAE's decoder has simpler posteriors (fewer test points with
    mass off the main mode); IWAE keeps more of them.  The Circle is the paper's control
    (condition (1) fails there)."""
    if shares.empty:
        return
    for dataset in dict.fromkeys(shares["dataset"]):
        share = by_version(shares[shares["dataset"] == dataset], "share", key="model")
        truth, vae, iwae, lin = (_column(share, m) for m in ("truth", "vae", "iwae", "lin"))
        title = DATASET_TITLES[dataset]
        measured = (f"share of test points with > threshold mass off the main mode: truth {decimals(truth.mean(), 2)}, "
                    f"VAE {decimals(vae.mean(), 2)}, LIN {decimals(lin.mean(), 2)}, IWAE {decimals(iwae.mean(), 2)}")
        if dataset not in CONDITION_1_DATASETS:
            claims.add(f"{title}: condition (1) of Theorem 1 fails (true posteriors far from Gaussian for "
                       f"$<$ {LARGE_PORTION:g} of $x$)", S2, "Theorem 1, appendix E", measured,
                       E.paired_t(LARGE_PORTION - truth))
            continue
        note = unconverged(_subset(selected, dataset), "unsupervised", settings)
        claims.add(f"{title}: condition (1) of Theorem 1 holds (true posteriors far from Gaussian for "
                   f"$\\geq$ {LARGE_PORTION:g} of $x$)", S2, "Theorem 1, appendix H", measured,
                   E.paired_t(truth - LARGE_PORTION))
        claims.add(f"{title}: the VAE's decoder has simpler posteriors than the truth's", S2,
                   "Theorem 1, Figures 6-14", measured, _gate(E.paired_t(truth - vae), note))
        claims.add(f"{title}: IWAE's decoder keeps more non-Gaussian posteriors than the VAE's", S2,
                   "Theorem 1, Figures 6-14", measured, _gate(E.paired_t(iwae - vae), note))


def theorem2_claims(claims: Claims, unsupervised: pd.DataFrame, noise: pd.DataFrame, settings: dict) -> None:
    """Section 2.2: on Spiral-Dots (true sigma^2 = 0.01) the ELBO over-estimates sigma^2, at the
    best fixed-sigma^2 VAE by eq. 5, and more so when sigma^2 is learned jointly."""
    dataset = settings["noise_dataset"]
    if dataset != "spiral-dots":
        return
    fixed_rows = _subset(unsupervised, dataset, method="vae")
    fixed = by_version(fixed_rows, "sigma2_closed_form_mean").get("vae", pd.Series(dtype=float))
    joint = by_version(_subset(noise, dataset, method="vae"), "sigma2_mean").get("vae", pd.Series(dtype=float))
    truth = 0.01
    note = unconverged(pd.concat([fixed_rows, _subset(noise, dataset)]), "noise", settings)
    claims.add("Spiral-Dots: eq. 5 at the best fixed-$\\sigma^2$ VAE over-estimates $\\sigma^2=0.01$", S2,
               "Theorem 2, section 2.2", f"sigma^2 by eq. 5: {decimals(fixed.mean(), 4)}",
               _gate(E.paired_t(fixed - truth), note))
    joint, fixed = joint.align(fixed)
    claims.add("Spiral-Dots: learning $\\sigma^2$ jointly over-estimates it more", S2, "Theorem 2, section 2.2",
               f"joint {decimals(joint.mean(), 4)} vs eq. 5 {decimals(fixed.mean(), 4)}",
               _gate(E.paired_t(joint - fixed), note))


# --- Section 3: Table 2, appendices F and K -----------------------------------------------------
def table2_claims(claims: Claims, latent: pd.DataFrame, settings: dict) -> None:
    """The ELBO favours K larger than the truth (K = 1) and the average per-dimension MI falls
    as K grows; IWAE does not prefer K > 1.  Per version: the best larger K against K = 1."""
    ks = sorted(settings["latent_dims"])
    if len(ks) < 2 or ks[0] != 1:
        return
    for dataset in settings["latent_datasets"]:
        rows = _subset(latent, f"{dataset}-5d")
        if rows.empty:
            continue
        title = DATASET_TITLES[dataset]
        note = unconverged(rows, "latent", settings)
        vae, iwae = rows[rows["method"] == "vae"], rows[rows["method"] == "iwae"]
        elbo = by_version(vae, "objective_test", key="latent_dim")
        mi = by_version(vae, "mi_test_mean", key="latent_dim")
        bound = by_version(iwae, "objective_test", key="latent_dim")
        larger = [k for k in ks[1:]]
        text = lambda frame: ", ".join(f"K={k}: {decimals(-_column(frame, k).mean())}" for k in ks)  # noqa: E731
        claims.add(f"{title}: the VAE's test ELBO prefers $K>1$ over the true $K=1$", S3, "Table 2",
                   f"-ELBO {text(elbo)}",
                   _gate(E.paired_t(elbo.reindex(columns=larger).max(axis=1, skipna=False) - _column(elbo, 1)), note))
        drops = pd.concat([_column(mi, a) - _column(mi, b) for a, b in zip(ks, ks[1:])], axis=1)
        claims.add(f"{title}: the VAE's average per-dimension MI falls as $K$ grows", S3, "Table 2",
                   "MI " + ", ".join(f"K={k}: {decimals(_column(mi, k).mean())}" for k in ks),
                   _gate(E.paired_t(drops.min(axis=1, skipna=False)), note))
        claims.add(f"{title}: IWAE does not prefer $K>1$ (within {K_MARGIN:g} nats)", S3, "Table 2",
                   f"-bound {text(bound)}",
                   _gate(E.paired_t(_column(bound, 1) - bound.reindex(columns=larger).max(axis=1, skipna=False),
                                    threshold=-K_MARGIN), note))


def disentanglement_claims(claims: Claims, versions: pd.DataFrame, selected: pd.DataFrame, settings: dict) -> None:
    """Appendix F: the ELBO prefers a rotated model, whose latents entangle the true ones, at equal
    p(x) (closed form); the VAE's learned latents are entangled (MIG below the true model's
    posterior means'), IWAE's less so (MIG above the VAE's), for each S."""
    if versions.empty:
        return
    truth, rotated = DISENTANGLEMENT_MODEL_ROWS["original"], DISENTANGLEMENT_MODEL_ROWS["appendix_rotation"]
    value = lambda column: by_version(versions, column, key="row")       # noqa: E731
    log_px, elbo, mig = value(LOG_PX), value(ELBO), value(MIG)
    equal = float((_column(log_px, rotated) - _column(log_px, truth)).abs().max())
    gain = _column(elbo, rotated) - _column(elbo, truth)
    measured = (f"log p(x): A {decimals(_column(log_px, truth).mean())}, AR {decimals(_column(log_px, rotated).mean())}; "
                f"ELBO: A {decimals(_column(elbo, truth).mean())}, AR {decimals(_column(elbo, rotated).mean())}")
    ev = E.exact(float(gain.min()) if equal < EQUAL_LOG_PX else -math.inf, n=len(gain),
                 note="" if equal < EQUAL_LOG_PX else f"log p(x) of A and AR differ by {equal:.2g}")
    claims.add("Appendix F: the ELBO prefers the entangled model $AR$ over the true $A$: a higher optimal "
               "mean-field ELBO at equal $p(x)$", S3, "Appendix F", measured, ev)
    vae_row = disentanglement_row("vae", 1)
    note = unconverged(selected, "disentangle", settings)
    vae, true_a = _column(mig, vae_row), _column(mig, truth)
    claims.add("Appendix F: the VAE's learned latents are entangled: their MIG is below the true model's",
               S3, "Appendix F", f"MIG of posterior means: true A {decimals(true_a.mean(), 4)}, VAE {decimals(vae.mean(), 4)}",
               _gate(E.paired_t(true_a - vae), note))
    for setting in grid.experiment_settings(settings, "disentangle"):
        if setting.method == "iwae":
            row = disentanglement_row(setting.method, setting.samples)
            iwae = _column(mig, row)
            claims.add(f"Appendix F: {row} entangles less than the VAE: its MIG is above the VAE's", S3,
                       "Appendix F", f"MIG: {row} {decimals(iwae.mean(), 4)}, VAE {decimals(vae.mean(), 4)}",
                       _gate(E.paired_t(iwae - vae), note))


def appendix_k_claims(claims: Claims, denoising: pd.DataFrame, attack_points: pd.DataFrame,
                      latent: pd.DataFrame, noise: pd.DataFrame, settings: dict) -> None:
    """Appendix K: the ELBO prefers K larger and sigma^2 smaller than the truth; such a model
    explains noise by z, so its projection f(mu(x)) removes less noise, and a manifold-projection
    defence built on it fails more often than one built on the true manifold.  With K at the
    truth, Theorem 2's biased sigma^2 degrades the de-noising too (Spiral-Dots)."""
    if denoising.empty:
        return
    for dataset in dict.fromkeys(denoising["dataset"]):
        rows = denoising[(denoising["dataset"] == dataset) & (denoising["method"] == "vae")]
        title = DATASET_TITLES[dataset.removesuffix("-5d")]
        if dataset.endswith("-5d"):
            rows = rows[rows["latent_dim"].notna()]
            if rows["latent_dim"].nunique() < 2:
                continue
            k_low, k_high = int(rows["latent_dim"].min()), int(rows["latent_dim"].max())
            note = unconverged(_subset(latent, dataset, method="vae"), "latent", settings)
            ratio = by_version(rows, "ratio", key="latent_dim")
            sigma2 = by_version(rows, "sigma2_learned", key="latent_dim")
            sigma2_true = float(rows["sigma2_true"].iloc[0])
            claims.add(f"{title} (5-D): the VAE with $K={k_high}$ learns a smaller $\\sigma^2$ than the truth", S3,
                       "Appendix K, section 3",
                       f"sigma^2: truth {decimals(sigma2_true, 4)}, VAE K={k_low} {decimals(_column(sigma2, k_low).mean(), 4)}, "
                       f"K={k_high} {decimals(_column(sigma2, k_high).mean(), 4)}",
                       _gate(E.paired_t(sigma2_true - _column(sigma2, k_high)), note))
            claims.add(f"{title} (5-D): the VAE with $K={k_high}$ removes less noise by projection than with the "
                       f"true $K={k_low}$", S3, "Appendix K, Figure 5b",
                       f"noise left E|M(x)-f(z)|^2 / D sigma^2: K={k_low} {decimals(_column(ratio, k_low).mean(), 2)}, "
                       f"K={k_high} {decimals(_column(ratio, k_high).mean(), 2)}",
                       _gate(E.paired_t(_column(ratio, k_high) - _column(ratio, k_low)), note))
            model = rows[rows["latent_dim"] == k_high]["model"].iloc[0]
            claims.add(f"{title} (5-D): projecting on the $K={k_high}$ VAE's manifold defends worse than on the "
                       "true manifold", S3, "Appendix K, Figure 5",
                       *_attack_evidence(attack_points, dataset, model, note))
        else:
            learned = rows[rows["model"].str.contains("learned")]
            fixed = rows[rows["model"].str.contains("fixed")]
            if learned.empty or fixed.empty:
                continue
            note = unconverged(pd.concat([_subset(noise, dataset), _subset(latent, dataset)]), "noise", settings)
            a = learned.set_index("version")
            b = fixed.set_index("version")
            claims.add(f"{title}: with $\\sigma^2$ learned by the ELBO (Theorem 2) the projection removes less "
                       "noise than with the true $\\sigma^2$", S3, "Appendix K, Theorem 2",
                       f"sigma^2 learned {decimals(a['sigma2_learned'].mean(), 4)} (truth {decimals(a['sigma2_true'].mean(), 4)}); "
                       f"noise left: learned {decimals(a['ratio'].mean(), 2)}, fixed {decimals(b['ratio'].mean(), 2)}",
                       _gate(E.paired_t(a["ratio"] - b["ratio"]), note))


def _attack_evidence(points: pd.DataFrame, dataset: str, model: str, note: str) -> tuple[str, E.Evidence]:
    """Attack success at ATTACK_BUDGET_IN_SIGMA on the same test points behind the model's and
    the true manifold's projection: paired outcomes, McNemar's exact test."""
    truth_model = "truth (nearest point)"
    rows = points[(points["dataset"] == dataset)] if len(points) else points
    mine = rows[rows["model"] == model].set_index("point") if len(rows) else rows
    theirs = rows[rows["model"] == truth_model].set_index("point") if len(rows) else rows
    if len(mine) == 0 or len(theirs) == 0:
        return "no attack results", E.paired_t([], note="no attack results")
    both = mine.merge(theirs, left_index=True, right_index=True, suffixes=("_model", "_truth"))
    both = both[both["correct_model"].astype(bool) & both["correct_truth"].astype(bool)]
    budget = ATTACK_BUDGET_IN_SIGMA
    flipped_model = both["minimal_budget_in_sigma_model"] <= budget
    flipped_truth = both["minimal_budget_in_sigma_truth"] <= budget
    measured = (f"attack success at |eta| = {budget:g} sigma on {len(both)} points classified correctly behind "
                f"both: K VAE {decimals(flipped_model.mean(), 2)}, true manifold {decimals(flipped_truth.mean(), 2)}")
    ev = E.paired_binary(int((flipped_model & ~flipped_truth).sum()), int((flipped_truth & ~flipped_model).sum()))
    return measured, _gate(ev, note)


# --- Appendix G: Tables 3-4, Figures 2 and 18 ---------------------------------------------------
def semisupervised_claims(claims: Claims, selected: pd.DataFrame, settings: dict) -> None:
    """Discrete Semi-Circle: the VAE learns p(x) better than IWAE, IWAE learns each p(x|y) better
    than VAE and LIN; Continuous: IWAE learns p(x) better, but p(x|y) no better (appendix G).
    On the paper's z-posterior q(z|x) in U (the first of ss_unlabelled_posteriors)."""
    variant = settings["ss_unlabelled_posteriors"][0]
    for dataset in settings["ss_datasets"]:
        rows = _subset(selected, dataset, unlabelled_posterior=variant)
        if rows.empty:
            continue
        title, note = DATASET_TITLES[dataset], unconverged(rows, "semisupervised", settings)
        knn = by_version(rows, "knn_test")
        iwae, lin, vae = (_column(knn, m) for m in ("iwae", "lin", "vae"))
        cohort_columns = sorted(c for c in rows.columns if c.startswith("knn_cohort_test_") and c[-1].isdigit()
                                and rows[c].notna().any())
        cohorts = {m: pd.concat([_column(by_version(rows, c), m) for c in cohort_columns], axis=1)
                   for m in ("iwae", "lin", "vae")}
        if dataset == "discrete-semicircle":
            claims.add(f"{title}: the VAE learns $p(x)$ better than IWAE", SG, "Table 3, appendix G",
                       f"kNN VAE {decimals(vae.mean())} vs IWAE {decimals(iwae.mean())}", _gate(E.paired_t(iwae - vae), note))
            # per version the smallest margin over cohorts and the two other methods: "each p(x|y)"
            margins = np.concatenate([cohorts[o].to_numpy() - cohorts["iwae"].to_numpy() for o in ("vae", "lin")], axis=1)
            worst = pd.Series(margins.min(axis=1), index=knn.index)
            claims.add(f"{title}: IWAE learns each $p(x|y)$ better than VAE and LIN", SG, "Table 4, appendix G",
                       "cohort kNN (mean over cohorts): " + ", ".join(
                           f"{METHOD_TITLES[m]} {decimals(np.nanmean(cohorts[m].to_numpy()))}" for m in ("iwae", "vae", "lin")),
                       _gate(E.paired_t(worst), note))
        else:
            claims.add(f"{title}: IWAE learns $p(x)$ better than VAE and LIN", SG, "Table 3, appendix G",
                       f"kNN IWAE {decimals(iwae.mean())}, VAE {decimals(vae.mean())}, LIN {decimals(lin.mean())}",
                       _gate(E.paired_t(pd.concat([vae, lin], axis=1).min(axis=1, skipna=False) - iwae), note))
            means = {m: frame.mean(axis=1) for m, frame in cohorts.items()}
            best_other = pd.concat([means["vae"], means["lin"]], axis=1).min(axis=1, skipna=False)
            claims.add(f"{title}: IWAE learns $p(x|y)$ no better than VAE and LIN (within {NO_BETTER_MARGIN:g})",
                       SG, "Table 4, appendix G",
                       "cohort kNN (mean over cohorts): " + ", ".join(
                           f"{METHOD_TITLES[m]} {decimals(means[m].mean())}" for m in ("iwae", "vae", "lin")),
                       _gate(E.paired_t(means["iwae"] - best_other, threshold=-NO_BETTER_MARGIN), note))


def separation_claims(claims: Claims, separation: pd.DataFrame, selected: pd.DataFrame, settings: dict) -> None:
    """Figure 2 (discrete) and Figure 18 (continuous): the semi-supervised VAE collapses f(y, z)
    to one function for every y; IWAE does not (Figure 2).  Per version against the truth's
    separation."""
    if separation.empty:
        return
    truth = separation[separation["model"] == "truth"].groupby(["dataset", "version"])["separation"].first()
    learned = separation[separation["model"] != "truth"]
    for (dataset, variant), rows in learned.groupby(["dataset", "unlabelled_posterior"], sort=False):
        sep = by_version(rows, "separation", key="model")
        t = truth.loc[dataset].reindex(sep.index)
        vae, iwae = _column(sep, "vae"), _column(sep, "iwae")
        which = "$q(z|x)$ in U, as the paper" if variant == "x" else "$q(z|x,y)$ in U, as Kingma et al."
        figure = "Figure 2" if dataset == "discrete-semicircle" else "Figure 18"
        note = unconverged(_subset(selected, dataset, unlabelled_posterior=variant), "semisupervised", settings)
        measured = (f"separation: truth {decimals(t.mean(), 2)}, VAE {decimals(vae.mean(), 2)}, IWAE {decimals(iwae.mean(), 2)} "
                    f"(collapsed below {COLLAPSED_FRACTION:g} x truth)")
        claims.add(f"{DATASET_TITLES[dataset]} ({which}): the VAE collapses $f(y,z)$ to one function of $z$", SG,
                   figure, measured, _gate(E.paired_t(COLLAPSED_FRACTION * t - vae), note))
        if dataset == "discrete-semicircle":
            claims.add(f"{DATASET_TITLES[dataset]} ({which}): IWAE keeps $f(y,z)$ apart for different $y$", SG,
                       figure, measured, _gate(E.paired_t(iwae - COLLAPSED_FRACTION * t), note))


def collapse_claims(claims: Claims, collapse: pd.DataFrame, settings: dict) -> None:
    """Figure 2's mechanism ("at global optima"): the VAE objective J prefers the collapsed f.
    Per version, the mean over (alpha, gamma) of J(collapsed restart) - J(separated restart),
    where the two restarts of one setting and version ended on either side of the collapse
    threshold; J estimated on the validation set (analyses.collapse)."""
    if collapse.empty:
        return
    for (dataset, variant, method), rows in collapse.groupby(["dataset", "unlabelled_posterior", "method"], sort=False):
        pairs = rows.dropna(subset=["j_gap"])
        per_version = pairs.groupby("version")["j_gap"].mean()
        which = "$q(z|x)$ in U" if variant == "x" else "$q(z|x,y)$ in U"
        worst_se = float(pairs["j_gap_se"].max()) if len(pairs) else math.nan
        measured = (f"{len(pairs)} (setting, version) pairs of a collapsed and a separated restart; mean J gap "
                    f"{decimals(pairs['j_gap'].mean())} nats/point (largest Monte-Carlo se {decimals(worst_se, 4)})")
        note = "" if len(pairs) else "no setting and version had both a collapsed and a separated restart"
        claims.add(f"{DATASET_TITLES[dataset]} ({which}): the {METHOD_TITLES[method]} objective $J$ prefers the "
                   "collapsed $f(y,z)$ to the separated one", SG, "Figure 2, section 3 (global optima)", measured,
                   E.paired_t(per_version, note=note))


# --- Section 3, UCI: Table 5 ----------------------------------------------------------------------
def uci_claims(claims: Claims, selected: pd.DataFrame, settings: dict) -> None:
    """Table 5: IWAE approximates p(x) better than the VAE on Diabetic Retinopathy and
    Contraceptive, not on Titanic.  Paired over splits."""
    for dataset, iwae_better in (("diabetic-retinopathy", True), ("contraceptive", True), ("titanic", False)):
        rows = _subset(selected, dataset)
        if rows.empty:
            continue
        knn = by_version(rows, "knn_test")
        iwae, vae = _column(knn, "iwae"), _column(knn, "vae")
        better, worse = ("IWAE", "the VAE") if iwae_better else ("the VAE", "IWAE")
        claims.add(f"{DATASET_TITLES[dataset]}: {better} learns $p(x)$ better than {worse}", SU, "Table 5",
                   f"kNN IWAE {decimals(iwae.mean())} vs VAE {decimals(vae.mean())}",
                   _gate(E.paired_t(vae - iwae if iwae_better else iwae - vae), unconverged(rows, "uci", settings)))


# --- the table -----------------------------------------------------------------------------------
def score_claims(settings: dict, frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All claims from the selected models (frames 'selected/<experiment>') and the analyses'
    per-version tables (frames '<table>'); a missing frame leaves its claims out."""
    empty = pd.DataFrame()
    get = lambda name: frames.get(name, empty)   # noqa: E731
    sel = lambda experiment: get(f"selected/{experiment}")   # noqa: E731
    claims = Claims([])
    table1_claims(claims, sel("unsupervised"), settings)
    theorem1_claims(claims, get("theorem1"), sel("unsupervised"), settings)
    theorem2_claims(claims, sel("unsupervised"), sel("noise"), settings)
    table2_claims(claims, sel("latent"), settings)
    disentanglement_claims(claims, get(DISENTANGLEMENT_VERSIONS), sel("disentangle"), settings)
    appendix_k_claims(claims, get("appendix_k_denoising"), get(APPENDIX_K_POINTS), sel("latent"),
                      sel("noise"), settings)
    semisupervised_claims(claims, sel("semisupervised"), settings)
    separation_claims(claims, get("separation"), sel("semisupervised"), settings)
    collapse_claims(claims, get(COLLAPSE_TABLE), settings)
    uci_claims(claims, sel("uci"), settings)
    return claims.frame()


def write_claims(settings: dict, outdir: str, out_csv: str) -> None:
    outdir = Path(outdir)
    frames = {}
    for path in claim_inputs(settings):
        if (outdir / path).exists():
            key = path.removesuffix(".csv").removeprefix("tables/")
            frames[key] = read_csv(outdir / path)
    write_bytes(out_csv, score_claims(settings, frames).to_csv(index=False).encode())


# --- stability between two runs ------------------------------------------------------------------
DECIDED = (E.SUPPORTED, E.CONTRADICTED, E.EXACT)


def compare_verdicts(first: pd.DataFrame, second: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Two claims tables of the same configuration with different base seeds: how many claims
    each decides, how many changed class at all, and how many flipped from supported to
    contradicted or back (which no claim should).  Returns the counts and the changed rows."""
    columns = ["claim", "verdict", "effect", "ci_low", "ci_high", "n"]
    both = first[columns].merge(second[columns], on="claim", how="outer", suffixes=("_first", "_second"))
    both = both.set_index("claim")
    changed = both[both["verdict_first"] != both["verdict_second"]]
    flips = changed[changed["verdict_first"].isin([E.SUPPORTED, E.CONTRADICTED])
                    & changed["verdict_second"].isin([E.SUPPORTED, E.CONTRADICTED])]
    counts = {"claims": len(both),
              "decided_first": int(both["verdict_first"].isin(DECIDED).sum()),
              "decided_second": int(both["verdict_second"].isin(DECIDED).sum()),
              "changed_class": len(changed), "flipped": len(flips)}
    for verdict in E.VERDICTS:
        counts[f"{verdict}_first"] = int((both["verdict_first"] == verdict).sum())
        counts[f"{verdict}_second"] = int((both["verdict_second"] == verdict).sum())
    return counts, changed.reset_index()


def _evidence(effect, low, high, n) -> str:
    """'effect [low, high] n=N' of one claim, as compare-claims prints it."""
    if pd.isna(effect):
        return ""
    interval = "" if pd.isna(low) else f" [{low:.3g}, {high:.3g}]"
    return f"{effect:.3g}{interval} n={int(n)}" if not pd.isna(n) else f"{effect:.3g}{interval}"


def write_verdict_comparison(first_csv: str, second_csv: str, out_csv: str | None = None) -> dict:
    counts, changed = compare_verdicts(read_csv(first_csv), read_csv(second_csv))
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    if len(changed):
        # each run's evidence beside its verdict: a class change with overlapping intervals is
        # the noise of a claim near its threshold, not a contradiction
        shown = pd.DataFrame({"claim": changed["claim"]})
        for run in ("first", "second"):
            shown[run] = [f"{verdict} {_evidence(effect, low, high, n)}" for verdict, effect, low, high, n in
                          zip(*(changed[f"{c}_{run}"] for c in ("verdict", "effect", "ci_low", "ci_high", "n")))]
        print(shown.to_string(index=False))
    if out_csv:
        write_bytes(out_csv, changed.to_csv(index=False).encode())
    return counts
