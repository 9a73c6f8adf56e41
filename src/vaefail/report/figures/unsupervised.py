"""The unsupervised figures from saved results: Figure 1, the panels (a)-(e) of Figures 6-14
and the latent-dimension posteriors of Figures 21-22.

Each figure uses the selected model (selected/<experiment>.csv) of data version 0: its
chosen restart's weights (runs/.../v0/r<j>.pt), the ground-truth surrogate decoder
(surrogates/<base>.pt) and the version-0 test data (data/<dataset>/v0.npz).  Exact posteriors
are evaluated on grids (evaluation.posteriors); random numbers (samples of the learned models)
come from generators seeded from settings["seed"], so a figure is reproducible.

A selected model that does not exist (every restart of version 0 failed, or its weights are
missing) is drawn as an empty panel with a note.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection

from ... import grid
from ...analyses.selected import VERSION, load_selected, read_selected
from ...catalogue import method_legend
from ...data.datasets import example
from ...data.surrogate import GroundTruthDecoder
from ...engine.sampling import vae_samples
from ...evaluation import posteriors as P
from ...files import load_npz
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

SCORE_GRID_1D = (-5.0, 5.0, 1001)  # coarser grid to score multi-modality of every test point
WINDOW_KD = 4.5                   # K >= 2 grids start on [-WINDOW_KD, WINDOW_KD]^K
GRID_KD = {2: (161, 161), 3: (61, 61)}   # (coarse, zoomed) points per axis


# --- loading ----------------------------------------------------------------------------
@dataclass
class Truth:
    dataset: str
    decoder: GroundTruthDecoder
    noise_variance: float
    x: np.ndarray          # version-0 test data (n, D)
    z: np.ndarray          # their true latents (n,)


def load_truth(outdir: str | Path, dataset: str) -> Truth:
    ex = example(dataset)
    decoder = GroundTruthDecoder(Path(outdir) / grid.surrogate_path(ex.base), ex.embedded)
    data = load_npz(Path(outdir) / grid.data_path(dataset, VERSION))
    return Truth(dataset, decoder, ex.noise_variance, data["x_test"].astype(np.float64),
                 data["z_test"].reshape(-1).astype(np.float64))


# --- drawing helpers --------------------------------------------------------------------
def coloured_curve(ax, xy: np.ndarray, z: np.ndarray, cmap="viridis", lw=1.4):
    """The curve xy(z) coloured by z, drawn thin over the scatter of points."""
    segments = np.stack([xy[:-1, :2], xy[1:, :2]], axis=1)
    lc = LineCollection(segments, cmap=cmap, norm=plt.Normalize(z.min(), z.max()), linewidth=lw, zorder=3)
    lc.set_array((z[:-1] + z[1:]) / 2)
    ax.add_collection(lc)
    return lc


def choose_points(truth: Truth, quantiles: tuple[float, ...], n_multimodal: int
                  ) -> tuple[list[int], np.ndarray, list[bool]]:
    """Test points spread along the data (nearest to quantiles of their true z), plus the
    n_multimodal points whose true posterior (under the ground-truth decoder and true sigma^2)
    has the most mass outside its main mode (`posteriors.second_mode_mass`).

    Returns the indices sorted by true z, their scores (mass outside the main mode) and, per
    point, whether it was added as a most-multi-modal pick."""
    g = P.uniform_grid(*SCORE_GRID_1D)
    ll = P.ground_truth_log_likelihood(truth.decoder, truth.noise_variance)
    score = P.second_mode_mass(P.exact_posterior_1d(ll, truth.x, g), g).numpy()
    chosen: list[int] = []
    for q in quantiles:
        order = np.argsort(np.abs(truth.z - np.quantile(truth.z, q)), kind="stable")
        chosen.append(int(next(i for i in order if i not in chosen)))
    picked = [int(i) for i in np.argsort(-score, kind="stable") if int(i) not in chosen][:n_multimodal]
    points = sorted(chosen + picked, key=lambda i: truth.z[i])
    return points, score[points], [i in picked for i in points]


MODE_NOTE = ("mass off main mode: posterior mass beyond the valley that separates the highest mode from "
             "the next one (0 if unimodal); (max): the test point where it is largest")


def multimodal_note(score: float, picked: bool) -> str:
    note = f"mass off main mode {score:.2f}"
    return note + (" (max)" if picked else "")


# --- figure "panels" (Figures 6-14) ------------------------------------------------------
def draw_panels(settings: dict, outdir: str, out: str, dataset: str, method: str,
                experiment: str = "unsupervised") -> None:
    truth = load_truth(outdir, dataset)
    sel = load_selected(outdir, read_selected(outdir, experiment), experiment, dataset, method, latent_dim=1)
    points, scores, picked = choose_points(truth, (0.03, 0.25, 0.5, 0.75, 0.97), 1)
    zg = grid_1d()
    zc = torch.linspace(*Z_CURVE, 2001, dtype=torch.float64)
    f_true = truth.decoder(zc.unsqueeze(-1)).numpy()
    if sel.ok:
        f_learned = P.model_decoder(sel.model)(zc.unsqueeze(-1)).numpy()

    fig = plt.figure(figsize=(16, 12.5), layout="constrained")
    top, row_d, row_e = fig.subfigures(3, 1, height_ratios=[1.45, 1, 1])
    ax_a, ax_b, ax_c = top.subplots(1, 3, gridspec_kw={"width_ratios": [1.15, 1.25, 1]})

    # (a) true vs learned p(x), learned f coloured by z, true f dashed
    xlim, ylim = data_limits(truth.x)
    ax_a.scatter(*truth.x[:, :2].T, s=marker_size(len(truth.x)), alpha=0.45, color=DATA_COLOUR, linewidths=0, label="test data")
    if sel.ok:
        xs = vae_samples(sel.model, len(truth.x), figure_noise(settings, "panels", dataset, method))[0].numpy()
        ax_a.scatter(*xs[:, :2].T, s=marker_size(len(truth.x)), alpha=0.45, color=SAMPLE_COLOUR, linewidths=0,
                     label=f"{method_legend(method)} samples")
        lc = coloured_curve(ax_a, f_learned, zc.numpy())
        top.colorbar(lc, ax=ax_a, label="z of learned $f_\\theta(z)$", shrink=0.6, pad=0.01)
    ax_a.plot(*f_true[:, :2].T, "k--", lw=0.9, label="true $f(z)$", zorder=4)
    mark_points(ax_a, truth, points)
    ax_a.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
             title="(a) true vs learned $p(x)$; learned $f_\\theta(z)$ coloured by z, $z\\in[-3,3]$")
    leg = ax_a.legend(loc="best", markerscale=3, framealpha=0.8)
    for h in leg.legend_handles:
        h.set_alpha(1)

    # (b) true vs learned f(z), coordinate by coordinate
    for d in range(f_true.shape[1]):
        c = f"C{d}"
        ax_b.plot(zc, f_true[:, d], "--", color=c, lw=1.3, label=f"true $f^{{({d + 1})}}$")
        if sel.ok:
            ax_b.plot(zc, f_learned[:, d], "-", color=c, lw=2, label=f"learned $f_\\theta^{{({d + 1})}}$")
    ax_b.set(xlabel="z", ylabel="$f(z)$", xlim=Z_CURVE, title="(b) true vs learned $f(z)$")
    ax_b.legend(loc="best", ncols=2)

    # (c) aggregated posterior vs prior
    if sel.ok:
        mu, log_var = P.model_encoder(sel.model, truth.x)
        agg = P.aggregate_posterior(mu, log_var, zg).numpy()
        ax_c.plot(zg, agg, color=SAMPLE_COLOUR, lw=2, label="aggregated $q_\\phi(z)$ (test x)")
        ax_c.plot(zg, P.standard_normal_density(zg), "k--", lw=1.3, label="prior N(0, 1)")
        ax_c.set(xlim=Z_PLOT, xlabel="z", ylabel="density", title="(c) aggregated posterior vs prior")
        ax_c.legend(loc="upper right")
    else:
        ax_c.set_title("(c) aggregated posterior vs prior")
        empty_panel(ax_c, sel.note)

    # (d) exact posteriors under the true decoder, (e) under the learned decoder with q(z|x)
    x_sel = truth.x[points]
    post_true = P.exact_posterior_1d(P.ground_truth_log_likelihood(truth.decoder, truth.noise_variance),
                                     x_sel, zg).numpy()
    if sel.ok:
        post_learned = P.exact_posterior_1d(P.model_log_likelihood(sel.model), x_sel, zg).numpy()
        q = P.gaussian_density(*P.model_encoder(sel.model, x_sel), zg).numpy()
    row_d.suptitle(f"(d) exact posteriors $p(z|x)$ under the TRUE decoder (surrogate, true $\\sigma^2$ = "
                   f"{truth.noise_variance:g}); points numbered as in (a); dotted: their true z\n"
                   f"{MODE_NOTE}",
                   fontsize=10)
    learned_s2 = fmt_sigma2(sel.sigma2) if sel.ok else "n/a"
    row_e.suptitle(f"(e) exact posteriors $p_\\theta(z|x)$ under the LEARNED decoder (learned $\\sigma^2$ = "
                   f"{learned_s2}) and the encoder's $q_\\phi(z|x)$ (dashed)", fontsize=10)
    axes_d = row_d.subplots(1, len(points))
    axes_e = row_e.subplots(1, len(points))
    for k, i in enumerate(points):
        c = POINT_COLOURS[k % len(POINT_COLOURS)]
        ax = axes_d[k]
        ax.plot(zg, post_true[k], color=c, lw=1.6)
        ax.axvline(truth.z[i], color="0.3", ls=":", lw=1)
        ax.set(xlim=Z_PLOT, xlabel="z", title=f"{point_label(truth, i, k)}, true z = {truth.z[i]:.2f}\n"
                                                f"{multimodal_note(scores[k], picked[k])}")
        ax = axes_e[k]
        if sel.ok:
            ax.plot(zg, post_learned[k], color=c, lw=1.6, label="$p_\\theta(z|x)$")
            ax.plot(zg, q[k], "--", color="k", lw=1.2, label="$q_\\phi(z|x)$")
            ax.set(xlim=Z_PLOT, xlabel="z", title=point_label(truth, i, k))
            if k == 0:
                ax.legend(loc="best", fontsize=7)
        else:
            ax.set_title(point_label(truth, i, k))
            empty_panel(ax, sel.note)
    axes_d[0].set_ylabel("density")
    axes_e[0].set_ylabel("density")

    knn = f"; smooth-kNN (test) = {sel.row['knn_test']:.3g}" if sel.row is not None and "knn_test" in sel.row else ""
    fig.suptitle(f"{dataset_title(dataset)}: {sel.describe()}; $\\sigma^2$ = {learned_s2} "
                 f"(true {truth.noise_variance:g}){knn}", fontweight="bold")
    save(fig, out)


# --- figure "figure1" -------------------------------------------------------------------
FIGURE1_DATASETS = ("figure-8", "clusters")


def draw_figure1(settings: dict, outdir: str, out: str) -> None:
    names = [d for d in FIGURE1_DATASETS if d in settings["unsupervised_datasets"]]
    table = read_selected(outdir, "unsupervised")
    n_rows = max(len(names), 1)
    fig, axes = plt.subplots(n_rows, 3, figsize=(12, 4.1 * n_rows), layout="constrained", squeeze=False)
    if not names:
        for ax in axes[0]:
            empty_panel(ax, "neither Figure-8 nor Clusters is among unsupervised_datasets")
    for r, name in enumerate(names):
        truth = load_truth(outdir, name)
        xlim, ylim = data_limits(truth.x)
        ax = axes[r, 0]
        ax.scatter(*truth.x[:, :2].T, s=marker_size(len(truth.x)), alpha=0.5, color=DATA_COLOUR, linewidths=0)
        ax.set_title(f"{dataset_title(name)}: true $p(x)$\ntest data of version {VERSION}\nn = {len(truth.x)}")
        for c, method in enumerate(("vae", "iwae"), start=1):
            ax = axes[r, c]
            sel = load_selected(outdir, table, "unsupervised", name, method, latent_dim=1)
            if not sel.ok:
                ax.set_title(f"{dataset_title(name)}: {method_legend(method)}")
                empty_panel(ax, sel.note)
                continue
            xs = vae_samples(sel.model, len(truth.x), figure_noise(settings, "figure1", name, method))[0].numpy()
            ax.scatter(*xs[:, :2].T, s=marker_size(len(truth.x)), alpha=0.5, color=SAMPLE_COLOUR, linewidths=0)
            knn = f"smooth-kNN (test) = {sel.row['knn_test']:.3g}" if "knn_test" in sel.row else ""
            r_ = sel.row
            ax.set_title(f"{dataset_title(name)}: {method_legend(method)} [{r_['setting']}] samples\n"
                         f"version {VERSION}, restart {int(r_['restart'])} ({r_['init']} init)\n{knn}")
        for ax in axes[r]:
            if ax.has_data():
                ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    fig.suptitle(f"True data vs samples of the selected VAE and IWAE (version {VERSION}; "
                 "samples as many as test points)", fontweight="bold")
    save(fig, out)


# --- figure "latent" (Figures 21-22) ----------------------------------------------------
def posterior_kd(decoder, log_sigma2, x_one: np.ndarray, K: int):
    """Exact posterior of one x on a K-D grid (K = 2, 3), zoomed onto where its mass lies.

    A coarse grid on [-WINDOW_KD, WINDOW_KD]^K locates the mass (the 0.05%-99.95% range of each
    marginal, padded by three coarse steps); the posterior is then recomputed on a grid with as
    many points per axis over that box, so narrow posteriors (small sigma^2) stay resolved.
    Returns (the K axis grids, density of shape (G,) * K).
    """
    n_coarse, n_fine = GRID_KD[K]
    coarse = P.uniform_grid(-WINDOW_KD, WINDOW_KD, n_coarse)
    dens = P.exact_posterior_grid(decoder, log_sigma2, x_one[None], coarse, K)      # (1, G, ..., G)
    step = float(coarse[1] - coarse[0])
    w = P.trapezoid_weights(coarse)
    box = []
    for k in range(K):
        marg = dens
        for j in reversed(range(K)):       # integrate out every other axis, last first
            if j != k:
                marg = P.marginalise(marg, coarse, j)
        cdf = torch.cumsum(marg[0] * w, 0)
        cdf = cdf / cdf[-1]
        lo = int(torch.searchsorted(cdf, torch.tensor([5e-4], dtype=cdf.dtype)))
        hi = min(int(torch.searchsorted(cdf, torch.tensor([1 - 5e-4], dtype=cdf.dtype))), n_coarse - 1)
        box.append((max(float(coarse[lo]) - 3 * step, -WINDOW_KD), min(float(coarse[hi]) + 3 * step, WINDOW_KD)))
    axes = [P.uniform_grid(lo, hi, n_fine) for lo, hi in box]
    return axes, P.exact_posterior_grid(decoder, log_sigma2, x_one[None], axes, K)[0]


def contour_panel(ax, axes, dens2d: np.ndarray, mu: np.ndarray, log_var: np.ndarray, colour) -> None:
    z1, z2 = (a.numpy() for a in axes[:2])
    levels = np.linspace(0, dens2d.max(), 9)[1:]
    ax.contourf(z1, z2, dens2d.T, levels=np.concatenate([[dens2d.max() * 0.02], levels]), cmap="Blues")
    ax.contour(z1, z2, dens2d.T, levels=levels[::2], colors=[colour], linewidths=0.8)
    # q(z|x) marginal on (z1, z2): its 1- and 2-sigma ellipses, dashed
    Z1, Z2 = np.meshgrid(z1, z2)
    sd = np.exp(0.5 * log_var[:2])
    maha = ((Z1 - mu[0]) / sd[0]) ** 2 + ((Z2 - mu[1]) / sd[1]) ** 2
    ax.contour(Z1, Z2, maha, levels=[1, 4], colors="k", linestyles="--", linewidths=1)
    ax.set(xlabel="$z_1$", ylabel="$z_2$")


def draw_latent(settings: dict, outdir: str, out: str, dataset: str) -> None:
    truth = load_truth(outdir, dataset)
    table = read_selected(outdir, "latent")
    dims = list(settings["latent_dims"])
    points, scores, picked = choose_points(truth, (0.05, 0.5, 0.95), 1)
    n_pts = len(points)
    x_sel = truth.x[points]
    zg = grid_1d()
    xlim, ylim = data_limits(truth.x)

    fig, axes = plt.subplots(len(dims) + 1, n_pts + 1, figsize=(3.3 * (n_pts + 1), 3.0 * (len(dims) + 1)),
                             layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": [1.15] + [1] * n_pts})
    # row 0: the data and the ground truth's posteriors (K = 1, true sigma^2)
    ax = axes[0, 0]
    ax.scatter(*truth.x[:, :2].T, s=marker_size(len(truth.x)), alpha=0.45, color=DATA_COLOUR, linewidths=0)
    mark_points(ax, truth, points)
    ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
           title="test data (first two of 5 coordinates)")
    post_true = P.exact_posterior_1d(P.ground_truth_log_likelihood(truth.decoder, truth.noise_variance),
                                     x_sel, zg).numpy()
    axes[0, 1].set_ylabel(f"ground truth: K = 1, $\\sigma^2$ = {truth.noise_variance:g}\ndensity")
    for k, i in enumerate(points):
        ax = axes[0, k + 1]
        ax.plot(zg, post_true[k], color=POINT_COLOURS[k], lw=1.6)
        ax.axvline(truth.z[i], color="0.3", ls=":", lw=1)
        ax.set(xlim=Z_PLOT, xlabel="z", title=f"{point_label(truth, i, k)}, true z = {truth.z[i]:.2f}\n"
                                              f"true decoder; {multimodal_note(scores[k], picked[k])}")
    # one row per K: the VAE's samples, then its exact posteriors at the same points
    for r, K in enumerate(dims, start=1):
        sel = load_selected(outdir, table, "latent", dataset, "vae", latent_dim=K)
        ax = axes[r, 0]
        if not sel.ok:
            ax.set_title(f"K = {K}")
            empty_panel(ax, sel.note)
            for k in range(n_pts):
                axes[r, k + 1].set_title(f"K = {K}: {point_label(truth, points[k], k)}")
                empty_panel(axes[r, k + 1], sel.note)
            continue
        xs = vae_samples(sel.model, len(truth.x), figure_noise(settings, "latent", dataset, K))[0].numpy()
        ax.scatter(*truth.x[:, :2].T, s=marker_size(len(truth.x)), alpha=0.3, color=DATA_COLOUR, linewidths=0, label="data")
        ax.scatter(*xs[:, :2].T, s=marker_size(len(truth.x)), alpha=0.3, color=SAMPLE_COLOUR, linewidths=0, label="VAE samples")
        ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
               title=f"K = {K}: {sel.describe(short=True)}\nlearned $\\sigma^2$ mean = {np.mean(sel.sigma2):.3g}")
        leg = ax.legend(loc="lower right", markerscale=3, fontsize=7)
        for h in leg.legend_handles:
            h.set_alpha(1)
        mu, log_var = (t.numpy() for t in P.model_encoder(sel.model, x_sel))
        decoder = P.model_decoder(sel.model)
        log_s2 = sel.model.log_sigma2[0, 0]
        if K == 1:
            post = P.exact_posterior_1d(P.model_log_likelihood(sel.model), x_sel, zg).numpy()
            q = P.gaussian_density(mu, log_var, zg).numpy()
        for k, i in enumerate(points):
            ax = axes[r, k + 1]
            title = f"K = {K}, $\\sigma^2$ mean = {np.mean(sel.sigma2):.3g}: {point_label(truth, i, k)}"
            if K == 1:
                ax.plot(zg, post[k], color=POINT_COLOURS[k], lw=1.6, label="$p_\\theta(z|x)$")
                ax.plot(zg, q[k], "k--", lw=1.2, label="$q_\\phi(z|x)$")
                ax.set(xlim=Z_PLOT, xlabel="z")
                if k == 0:
                    ax.legend(loc="best", fontsize=7)
            elif K in (2, 3):
                grid_axes, dens = posterior_kd(decoder, log_s2, x_sel[k], K)
                dens2 = dens if K == 2 else P.marginal_12(dens.unsqueeze(0), grid_axes)[0]
                contour_panel(ax, grid_axes, dens2.numpy(), mu[k], log_var[k], POINT_COLOURS[k])
                if K == 3:
                    title += "\n(marginal on $z_1, z_2$)"
            else:
                empty_panel(ax, f"exact posteriors are drawn for K <= 3 only (K = {K})")
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"{dataset_title(dataset)}: exact posteriors under the learned decoder of the selected VAE "
                 f"for K = {', '.join(map(str, dims))} (version {VERSION}); dashed: encoder $q_\\phi(z|x)$ "
                 "(K >= 2: its 1 and 2 sd ellipses)\nThe paper's claim to check here: "
                 "\"posteriors get simpler as K grows and $\\sigma^2$ shrinks\"", fontweight="bold")
    fig.supxlabel(MODE_NOTE, fontsize=8, color="0.3")
    save(fig, out)
