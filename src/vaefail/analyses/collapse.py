"""Figure 2's mechanism, decided: does the semi-supervised VAE objective J prefer the collapsed
f(y, z) to the separated one?

The paper's claim is that the collapse happens at global optima of J.  Where a setting
(alpha, gamma) and data version has one restart whose f collapsed (label separation below
COLLAPSED_FRACTION of the truth's) and one whose f kept the labels apart -- typically a random
start and a start at the truth -- the two are compared on J itself, estimated on the
validation split with COLLAPSE_DRAWS independent draws of the bound's noise, so that its
Monte-Carlo error (reported) is small against the gap.  A positive gap J(collapsed) -
J(separated) means the objective prefers the collapse.

Also here: the label separation of every restart against the share of observed labels
(the labelshare experiment, plus the semisupervised experiment's own share), for the figure
of the collapse against the labelled share and gamma.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..criteria import COLLAPSED_FRACTION
from ..data.dataset_files import dataset_labels, load_ss_versions
from ..engine.ensembles import load_member
from ..engine.m2_task import M2Task, validation_objective_draws
from ..randomness import MemberStreams, derive_seed

COLLAPSE_DRAWS = 100          # draws of the bound's noise per J estimate
COLLAPSE_METHODS = ("vae",)   # the claim is about the VAE objective (LIN trains the same one)
PAIR_COLUMNS = ["dataset", "unlabelled_posterior", "method", "alpha", "gamma", "version", "collapsed_restart",
                "separated_restart", "collapsed_init", "separated_init", "separation_collapsed",
                "separation_separated", "separation_truth", "j_collapsed", "j_separated", "j_collapsed_se",
                "j_separated_se", "j_gap", "j_gap_se", "objective_valid_gap"]


def estimate_objective(settings: dict, outdir: Path, stem: str, dataset: str, version: int, alpha: float,
                       gamma: float, bound: str = "elbo", samples: int = 1,
                       draws: int = COLLAPSE_DRAWS) -> tuple[float, float]:
    """J per unlabelled point of one saved M2 restart on its version's validation split, in
    float64: (mean over `draws` independent draws, its standard error)."""
    model = load_member(outdir / f"{stem}.pt")
    labels = dataset_labels(dataset)
    data = load_ss_versions([outdir / grid.data_path(dataset, version)], labels, torch.float64, torch.device("cpu"))
    weight = torch.tensor([alpha, gamma], dtype=torch.float64)
    task = M2Task(bound, samples, data, torch.zeros(1, dtype=torch.long), weight[:1], weight[1:],
                  settings["batch_size"], labels, model.K)
    streams = MemberStreams([derive_seed(settings["seed"], "collapse", stem)])
    values = torch.stack(list(validation_objective_draws(model, task, bound, samples, draws, streams,
                                                         torch.zeros(1, dtype=torch.long))))[:, 0].numpy()
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def collapse_pairs(settings: dict, outdir: str | Path, restarts: pd.DataFrame, truth_separation: float) -> pd.DataFrame:
    """One row per (variant, method, alpha, gamma, version) of the Discrete Semi-Circle with a
    collapsed and a separated restart: both restarts' separation and J (PAIR_COLUMNS).  On each
    side the restart with the best validation objective (the one selection would keep) is used."""
    outdir = Path(outdir)
    if restarts.empty or not math.isfinite(truth_separation):
        return pd.DataFrame(columns=PAIR_COLUMNS)
    bound = COLLAPSED_FRACTION * truth_separation
    ok = restarts[(restarts["status"] == "ok") & restarts["method"].isin(COLLAPSE_METHODS)]
    rows = []
    keys = ["dataset", "unlabelled_posterior", "method", "setting", "alpha", "gamma", "version"]
    for (dataset, variant, method, setting, alpha, gamma, version), group in ok.groupby(keys, sort=False):
        collapsed, separated = group[group["separation"] < bound], group[group["separation"] >= bound]
        if collapsed.empty or separated.empty:
            continue
        a = collapsed.loc[collapsed["objective_valid"].idxmax()]
        b = separated.loc[separated["objective_valid"].idxmax()]
        estimates = []
        for row in (a, b):
            member = grid.Member(int(version), int(row["restart"]), float(alpha), float(gamma))
            stem = grid.member_stem("semisupervised", dataset, setting, member)
            estimates.append(estimate_objective(settings, outdir, stem, dataset, int(version), float(alpha),
                                                float(gamma)))
        (ja, sa), (jb, sb) = estimates
        rows.append({"dataset": dataset, "unlabelled_posterior": variant, "method": method, "alpha": alpha,
                     "gamma": gamma, "version": int(version), "collapsed_restart": int(a["restart"]),
                     "separated_restart": int(b["restart"]), "collapsed_init": a["init"], "separated_init": b["init"],
                     "separation_collapsed": a["separation"], "separation_separated": b["separation"],
                     "separation_truth": truth_separation, "j_collapsed": ja, "j_separated": jb,
                     "j_collapsed_se": sa, "j_separated_se": sb, "j_gap": ja - jb, "j_gap_se": math.hypot(sa, sb),
                     "objective_valid_gap": a["objective_valid"] - b["objective_valid"]})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def label_share_table(settings: dict, restarts: pd.DataFrame, share_restarts: pd.DataFrame) -> pd.DataFrame:
    """The separation of every VAE restart (the first z-posterior) on the Discrete Semi-Circle
    against its share of observed labels: the semisupervised experiment's restarts at
    label_fraction and the labelshare experiment's at each of ss_label_fractions."""
    variant = settings["ss_unlabelled_posteriors"][0]
    main = restarts[(restarts["method"] == "vae") & (restarts["unlabelled_posterior"] == variant)]
    main = main.assign(label_fraction=float(settings["label_fraction"]), experiment="semisupervised")
    frames = [main] + ([share_restarts.assign(experiment="labelshare")] if len(share_restarts) else [])
    table = pd.concat(frames, ignore_index=True)
    return table[table["status"] == "ok"].sort_values(["label_fraction", "gamma", "alpha", "version", "restart"])


def share_summary(table: pd.DataFrame, truth_separation: float) -> pd.DataFrame:
    """Mean, sd and count of the separation (relative to the truth's) and the share collapsed,
    per (label fraction, gamma, init): what the figure draws."""
    if table.empty:
        return pd.DataFrame(columns=["label_fraction", "gamma", "init", "relative_separation_mean",
                                     "relative_separation_sd", "n", "share_collapsed"])
    table = table.assign(relative=table["separation"] / truth_separation)
    summary = table.groupby(["label_fraction", "gamma", "init"]).agg(
        relative_separation_mean=("relative", "mean"), relative_separation_sd=("relative", "std"),
        n=("relative", "size"), share_collapsed=("relative", lambda r: float(np.mean(r < COLLAPSED_FRACTION))))
    return summary.reset_index()
