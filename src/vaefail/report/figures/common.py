"""What the figures share: styles and constants, the selected model of a data version
(read from selection's table, or a note saying why there is none), and drawing helpers."""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ... import grid
from ...evaluation import posteriors as P
from ...catalogue import DATASET_TITLES, method_legend, selected_path
from ...data.datasets import example
from ...engine.ensembles import load_member
from ...files import read_csv, write_bytes
from ...randomness import derive_seed
from ...engine.sampling import GeneratorNoise

PNG_DPI = 110
VERSION = 0                       # the data version whose selected restart is drawn
Z_CURVE = (-3.0, 3.0)             # z range of the f(z) curves
Z_PLOT = (-4.0, 4.0)              # z range shown for 1-D posteriors
GRID_1D = (-5.0, 5.0, 4001)       # 1-D posterior grid (spacing 0.0025)
POINT_COLOURS = plt.get_cmap("tab10").colors
DATA_COLOUR, SAMPLE_COLOUR = "#4c72b0", "#dd8452"

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                     "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.titlesize": 11})


# --- the selected model -----------------------------------------------------------------
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


def dataset_title(dataset: str) -> str:
    ex = example(dataset)
    return DATASET_TITLES.get(ex.base, ex.base) + (" (embedded in 5-D)" if ex.embedded else "")


def fmt_sigma2(values) -> str:
    v = np.atleast_1d(np.asarray(values, dtype=float))
    if v.size == 1 or np.allclose(v, v.mean(), rtol=1e-3):
        return f"{v.mean():.3g}"
    return f"{v.mean():.3g} (mean of {', '.join(f'{a:.3g}' for a in v)})"


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


def figure_noise(settings: dict, *parts) -> GeneratorNoise:
    """The noise of a figure's model samples, seeded from the run's seed and the figure's parts."""
    return GeneratorNoise(torch.Generator().manual_seed(derive_seed(settings["seed"], "figure", *parts)))


# --- drawing helpers --------------------------------------------------------------------
def empty_panel(ax, note: str, width: int = 28) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linestyle(":")
        spine.set_color("0.6")
    text = "\n".join(textwrap.fill(part, width) for part in note.split("\n"))
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.3")


def marker_size(n: int) -> float:
    """Scatter marker area: larger for small samples, so 200 or 2000 points both read well."""
    return float(np.clip(4000 / max(n, 1), 3, 14))


def data_limits(x: np.ndarray, pad: float = 0.08) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = np.quantile(x[:, :2], 0.002, axis=0), np.quantile(x[:, :2], 0.998, axis=0)
    span = (hi - lo).max()
    mid = (hi + lo) / 2
    half = span * (0.5 + pad)
    return (mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)


def save(fig, out: str | Path) -> None:
    """Write the figure to <out>.pdf and <out>.png, each atomically (files.write_bytes)."""
    out = Path(out)
    engine = fig.get_layout_engine()
    if engine is not None:          # lay out once (at the PNG's dpi), not once per format
        fig.set_dpi(PNG_DPI)
        engine.execute(fig)
        fig.set_layout_engine("none")
    # no creation dates in the files: the same inputs give byte-identical figures
    for ext, kwargs in (("pdf", {"metadata": {"CreationDate": None}}), ("png", {"dpi": PNG_DPI})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, **kwargs)
        write_bytes(out.with_name(out.name + f".{ext}"), buffer.getvalue())
    plt.close(fig)


def grid_1d() -> torch.Tensor:
    return P.uniform_grid(*GRID_1D)


# `truth` below: the ground truth of a data set as a figure loads it (unsupervised.Truth,
# semisupervised.SSTruth), whose test points x (n, D) are numbered in the panels.
def point_label(truth, i: int, k: int) -> str:
    x = truth.x[i]
    coords = ", ".join(f"{v:.2f}" for v in x[:2]) + (", ..." if x.size > 2 else "")
    return f"$x_{k + 1}$ = ({coords})"


def mark_points(ax, truth, points: list[int]) -> None:
    for k, i in enumerate(points):
        c = POINT_COLOURS[k % len(POINT_COLOURS)]
        ax.scatter(*truth.x[i, :2], s=70, facecolor="white", edgecolor=c, linewidth=2, zorder=5)
        ax.annotate(str(k + 1), truth.x[i, :2], xytext=(5, 5), textcoords="offset points",
                    fontsize=9, fontweight="bold", color=c, zorder=6)
