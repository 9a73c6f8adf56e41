"""The tables of the analyses, as CSV and booktabs .tex (through tables.to_latex): the numbers
come from vaefail.analyses, the captions and the writing are here.

  disentanglement  appendix F (analyses.appendix_f): mean +- sd over data versions of each
                   model's log p(x), ELBO, training bound and MIG, and the per-version rows
                   the claims pair (disentanglement-versions.csv).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import grid
from ..analyses.appendix_f import disentanglement_versions
from ..catalogue import BOUND, DISENTANGLEMENT_TABLE, DISENTANGLEMENT_VERSIONS, ELBO, LOG_PX, MIG, MIG_NATS
from ..files import read_csv, write_bytes
from .tables import COLUMNS, cell, to_latex


# --- appendix F ---------------------------------------------------------------------------
def disentanglement_cells(versions: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (tables.COLUMNS): mean and sd over versions of each row's columns."""
    cells = []
    for row, frame in versions.groupby("row", sort=False):
        columns = (LOG_PX, ELBO, MIG, MIG_NATS) + ((BOUND,) if frame[BOUND].notna().any() else ())
        cells += [cell(DISENTANGLEMENT_TABLE, row, column, frame[column]) for column in columns]
    return pd.DataFrame(cells, columns=COLUMNS)


def disentanglement_caption(settings: dict) -> str:
    spec = settings["linear_gaussian"]
    s1, s2 = spec["singular_values"]
    versions, restarts = grid.n_versions(settings, "disentangle"), grid.n_restarts(settings, "disentangle")
    return ("\\textbf{Appendix F (disentanglement).} Linear-Gaussian truth $x = Az + \\epsilon$ with $K=2$, $D=5$, "
            f"$A = U\\,\\mathrm{{diag}}({s1:g}, {s2:g})\\,R({spec['angle_degrees']:g}^\\circ)^\\top$, "
            f"$\\sigma^2 = {spec['sigma2']:g}$. First three rows, in closed form: $\\log p(x)$ and the ELBO at the "
            "optimal mean-field $q$ of the true $A$, of the appendix's rotation $AR$ and of the ELBO-maximising "
            "rotation $AR^*$. Other rows: VAE and IWAE with $K=2$ and $\\sigma^2$ fixed at the truth, "
            f"{grid.experiment_epochs(settings, 'disentangle')} epochs, per version the best of {restarts} random "
            "restarts by validation objective; test ELBO, the training bound (IWAE's for IWAE) and the IWAE "
            f"estimate of $\\log p(x)$ ({settings['eval_logpx_samples']} samples). MIG: mutual information gap of "
            "the posterior means against the true $z$ of the test points, with KSG estimates "
            f"(k={settings['mi_neighbours']}) normalised by each $z_j$'s KSG self-information; MIG (nats) "
            f"unnormalised. Mean $\\pm$ sd over {versions} data versions. The paper gives no numbers.")


def build_disentanglement_table(settings: dict, all_restarts_csv: str, outdir: str, out_csv: str) -> None:
    runs = read_csv(all_restarts_csv, required=("setting", "version", "restart", "status", "kept_restart",
                                                "log_px_test", "elbo_test", "objective_test"))
    kept = runs[runs["kept_restart"].astype(bool) & (runs["status"] == "ok")]
    versions = disentanglement_versions(settings, kept, outdir)
    cells = disentanglement_cells(versions)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out_csv, cells.to_csv(index=False).encode())
    write_bytes(Path(out_csv).with_name(f"{DISENTANGLEMENT_VERSIONS}.csv"), versions.to_csv(index=False).encode())
    tex = to_latex(cells, disentanglement_caption(settings), f"tab:{DISENTANGLEMENT_TABLE}")
    write_bytes(Path(out_csv).with_suffix(".tex"), tex.encode())
