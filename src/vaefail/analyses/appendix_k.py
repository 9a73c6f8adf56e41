"""Appendix K in the workflow's terms: does projecting onto a learned manifold remove the
noise, and does it defend a classifier against small perturbations?  Numbers only: the
projections compared are in appendix_k_projections, the classifier in appendix_k_geometry;
report.analysis_tables writes the tables, report.figures.figure5 draws Figure 5.

f_GT(E[z | x]) is not a good denoiser where the true posterior is multimodal: it averages z
over the modes and lands between them (Figure-8 near its crossing; Clusters, whose first and
last clusters lie 1.4 sigma apart in 5-D, so that the posterior of a point in one puts mass
on both; a point on one of Spiral-Dots' steep links).  The nearest point is the geometric projection.

Three results:

denoising_table  for test points x = f_GT(z) + eps of every data version,
                 E||M(x) - f_GT(z)||^2 against E||x - f_GT(z)||^2 = D sigma^2 (their ratio: 0 a
                 perfect denoiser, about K/D for the truth at small noise -- it keeps the noise
                 along the manifold -- and 1 for no projection).
attack_table     L2 attacks on a classifier behind each projection (appendix_k_geometry),
                 success rate at each budget |eta|, on the 5-D data sets (version 0), and the
                 outcome of each attacked point.
example_attack   Figure 5a's example: an adversarial example and its projections.

Gradient attacks and piecewise-constant projections: where a projection is flat in x (a
cluster of Clusters, a dot of Spiral-Dots, a decoder's flat stretch), its gradient vanishes
and the attack relies on its random starts; success rates are what the attack finds (lower
bounds on what an attacker can do), for every projection alike.

Randomness (test points are the data files'; attack restarts) comes from generators seeded
from settings["seed"], so the tables and the figure are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..data.datasets import example
from ..randomness import derive_seed
from . import projection as PJ
from .appendix_k_geometry import OffPlaneTiltedClassifier, plane_classifier
from .appendix_k_projections import (NO_DEFENCE, VERSION, Candidate, TruthData, identity_candidate,
                                     latent_candidates, load_test_points, nearest_point_projector,
                                     noise_candidates, truth_candidates, truth_of)
from .selected import read_selected

EXAMPLE_CANDIDATES = 40             # Figure 5a: test points searched for the example drawn

DENOISING_COLUMNS = ["dataset", "model", "experiment", "method", "setting", "latent_dim", "sigma2_mode",
                     "version", "restart", "init", "sigma2_learned", "sigma2_learned_min", "sigma2_learned_max",
                     "sigma2_true", "data_dim", "noise", "observed_noise", "projection_error", "ratio",
                     "n_points", "note"]
POINT_COLUMNS = ["dataset", "model", "point", "correct", "minimal_budget_in_sigma"]
ATTACK_COLUMNS = ["dataset", "classifier", "attack_gain", "model", "experiment", "method", "setting",
                  "latent_dim", "sigma2_learned", "sigma2_true", "version", "restart", "denoising_ratio",
                  "budget_in_sigma", "budget", "n_points", "n_correct", "clean_accuracy", "success_rate",
                  "robust_accuracy", "note"]


# --- the denoising table ------------------------------------------------------------------
def denoising_datasets(settings: dict) -> list[str]:
    return grid.appendix_k_datasets(settings)


def _sigma2_columns(c: Candidate) -> dict:
    s2 = np.asarray(c.sigma2, dtype=float)
    return {"sigma2_learned": float(s2.mean()), "sigma2_learned_min": float(s2.min()),
            "sigma2_learned_max": float(s2.max())}


def denoising_rows(settings: dict, outdir, truth: TruthData, candidates: list[Candidate], version: int) -> list[dict]:
    _, clean, x = load_test_points(outdir, truth, version)
    rows = []
    for c in candidates:
        row = {"dataset": truth.dataset, "model": c.model, "experiment": c.experiment, "method": c.method,
               "setting": c.setting, "latent_dim": c.latent_dim, "sigma2_mode": c.sigma2_mode,
               "version": version, "restart": c.restart, "init": c.init, **_sigma2_columns(c),
               "sigma2_true": truth.sigma2, "data_dim": x.shape[-1], "n_points": x.shape[0], "note": c.note}
        noise = truth.sigma2 * x.shape[-1]
        row.update(noise=noise, observed_noise=float(((x - clean) ** 2).sum(-1).mean()))
        if c.ok:
            result = PJ.denoising(c.project, clean, x, truth.sigma2)
            row.update(projection_error=float(result.projected_error[0]), ratio=float(result.ratio[0]))
        else:
            row.update(projection_error=math.nan, ratio=math.nan)
        rows.append(row)
    return rows


def denoising_table(settings: dict, outdir) -> pd.DataFrame:
    """One row per (data set, model, version): the noise its projection leaves on that
    version's test points, E||M(x) - f_GT(z)||^2 (`projection_error`), against the noise
    D sigma_true^2 (`noise`; `observed_noise` its value on these points) and their `ratio`.

    Data sets: the latent experiment's (5-D Figure-8, Clusters) with the truth, phi_GT and the
    selected VAE and IWAE of every K; the noise experiment's (Spiral-Dots) with the truth,
    phi_GT, the noise experiment's VAE (sigma^2 learned) and the unsupervised experiment's
    selected VAE (sigma^2 fixed at the truth).  sigma2_learned: the model's sigma^2, mean over
    dimensions (min, max beside it; the truth's own for the truth); latent_dim: its K.  A
    selected model that does not exist has NaN errors and a note."""
    tables = {e: read_selected(outdir, e) for e in ("latent", "noise", "unsupervised")}
    latent = grid.experiment_datasets(settings, "latent")
    rows = []
    for dataset in denoising_datasets(settings):
        truth = truth_of(outdir, dataset)
        for version in range(grid.n_versions(settings, "latent")):
            cands = truth_candidates(settings, outdir, truth, version)
            if dataset in latent:
                cands += latent_candidates(settings, outdir, tables["latent"], dataset, version)
            if dataset == settings["noise_dataset"]:
                cands += noise_candidates(settings, outdir, tables, version)
            rows += denoising_rows(settings, outdir, truth, cands, version)
    return pd.DataFrame(rows, columns=DENOISING_COLUMNS)


# --- the attack table ---------------------------------------------------------------------
@dataclass
class AttackSetup:
    """The classifier and the attacked points of one data set (version 0)."""

    truth: TruthData
    classifier: OffPlaneTiltedClassifier
    description: str
    x: torch.Tensor          # (n, D) attacked test points
    labels: torch.Tensor     # (n,) y = g(f_GT(z))
    budgets: np.ndarray      # absolute |eta|
    budgets_in_sigma: np.ndarray


def attack_setup(settings: dict, outdir, dataset: str, truth_project: Callable | None = None) -> AttackSetup:
    """The tilted classifier of `dataset`, labels y = g(f_GT(z)) of version 0's test points, and
    the first attack_points of them that g classifies correctly both as they are (no defence)
    and after the orthogonal projection onto the true manifold."""
    truth = truth_of(outdir, dataset)
    base, description = plane_classifier(dataset, truth.decoder, truth.plane)
    gain = float(settings["attack_gain"])
    g = OffPlaneTiltedClassifier(base, truth.plane, gain)
    z, clean, x = load_test_points(outdir, truth, VERSION)
    labels = PJ.manifold_labels(g, truth.decoder, z)
    project = truth_project or nearest_point_projector(truth)
    with torch.no_grad():
        ok = (g(x) == labels) & (g(project(x.unsqueeze(0))[0]) == labels)
    keep = torch.nonzero(ok).reshape(-1)[: int(settings["attack_points"])]
    relative = np.sort(np.asarray(settings["attack_budgets"], dtype=float))
    return AttackSetup(truth, g, f"{description}, tilted off the plane with gain {gain:g}", x[keep], labels[keep],
                       relative * math.sqrt(truth.sigma2), relative)


def attack_rows(settings: dict, setup: AttackSetup, candidates: list[Candidate], ratios: dict,
                points: list | None = None) -> list[dict]:
    """The attack table's rows of one data set; with `points` (a list), also one row per
    (model, attacked point) appended to it: whether the projection classifies the point
    correctly without attack and the smallest budget (in units of the true sigma) that flipped
    it (inf: none did) -- the paired outcomes the claims compare between projections."""
    rows = []
    steps, restarts = int(settings["attack_steps"]), int(settings["attack_restarts"])
    n = setup.x.shape[0]
    for c in candidates:
        head = {"dataset": setup.truth.dataset, "classifier": setup.description,
                "attack_gain": float(settings["attack_gain"]), "model": c.model,
                "experiment": c.experiment, "method": c.method, "setting": c.setting, "latent_dim": c.latent_dim,
                "sigma2_learned": float(np.mean(c.sigma2)), "sigma2_true": setup.truth.sigma2, "version": VERSION,
                "restart": c.restart, "denoising_ratio": ratios.get(c.model, math.nan), "n_points": n,
                "note": c.note}
        if c.ok and n:
            gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "appendix-k", "attack",
                                                            setup.truth.dataset, c.model))
            result = PJ.attack(c.project, setup.classifier, setup.x, setup.labels, setup.budgets, steps, restarts,
                               generator=gen)
            minimal = result.minimal_budget[0]
            n_correct = int(np.isfinite(minimal).sum() + np.isinf(minimal).sum())
            if points is not None:
                sigma = math.sqrt(setup.truth.sigma2)
                points += [{"dataset": setup.truth.dataset, "model": c.model, "point": i,
                            "correct": bool(not np.isnan(m)), "minimal_budget_in_sigma": float(m) / sigma}
                           for i, m in enumerate(minimal)]
        for j, (b, rel) in enumerate(zip(setup.budgets, setup.budgets_in_sigma, strict=True)):
            row = dict(head, budget=float(b), budget_in_sigma=float(rel))
            if c.ok and n:
                row.update(n_correct=n_correct, clean_accuracy=float(result.clean_accuracy[0]),
                           success_rate=float(result.success_rate[0, j]),
                           robust_accuracy=float(np.mean(np.nan_to_num(minimal, nan=-1.0) > b)))
            else:
                row.update(n_correct=0, clean_accuracy=math.nan, success_rate=math.nan, robust_accuracy=math.nan,
                           note=c.note or "no test point to attack")
            rows.append(row)
    return rows


def attack_datasets(settings: dict) -> list[str]:
    """The data sets of the attack: the 5-D ones (see the module docstring)."""
    return [d for d in grid.experiment_datasets(settings, "latent") if example(d).embedded]


def attack_table(settings: dict, outdir, denoising: pd.DataFrame | None = None,
                 points: list | None = None) -> pd.DataFrame:
    """Success rate of an L2 attack at each budget, one row per (data set, model, budget).

    For each 5-D data set of the latent experiment, the classifier of the module docstring
    (the true classifier on the plane of the manifold, tilted off it by attack_gain), labels
    y = g(f_GT(z)), and the first attack_points test points of version 0 that g classifies
    correctly with no defence and behind the truth's projection.  Defences: the truth's
    projection (exact posterior mean; phi_GT where fitted), each selected VAE and IWAE of the
    latent experiment (K, learned sigma^2 beside each), and none (identity; K = D, sigma^2 = 0).
    Attack: projection.attack, `attack_steps` normalised gradient steps of the margin through
    M from attack_restarts starts (eta = 0 and random), at budgets |eta| = attack_budgets x the
    true sigma (budget_in_sigma; budget is the absolute norm).

    success_rate: the fraction of the points g o M classifies correctly without attack
    (clean_accuracy of n_points; n_correct of them) whose label the attack flips within the
    budget; robust_accuracy: the fraction of all n_points still classified correctly under
    attack (a projection that misclassifies clean points loses them here).  A projection that
    misclassifies every point (n_correct = 0) has success_rate NaN (nothing to attack) and
    robust_accuracy 0; a selected model that does not exist has NaN and a note.
    denoising_ratio: the model's ratio on version 0 (denoising_table), when given."""
    table = read_selected(outdir, "latent")
    ratios_by = {}
    if denoising is not None and len(denoising):
        here = denoising[denoising["version"] == VERSION]
        ratios_by = {(r.dataset, r.model): r.ratio for r in here.itertuples()}
    rows = []
    for dataset in attack_datasets(settings):
        setup = attack_setup(settings, outdir, dataset)
        cands = truth_candidates(settings, outdir, setup.truth, VERSION)
        cands += latent_candidates(settings, outdir, table, dataset, VERSION)
        cands.append(identity_candidate(dataset, setup.truth.plane.D))
        ratios = {m: v for (d, m), v in ratios_by.items() if d == dataset}
        ratios.setdefault(NO_DEFENCE, 1.0)
        rows += attack_rows(settings, setup, cands, ratios, points)
    return pd.DataFrame(rows, columns=ATTACK_COLUMNS)


# --- Figure 5a's example -------------------------------------------------------------------
@dataclass
class ExampleAttack:
    """Figure 5a's example: the point x, its label, eta against the undefended classifier and
    x + eta's projections (name -> (D,)) with the labels g gives them."""

    x: np.ndarray
    label: int
    eta: np.ndarray
    budget: float
    projections: dict
    labels: dict


def example_attack(settings: dict, setup: AttackSetup, projectors: dict) -> ExampleAttack | None:
    """Attack g itself (no defence) on the first EXAMPLE_CANDIDATES attacked points and pick one
    to draw: among the points whose perturbation the orthogonal projection onto the true
    manifold (projectors["nearest"]) undoes but the mismatched model's does not -- failing
    that, among those the projection undoes, or among all successful ones -- the point with
    the median successful budget (a typical point rather than one on the boundary).  None if
    no attack succeeded."""
    n = min(EXAMPLE_CANDIDATES, setup.x.shape[0])
    if n == 0:
        return None
    gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "appendix-k", "figure5", setup.truth.dataset))
    out = PJ.adversarial_example(setup.classifier, setup.x[:n], setup.labels[:n].numpy(), setup.budgets, projectors,
                                 attacked=None, steps=int(settings["attack_steps"]),
                                 restarts=int(settings["attack_restarts"]), generator=gen)
    found = np.isfinite(out["minimal_budget"])
    if not found.any():
        return None
    y = out["label"]
    truth_ok = out["nearest_label"] == y
    mismatched_bad = out["mismatched_label"] != y if "mismatched_label" in out else np.zeros(n, bool)
    for mask in (found & truth_ok & mismatched_bad, found & truth_ok, found):
        if mask.any():                      # the median budget: a typical point, not one on the boundary
            order = np.flatnonzero(mask)[np.argsort(out["minimal_budget"][mask], kind="stable")]
            i = int(order[(len(order) - 1) // 2])
            break
    names = list(projectors)
    return ExampleAttack(out["x"][i], int(y[i]), out["eta"][i], float(out["minimal_budget"][i]),
                         {k: out[f"{k}_projection"][i] for k in names}, {k: int(out[f"{k}_label"][i]) for k in names})
