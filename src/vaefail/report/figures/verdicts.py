"""Figures of the verdicts: the forest plot of every claim (tables/claims.csv) and the collapse
of Figure 2 against the share of observed labels (tables/separation-labelshare.csv).

The claims' effects are in their own units (kNN statistic, shares of points, nats, sigma^2),
so the forest plot scales each row by its own largest distance from its threshold: the
position of the interval against the line is comparable between rows, its length is not.
The row's numbers are printed beside it.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ...catalogue import CLAIMS_TABLE, LABEL_SHARE_TABLE, table_path
from ...criteria import COLLAPSED_FRACTION
from ...files import read_csv
from ..evidence import CONTRADICTED, EXACT, INCONCLUSIVE, SUPPORTED
from .common import save

VERDICT_COLOURS = {SUPPORTED: "tab:green", CONTRADICTED: "tab:red", INCONCLUSIVE: "0.55", EXACT: "tab:blue"}
ROW_INCHES = 0.24


def _plain(text: str) -> str:
    """A claim's LaTeX wording as figure text (mathtext needs balanced $)."""
    return text.replace("\\sigma", "σ").replace("\\geq", "≥").replace("$", "").replace("\\", "")


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "--"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def draw_forest(settings: dict, outdir: str, out: str) -> None:
    claims = read_csv(Path(outdir) / table_path(CLAIMS_TABLE))
    claims = claims.reset_index(drop=True)
    n = len(claims)
    fig, ax = plt.subplots(figsize=(11, 1.2 + ROW_INCHES * (n + 2 * claims["section"].nunique())))
    y, ticks, labels = 0.0, [], []
    for section, rows in claims.groupby("section", sort=False):
        y -= 0.6
        ax.text(-1.05, y, section, fontsize=8.5, fontweight="bold", ha="left", va="center")
        y -= 1.0
        for _, r in rows.iterrows():
            threshold = float(r["threshold"]) if math.isfinite(r["threshold"]) else 0.0
            points = np.array([r["effect"], r["ci_low"], r["ci_high"]], dtype=float) - threshold
            scale = np.nanmax(np.abs(points)) if np.isfinite(points).any() and np.nanmax(np.abs(points)) > 0 else 1.0
            e, lo, hi = points / scale
            colour = VERDICT_COLOURS.get(r["verdict"], "k")
            if math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            if math.isfinite(e):
                ax.plot([e], [y], "o", color=colour, ms=4.5)
            ticks.append(y)
            labels.append(_plain(str(r["claim"]))[:110])
            ax.text(1.08, y, f"{_fmt(r['effect'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]  n={int(r['n'])}  "
                             f"{r['verdict']}", fontsize=6.5, va="center", color=colour)
            y -= 1.0
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_ylim(y + 0.4, 0.4)
    ax.set_xlim(-1.1, 1.1)
    ax.set_xticks([-1, 0, 1])
    ax.set_xticklabels(["opposite of the claim", "threshold", "as the paper claims"], fontsize=7)
    ax.set_title("The paper's claims: effect and 95 % interval per claim (each row scaled to its own range; "
                 "its numbers at right)", fontsize=8.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [plt.Line2D([], [], color=c, lw=2.2, marker="o", ms=4, label=v) for v, c in VERDICT_COLOURS.items()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.4 / fig.get_figheight()), fontsize=7,
              frameon=False, ncol=4)
    fig.subplots_adjust(left=0.47, right=0.78, top=1 - 0.5 / fig.get_figheight(), bottom=0.8 / fig.get_figheight())
    save(fig, out)


def draw_label_share(settings: dict, outdir: str, out: str) -> None:
    table = read_csv(Path(outdir) / table_path(LABEL_SHARE_TABLE))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    gammas = sorted(table["gamma"].unique()) if len(table) else []
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(1, len(gammas))))
    for ax, init in zip(axes, ("random", "gt")):
        rows = table[table["init"] == init] if len(table) else table
        for gamma, colour in zip(gammas, colours):
            g = rows[rows["gamma"] == gamma]
            if g.empty:
                continue
            relative = g["separation"] / g["separation_truth"]
            stats = relative.groupby(g["label_fraction"]).agg(["mean", "std", "size"])
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), color=colour, marker="o", ms=4,
                        capsize=3, label=f"γ = {gamma:g}")
            ax.plot(g["label_fraction"], relative, ".", color=colour, alpha=0.35, ms=3)
        ax.axhline(COLLAPSED_FRACTION, color="tab:red", lw=0.8, ls="--")
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log")
        shares = sorted(table["label_fraction"].unique()) if len(table) else []
        ax.set_xticks(shares)
        ax.set_xticklabels([f"{v:g}" for v in shares])
        ax.minorticks_off()
        ax.set_xlabel("share of observed labels")
        ax.set_title({"random": "random starts", "gt": "starts at the truth"}[init], fontsize=9)
    axes[0].set_ylabel("label separation / truth's")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle("Discrete Semi-Circle, VAE with the paper's q(z|x) in U: the collapse against the labelled share\n"
                 f"(dashed: collapsed below {COLLAPSED_FRACTION:g}; mean ± sd over versions and α; dots: single restarts)",
                 fontsize=8.5)
    fig.tight_layout()
    save(fig, out)
