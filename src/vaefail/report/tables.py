"""Tables 1-6 and the Theorem 2 numbers from the selected restarts, and the package's one
LaTeX table writer (booktabs, to_latex and their formats), which the tables of the analyses
(analysis_tables) use too.

Each of the paper's tables is written as a tidy CSV, one row per cell —
`table, row, column, mean, sd, n, paper_mean, paper_sd` — with mean and sample standard
deviation over data versions (each version's best restart of the chosen setting), and as a
booktabs .tex fragment that shows our value above the paper's.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import grid
from ..catalogue import DATASET_TITLES, METHOD_TITLES, TABLE_METHOD_ORDER, TABLES
from ..files import read_csv, write_bytes
from .paper_values import PAPER

COLUMNS = ["table", "row", "column", "mean", "sd", "n", "paper_mean", "paper_sd"]
SELECTION_TEXT = {"knn": "the smallest mean validation smooth-kNN statistic",
                  "validation_loss": "the best mean validation objective"}


def mean_sd_n(values) -> tuple[float, float, int]:
    """Mean, sample sd and count of the finite values (NaN where there are too few)."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    return (values.mean() if len(values) else np.nan, values.std(ddof=1) if len(values) > 1 else np.nan,
            len(values))


def cell(table: str, row: str, column: str, values) -> dict:
    """One table cell: mean, sample sd and count of the finite values, beside the paper's value."""
    mean, sd, n = mean_sd_n(values)
    paper = PAPER.get((table, row, column), (np.nan, np.nan))
    return {"table": table, "row": row, "column": column, "mean": mean, "sd": sd, "n": n,
            "paper_mean": paper[0], "paper_sd": paper[1]}


VARIANT_TITLES = {"x": "", "xy": " [q(z|x,y)]"}   # M2's unlabelled z-posterior; "x" is the paper's


def row_title(dataset: str, unlabelled_posterior=None) -> str:
    """A table row's data set, with M2's z-posterior variant where it is not the paper's."""
    return DATASET_TITLES[dataset] + VARIANT_TITLES.get(unlabelled_posterior, "")


def _by_dataset(selected: pd.DataFrame, order: list[str]):
    """(row title, rows) per data set in the configuration's order, and per variant of M2's
    unlabelled z-posterior where the rows have one."""
    for dataset in order:
        frame = selected[selected["dataset"] == dataset]
        if "unlabelled_posterior" in frame and frame["unlabelled_posterior"].notna().any():
            for variant in dict.fromkeys(frame["unlabelled_posterior"]):
                yield row_title(dataset, variant), frame[frame["unlabelled_posterior"] == variant]
        elif len(frame):
            yield row_title(dataset), frame


def density_table(name: str, selected: pd.DataFrame, order: list[str], metric: str = "knn_test") -> pd.DataFrame:
    """Tables 1, 3, 5: the test smooth kNN statistic of p(x) (or `metric`, e.g. its
    unstandardised deficit knn_test_deficit), data sets x methods."""
    cells = []
    for title, frame in _by_dataset(selected, order):
        for method in TABLE_METHOD_ORDER:
            rows = frame[frame["method"] == method]
            values = rows[metric] if metric in rows else pd.Series(np.nan, index=rows.index)
            cells.append(cell(name, title, METHOD_TITLES[method], values))
    return pd.DataFrame(cells, columns=COLUMNS)


def cohort_table(name: str, selected: pd.DataFrame, order: list[str], metric: str = "knn_cohort_test") -> pd.DataFrame:
    """Tables 4, 6: the test smooth kNN statistic of each cohort p(x | y = c) (or `metric`,
    e.g. knn_cohort_test_deficit)."""
    cells = []
    for title, frame in _by_dataset(selected, order):
        cohort_columns = sorted((c for c in frame.columns if re.fullmatch(rf"{metric}_\d+", c)
                                 and frame[c].notna().any()), key=lambda c: int(c.rsplit("_", 1)[1]))
        for method in TABLE_METHOD_ORDER:
            rows = frame[frame["method"] == method]
            for i, column in enumerate(cohort_columns):
                cells.append(cell(name, title, f"{METHOD_TITLES[method]} cohort {i + 1}", rows[column]))
    return pd.DataFrame(cells, columns=COLUMNS)


LATENT_ORDER = ["figure-8-5d", "clusters-5d"]   # the paper's column order
TABLE2_ROWS = {  # row label suffix -> column of the selected restarts
    "test -ELBO": "neg_objective_test",
    "test avg_i I(x; z_i)": "mi_test_mean",
    "test -log p(x) (IWAE estimate)": "neg_log_px_test",
    "learned sigma^2 (mean over dimensions)": "sigma2_mean",
}


def table2(selected: pd.DataFrame) -> pd.DataFrame:
    selected = selected.assign(neg_objective_test=-selected["objective_test"],
                               neg_log_px_test=-selected["log_px_test"])
    cells = []
    for method in ("vae", "iwae"):
        for label, column in TABLE2_ROWS.items():
            present = list(selected["dataset"].unique())
            for dataset in sorted(present, key=lambda d: LATENT_ORDER.index(d) if d in LATENT_ORDER else 99):
                for k in sorted(selected["latent_dim"].unique()):
                    rows = selected[(selected["method"] == method) & (selected["dataset"] == dataset)
                                    & (selected["latent_dim"] == k)]
                    name = f"{DATASET_TITLES[dataset.removesuffix('-5d')]} K={k}"
                    cells.append(cell("table2", f"{METHOD_TITLES[method]} {label}", name, rows[column]))
    return pd.DataFrame(cells, columns=COLUMNS)


def theorem2(unsupervised: pd.DataFrame, noise: pd.DataFrame, dataset: str) -> pd.DataFrame:
    fixed = unsupervised[(unsupervised["dataset"] == dataset) & (unsupervised["method"] == "vae")]
    title = DATASET_TITLES[dataset]
    cells = [
        cell("theorem2", "sigma^2 by eq. 5 for the best fixed-sigma^2 VAE", title,
              fixed["sigma2_closed_form_mean"]),
        cell("theorem2", "sigma^2 learned jointly with (theta, phi)", title, noise["sigma2_mean"]),
        cell("theorem2", "sigma^2 by eq. 5 for the best jointly trained VAE", title,
              noise["sigma2_closed_form_mean"]),
    ]
    return pd.DataFrame(cells, columns=COLUMNS)


# --- LaTeX: the one booktabs writer and its formats ------------------------------------------
def _fmt(mean, sd, digits=3) -> str:
    if not np.isfinite(mean):
        return "--"
    return f"${mean:.{digits}f} \\pm {sd:.{digits}f}$" if np.isfinite(sd) else f"${mean:.{digits}f}$"


def mean_sd(values, digits: int = 3) -> str:
    """$mean \\pm sd$ of the finite values (just $mean$ for one, -- for none)."""
    mean, sd, _ = mean_sd_n(values)
    return _fmt(mean, sd, digits)


def decimals(value, digits: int = 3) -> str:
    """value with `digits` decimals; -- for None, NaN or inf."""
    return "--" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def significant(value, digits: int = 3) -> str:
    """value to `digits` significant digits; -- for NaN or inf."""
    return f"{value:.{digits}g}" if np.isfinite(value) else "--"


def tex_label(text: str) -> str:
    """A row or column label of ours with its formulas set as math."""
    return (text.replace("sigma^2", "$\\sigma^2$").replace("avg_i I(x; z_i)", "$\\mathrm{avg}_i I(x; z_i)$")
            .replace("(theta, phi)", "$(\\theta,\\phi)$").replace("log p(x)", "$\\log p(x)$")
            .replace("q(z|x,y)", "$q(z|x,y)$"))


def tex_text(text) -> str:
    """Free text (a model's or a data set's name) with LaTeX's specials escaped, and phi_GT and
    sigma^2 as math."""
    text = str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
    return text.replace("phi\\_GT", "$\\phi_{GT}$").replace("sigma^2", "$\\sigma^2$")


def booktabs(header: list[str], body: list[list[str]], caption: str, label: str, group_rows=()) -> str:
    """A booktabs table, shrunk to the line width where wider: the header row, then the body's
    rows (lists of cells, already LaTeX), with a rule above each row of `group_rows` but the
    first (the first row of each group)."""
    lines = ["\\begin{table}[htbp]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
             "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%",
             "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
             " & ".join(header) + " \\\\", "\\midrule"]
    for i, row in enumerate(body):
        if i in group_rows and i:
            lines.append("\\midrule")
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}", ""]
    return "\n".join(lines)


def to_latex(cells: pd.DataFrame, caption: str, label: str) -> str:
    """Tidy cells (COLUMNS) as a booktabs table: one line of our values per row, the paper's
    (where given) below it.  Wide tables (the cohort tables) are printed transposed."""
    if cells["column"].nunique() > 6:
        cells = cells.rename(columns={"row": "column", "column": "row"}).sort_values("row", kind="stable")
    columns = list(dict.fromkeys(cells["column"]))
    body = []
    for row, frame in cells.groupby("row", sort=False):
        by_col = frame.set_index("column")
        ours = [_fmt(by_col.at[c, "mean"], by_col.at[c, "sd"]) if c in by_col.index else "" for c in columns]
        body.append([tex_label(row)] + ours)
        if frame["paper_mean"].notna().any():
            paper = [f"\\textcolor{{gray}}{{{_fmt(by_col.at[c, 'paper_mean'], by_col.at[c, 'paper_sd'])}}}"
                     if c in by_col.index and np.isfinite(by_col.at[c, "paper_mean"]) else ""
                     for c in columns]
            body.append(["\\quad\\textcolor{gray}{paper}"] + paper)
    return booktabs([""] + [tex_label(c) for c in columns], body, caption, label)


def write_table(table: pd.DataFrame, out_csv, latex: str) -> None:
    """A table as its CSV and, beside it (.tex), its LaTeX."""
    write_bytes(out_csv, table.to_csv(index=False).encode())
    write_bytes(Path(out_csv).with_suffix(".tex"), latex.encode())


def build_table(settings: dict, name: str, selected_paths: list[str], out_csv: str) -> None:
    frames = [read_csv(p) for p in selected_paths]
    n_versions = settings["versions"]
    how = SELECTION_TEXT[settings["selection"]]
    if name == "table1":
        cells = density_table(name, frames[0], grid.experiment_datasets(settings, "unsupervised"))
        caption = (f"Smooth kNN statistic (k={settings['knn_k']}, temperature {settings['knn_temperature']}) "
                   f"of learned vs.\\ ground-truth samples of $p(x)$ on test data (lower is better); "
                   f"mean $\\pm$ sd over {n_versions} data versions. Hyperparameters chosen by {how}; "
                   "the paper's caption says validation loss. Grey: the paper's Table 1.")
    elif name == "table2":
        cells = table2(frames[0])
        caption = ("5-D embeddings of Figure-8 and Clusters, latent dimension $K$ ($K=1$ is the ground truth), "
                   "$\\sigma^2$ learned per dimension. `-ELBO' is the negative training objective on test data "
                   "per point (the IWAE bound for IWAE); mutual information by the KSG estimator "
                   f"(k={settings['mi_neighbours']}) between test $x$ and each sampled $z_i \\sim q(z|x)$. "
                   f"Mean $\\pm$ sd over {n_versions} versions. Grey: the paper's Table 2.")
    elif name == "theorem2":
        cells = theorem2(frames[0], frames[1], settings["noise_dataset"])
        caption = ("Observation-noise variance on Spiral-Dots (true $\\sigma^2 = 0.01$), mean over the "
                   f"2 data dimensions; mean $\\pm$ sd over {n_versions} data versions of the restart with "
                   "the highest validation ELBO. Grey: the paper's section 2.2.")
    else:
        uci = name in ("table5", "table6")
        parts = f"{settings['uci_splits']} data splits" if uci else f"{n_versions} data versions"
        what = ("$p(x)$" if name in ("table3", "table5") else
                "each cohort $p(x|y)$ (" + ("the classes, in label order" if uci else
                                              "$y=0, 1$ (discrete), $y=-3.5, 3.5$ (continuous)") + ")")
        order = grid.experiment_datasets(settings, "uci" if uci else "semisupervised")
        cells = (density_table if name in ("table3", "table5") else cohort_table)(name, frames[0], order)
        caption = (f"Semi-supervised M2 on {'UCI' if uci else 'synthetic'} data: smooth kNN statistic of "
                   f"learned vs.\\ true {what} on test data (lower is better); mean $\\pm$ sd over {parts}. "
                   "Hyperparameters ($\\alpha$, $\\gamma$, the method's own"
                   + (", $K$, $\\sigma^2$" if uci else "") + f") chosen by {how} of $p(x)$. "
                   + ("" if uci or len(settings["ss_unlabelled_posteriors"]) < 2 else
                      "Rows marked [$q(z|x,y)$] use Kingma et al.'s $q(z|x,y)$ in the unlabelled bound; the others "
                      "the paper's $q(z|x)$ (eq. 30, 32). ")
                   + f"Grey: the paper's Table {name[-1]}.")
    caption = f"\\textbf{{{TABLES[name].heading}.}} {caption}"
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    write_table(cells, out_csv, to_latex(cells, caption, f"tab:{name}"))
