"""Choose, as the paper does, the best restart and then each method's hyperparameters.

1. For each (data set, setting, version), keep the restart with the best value of the
   method's own objective on the validation set (appendix J: "the restart that yields
   the lowest value of the objective function").
2. For each (data set, method, latent dimension), choose the setting whose kept
   restarts have the smallest mean validation smooth-kNN statistic over versions
   (appendix J, `selection: knn`), or the best mean validation objective
   (Table 1's caption, `selection: validation_loss`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import grid
from ..config import settings_hash
from ..convergence import tail_gain
from ..files import ResultReadError, check_readable, read_json, write_bytes

IDENTITY = ["experiment", "dataset", "setting", "method", "latent_dim", "samples", "lin_threshold",
            "lin_inner_steps", "sigma2_mode", "unlabelled_posterior", "alpha", "gamma", "sigma2_setting", "version", "restart", "init", "seed", "status"]


def load_runs(settings: dict, experiment: str, outdir: str | Path) -> pd.DataFrame:
    """One row per restart of the experiment's grid; vector metrics are split per dimension.

    Every result must be whole (its JSON, and its weights file a whole archive) and made
    with these settings (its settings_hash): ResultReadError names the first that is not."""
    rows = []
    expected_hash = settings_hash(settings)
    for stem in grid.experiment_run_stems(settings, experiment):
        path = Path(outdir) / f"{stem}.json"
        record = read_json(path, required=("status", "train", "provenance"))
        if record["provenance"].get("settings_hash") != expected_hash:
            raise ResultReadError(path, f"made with other settings (settings_hash "
                                        f"{record['provenance'].get('settings_hash')}, this run's is {expected_hash})")
        check_readable(path.with_suffix(".pt"))
        row = {k: record.get(k) for k in IDENTITY}
        for key, value in record.items():
            if key in IDENTITY or key in ("train", "provenance"):
                continue
            if isinstance(value, list):
                for d, v in enumerate(value):
                    row[f"{key}_{d}"] = v
                row[f"{key}_mean"] = float(np.mean(value))
            else:
                row[key] = value
        row["lin_aggressive_epochs"] = record["train"]["lin_aggressive_epochs"]
        row.update(convergence_columns(record["train"]))
        row["settings_hash"] = record["provenance"]["settings_hash"]
        row["git_commit"] = record["provenance"]["git_commit"]
        rows.append(row)
    runs = pd.DataFrame(rows)
    # a hyperparameter setting: the job's setting plus, for M2, its (alpha, gamma[, sigma^2])
    def folder(row):
        none = lambda v: None if pd.isna(v) else v  # noqa: E731
        return grid.weights_folder(none(row["alpha"]), none(row["gamma"]), none(row["sigma2_setting"]))
    runs["hyper"] = runs["setting"] + "/" + runs.apply(folder, axis=1)
    return runs


def convergence_columns(train: dict) -> dict:
    """`converged` (the rule of vaefail.convergence; None where it cannot decide or the result
    predates the validation curve) and `tail_gain`, the improvement it judged, per point."""
    if "valid_curve" not in train:
        return {"converged": None, "tail_gain": None}
    gain = tail_gain(train["valid_curve_epochs"], [np.nan if v is None else v for v in train["valid_curve"]],
                     train["epochs"])
    return {"converged": train.get("converged"), "tail_gain": gain}


def best_restarts(runs: pd.DataFrame) -> pd.DataFrame:
    ok = runs[runs["status"] == "ok"]
    if ok.empty:
        raise ValueError(f"all {len(runs)} restarts of this experiment failed (status 'failed' in their "
                         "result files; the training logs name each cause): nothing to select")
    keys = ["dataset", "hyper", "version"]
    best = ok.loc[ok.groupby(keys)["objective_valid"].idxmax()]
    return best.sort_values(keys).reset_index(drop=True)


def select_settings(best: pd.DataFrame, selection: str, per_latent_dim: bool = True) -> pd.DataFrame:
    """The rows of `best` that belong to each (dataset, method[, latent_dim])'s chosen setting.

    per_latent_dim: Table 2 reports every K; elsewhere (UCI) K is one more hyperparameter.
    """
    column, pick = ("knn_valid", "idxmin") if selection == "knn" else ("objective_valid", "idxmax")
    group = ["dataset", "method"] + (["latent_dim"] if per_latent_dim else [])
    if best["unlabelled_posterior"].notna().any():   # M2: each z-posterior variant is its own model
        group.append("unlabelled_posterior")
    score = best.groupby([*group, "hyper"])[column].mean().reset_index()
    chosen = score.loc[getattr(score.groupby(group)[column], pick)()]
    selected = best.merge(chosen[["dataset", "hyper"]], on=["dataset", "hyper"])
    selected["selection"] = selection
    return selected.sort_values([*group, "version"]).reset_index(drop=True)


def select_experiment(settings: dict, experiment: str, outdir: str, out: str, out_all: str) -> None:
    runs = load_runs(settings, experiment, outdir)
    best = best_restarts(runs)
    keys = ["dataset", "hyper", "version", "restart"]
    runs["kept_restart"] = runs.set_index(keys).index.isin(best.set_index(keys).index)
    best["kept_restart"] = True      # every selected row is a kept restart
    selected = select_settings(best, settings["selection"], per_latent_dim=experiment != "uci")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out_all, runs.to_csv(index=False).encode())
    write_bytes(out, selected.to_csv(index=False).encode())
