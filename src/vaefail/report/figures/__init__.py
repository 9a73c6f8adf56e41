"""The paper's figures from saved results: common (what every figure shares), unsupervised
(Figure 1, Figures 6-14, 21-22), semisupervised (Figure 2, Figures 15-20), verdicts (the
forest plot of the claims, the collapse against the labelled share) and figure5 (Figure 5,
appendix K).  The workflow draws each with `python -m vaefail figure --figure <kind>`
(draw_figure); Figure 5 with appendix K's tables (`python -m vaefail appendix-k`)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")   # before pyplot is first imported (by the modules below): no display needed
from .semisupervised import draw_figure2, draw_ss_panels  # noqa: E402
from .unsupervised import draw_figure1, draw_latent, draw_panels  # noqa: E402
from .verdicts import draw_forest, draw_label_share  # noqa: E402

# kind -> (draw function, what it needs besides the settings and folders); the kinds are
# catalogue.FIGURE_KINDS
_FIGURES = {
    "panels": (draw_panels, ("dataset", "method")),
    "figure1": (draw_figure1, ()),
    "latent": (draw_latent, ("dataset",)),
    "figure2": (draw_figure2, ()),
    "ss-panels": (draw_ss_panels, ("dataset", "method")),
    "forest": (draw_forest, ()),
    "label-share": (draw_label_share, ()),
}


def draw_figure(settings: dict, figure: str, outdir: str, out: str, dataset: str | None = None,
                method: str | None = None) -> None:
    """Draw one figure to <out>.pdf and <out>.png.

    figure: 'panels' (needs dataset and method; the unsupervised experiment, Figures 6-14),
            'figure1' (Figure 1), 'latent' (needs dataset, e.g. 'clusters-5d'; Figures 21-22),
            'figure2' (Figure 2, Discrete Semi-Circle, VAE and IWAE), 'ss-panels' (needs
            dataset and method; Figures 15-20), 'forest' (the claims) or 'label-share'.
    """
    if figure not in _FIGURES:
        raise ValueError(f"unknown figure {figure!r}; known: {', '.join(_FIGURES)}")
    draw, needs = _FIGURES[figure]
    given = {"dataset": dataset, "method": method}
    if any(given[name] is None for name in needs):
        raise ValueError(f"figure {figure!r} needs {' and '.join('--' + name for name in needs)}")
    draw(settings, outdir, out, *(given[name] for name in needs))
