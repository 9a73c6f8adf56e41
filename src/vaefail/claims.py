"""Every claim of the paper that our results can test, scored: tables/claims.csv.

One row per claim: `claim` (our wording of the paper's statement), `source` (where the
paper makes it: table, figure, theorem or appendix), `measured` (our numbers, from the
workflow's tables) and `verdict`: "holds", "does not hold", or "n/a" (the tables lack what the
claim needs, e.g. a data set left out of the configuration).  The rules that turn a claim
into an inequality are written beside each claim; the thresholds they use are named below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import appendix_f as F
from . import grid
from .catalogue import DATASET_TITLES, DISENTANGLEMENT_TABLE
from .files import read_csv, write_bytes

COLUMNS = ["claim", "source", "measured", "verdict"]
# Theorem 1's condition (1), "difficult to approximate by a MFG for a large portion of x's":
# at least this share of test points with posterior mass off the main mode.
LARGE_PORTION = 0.1
# f(y, z) has collapsed to one function of z when the label separation falls below this
# fraction of the ground truth's (Figures 2, 18: "nearly identical functions").
COLLAPSED_FRACTION = 0.25
# Appendix F's rotated models have the true model's p(x) exactly: equal up to float64 rounding.
EQUAL_LOG_PX = 1e-6


def _num(v, digits=3) -> str:
    return "--" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _value(cells: pd.DataFrame, row: str, column: str) -> float:
    hit = cells[(cells["row"] == row) & (cells["column"] == column)]
    return float(hit["mean"].iloc[0]) if len(hit) else float("nan")


class Claims:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, claim: str, source: str, measured: str, holds) -> None:
        verdict = "n/a" if holds is None else ("holds" if holds else "does not hold")
        self.rows.append({"claim": claim, "source": source, "measured": measured, "verdict": verdict})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _finite(*values) -> bool:
    return all(np.isfinite(v) for v in values)


# --- section 2: Tables 1-2, Theorems 1 and 2 --------------------------------------------------
def table1_claims(claims: Claims, t1: pd.DataFrame) -> None:
    """Section 2.2: on Figure-8 and Clusters, IWAE learns p(x) better than LIN, which
    outperforms the VAE."""
    for dataset in ("Figure-8", "Clusters"):
        iwae, lin, vae = (_value(t1, dataset, m) for m in ("IWAE", "LIN", "VAE"))
        ok = _finite(iwae, lin, vae)
        measured = f"kNN IWAE {_num(iwae)}, LIN {_num(lin)}, VAE {_num(vae)}"
        claims.add(f"{dataset}: IWAE learns $p(x)$ better than the VAE", "Table 1, Figure 1", measured,
                   iwae < vae if ok else None)
        claims.add(f"{dataset}: IWAE learns $p(x)$ better than LIN", "Table 1", measured, iwae < lin if ok else None)
        claims.add(f"{dataset}: LIN learns $p(x)$ better than the VAE", "Table 1", measured, lin < vae if ok else None)


def table2_claims(claims: Claims, t2: pd.DataFrame, settings: dict) -> None:
    """Section 3: the ELBO favours K larger than the truth (K = 1); IWAE less so."""
    ks = sorted(settings["latent_dims"])
    if len(ks) < 2 or ks[0] != 1:
        return
    for dataset in ("Figure-8", "Clusters"):
        if dataset.lower() not in settings["latent_datasets"]:
            continue
        elbo = {k: _value(t2, "VAE test -ELBO", f"{dataset} K={k}") for k in ks}
        mi = {k: _value(t2, "VAE test avg_i I(x; z_i)", f"{dataset} K={k}") for k in ks}
        iw = {k: _value(t2, "IWAE test -ELBO", f"{dataset} K={k}") for k in ks}
        ok = _finite(*elbo.values())
        claims.add(f"{dataset}: the VAE's test $-$ELBO prefers $K>1$ over the true $K=1$", "Table 2",
                   ", ".join(f"K={k}: {_num(elbo[k])}" for k in ks),
                   min(elbo[k] for k in ks[1:]) < elbo[1] if ok else None)
        claims.add(f"{dataset}: the VAE's average per-dimension MI falls as $K$ grows", "Table 2",
                   ", ".join(f"K={k}: {_num(mi[k])}" for k in ks),
                   all(a > b for a, b in zip([mi[k] for k in ks], [mi[k] for k in ks[1:]]))
                   if _finite(*mi.values()) else None)
        claims.add(f"{dataset}: IWAE does not prefer $K>1$ (within 0.05 nats)", "Table 2",
                   ", ".join(f"K={k}: {_num(iw[k])}" for k in ks),
                   not (min(iw[k] for k in ks[1:]) < iw[1] - 0.05) if _finite(*iw.values()) else None)


def theorem2_claims(claims: Claims, th: pd.DataFrame, settings: dict) -> None:
    """Section 2.2: on Spiral-Dots (true sigma^2 = 0.01) the ELBO over-estimates sigma^2, at the
    best fixed-sigma^2 model by eq. 5 and more so when sigma^2 is learned jointly."""
    if settings["noise_dataset"] != "spiral-dots":
        return
    title = DATASET_TITLES["spiral-dots"]
    fixed = _value(th, "sigma^2 by eq. 5 for the best fixed-sigma^2 VAE", title)
    joint = _value(th, "sigma^2 learned jointly with (theta, phi)", title)
    claims.add("Spiral-Dots: eq. 5 at the best fixed-$\\sigma^2$ VAE over-estimates $\\sigma^2=0.01$",
               "Theorem 2, section 2.2", _num(fixed, 4), fixed > 0.01 if _finite(fixed) else None)
    claims.add("Spiral-Dots: learning $\\sigma^2$ jointly over-estimates it more", "Theorem 2, section 2.2",
               f"joint {_num(joint, 4)} vs eq. 5 {_num(fixed, 4)}",
               joint > fixed > 0.01 if _finite(fixed, joint) else None)


def theorem1_claims(claims: Claims, shares: pd.DataFrame) -> None:
    """Theorem 1, condition (1) and consequence (A) of section 2.2: where the true posterior is
    far from a MFG for a large portion of x's, the VAE learns a decoder whose posteriors are
    simpler (fewer test points with mass off the main mode); IWAE keeps more of them."""
    if shares.empty:
        return
    mean = shares.groupby(["dataset", "model"])["share"].mean()
    for dataset in dict.fromkeys(shares["dataset"]):
        truth, vae, iwae, lin = (mean.get((dataset, m), np.nan) for m in ("truth", "vae", "iwae", "lin"))
        measured = (f"share of test points with > threshold mass off the main mode: truth {_num(truth, 2)}, "
                    f"VAE {_num(vae, 2)}, LIN {_num(lin, 2)}, IWAE {_num(iwae, 2)}")
        title = DATASET_TITLES[dataset]
        if not _finite(truth):
            continue
        if truth < LARGE_PORTION:
            claims.add(f"{title}: condition (1) of Theorem 1 (true posteriors far from Gaussian for "
                       f"$\\geq$ {LARGE_PORTION:g} of $x$)", "Theorem 1", measured, False)
            continue
        claims.add(f"{title}: the VAE's decoder has simpler posteriors than the truth's", "Theorem 1, Figures 6-14",
                   measured, vae < truth if _finite(vae) else None)
        claims.add(f"{title}: IWAE's decoder keeps more non-Gaussian posteriors than the VAE's",
                   "Theorem 1, Figures 6-14", measured, iwae > vae if _finite(vae, iwae) else None)


# --- section 3 and appendix G: Tables 3-6 and Figures 2, 18 -----------------------------------
def semisupervised_claims(claims: Claims, t3: pd.DataFrame, t4: pd.DataFrame, t5: pd.DataFrame) -> None:
    def cohorts(table, row, method):
        cells = table[(table["row"] == row) & table["column"].str.startswith(method + " cohort")]
        return cells["mean"].to_numpy()

    disc, cont = DATASET_TITLES["discrete-semicircle"], DATASET_TITLES["continuous-semicircle"]
    if disc in set(t3["row"]):
        iwae, vae = _value(t3, disc, "IWAE"), _value(t3, disc, "VAE")
        claims.add("Discrete Semi-Circle: the VAE learns $p(x)$ better than IWAE", "Table 3, appendix G",
                   f"kNN VAE {_num(vae)} vs IWAE {_num(iwae)}", vae < iwae if _finite(vae, iwae) else None)
        ci, cl, cv = (cohorts(t4, disc, m) for m in ("IWAE", "LIN", "VAE"))
        claims.add("Discrete Semi-Circle: IWAE learns each $p(x|y)$ better than VAE and LIN", "Table 4, appendix G",
                   f"IWAE {', '.join(map(_num, ci))}; VAE {', '.join(map(_num, cv))}; LIN {', '.join(map(_num, cl))}",
                   bool(np.all(ci < np.minimum(cv, cl))) if len(ci) and len(ci) == len(cv) == len(cl) else None)
    if cont in set(t3["row"]):
        iwae, lin, vae = (_value(t3, cont, m) for m in ("IWAE", "LIN", "VAE"))
        claims.add("Continuous Semi-Circle: IWAE learns $p(x)$ better than VAE and LIN", "Table 3, appendix G",
                   f"kNN IWAE {_num(iwae)}, VAE {_num(vae)}, LIN {_num(lin)}",
                   iwae < min(vae, lin) if _finite(iwae, vae, lin) else None)
        ci, cl, cv = (cohorts(t4, cont, m) for m in ("IWAE", "LIN", "VAE"))
        claims.add("Continuous Semi-Circle: IWAE learns $p(x|y)$ no better than VAE and LIN", "Table 4, appendix G",
                   f"mean over cohorts: IWAE {_num(np.mean(ci))}, VAE {_num(np.mean(cv))}, LIN {_num(np.mean(cl))}",
                   not np.mean(ci) < min(np.mean(cv), np.mean(cl)) if len(ci) and len(cv) and len(cl) else None)
    for dataset, iwae_better in (("diabetic-retinopathy", True), ("contraceptive", True), ("titanic", False)):
        row = DATASET_TITLES[dataset]
        if row in set(t5["row"]):
            iwae, vae = _value(t5, row, "IWAE"), _value(t5, row, "VAE")
            better, worse = ("IWAE", "the VAE") if iwae_better else ("the VAE", "IWAE")
            claims.add(f"{row}: {better} learns $p(x)$ better than {worse}", "Table 5",
                       f"kNN IWAE {_num(iwae)} vs VAE {_num(vae)}",
                       (iwae < vae) == iwae_better if _finite(iwae, vae) else None)


def separation_claims(claims: Claims, separation: pd.DataFrame) -> None:
    """Figure 2 (discrete) and Figure 18 (continuous): the semi-supervised VAE collapses f(y, z)
    to one function for every y; IWAE does not (Figure 2)."""
    if separation.empty:
        return
    truth = separation[separation["model"] == "truth"].groupby("dataset")["separation"].mean()
    learned = separation[separation["model"] != "truth"]
    mean = learned.groupby(["dataset", "unlabelled_posterior", "model"])["separation"].mean()
    for (dataset, variant), _ in learned.groupby(["dataset", "unlabelled_posterior"], sort=False):
        t = truth.get(dataset, np.nan)
        vae, iwae = mean.get((dataset, variant, "vae"), np.nan), mean.get((dataset, variant, "iwae"), np.nan)
        which = "$q(z|x)$ in U, as the paper" if variant == "x" else "$q(z|x,y)$ in U, as Kingma et al."
        measured = (f"separation: truth {_num(t, 2)}, VAE {_num(vae, 2)}, IWAE {_num(iwae, 2)} "
                    f"(collapsed below {COLLAPSED_FRACTION:g} x truth)")
        figure = "Figure 2" if dataset == "discrete-semicircle" else "Figure 18"
        claims.add(f"{DATASET_TITLES[dataset]} ({which}): the VAE collapses $f(y,z)$ to one function of $z$",
                   figure, measured, vae < COLLAPSED_FRACTION * t if _finite(vae, t) else None)
        if dataset == "discrete-semicircle":
            claims.add(f"{DATASET_TITLES[dataset]} ({which}): IWAE keeps $f(y,z)$ apart for different $y$",
                       figure, measured, iwae >= COLLAPSED_FRACTION * t if _finite(iwae, t) else None)


# --- appendix F: disentanglement ---------------------------------------------------------------
def disentanglement_claims(claims: Claims, table: pd.DataFrame, settings: dict) -> None:
    """Appendix F: the ELBO prefers a rotated model, whose latents entangle the true ones, at equal
    p(x); the VAE's learned latents are entangled (MIG below the true model's posterior means');
    IWAE less so (MIG above the VAE's), for each S."""
    truth, rotated, best = (F.MODEL_ROWS[m] for m in ("original", "appendix_rotation", "elbo_maximising"))
    log_px = {row: _value(table, row, F.LOG_PX) for row in (truth, rotated)}
    elbo = {row: _value(table, row, F.ELBO) for row in (truth, rotated, best)}
    claims.add("Appendix F: the ELBO prefers the entangled model $AR$ over the true $A$: a higher optimal "
               "mean-field ELBO at equal $p(x)$", "Appendix F",
               f"log p(x): A {_num(log_px[truth])}, AR {_num(log_px[rotated])}; ELBO: A {_num(elbo[truth])}, "
               f"AR {_num(elbo[rotated])}, AR* {_num(elbo[best])}",
               abs(log_px[rotated] - log_px[truth]) < EQUAL_LOG_PX and elbo[rotated] > elbo[truth]
               if _finite(*log_px.values(), *elbo.values()) else None)
    def mig(row: str) -> tuple[float, str]:   # mean, and "mean +- sd" over versions for the text
        hit = table[(table["row"] == row) & (table["column"] == F.MIG)]
        mean, sd = (float(hit[c].iloc[0]) if len(hit) else np.nan for c in ("mean", "sd"))
        return mean, f"{_num(mean, 4)} +- {_num(sd, 4)}"

    (vae, vae_text), (true_a, true_text), (_, best_text) = (mig(r) for r in (F.method_row("vae", 1), truth, best))
    claims.add("Appendix F: the VAE's learned latents are entangled: their MIG is below the true model's",
               "Appendix F", f"MIG of posterior means (mean +- sd over versions): true A {true_text}, "
               f"VAE {vae_text}, ELBO-maximising AR* {best_text}",
               vae < true_a if _finite(vae, true_a) else None)
    for setting in grid.experiment_settings(settings, "disentangle"):
        if setting.method == "iwae":
            row = F.method_row(setting.method, setting.samples)
            iwae, iwae_text = mig(row)
            claims.add(f"Appendix F: {row} entangles less than the VAE: its MIG is above the VAE's", "Appendix F",
                       f"MIG (mean +- sd over versions): {row} {iwae_text}, VAE {vae_text}",
                       iwae > vae if _finite(iwae, vae) else None)


# The attack budget (in units of the true sigma) at which appendix K's claims compare projections.
ATTACK_BUDGET_IN_SIGMA = 2.0


def appendix_k_claims(claims: Claims, denoising: pd.DataFrame, attack: pd.DataFrame) -> None:
    """Appendix K: the ELBO prefers K larger and sigma^2 smaller than the truth; such a model
    explains noise by z, so its projection f(mu(x)) removes less noise, and a manifold-projection
    defence built on it fails more often than one built on the true manifold.  And with K at the
    truth, Theorem 2's biased sigma^2 degrades the de-noising too (Spiral-Dots)."""
    if denoising.empty:
        return
    mean = denoising.groupby(["dataset", "model"]).agg(ratio=("ratio", "mean"), sigma2=("sigma2_learned", "mean"),
                                                        latent_dim=("latent_dim", "first"),
                                                        sigma2_true=("sigma2_true", "first"),
                                                        method=("method", "first"))
    for dataset in dict.fromkeys(denoising["dataset"]):
        rows = mean.loc[dataset]
        vae = rows[(rows["method"] == "vae") & rows["latent_dim"].notna()]
        title = DATASET_TITLES[dataset.removesuffix("-5d")]
        if dataset.endswith("-5d") and len(vae) > 1:
            k = vae["latent_dim"].astype(int)
            matched, mismatched = vae[k == k.min()].iloc[0], vae[k == k.max()].iloc[0]
            kk = int(k.max())
            claims.add(f"{title} (5-D): the VAE with $K={kk}$ learns a smaller $\\sigma^2$ than the truth",
                       "Appendix K, section 3",
                       f"sigma^2: truth {_num(matched['sigma2_true'], 4)}, VAE K=1 {_num(matched['sigma2'], 4)}, "
                       f"K={kk} {_num(mismatched['sigma2'], 4)}",
                       mismatched["sigma2"] < mismatched["sigma2_true"] if _finite(mismatched["sigma2"]) else None)
            claims.add(f"{title} (5-D): the VAE with $K={kk}$ removes less noise by projection than with the true $K=1$",
                       "Appendix K, Figure 5b",
                       f"noise left E|M(x)-f(z)|^2 / D sigma^2: K=1 {_num(matched['ratio'], 2)}, K={kk} "
                       f"{_num(mismatched['ratio'], 2)}",
                       mismatched["ratio"] > matched["ratio"] if _finite(matched["ratio"], mismatched["ratio"]) else None)
            hits = attack[(attack["dataset"] == dataset)
                          & np.isclose(attack["budget_in_sigma"], ATTACK_BUDGET_IN_SIGMA)]
            rate = hits.set_index("model")["success_rate"]
            truth_rate = rate.get("truth (nearest point)", np.nan)
            model_rate = rate.get(mismatched.name, np.nan)
            claims.add(f"{title} (5-D): projecting on the $K={kk}$ VAE's manifold defends worse than on the true "
                       f"manifold", "Appendix K, Figure 5",
                       f"attack success at |eta| = {ATTACK_BUDGET_IN_SIGMA:g} sigma: true manifold {_num(truth_rate, 2)}, "
                       f"K={kk} VAE {_num(model_rate, 2)}, no defence "
                       f"{_num(rate.get('no defence (identity)', np.nan), 2)}",
                       model_rate > truth_rate if _finite(model_rate, truth_rate) else None)
        elif not dataset.endswith("-5d"):
            learned = rows[(rows["method"] == "vae") & (rows.index.str.contains("learned"))]
            fixed = rows[(rows["method"] == "vae") & (rows.index.str.contains("fixed"))]
            if len(learned) and len(fixed):
                a, b = learned.iloc[0], fixed.iloc[0]
                claims.add(f"{title}: with $\\sigma^2$ learned by the ELBO (Theorem 2) the projection removes less "
                           "noise than with the true $\\sigma^2$", "Appendix K, Theorem 2",
                           f"sigma^2 learned {_num(a['sigma2'], 4)} (truth {_num(a['sigma2_true'], 4)}); noise left: "
                           f"learned {_num(a['ratio'], 2)}, fixed {_num(b['ratio'], 2)}",
                           a["ratio"] > b["ratio"] if _finite(a["ratio"], b["ratio"]) else None)


# --- the table ---------------------------------------------------------------------------------
def score_claims(settings: dict, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All claims from the tables the workflow wrote (name -> CSV frame)."""
    claims = Claims()
    table1_claims(claims, tables["table1"])
    if "theorem1" in tables:
        theorem1_claims(claims, tables["theorem1"])
    theorem2_claims(claims, tables["theorem2"], settings)
    table2_claims(claims, tables["table2"], settings)
    semisupervised_claims(claims, tables["table3"], tables["table4"], tables["table5"])
    if "separation" in tables:
        separation_claims(claims, tables["separation"])
    if DISENTANGLEMENT_TABLE in tables:
        disentanglement_claims(claims, tables[DISENTANGLEMENT_TABLE], settings)
    if "appendix_k_denoising" in tables:
        appendix_k_claims(claims, tables["appendix_k_denoising"], tables["appendix_k_attack"])
    return claims.frame()


def write_claims(settings: dict, table_paths: list[str], out_csv: str) -> None:
    tables = {Path(p).stem: read_csv(p) for p in table_paths}
    write_bytes(out_csv, score_claims(settings, tables).to_csv(index=False).encode())
