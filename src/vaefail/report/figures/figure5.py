"""Figure 5 (appendix K): projection onto a learned manifold as a defence -- (a) an
adversarial example and its projections, (b) a uniform grid projected by the truth, a matched
and a mismatched model, (c) the attack's success rates, (d) the noise each projection leaves
against its learned sigma^2.  The numbers come from analyses.appendix_k; FIGURE5_CAPTION says
what is drawn.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
import torch
from matplotlib.collections import LineCollection

from ...analyses.appendix_k import (AttackSetup, ExampleAttack, attack_datasets, attack_setup, attack_table,
                                    denoising_table, example_attack)
from ...analyses.appendix_k_geometry import DTYPE
from ...analyses.appendix_k_projections import (NEAREST, NO_DEFENCE, VERSION, Candidate, TruthData, load_test_points,
                                                model_label, noise_candidates, selected_candidate,
                                                truth_candidates, truth_of)
from ...analyses.selected import read_selected
from .common import DATA_COLOUR, data_limits, dataset_short, empty_panel, fmt_sigma2, marker_size, save

FIGURE_GRID_POINTS = 15             # Figure 5b: points per axis of the uniform grid of x

MODEL_STYLE = {"truth": dict(color="0.45", lw=2.0), "truth (phi_GT)": dict(color="0.45", lw=1.2, ls="--"),
               NEAREST: dict(color="k", lw=2.0),
               NO_DEFENCE: dict(color="tab:red", lw=1.6, ls=":")}
DATASET_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown")
K_MARKERS = {1: "o", 2: "s", 3: "^", 4: "D", 5: "P"}


def _style(model: str, latent_dim, dims: list[int]) -> dict:
    if model in MODEL_STYLE:
        return dict(MODEL_STYLE[model])
    k = int(latent_dim) if np.isfinite(latent_dim) else 1
    position = dims.index(k) / max(len(dims) - 1, 1) if k in dims else 0.5
    colour = plt.get_cmap("viridis")(0.1 + 0.75 * position)
    return dict(color=colour, lw=1.4, ls="-" if model.startswith("VAE") else "--")


def manifold_curve(truth: TruthData, n: int = 2001) -> np.ndarray:
    """The true manifold f_GT(z), z in [-4, 4], in the example's 2-D coordinates."""
    z = torch.linspace(-4.0, 4.0, n, dtype=DTYPE).unsqueeze(-1)
    with torch.no_grad():
        return truth.plane.coords(truth.decoder(z).numpy())


def figure_grid(truth: TruthData, x_test: torch.Tensor, points: int = FIGURE_GRID_POINTS):
    """A uniform points x points grid over the test data's range in the example's 2-D
    coordinates, placed in the plane of the manifold: (grid in x-space (G, D), its 2-D coords,
    the axis limits)."""
    xy = truth.plane.coords(x_test.numpy())
    xlim, ylim = data_limits(xy, pad=0.02)
    u = torch.linspace(*xlim, points, dtype=DTYPE)
    v = torch.linspace(*ylim, points, dtype=DTYPE)
    uv = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1).reshape(-1, 2)
    pad_x, pad_y = 0.04 * (xlim[1] - xlim[0]), 0.04 * (ylim[1] - ylim[0])
    limits = ((xlim[0] - pad_x, xlim[1] + pad_x), (ylim[0] - pad_y, ylim[1] + pad_y))
    return uv @ truth.plane.from_2d, uv.numpy(), limits


def _fmt_s2(c: Candidate) -> str:
    return fmt_sigma2(np.asarray(c.sigma2).mean())


def draw_slice_panel(ax, setup: AttackSetup, ex: ExampleAttack | None, names: dict) -> None:
    """Figure 5a in the slice of x-space through the example that shows the attack: the
    horizontal axis is the in-plane direction w the perturbation pushes the classifier's view
    along (w = S eta / |S eta|), the vertical one the off-plane direction n with S n = gain w;
    the plane of the true manifold is the line n . x = 0.  Shading: the classifier's labels on
    the slice through the in-plane foot of x (its other coordinates dropped)."""
    g, plane = setup.classifier, setup.truth.plane
    if ex is None:
        ax.set_title("(a) adversarial example")
        empty_panel(ax, "no attack on g succeeded within the largest budget")
        return
    x, eta = torch.as_tensor(ex.x), torch.as_tensor(ex.eta)
    w = g.seen(eta)
    w = w / w.norm() if float(w.norm()) > 0 else plane.Q[:, 0]
    n = g.off_plane_partner(w)
    foot = plane.project(x)

    def ab(y) -> tuple[float, float]:
        y = torch.as_tensor(y)
        return float(y @ w), float(y @ n)

    pts = {"x": ab(x), "x + eta": ab(x + eta), **{k: ab(v) for k, v in ex.projections.items()}}
    a_vals = [p[0] for p in pts.values()]
    b_vals = [p[1] for p in pts.values()] + [0.0]
    span = max(max(a_vals) - min(a_vals), max(b_vals) - min(b_vals), 4 * math.sqrt(setup.truth.sigma2))
    a_mid, b_mid = (max(a_vals) + min(a_vals)) / 2, (max(b_vals) + min(b_vals)) / 2
    alim = (a_mid - 0.75 * span, a_mid + 0.75 * span)
    blim = (b_mid - 0.75 * span, b_mid + 0.75 * span)
    A, B = np.meshgrid(np.linspace(*alim, 241), np.linspace(*blim, 241))
    mesh = (foot + (torch.as_tensor(A)[..., None] - float(foot @ w)) * w + torch.as_tensor(B)[..., None] * n)
    with torch.no_grad():
        labels = g(mesh).numpy()
    ax.contourf(A, B, labels, levels=np.arange(labels.min() - 0.5, labels.max() + 1.5), cmap="Pastel2", alpha=0.6)
    ax.contour(A, B, labels, levels=np.arange(labels.min() + 0.5, labels.max() + 0.5), colors="tab:orange",
               linewidths=1.2)
    ax.axhline(0.0, color="tab:blue", lw=2.0)
    line = labels[np.argmin(np.abs(B[:, 0])), :]
    for j in np.flatnonzero(np.diff(line) != 0):                 # the true boundary on the manifold
        ax.axvline((A[0, j] + A[0, j + 1]) / 2, color="tab:blue", lw=1.2, ls="--")
    ax.plot([], [], color="tab:blue", lw=2.0, label="plane of the true manifold")
    ax.plot([], [], color="tab:blue", lw=1.2, ls="--", label="true boundary (on the manifold)")
    ax.plot([], [], color="tab:orange", lw=1.2, label="classifier's boundary")
    ax.scatter(*pts["x"], marker="*", s=160, color="k", zorder=5, label=f"x (label {ex.label})")
    ax.annotate("", pts["x + eta"], pts["x"], arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.8))
    ax.plot([], [], color="tab:red", lw=1.8, label=f"eta, |eta| = {np.linalg.norm(ex.eta):.3g}")
    colours = {"nearest": "k", "truth": "0.55", "matched": "tab:green", "mismatched": "tab:purple"}
    for key, proj in ex.projections.items():
        ax.annotate("", ab(proj), pts["x + eta"], arrowprops=dict(arrowstyle="->", color=colours.get(key, "0.3"),
                                                                   lw=1.4))
        ax.plot([], [], color=colours.get(key, "0.3"), lw=1.4,
                label=f"M of {names.get(key, key)}: label {ex.labels[key]}")
    ax.set(xlim=alim, ylim=blim, aspect="equal", xlabel="in-plane coordinate along w",
           ylabel="off-plane coordinate along n")
    short = {"nearest": "true manifold", "truth": "truth"}
    verdicts = ", ".join(f"{short.get(k, names.get(k, k))} {'yes' if v == ex.label else 'no'}"
                         for k, v in ex.labels.items())
    ax.set_title(f"(a) {dataset_short(setup.truth.dataset)}: g(x) = {ex.label}, g(x + eta) = {int(g(x + eta))}; "
                 f"restored by\nprojecting onto: {verdicts}", fontsize=8)
    ax.legend(loc="best", fontsize=6, framealpha=0.85)


def draw_grid_panel(ax, truth: TruthData, x_test: torch.Tensor, name: str, cand: Candidate, title: str,
                    classifier=None, ex: ExampleAttack | None = None, key: str | None = None,
                    ratio: float = math.nan) -> None:
    """Figure 5b: the uniform grid of x (in the plane of the manifold) joined to its projection
    by `cand`, over the test data and the true manifold, in the example's 2-D coordinates."""
    if not cand.ok:
        ax.set_title(title, fontsize=8)
        empty_panel(ax, cand.note)
        return
    grid_x, grid_2d, (xlim, ylim) = figure_grid(truth, x_test)
    with torch.no_grad():
        projected = cand.project(grid_x.unsqueeze(0))[0]
    proj_2d = truth.plane.coords(projected.numpy())
    xy = truth.plane.coords(x_test.numpy())
    ax.scatter(*xy.T, s=marker_size(len(xy)) / 2, color=DATA_COLOUR, alpha=0.25, linewidths=0, zorder=1)
    plot_projection_panel(ax, manifold_curve(truth), grid_2d, proj_2d)
    if classifier is not None:
        U, V = np.meshgrid(np.linspace(*xlim, 241), np.linspace(*ylim, 241))
        with torch.no_grad():
            labels = classifier(torch.as_tensor(np.stack([U, V], -1)) @ truth.plane.from_2d).numpy()
        ax.contour(U, V, labels, levels=np.arange(labels.min() + 0.5, labels.max() + 0.5), colors="tab:orange",
                   linewidths=0.8, linestyles="-.")
    if ex is not None and key in ex.projections:
        start = truth.plane.coords(ex.x)
        moved = truth.plane.coords(ex.x + ex.eta)
        end = truth.plane.coords(ex.projections[key])
        ax.scatter(*start, marker="*", s=110, color="k", zorder=6)
        ax.annotate("", moved, start, arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5))
        ax.annotate("", end, moved, arrowprops=dict(arrowstyle="->", color="k", lw=1.3))
    shift = float((projected - grid_x).norm(dim=-1).mean())
    off = float(np.mean(truth.plane.off_plane_norm(projected.numpy())))
    extra = f", off-plane |M(x)| = {off:.2g}" if truth.plane.N.shape[1] else ""
    ax.set(xlim=xlim, ylim=ylim, xlabel="$x_1$", ylabel="$x_2$")
    ax.set_title(f"{title}\nK = {cand.latent_dim:g}, $\\sigma^2$ = {_fmt_s2(cand)} (true {truth.sigma2:g}), "
                 f"noise left {ratio:.2f}\nmean |M(x) - x| = {shift:.2g}{extra}", fontsize=8)
    ax.get_legend() and ax.get_legend().remove()


def _mean_ratio(denoising: pd.DataFrame, dataset: str, model: str, version: int | None = VERSION) -> float:
    rows = denoising[(denoising["dataset"] == dataset) & (denoising["model"] == model)]
    if version is not None:
        rows = rows[rows["version"] == version]
    return float(rows["ratio"].mean()) if len(rows) and rows["ratio"].notna().any() else math.nan


def draw_success_panel(ax, attack: pd.DataFrame, dataset: str, dims: list[int]) -> None:
    rows = attack[attack["dataset"] == dataset]
    for model, frame in rows.groupby("model", sort=False):
        if frame["success_rate"].isna().all():
            continue
        first = frame.iloc[0]
        s2 = "" if model == NO_DEFENCE else f", $\\sigma^2$={first['sigma2_learned']:.2g}"
        ax.plot(frame["budget_in_sigma"], frame["success_rate"], marker=".",
                label=f"{model}{s2}", **_style(model, first["latent_dim"], dims))
    ax.set(xlabel="budget |eta| / true $\\sigma$", ylabel="attack success rate", ylim=(-0.03, 1.03))
    n = int(rows["n_points"].max()) if len(rows) else 0
    ax.set_title(f"(c) {dataset_short(dataset)}: L2 attack on g(M(x + eta)), {n} test points\n"
                 f"g: {rows['classifier'].iloc[0] if len(rows) else ''}", fontsize=8)
    ax.legend(loc="lower right", fontsize=6)


def draw_ratio_panel(ax, denoising: pd.DataFrame) -> None:
    """(d): the noise each projection leaves (ratio) against its sigma^2 / the true sigma^2."""
    ok = denoising[denoising["ratio"].notna() & (denoising["sigma2_learned"] > 0)]   # not the sigma^2 -> 0 limit
    for i, (dataset, frame) in enumerate(ok.groupby("dataset", sort=False)):
        colour = DATASET_COLOURS[i % len(DATASET_COLOURS)]
        for r in frame.itertuples():
            rel = r.sigma2_learned / r.sigma2_true
            marker = "*" if r.method == "truth" else K_MARKERS.get(int(r.latent_dim), "o")
            filled = r.method != "iwae"
            ax.scatter(rel, r.ratio, marker=marker, s=60 if marker == "*" else 28,
                       facecolor=colour if filled else "none", edgecolor=colour, linewidths=1.0, alpha=0.85)
        ax.scatter([], [], marker="o", color=colour, label=dataset_short(dataset))
    for k, m in K_MARKERS.items():
        if ok["latent_dim"].eq(k).any():
            ax.scatter([], [], marker=m, facecolor="0.5", edgecolor="0.5", label=f"K = {k}")
    ax.scatter([], [], marker="o", facecolor="none", edgecolor="0.5", label="IWAE (hollow)")
    ax.scatter([], [], marker="*", color="0.5", s=60, label="truth")
    ax.axhline(1.0, color="tab:red", ls=":", lw=1)
    ax.axvline(1.0, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):     # ticks at 1, 2, 5 x 10^k, labelled plainly
        axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="learned $\\sigma^2$ / true $\\sigma^2$ (mean over dimensions)",
           ylabel="noise left: E|M(x) - f(z)|$^2$ / D$\\sigma^2$")
    ax.set_title("(d) noise left by each projection, every data version\n"
                 "(1 = none removed; dotted red)", fontsize=8)
    ax.legend(loc="best", fontsize=6, ncols=2)


def draw_summary_text(ax, denoising: pd.DataFrame) -> None:
    ax.axis("off")
    lines = ["noise left E|M(x)-f(z)|^2 / D sigma^2", "(mean over versions)", ""]
    for dataset, frame in denoising.groupby("dataset", sort=False):
        lines.append(dataset_short(dataset) + ":")
        for model, rows in frame.groupby("model", sort=False):
            ratio = rows["ratio"].mean()
            s2 = rows["sigma2_learned"].mean()
            lines.append(f"  {model:<24s} {ratio:6.3f}  s2={s2:.3g}" if np.isfinite(ratio)
                         else f"  {model:<24s}   --   ({rows['note'].iloc[0]})")
        lines.append("")
    ax.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=6, va="top", ha="left", transform=ax.transAxes)


FIGURE5_CAPTION = (
    "Figure 5 (appendix K): projection onto a learned manifold as a defence. "
    "(a) For each 5-D data set, one test point x (star) of version 0, the smallest perturbation eta (red) "
    "found that flips the classifier g without defence, and x + eta projected (arrows) onto the true "
    "manifold (the nearest point, black), by the true model f_GT(E[z|x]) (grey), by the matched model (the "
    "selected VAE with the smallest K, green) and by the mismatched one (the selected VAE with the largest K, "
    "purple); the title says which projections restore the label. Drawn in the slice of x-space spanned by "
    "w (the in-plane direction in which eta moves the point g sees) and n (the off-plane direction that g's "
    "tilt turns into w); the plane of the true manifold is the horizontal line, g's labels are shaded and "
    "its boundary is orange, the true boundary on the manifold is blue dashed. "
    "(b) A uniform grid of x in the plane of the manifold (grey lines join each grid point to its "
    "projection, orange dots) projected by the true model f_GT(E[z|x]), the matched and the mismatched "
    "model, with K, sigma^2, the noise each leaves (denoising table, version 0) and the mean distance it "
    "moves a grid point (and, for 5-D data, the mean off-plane norm of the projections); 5-D data are "
    "drawn in the example's own 2-D coordinates of the orthogonal projection onto the plane spanned by "
    "the rows of the embedding (x -> x pinv(E)); the true manifold is blue, the test data light blue, the "
    "star and arrows the example of (a), and the dash-dotted orange line g's boundary in the plane. For "
    "Spiral-Dots (2-D) the matched model is the VAE with sigma^2 fixed at the truth (unsupervised "
    "experiment) and the mismatched one the VAE with sigma^2 learned jointly (Theorem 2). "
    "(c) Success rate of the L2 attack on g(M(x + eta)) against the budget |eta| in units of the true "
    "sigma, for each projection (and none), on the first attack_points test points that g classifies "
    "correctly with no defence and behind the nearest-point projection. "
    "(d) The noise a projection leaves, E||M(x) - f_GT(z)||^2 / (D sigma^2) on test points, against its "
    "learned sigma^2 relative to the truth, every data version; markers by K, hollow for IWAE, stars for "
    "the truth's encoders (the nearest point, sigma^2 -> 0, is off this axis; it is in the text panel, "
    "which lists every projection's noise left, mean over versions).")


def draw_figure5(settings: dict, outdir, out_stem, attack: pd.DataFrame | None = None,
                 denoising: pd.DataFrame | None = None) -> str:
    """Draw Figure 5 to out_stem + '.pdf' and '.png' (module docstring; FIGURE5_CAPTION says what
    is drawn) and return its caption.  attack/denoising: the tables, computed if not given."""
    denoising = denoising_table(settings, outdir) if denoising is None else denoising
    attack = attack_table(settings, outdir, denoising) if attack is None else attack
    dims = list(settings["latent_dims"])
    five_d = attack_datasets(settings)
    noise_dataset = settings["noise_dataset"]
    tables = {e: read_selected(outdir, e) for e in ("latent", "noise", "unsupervised")}
    n_rows = len(five_d) + 2
    fig, axes = plt.subplots(n_rows, 4, figsize=(17, 4.3 * n_rows), layout="constrained", squeeze=False)
    for r, dataset in enumerate(five_d):
        setup = attack_setup(settings, outdir, dataset)
        truth_c, nearest_c = truth_candidates(settings, outdir, setup.truth, VERSION)[:2]
        matched = selected_candidate(outdir, tables["latent"], "latent", dataset, "vae", VERSION, min(dims),
                                     model_label("vae", min(dims)))
        mismatched = selected_candidate(outdir, tables["latent"], "latent", dataset, "vae", VERSION, max(dims),
                                        model_label("vae", max(dims)))
        cands = {"truth": truth_c, "matched": matched, "mismatched": mismatched}
        projectors = {"nearest": nearest_c.project, **{k: c.project for k, c in cands.items() if c.ok}}
        ex = example_attack(settings, setup, projectors)
        names = {"nearest": nearest_c.model, **{k: c.model for k, c in cands.items()}}
        draw_slice_panel(axes[r, 0], setup, ex, names)
        _, _, x_test = load_test_points(outdir, setup.truth, VERSION)
        for col, (key, c) in enumerate(cands.items(), start=1):
            what = {"truth": "", "matched": ", matched K", "mismatched": ", largest K"}[key]
            draw_grid_panel(axes[r, col], setup.truth, x_test, key, c,
                            f"(b) {dataset_short(dataset)}: {c.model}{what}",
                            classifier=setup.classifier,
                            ex=ex, key=key, ratio=_mean_ratio(denoising, dataset, c.model))
    # Spiral-Dots: sigma^2 fixed at the truth (matched) vs learned jointly (Theorem 2)
    r = len(five_d)
    truth = truth_of(outdir, noise_dataset)
    _, _, x_test = load_test_points(outdir, truth, VERSION)
    noise_cands = noise_candidates(settings, outdir, tables, VERSION)
    row = [("the truth", truth_candidates(settings, outdir, truth, VERSION)[0])]
    row += [("matched" if "fixed" in c.model else "Theorem 2", c) for c in reversed(noise_cands)]
    draw_summary_text(axes[r, 0], denoising)
    for col in range(1, 4):
        if col - 1 < len(row):
            what, c = row[col - 1]
            label = c.model.replace("sigma^2", "$\\sigma^2$") + ("" if what == "the truth" else f", {what}")
            draw_grid_panel(axes[r, col], truth, x_test, "", c, f"(b) {dataset_short(noise_dataset)}: {label}",
                            ratio=_mean_ratio(denoising, noise_dataset, c.model))
        else:
            axes[r, col].axis("off")
    # the numbers: attack success and noise left
    r += 1
    for col in range(4):
        axes[r, col].axis("off")
    for col, dataset in enumerate(five_d[:2]):
        axes[r, col].axis("on")
        draw_success_panel(axes[r, col], attack, dataset, dims)
    axes[r, 2].axis("on")
    draw_ratio_panel(axes[r, 2], denoising)
    fig.suptitle("Figure 5 (appendix K): projection M(x) = f(mu(x)) onto the learned manifold as a defence; "
                 f"version {VERSION}", fontweight="bold")
    save(fig, out_stem)
    return FIGURE5_CAPTION


def plot_projection_panel(ax, manifold, grid, projected, example: dict | None = None, projector: str | None = None,
                          classifier=None, title: str = "") -> None:
    """One panel of Figure 5 for 2-D data: the true manifold (curve (n, 2)), grid points (G, 2)
    joined to their projections (G, 2), and optionally an adversarial example (star; red arrow:
    the perturbation; black arrow: the projection by `projector`) and the classifier's boundary."""
    ax.plot(*np.asarray(manifold).T, color="tab:blue", lw=1.5, label="true manifold")
    grid, projected = np.asarray(grid), np.asarray(projected)
    ax.add_collection(LineCollection(np.stack([grid, projected], 1), colors="0.75", linewidths=0.5))
    ax.scatter(*projected.T, s=3, color="tab:orange", label="projection", zorder=3)
    if classifier is not None:
        xs = np.linspace(*ax.get_xlim(), 200)
        ys = np.linspace(*ax.get_ylim(), 200)
        mesh = torch.from_numpy(np.stack(np.meshgrid(xs, ys), -1))
        ax.contour(xs, ys, classifier(mesh).numpy(), levels=[0.5], colors="tab:orange", linewidths=1.0)
    if example is not None:
        for i in range(len(example["x"])):
            start, end = example["x"][i], example["perturbed"][i]
            ax.scatter(*start, marker="*", s=80, color="k", zorder=4)
            ax.annotate("", end, start, arrowprops=dict(arrowstyle="->", color="tab:red"))
            if projector is not None:
                ax.annotate("", example[f"{projector}_projection"][i], end, arrowprops=dict(arrowstyle="->", color="k"))
    ax.set_aspect("equal")
    ax.set_title(title)
