"""On which scale are the paper's kNN numbers?  Every paper cell of Tables 1 and 3-6 against
ours, on each candidate scale of the smooth kNN statistic, and the evaluation noise of ours.

Candidate scales, both computed from the same soft-neighbour marginals (vaefail.evaluation.evaluate):
  t        the standardised statistic -(t - E_null t) / sd_null(t): what the authors'
           reference code (torch-two-sample's SmoothKNNStatistic) returns with
           compute_t_stat=True, and our tables' number.  About N(0, 1) under the null.
  deficit  1 - t / E_null[t]: the share of the cross-sample neighbour mass expected by chance
           that is missing.  The reference code's other output (compute_t_stat=False) is -t
           itself, whose size grows with k and n (about -10 000 here), unlike any value the
           paper prints; this is that raw statistic normalised, 0 under the null and at most 1.
A scale can be the paper's only if its values under the null (two samples of one
distribution: each version's validation against its test split) are near 0 with a spread
like the paper's best cells (Table 1: 0.036 +- 0.013, Table 3: 0.015 +- 0.011), and if it can
reach the paper's largest values (a deficit cannot exceed 1).

Table 2 and the Theorem 2 numbers are compared on their own scale ("native").  Each cell is
compared by a 95 % Welch interval of ours - paper (ours: mean +- sd over our n
versions; the paper's over its 5): "consistent" when the interval contains 0, "differs" when
not, "not comparable" when our models did not converge or a side has no spread.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import grid
from ..catalogue import TABLES, selected_path, table_path
from ..evaluation.smooth_knn import smooth_knn_statistics
from ..files import load_npz, read_csv, write_bytes
from . import evidence as E
from .paper_values import PAPER
from .tables import cohort_table, density_table, row_title

PAPER_VERSIONS = 5
SCALES = {"t": ("knn_test", "knn_cohort_test"), "deficit": ("knn_test_deficit", "knn_cohort_test_deficit")}
KNN_TABLES = ("table1", "table3", "table4", "table5", "table6")
NATIVE_TABLES = ("table2", "theorem2")   # not kNN: compared on their own scale ("native")
CONSISTENT, DIFFERS, NOT_COMPARABLE = "consistent", "differs", "not comparable"


def null_values(settings: dict, outdir: str | Path) -> pd.DataFrame:
    """Both scales for two samples of one distribution: each data version's validation split
    against its test split (as many points each as the smaller), per experiment's data set."""
    outdir = Path(outdir)
    rows = []
    for experiment in ("unsupervised", "semisupervised", "uci"):
        for dataset in grid.experiment_datasets(settings, experiment):
            for version in range(grid.n_versions(settings, experiment)):
                data = load_npz(outdir / grid.data_path(dataset, version))
                n = min(len(data["x_valid"]), len(data["x_test"]))
                a, b = (torch.as_tensor(data[key][:n], dtype=torch.float64).unsqueeze(0) for key in ("x_valid", "x_test"))
                t, deficit = smooth_knn_statistics(a, b, settings["knn_k"], settings["knn_temperature"],
                                                   with_deficit=True)
                rows.append({"experiment": experiment, "dataset": dataset, "version": version, "n": n,
                             "t": float(t[0]), "deficit": float(deficit[0])})
    return pd.DataFrame(rows, columns=["experiment", "dataset", "version", "n", "t", "deficit"])


def our_cells(settings: dict, outdir: str | Path, table: str, scale: str) -> pd.DataFrame:
    """Our cells of one kNN table on one scale (tables.COLUMNS), with the share of converged
    models behind each cell (`converged`, NaN where not recorded)."""
    experiment = TABLES[table].experiments[0]
    path = Path(outdir) / selected_path(experiment)
    if not path.exists():
        return pd.DataFrame()
    selected = read_csv(path)
    order = grid.experiment_datasets(settings, experiment)
    density, cohort = SCALES[scale]
    if table in ("table1", "table3", "table5"):
        cells = density_table(table, selected, order, density)
    else:
        cells = cohort_table(table, selected, order, cohort)
    if "converged" in selected:
        flags = selected.assign(title=[row_title(d, v if isinstance(v, str) else None)
                                       for d, v in zip(selected["dataset"], selected.get("unlabelled_posterior",
                                                                                          [None] * len(selected)))])
        share = flags.groupby("title")["converged"].apply(lambda c: c.astype(float).mean())
        cells["converged"] = cells["row"].map(share)
    else:
        cells["converged"] = np.nan
    return cells


def compare(ours: pd.Series, paper: tuple[float, float]) -> tuple[float, float, str]:
    """Welch interval of ours - paper and the status of the cell."""
    low, high = E.welch_interval(ours["mean"], ours["sd"], int(ours["n"]), paper[0], paper[1], PAPER_VERSIONS)
    if ours.get("converged") is not None and np.isfinite(ours.get("converged", np.nan)) and ours["converged"] < 1:
        return low, high, NOT_COMPARABLE
    if not (math.isfinite(low) and math.isfinite(high)):
        return low, high, NOT_COMPARABLE
    return low, high, CONSISTENT if low <= 0 <= high else DIFFERS


def paper_scale_table(settings: dict, outdir: str | Path) -> pd.DataFrame:
    """One row per (paper cell, scale): the paper's and our mean +- sd, the Welch interval of
    the difference, and the status."""
    rows = []
    candidates = [(table, scale) for table in KNN_TABLES for scale in SCALES] + [(t, "native") for t in NATIVE_TABLES]
    for table, scale in candidates:
        if scale == "native":
            path = Path(outdir) / table_path(table)
            cells = read_csv(path).assign(converged=np.nan) if path.exists() else pd.DataFrame()
        else:
            cells = our_cells(settings, outdir, table, scale)
        if cells.empty:
            continue
        for _, ours in cells.iterrows():
            paper = PAPER.get((table, ours["row"], ours["column"]))
            if paper is None:
                continue
            low, high, status = compare(ours, paper)
            rows.append({"table": table, "row": ours["row"], "column": ours["column"], "scale": scale,
                         "paper_mean": paper[0], "paper_sd": paper[1], "mean": ours["mean"], "sd": ours["sd"],
                         "n": int(ours["n"]), "converged": ours["converged"], "difference_low": low,
                         "difference_high": high, "status": status})
    return pd.DataFrame(rows)


def summary(cells: pd.DataFrame, nulls: pd.DataFrame) -> pd.DataFrame:
    """Per table and scale: the count of cells consistent / differing / not comparable; per
    scale, its values under the null (mean, sd, largest |value|) for the check above."""
    rows = []
    if len(cells):
        for (table, scale), frame in cells.groupby(["table", "scale"], sort=False):
            counts = frame["status"].value_counts()
            rows.append({"table": table, "scale": scale, CONSISTENT: int(counts.get(CONSISTENT, 0)),
                         DIFFERS: int(counts.get(DIFFERS, 0)), NOT_COMPARABLE: int(counts.get(NOT_COMPARABLE, 0)),
                         "cells": len(frame)})
    for scale in SCALES:
        values = nulls[scale] if len(nulls) else pd.Series(dtype=float)
        rows.append({"table": "null (validation vs test split)", "scale": scale,
                     "null_mean": float(values.mean()) if len(values) else np.nan,
                     "null_sd": float(values.std()) if len(values) > 1 else np.nan,
                     "null_max_abs": float(values.abs().max()) if len(values) else np.nan, "cells": len(values)})
    return pd.DataFrame(rows)


def evaluation_noise(settings: dict, outdir: str | Path) -> pd.DataFrame:
    """How much of a kNN cell's spread over versions is evaluation noise: per (experiment, data
    set, method), the sd over versions of the selected models' test statistic, the sd of one
    draw of it for a fixed model (knn_test_draw_sd, from the knn_draws draws), and the share of
    the variance over versions that the noise of the averaged statistic explains,
    (draw sd^2 / knn_draws) / (sd over versions)^2."""
    rows = []
    draws = settings["knn_draws"]
    for experiment in ("unsupervised", "semisupervised", "uci"):
        path = Path(outdir) / selected_path(experiment)
        if not path.exists():
            continue
        selected = read_csv(path)
        if "knn_test_draw_sd" not in selected:
            continue
        keys = ["dataset", "method"] + (["unlabelled_posterior"] if experiment == "semisupervised" else [])
        for key, frame in selected.groupby(keys, sort=False, dropna=False):
            between = float(frame["knn_test"].std())
            within = float(np.sqrt(np.nanmean(frame["knn_test_draw_sd"].astype(float) ** 2))) \
                if frame["knn_test_draw_sd"].notna().any() else np.nan
            share = (within ** 2 / draws) / between ** 2 if between > 0 and np.isfinite(within) else np.nan
            rows.append({"experiment": experiment, **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                         "versions": len(frame), "sd_over_versions": between, "draw_sd": within, "draws": draws,
                         "noise_share": share})
    return pd.DataFrame(rows)


def write_paper_scale(settings: dict, outdir: str, out_csv: str, out_summary: str, out_null: str,
                      out_noise: str) -> None:
    cells = paper_scale_table(settings, outdir)
    nulls = null_values(settings, outdir)
    write_bytes(out_csv, cells.to_csv(index=False).encode())
    write_bytes(out_summary, summary(cells, nulls).to_csv(index=False).encode())
    write_bytes(out_null, nulls.to_csv(index=False).encode())
    write_bytes(out_noise, evaluation_noise(settings, outdir).to_csv(index=False).encode())
