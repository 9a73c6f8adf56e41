"""The selected models: the restart that selection kept for a data version of one (data set,
method[, K][, M2's z-posterior variant]), read from selection's table (selected/<experiment>.csv)
with its weights as a one-member ensemble, or a note saying why there is none.  Read by the
analyses that measure selected models and by the figures that draw them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import grid
from ..catalogue import method_legend, selected_path
from ..engine.ensembles import load_member
from ..evaluation import posteriors as P
from ..files import read_csv

VERSION = 0                       # the data version whose selected restart the figures draw


@dataclass
class Selected:
    """The selected restart of version 0 of one (dataset, method, K): its row and weights, or a note."""

    experiment: str
    dataset: str
    method: str
    row: pd.Series | None
    model: object | None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.model is not None

    @property
    def sigma2(self) -> np.ndarray:
        return P.model_sigma2(self.model).numpy()

    def describe(self, short: bool = False) -> str:
        if self.row is None:
            return f"{method_legend(self.method)}: {self.note}"
        r = self.row
        where = f"v{VERSION} r{int(r['restart'])} ({r['init']} init)" if short else \
            f"version {VERSION}, restart {int(r['restart'])} ({r['init']} init)"
        return f"{method_legend(self.method)} [{r['setting']}], {where}"


def read_selected(outdir: str | Path, experiment: str) -> pd.DataFrame:
    path = Path(outdir) / selected_path(experiment)
    try:
        return read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame(columns=["dataset", "method", "latent_dim", "version", "restart", "setting"])


def selected_row(table: pd.DataFrame, experiment: str, dataset: str, method: str, version: int,
                 latent_dim: int | None = None, unlabelled_posterior: str | None = None) -> Selected:
    """The selected row of `version` (no weights yet), or a note saying why there is none.
    latent_dim, unlabelled_posterior (M2's variant): which of several selected models."""
    rows = table[(table["dataset"] == dataset) & (table["method"] == method)]
    if latent_dim is not None:
        rows = rows[rows["latent_dim"] == latent_dim]
    if unlabelled_posterior is not None:
        rows = rows[rows["unlabelled_posterior"] == unlabelled_posterior]
    if rows.empty:
        return Selected(experiment, dataset, method, None, None,
                        "no selected model (every restart of every setting failed)")
    here = rows[rows["version"] == version]
    if here.empty:
        others = ", ".join(str(v) for v in sorted(rows["version"].unique()))
        return Selected(experiment, dataset, method, None, None,
                        f"every restart of version {version} failed (versions with a model: {others})")
    return Selected(experiment, dataset, method, here.iloc[0], None)


def selected_stem(experiment: str, row: pd.Series, version: int) -> str:
    """The run stem of a selected restart (its weights: <stem>.pt) from its row in selection's table."""
    weights = ((float(row["alpha"]), float(row["gamma"])) if experiment in grid.SEMI_SUPERVISED_EXPERIMENTS
               else ())   # M2's members of one job differ in alpha and gamma too
    return grid.run_stem(experiment, row["dataset"], row["setting"], version, int(row["restart"]), *weights)


def load_selected(outdir: str | Path, table: pd.DataFrame, experiment: str, dataset: str, method: str,
                  version: int = VERSION, latent_dim: int | None = None,
                  unlabelled_posterior: str | None = None) -> Selected:
    """The selected restart of `version` of one (data set, method[, K][, M2's z-posterior
    variant]) with its weights as a one-member ensemble, or a note saying why there is none."""
    chosen = selected_row(table, experiment, dataset, method, version, latent_dim, unlabelled_posterior)
    if chosen.row is None:
        return chosen
    row = chosen.row
    stem = selected_stem(experiment, row, version)
    path = Path(outdir) / f"{stem}.pt"
    if not path.exists():
        return Selected(experiment, dataset, method, row, None, f"weights missing:\n{stem}.pt")
    return Selected(experiment, dataset, method, row, load_member(path))
