"""The semi-supervised figures from saved results: the paper's Figure 2 (Discrete Semi-Circle:
true vs learned f(y, z) of the VAE and the IWAE) and the panels (a)-(e) of Figures 15-20.

Each figure uses the selected model (selected/semisupervised.csv) of data version 0: the chosen
restart of its chosen (setting, alpha, gamma), i.e. runs/semisupervised/<dataset>/<setting>/
a<alpha>-g<gamma>/v0/r<restart>.pt, together with the ground-truth surrogate decoder
(surrogates/<dataset>.pt, a function of [encoded y, z]) and the version-0 data
(data/<dataset>/v0.npz: test points with their true y and z, and the cohort samples
x_cohort<i> of p(x | y = cohort value)).  The true sigma^2 is the example's noise variance;
the learned models carry their fixed sigma^2.

f(y, z) is drawn coordinate by coordinate against z (one curve per y): on the Semi-Circles
every f(y, .) traces the same upper semi-circle in x-space, so curves in x-space would lie on
top of each other and only their speed along the circle -- the thing y changes -- would be
hidden in a colour scale.

Exact posteriors are evaluated on grids (evaluation.posteriors): for discrete y the posterior
over z, p(z | x) = sum_y p(y, z | x), on a 1-D z-grid, with the encoder's mixture
sum_y q(y | x) q(z | x, y); for continuous y the joint p(y, z | x) (priors N(0, 1) on both)
on a 2-D grid, drawn as highest-density regions, with the inference model's joint
q(y | x) q(z | x, y) (encoder evaluated at every y of the grid) as dashed contours.  The grids
span [-5, 5] (z, discrete y) and [-4.5, 4.5]^2 ((y, z), continuous y) and are normalised on
that window: ample for the prior, but a learned f may put posterior mass beyond it (then the
drawn density piles up at the window's edge).

A selected model that does not exist (every restart failed, or its weights are missing) is
drawn as an empty panel with a note.  Random numbers come from generators seeded from
settings["seed"], so a figure is reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ... import grid
from ...analyses.selected import VERSION, Selected, load_selected, read_selected
from ...catalogue import FIGURE2_DATASET, method_legend
from ...data.dataset_files import dataset_labels
from ...data.datasets import example
from ...data.surrogate import GroundTruthDecoder
from ...engine.sampling import m2_samples
from ...evaluation import posteriors as P
from ...files import load_npz
from ...models.m2 import encode_labels
from .common import (
    DATA_COLOUR,
    POINT_COLOURS,
    SAMPLE_COLOUR,
    Z_CURVE,
    Z_PLOT,
    data_limits,
    dataset_title,
    empty_panel,
    figure_noise,
    fmt_sigma2,
    grid_1d,
    mark_points,
    marker_size,
    point_label,
    save,
)

EXPERIMENT = "semisupervised"
POINT_QUANTILES = (0.05, 0.27, 0.5, 0.73, 0.95)    # test points at these quantiles of their angle
CONTINUOUS_CURVE_LABELS = (-3.5, -1.0, 0.0, 1.0, 3.5)
GRID_2D = (-4.5, 4.5, 481)                          # (y, z) grid of continuous-label posteriors
PLOT_2D = (-4.0, 4.0)
HDR_MASSES = (0.5, 0.9, 0.99)                       # filled regions of the exact posterior
Q_MASSES = (0.5, 0.9)                               # dashed contours of q
Y_CMAP = plt.get_cmap("plasma")


# --- loading ----------------------------------------------------------------------------
@dataclass
class SSTruth:
    dataset: str
    label_kind: str
    classes: int
    decoder: GroundTruthDecoder    # [encoded y, z] -> x-mean
    noise_variance: float
    x: np.ndarray                  # version-0 test data (n, D)
    y: np.ndarray                  # their true labels (n,)
    z: np.ndarray                  # their true latents (n,)
    cohort_values: list
    cohorts: list                  # samples of p(x | y = cohort value), one (n_i, D) array each

    @property
    def discrete(self) -> bool:
        return self.label_kind == "discrete"

    @property
    def labels(self):
        return dataset_labels(self.dataset)


def load_ss_truth(outdir: str | Path, dataset: str) -> SSTruth:
    ex = example(dataset)
    decoder = GroundTruthDecoder(Path(outdir) / grid.surrogate_path(dataset))
    data = load_npz(Path(outdir) / grid.data_path(dataset, VERSION))
    values = data["cohort_values"].tolist()
    return SSTruth(dataset, ex.label_kind, ex.classes, decoder, ex.noise_variance,
                   data["x_test"].astype(np.float64), data["y_test"].reshape(-1).astype(np.float64),
                   data["z_test"].reshape(-1).astype(np.float64), values,
                   [data[f"x_cohort{i}"].astype(np.float64) for i in range(len(values))])


def describe(sel: Selected, short: bool = False) -> str:
    """method [setting], alpha, gamma, version, restart (init) of a selected model."""
    if sel.row is None:
        return f"{method_legend(sel.method)}: {sel.note}"
    r = sel.row
    weights = f"$\\alpha$ = {float(r['alpha']):g}, $\\gamma$ = {float(r['gamma']):g}"
    where = (f"v{VERSION} r{int(r['restart'])} ({r['init']} init)" if short
             else f"version {VERSION}, restart {int(r['restart'])} ({r['init']} init)")
    return f"{method_legend(sel.method)} [{r['setting']}], {weights}, {where}"


def metrics_text(sel: Selected) -> str:
    if sel.row is None:
        return ""
    r, parts = sel.row, []
    if "knn_test" in r and np.isfinite(r["knn_test"]):
        parts.append(f"smooth-kNN p(x) (test) = {r['knn_test']:.3g}")
    if "accuracy_test" in r and np.isfinite(r.get("accuracy_test", np.nan)):
        parts.append(f"q(y|x) accuracy = {r['accuracy_test']:.3f}")
    if "rmse_test" in r and np.isfinite(r.get("rmse_test", np.nan)):
        parts.append(f"q(y|x) RMSE = {r['rmse_test']:.3f}")
    return "; ".join(parts)


# --- model helpers ----------------------------------------------------------------------
def encoded(truth: SSTruth, value, n: int) -> torch.Tensor:
    return encode_labels(truth.labels, np.full(n, value if not truth.discrete else int(value)))


def f_curve(decoder, truth: SSTruth, value, zc: torch.Tensor) -> np.ndarray:
    """f(y = value, z) on the z values zc (G,) for a decoder of [encoded y, z]: (G, D)."""
    with torch.no_grad():
        return decoder(torch.cat([encoded(truth, value, zc.numel()), zc.unsqueeze(-1)], -1)).numpy()


def y_colour(truth: SSTruth, value):
    if truth.discrete:
        return Y_CMAP(0.85 * value / max(truth.classes - 1, 1))
    lo, hi = min(CONTINUOUS_CURVE_LABELS), max(CONTINUOUS_CURVE_LABELS)
    return Y_CMAP(0.85 * (value - lo) / (hi - lo))


def curve_labels(truth: SSTruth) -> list:
    return list(range(truth.classes)) if truth.discrete else list(CONTINUOUS_CURVE_LABELS)


def choose_ss_points(truth: SSTruth) -> list[int]:
    """Test points at quantiles of their angle atan2(x_2, x_1), i.e. spread along the semi-circle."""
    angle = np.arctan2(truth.x[:, 1], truth.x[:, 0])
    chosen: list[int] = []
    for q in POINT_QUANTILES:
        order = np.argsort(np.abs(angle - np.quantile(angle, q)), kind="stable")
        chosen.append(int(next(i for i in order if i not in chosen)))
    return sorted(chosen, key=lambda i: angle[i])


def fmt_label(truth: SSTruth, value) -> str:
    return f"{int(value)}" if truth.discrete else f"{value:.2f}"


# --- panels -----------------------------------------------------------------------------
def draw_f_column(axes, truth: SSTruth, decoder, title: str, note: str | None = None,
                  ylabels: bool = True) -> None:
    """f(y, z) coordinate by coordinate (one axis per coordinate, top to bottom), one curve per y."""
    zc = torch.linspace(*Z_CURVE, 601, dtype=torch.float64)
    axes[0].set_title(title)
    if decoder is None:
        for ax in axes:
            empty_panel(ax, note or "")
        return
    for value in curve_labels(truth):
        f = f_curve(decoder, truth, value, zc)
        for d, ax in enumerate(axes):
            ax.plot(zc, f[:, d], color=y_colour(truth, value), lw=1.8, label=f"y = {fmt_label(truth, value)}")
    for d, ax in enumerate(axes):
        ax.set(xlim=Z_CURVE, ylabel=f"$x_{d + 1}$ = $f^{{({d + 1})}}(y, z)$" if ylabels else "")
    axes[-1].set_xlabel("z")


def share_rows(axes) -> None:
    """Common y-limits along each row of a (rows, cols) grid of f-panels, empty panels left alone
    (matplotlib's sharey would also strip the ticks of the non-empty ones)."""
    for row in np.atleast_2d(axes):
        full = [ax for ax in row if ax.has_data()]
        if not full:
            continue
        lo = min(ax.get_ylim()[0] for ax in full)
        hi = max(ax.get_ylim()[1] for ax in full)
        for ax in full:
            ax.set_ylim(lo, hi)
    for ax in np.atleast_2d(axes)[:-1].flat:
        if ax.has_data():
            ax.tick_params(labelbottom=False)


def scatter_pair(ax, data: np.ndarray, samples: np.ndarray | None, sample_label: str, data_label: str) -> None:
    s = marker_size(len(data))
    ax.scatter(*data[:, :2].T, s=s, alpha=0.45, color=DATA_COLOUR, linewidths=0, label=data_label)
    if samples is not None:
        ax.scatter(*samples[:, :2].T, s=marker_size(len(samples)), alpha=0.45, color=SAMPLE_COLOUR,
                   linewidths=0, label=sample_label)
    leg = ax.legend(loc="lower center", markerscale=3, framealpha=0.8, fontsize=7)
    for h in leg.legend_handles:
        h.set_alpha(1)


def label_probabilities(p_y: np.ndarray, name: str) -> str:
    return ", ".join(f"{name}(y={c}|x) = {p:.2f}" for c, p in enumerate(p_y))


def draw_posteriors_discrete(axes_d, axes_e, truth: SSTruth, sel: Selected, points: list[int]) -> None:
    zg = grid_1d()
    x_sel = truth.x[points]
    joint_t, py_t = (a.numpy() for a in P.exact_posterior_discrete_label(
        truth.decoder, truth.noise_variance, x_sel, zg, truth.classes))
    if sel.ok:
        joint_l, py_l = (a.numpy() for a in P.exact_posterior_discrete_label(
            P.m2_decoder(sel.model), P.model_sigma2(sel.model), x_sel, zg, truth.classes))
        q, q_y = (a.numpy() for a in P.m2_encoder_mixture_discrete(sel.model, x_sel, zg))
    for k, i in enumerate(points):
        c = POINT_COLOURS[k % len(POINT_COLOURS)]
        for ax, joint, post_name in ((axes_d[k], joint_t, "p"), (axes_e[k], joint_l if sel.ok else None, "p_\\theta")):
            if joint is None:
                ax.set_title(point_label(truth, i, k), fontsize=8)
                empty_panel(ax, sel.note)
                continue
            ax.fill_between(zg, joint[k].sum(0), color=c, alpha=0.3, lw=0, label=f"${post_name}(z|x)$")
            ax.plot(zg, joint[k].sum(0), color=c, lw=0.8)
            for y in range(truth.classes):
                ax.plot(zg, joint[k, y], "-", color=y_colour(truth, y), lw=1.1, label=f"${post_name}(z, y={y}|x)$")
            ax.set(xlim=Z_PLOT, xlabel="z")
        axes_d[k].axvline(truth.z[i], color="0.3", ls="--", lw=0.8)
        axes_d[k].set_title(f"{point_label(truth, i, k)}; true y = {int(truth.y[i])}, z = {truth.z[i]:.2f}\n"
                            f"{label_probabilities(py_t[k], 'p')}", fontsize=8)
        if sel.ok:
            axes_e[k].plot(zg, q[k], "--", color="k", lw=1.2, label="$\\sum_y q_\\phi(y|x) q_\\phi(z|x,y)$")
            probs = (label_probabilities(py_l[k], "$p_\\theta$") + "\n"
                     + label_probabilities(q_y[k], "$q_\\phi$"))
            axes_e[k].set_title(f"{point_label(truth, i, k)}; true y = {int(truth.y[i])}\n{probs}", fontsize=8)
    axes_d[0].legend(loc="best", fontsize=7)
    if sel.ok:
        axes_e[0].legend(loc="best", fontsize=7)
    axes_d[0].set_ylabel("density")
    axes_e[0].set_ylabel("density")


def hdr_panel(ax, yg: np.ndarray, zg: np.ndarray, dens: np.ndarray, colour) -> None:
    """Highest-density regions (HDR_MASSES) of a (G_y, G_z) density, y horizontal, z vertical."""
    levels = P.hdr_levels(dens, [torch.from_numpy(yg), torch.from_numpy(zg)], HDR_MASSES)
    fill = np.concatenate([levels[::-1], [dens.max() * 1.0001]])
    ax.contourf(yg, zg, dens.T, levels=fill, cmap="Blues", alpha=0.9)
    ax.contour(yg, zg, dens.T, levels=levels[:2][::-1], colors=[colour], linewidths=0.9)


def q_contours(ax, yg: np.ndarray, zg: np.ndarray, dens: np.ndarray) -> None:
    levels = P.hdr_levels(dens, [torch.from_numpy(yg), torch.from_numpy(zg)], Q_MASSES)
    ax.contour(yg, zg, dens.T, levels=np.unique(levels[::-1]), colors="k", linestyles="--", linewidths=1.0)


def draw_posteriors_continuous(axes_d, axes_e, truth: SSTruth, sel: Selected, points: list[int]) -> None:
    g = P.uniform_grid(*GRID_2D)
    gn = g.numpy()
    w = P.trapezoid_weights(g).numpy()
    x_sel = truth.x[points]
    post_t = P.exact_posterior_continuous_label(truth.decoder, truth.noise_variance, x_sel, g, g).numpy()
    if sel.ok:
        post_l = P.exact_posterior_continuous_label(P.m2_decoder(sel.model), P.model_sigma2(sel.model),
                                                    x_sel, g, g).numpy()
        q = P.m2_encoder_joint_continuous(sel.model, x_sel, g, g).numpy()
        q_y = P.m2_label_posterior(sel.model, x_sel).numpy()

    def y_summary(dens, name):
        p_y = dens @ w                               # marginal over z: p(y | x) on the y-grid
        mean = float((p_y * w) @ gn)
        return f"{name}: E[y|x] = {mean:.2f}, P(y > 0|x) = {float((p_y * w)[gn > 0].sum()):.2f}"

    for k, i in enumerate(points):
        c = POINT_COLOURS[k % len(POINT_COLOURS)]
        ax = axes_d[k]
        hdr_panel(ax, gn, gn, post_t[k], c)
        ax.plot(truth.y[i], truth.z[i], "*", color="k", ms=9, mec="white", mew=0.6)
        ax.set_title(f"{point_label(truth, i, k)}; true y = {truth.y[i]:.2f}, z = {truth.z[i]:.2f} (star)\n"
                     f"{y_summary(post_t[k], 'true p')}", fontsize=8)
        ax = axes_e[k]
        if not sel.ok:
            ax.set_title(point_label(truth, i, k), fontsize=8)
            empty_panel(ax, sel.note)
            continue
        hdr_panel(ax, gn, gn, post_l[k], c)
        q_contours(ax, gn, gn, q[k])
        ax.axvline(truth.y[i], color="0.3", ls=":", lw=0.8)
        ax.set_title(f"{point_label(truth, i, k)}; true y = {truth.y[i]:.2f} (dotted)\n"
                     f"{y_summary(post_l[k], 'learned p')}\n"
                     f"$q_\\phi(y|x)$ = N({q_y[k, 0]:.2f}, {np.exp(q_y[k, 1]):.3g})", fontsize=8)
    for ax in (*axes_d, *axes_e):
        if ax.has_data():
            ax.set(xlim=PLOT_2D, ylim=PLOT_2D, xlabel="y", ylabel="z")


# --- figure "ss-panels" (Figures 15-20) ---------------------------------------------------
def draw_ss_panels(settings: dict, outdir: str, out: str, dataset: str, method: str) -> None:
    truth = load_ss_truth(outdir, dataset)
    sel = load_selected(outdir, read_selected(outdir, EXPERIMENT), EXPERIMENT, dataset, method,
                        unlabelled_posterior=settings["ss_unlabelled_posteriors"][0])
    points = choose_ss_points(truth)
    n_cohorts = len(truth.cohorts)

    fig = plt.figure(figsize=(19, 14.5), layout="constrained")
    top, row_d, row_e = fig.subfigures(3, 1, height_ratios=[1.3, 1, 1.05])
    sub_a, sub_b, sub_c = top.subfigures(1, 3, width_ratios=[1, 1.25, 0.95 * n_cohorts])
    ax_a = sub_a.subplots()
    axes_b = sub_b.subplots(2, 2)
    axes_c = np.atleast_1d(sub_c.subplots(1, n_cohorts, sharex=True, sharey=True))
    xlim, ylim = data_limits(np.concatenate([truth.x, *truth.cohorts]))
    noise = figure_noise(settings, "ss-panels", dataset, method)
    name = method_legend(method)

    # (a) true vs learned p(x)
    xs = m2_samples(sel.model, len(truth.x), noise)[0].numpy() if sel.ok else None
    scatter_pair(ax_a, truth.x, xs, f"{name} samples, y ~ p(y)", "test data")
    mark_points(ax_a, truth, points)
    ax_a.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    sub_a.suptitle("(a) true vs learned $p(x)$" + ("" if sel.ok else f"\n({sel.note})"), fontsize=10)

    # (b) true vs learned f(y, z)
    draw_f_column(axes_b[:, 0], truth, truth.decoder, "true $f(y, z)$")
    draw_f_column(axes_b[:, 1], truth, P.m2_decoder(sel.model) if sel.ok else None,
                  f"learned $f_\\theta(y, z)$ ({name})", sel.note, ylabels=False)
    share_rows(axes_b)
    axes_b[0, 0].legend(loc="best", fontsize=7)
    sub_b.suptitle("(b) true vs learned $f(y, z)$, each coordinate against z", fontsize=10)

    # (c) true vs learned p(x | y) per cohort
    for j, (value, cohort) in enumerate(zip(truth.cohort_values, truth.cohorts)):
        ax = axes_c[j]
        samples = m2_samples(sel.model, len(cohort), noise, value)[0].numpy() if sel.ok else None
        scatter_pair(ax, cohort, samples, f"{name} samples", f"true p(x | y = {fmt_label(truth, value)})")
        knn = sel.row.get(f"knn_cohort_test_{j}") if sel.row is not None else None
        title = f"y = {fmt_label(truth, value)}"
        if knn is not None and np.isfinite(knn):
            title += f": smooth-kNN (test) = {knn:.3g}"
        if not sel.ok:
            title += f"\n({sel.note})"
        ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", title=title)
    axes_c[0].set_ylabel("$x_2$")
    sub_c.suptitle("(c) true vs learned data conditionals $p(x | y)$ (cohorts)", fontsize=10)

    # (d), (e) posteriors at the numbered test points
    axes_d = row_d.subplots(1, len(points))
    axes_e = row_e.subplots(1, len(points))
    learned_s2 = fmt_sigma2(sel.sigma2) if sel.ok else "n/a"
    if truth.discrete:
        draw_posteriors_discrete(axes_d, axes_e, truth, sel, points)
        what_d = ("$p(z|x) = \\sum_y p(y, z|x)$ (shaded) and its parts $p(y, z|x)$ (lines coloured by y "
                  "as in (b)); dashed grey: the point's true z")
        what_e = ("dashed: the encoder's $\\sum_y q_\\phi(y|x)\\, q_\\phi(z|x, y)$"
                  if sel.ok and sel.model.unlabelled_posterior == "xy" else "dashed: the encoder's $q_\\phi(z|x)$")
    else:
        draw_posteriors_continuous(axes_d, axes_e, truth, sel, points)
        masses = ", ".join(f"{m:g}" for m in HDR_MASSES)
        what_d = (f"joint $p(y, z|x)$ (priors N(0, 1) on y and z): highest-density regions of mass {masses}")
        joint = ("q_\\phi(y|x)\\, q_\\phi(z|x, y)" if sel.ok and sel.model.unlabelled_posterior == "xy"
                 else "q_\\phi(y|x)\\, q_\\phi(z|x)")
        what_e = (f"dashed: the inference model's joint ${joint}$, regions of mass "
                  + ", ".join(f"{m:g}" for m in Q_MASSES))
    row_d.suptitle(f"(d) exact posteriors under the TRUE $f$ (surrogate, true $\\sigma^2$ = {truth.noise_variance:g}):"
                   f" {what_d}; points numbered as in (a)", fontsize=10)
    row_e.suptitle(f"(e) exact posteriors under the LEARNED $f_\\theta$ ($\\sigma^2$ = {learned_s2}, fixed): "
                   f"same layout; {what_e}", fontsize=10)

    metrics = metrics_text(sel)
    fig.suptitle(f"{dataset_title(dataset)} (semi-supervised M2): {describe(sel)}"
                 + (f"\n{metrics}" if metrics else ""), fontweight="bold")
    save(fig, out)


# --- figure "figure2" ---------------------------------------------------------------------
def draw_figure2(settings: dict, outdir: str, out: str) -> None:
    """Ground truth, VAE and IWAE f(y, z) (two rows, one per coordinate of x) for each variant
    of M2's unlabelled z-posterior in ss_unlabelled_posteriors (a block of rows each)."""
    variants = settings["ss_unlabelled_posteriors"]
    fig, axes = plt.subplots(2 * len(variants), 3, figsize=(13, 3.1 * 2 * len(variants)), layout="constrained",
                             squeeze=False)
    if FIGURE2_DATASET not in settings.get("ss_datasets", []):
        for ax in axes.flat:
            empty_panel(ax, f"{FIGURE2_DATASET} is not among ss_datasets")
        save(fig, out)
        return
    truth = load_ss_truth(outdir, FIGURE2_DATASET)
    table = read_selected(outdir, EXPERIMENT)
    for block, variant in enumerate(variants):
        rows = axes[2 * block:2 * block + 2]
        draw_f_column(rows[:, 0], truth, truth.decoder, "(a) ground truth $f(y, z)$")
        for col, (letter, method) in enumerate((("b", "vae"), ("c", "iwae")), start=1):
            sel = load_selected(outdir, table, EXPERIMENT, FIGURE2_DATASET, method, unlabelled_posterior=variant)
            title = f"({letter}) {describe(sel, short=True) if sel.row is not None else method_legend(method)}"
            title = f"{VARIANT_LABELS[variant]}: " + title.replace(", v", ",\nv")
            draw_f_column(rows[:, col], truth, P.m2_decoder(sel.model) if sel.ok else None, title,
                          sel.note, ylabels=False)
        share_rows(rows)
    axes[0, 0].legend(loc="best")
    fig.suptitle(f"{dataset_title(FIGURE2_DATASET)}: ground-truth vs learned likelihood function "
                 f"$f(y, z)$, each coordinate against z, one curve per y\n(selected models of data version "
                 f"{VERSION}; the paper: the VAE's curves for y = 0 and 1 nearly coincide, the IWAE's stay apart but overfit)",
                 fontweight="bold")
    save(fig, out)


VARIANT_LABELS = {"x": "U with $q(z|x)$ (the paper)", "xy": "U with $q(z|x,y)$ (Kingma et al.)"}
