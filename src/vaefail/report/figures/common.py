"""What the figures share: styles and constants, the noise of a figure's samples, and drawing
helpers.  The selected model a figure draws comes from analyses.selected."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ...catalogue import DATASET_TITLES
from ...data.datasets import example
from ...engine.sampling import GeneratorNoise
from ...evaluation import posteriors as P
from ...files import write_bytes
from ...randomness import derive_seed

PNG_DPI = 110
Z_CURVE = (-3.0, 3.0)             # z range of the f(z) curves
Z_PLOT = (-4.0, 4.0)              # z range shown for 1-D posteriors
POINT_COLOURS = plt.get_cmap("tab10").colors
DATA_COLOUR, SAMPLE_COLOUR = "#4c72b0", "#dd8452"

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8,
                     "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
                     "axes.spines.right": False, "figure.titlesize": 11})


def dataset_title(dataset: str) -> str:
    ex = example(dataset)
    return DATASET_TITLES.get(ex.base, ex.base) + (" (embedded in 5-D)" if ex.embedded else "")


def dataset_short(dataset: str) -> str:
    ex = example(dataset)
    return DATASET_TITLES.get(ex.base, ex.base) + (" (5-D)" if ex.embedded else "")




def fmt_sigma2(values) -> str:
    v = np.atleast_1d(np.asarray(values, dtype=float))
    if v.size == 1 or np.allclose(v, v.mean(), rtol=1e-3):
        return f"{v.mean():.3g}"
    return f"{v.mean():.3g} (mean of {', '.join(f'{a:.3g}' for a in v)})"


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
    return P.uniform_grid(*P.GRID_1D)


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
