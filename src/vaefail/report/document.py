"""Build the reproduction report: paper/*.tex plus generated inputs, compiled with latexmk.

Generated here (into <outdir>/paper_build/generated.tex), from recorded results only:
provenance macros (git commit, settings hash, scale), the settings table, surrogate fit
errors, run times, the cell-by-cell comparison with the paper and the check of each of
the paper's qualitative claims.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from ..catalogue import (
    CLAIMS_TABLE,
    COLLAPSE_TABLE,
    DATASET_TITLES,
    EVALUATION_NOISE_TABLE,
    FOREST_FIGURE,
    LABEL_SHARE_FIGURE,
    METHOD_TITLES,
    PAPER_SCALE_TABLES,
    latent_figure,
    panel_figure,
    selected_path,
    ss_panel_figure,
    table_path,
)
from ..config import ROOT, settings_hash
from ..convergence import CHECKS, TAIL_SHARE, TOLERANCE
from ..criteria import COLLAPSED_FRACTION
from ..files import read_csv, read_json
from ..grid import METHODS, active_experiments, all_datasets, base_datasets, experiment_epochs
from ..provenance import code_version
from . import evidence as E
from .tables import decimals, tex_label

PAPER_SOURCES = ROOT / "paper"


def tex(text) -> str:
    """Escape LaTeX's special characters in plain text."""
    text = str(text)
    for a, b in (("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"), ("^", "\\^{}"),
                 ("~", "\\~{}"), ("{", "\\{"), ("}", "\\}")):
        text = text.replace(a, b)
    # without T1 font encoding these print as other glyphs in text mode
    return text.replace("<", "$<$").replace(">", "$>$").replace("|", "$|$")


def _mean_sd(mean, sd, digits=3) -> str:
    return f"{decimals(mean, digits)} $\\pm$ {decimals(sd, digits)}"


def cell_rows(cells: pd.DataFrame) -> str:
    """Every paper cell against ours (tables/paper-scale.csv): one row per cell, the t scale
    (native for Table 2 and Theorem 2) and the deficit scale side by side."""
    if cells.empty:
        return ""
    lines = []
    for (table, row, column), frame in cells.groupby(["table", "row", "column"], sort=False):
        by_scale = frame.set_index("scale")
        first = by_scale.loc["t"] if "t" in by_scale.index else by_scale.iloc[0]
        parts = [tex(table), tex_label(row), tex_label(column), _mean_sd(first["paper_mean"], first["paper_sd"]),
                 f"{_mean_sd(first['mean'], first['sd'])} (n={int(first['n'])})", first["status"]]
        if "deficit" in by_scale.index:
            d = by_scale.loc["deficit"]
            parts += [_mean_sd(d["mean"], d["sd"]), d["status"]]
        else:
            parts += ["", ""]
        lines.append(" & ".join(parts) + " \\\\")
    return "\n".join(lines)


def scale_summary_rows(summary: pd.DataFrame) -> str:
    """Counts per table and scale, then each scale's values under the null."""
    lines = []
    for _, r in summary.iterrows():
        if str(r["table"]).startswith("null"):
            lines.append(f"{tex(r['table'])} & {r['scale']} & \\multicolumn{{3}}{{l}}{{mean {decimals(r['null_mean'])}, "
                         f"sd {decimals(r['null_sd'])}, largest $|\\cdot|$ {decimals(r['null_max_abs'])} over "
                         f"{int(r['cells'])} versions}} \\\\")
        else:
            lines.append(f"{tex(r['table'])} & {r['scale']} & {int(r['consistent'])} & {int(r['differs'])} & "
                         f"{int(r['not comparable'])} \\\\")
    return "\n".join(lines)


def claim_rows(claims: pd.DataFrame) -> str:
    """The claims table (tables/claims.csv) as longtable rows: claim, source, effect with its
    95 % interval, n, verdict (with the reason where it is inconclusive for want of convergence)."""
    lines = []
    for section, rows in claims.groupby("section", sort=False):
        lines.append(f"\\multicolumn{{5}}{{l}}{{\\textbf{{{tex(section)}}}}} \\\\")
        for _, r in rows.iterrows():
            interval = f"{decimals(r['effect'])} [{decimals(r['ci_low'])}, {decimals(r['ci_high'])}]"
            if np.isfinite(r["threshold"]) and r["threshold"] != 0:
                interval += f" vs {decimals(r['threshold'])}"
            note = str(r["note"]) if isinstance(r["note"], str) else ""
            verdict = r["verdict"] + (" (not converged)" if "not converged" in note else "")
            lines.append(f"{r['claim']} & {tex(r['source'])} & {interval} & {int(r['n'])} & {verdict} \\\\")
    return "\n".join(lines)


def claim_counts(claims: pd.DataFrame) -> list[str]:
    counts = claims["verdict"].value_counts()
    holm_supported = int(((claims["verdict"] == E.SUPPORTED) & (claims["p_holm"] < E.FAMILY_ALPHA)).sum())
    return [f"\\newcommand{{\\ClaimsScored}}{{{len(claims)}}}",
            f"\\newcommand{{\\ClaimsSupported}}{{{int(counts.get(E.SUPPORTED, 0))}}}",
            f"\\newcommand{{\\ClaimsContradicted}}{{{int(counts.get(E.CONTRADICTED, 0))}}}",
            f"\\newcommand{{\\ClaimsInconclusive}}{{{int(counts.get(E.INCONCLUSIVE, 0))}}}",
            f"\\newcommand{{\\ClaimsExact}}{{{int(counts.get(E.EXACT, 0))}}}",
            f"\\newcommand{{\\ClaimsSupportedHolm}}{{{holm_supported}}}",
            f"\\newcommand{{\\ClaimsNotConverged}}{{{int(claims['note'].fillna('').str.contains('not converged').sum())}}}",
            f"\\newcommand{{\\ClaimsFewVersions}}{{{int(((claims['verdict'] == E.INCONCLUSIVE) & (claims['n'] < E.MIN_VERSIONS)).sum())}}}"]


def could_change_rows(claims: pd.DataFrame) -> str:
    """The inconclusive claims and what a larger preset would need to decide each."""
    lines = []
    for _, r in claims[claims["verdict"] == E.INCONCLUSIVE].iterrows():
        note = str(r["note"]) if isinstance(r["note"], str) else ""
        if "not converged" in note:
            why = "models not converged: longer training (the paper's epochs)"
        elif r["n"] < E.MIN_VERSIONS:
            why = f"only {int(r['n'])} versions: more data versions"
        else:
            why = "interval spans the threshold: more versions (or a smaller effect than the paper's)"
        lines.append(f"{r['claim']} & {why} \\\\")
    return "\n".join(lines)


def convergence_rows(outdir: Path, settings: dict) -> str:
    """Per experiment and method, the share of selected models whose validation curve passed
    the convergence rule (vaefail.convergence)."""
    lines = []
    for experiment in active_experiments(settings):
        path = outdir / selected_path(experiment)
        if experiment == "labelshare" or not path.exists():
            continue
        selected = read_csv(path)
        if "converged" not in selected or selected["converged"].isna().all():
            continue
        for method, rows in selected.groupby("method", sort=False):
            flags = rows["converged"].dropna().astype(bool)
            gain = rows["tail_gain"].astype(float)
            lines.append(f"{tex(experiment)} & {METHOD_TITLES[method]} & {experiment_epochs(settings, experiment)} & "
                         f"{int(flags.sum())} of {len(flags)} & {decimals(gain.median(), 4)} & {decimals(gain.max(), 4)} \\\\")
    return "\n".join(lines)


def evaluation_noise_rows(noise: pd.DataFrame) -> str:
    lines = []
    for _, r in noise.iterrows():
        variant = r.get("unlabelled_posterior")
        name = DATASET_TITLES.get(r["dataset"], r["dataset"]) + (" [q(z|x,y)]" if variant == "xy" else "")
        lines.append(f"{tex(r['experiment'])} & {tex_label(name)} & {METHOD_TITLES[r['method']]} & {int(r['versions'])} & "
                     f"{decimals(r['sd_over_versions'], 2)} & {decimals(r['draw_sd'], 2)} & {decimals(r['noise_share'], 2)} \\\\")
    return "\n".join(lines)


def separation_rows(outdir: Path, settings: dict) -> str:
    """Rows (z-posterior, method) x gamma of the Discrete Semi-Circle's restarts: mean label
    separation and the share collapsed, over every alpha, version and restart."""
    restarts = read_csv(outdir / table_path("separation-restarts"))
    truth = read_csv(outdir / table_path("separation"))
    truth = truth[(truth["dataset"] == "discrete-semicircle") & (truth["model"] == "truth")]["separation"]
    if restarts.empty or truth.empty:
        return ""
    bound = COLLAPSED_FRACTION * float(truth.mean())
    ok = restarts[restarts["status"] == "ok"]
    lines = []
    for (variant, method), rows in ok.groupby(["unlabelled_posterior", "method"], sort=False):
        cells = []
        for gamma in settings["ss_gammas"]:
            g = rows[rows["gamma"] == gamma]["separation"]
            cells.append(f"{g.mean():.2f} ({(g < bound).mean():.0%})" if len(g) else "--")
        chosen = rows[rows["selected"]]["separation"]
        cells.append(f"{chosen.mean():.2f}" if len(chosen) else "--")
        label = "$q(z|x)$" if variant == "x" else "$q(z|x,y)$"
        lines.append(" & ".join([label, METHOD_TITLES[method], *cells]).replace("%", "\\%") + " \\\\")
    return "\n".join(lines)


def collapse_sentence(outdir: Path) -> str:
    """What this run found for Figure 2, in words, from tables/separation.csv and the collapse
    claims (tables/claims.csv)."""
    sep = read_csv(outdir / table_path("separation"))
    sep = sep[sep["dataset"] == "discrete-semicircle"]
    if sep.empty:
        return "The Discrete Semi-Circle was not part of this run."
    truth = float(sep[sep["model"] == "truth"]["separation"].mean())
    parts = []
    for variant, name in (("x", "the paper's $q(z|x)$"), ("xy", "Kingma et al.'s $q(z|x,y)$")):
        rows = sep[sep["unlabelled_posterior"] == variant]
        if rows.empty:
            continue
        vae = float(rows[rows["model"] == "vae"]["separation"].mean())
        iwae = float(rows[rows["model"] == "iwae"]["separation"].mean())
        state = "collapsed" if vae < COLLAPSED_FRACTION * truth else "not collapsed"
        parts.append(f"with {name} in $U$ the selected VAE's separation is {decimals(vae, 2)} ({state}) and "
                     f"IWAE's {decimals(iwae, 2)}")
    sentence = f"In this run the true separation is {decimals(truth, 2)}; " + "; ".join(parts) + "."
    pairs = read_csv(outdir / table_path(COLLAPSE_TABLE))
    claims = read_csv(outdir / table_path(CLAIMS_TABLE))
    decided = claims[claims["claim"].str.contains("prefers the collapsed")]
    if pairs.empty:
        return sentence + (" No setting and version had both a collapsed and a separated VAE restart, so this run "
                           "cannot say which of the two the objective prefers.")
    for _, r in decided.iterrows():
        which = "$q(z|x)$" if "q(z|x)$ in U" in r["claim"] else "$q(z|x,y)$"
        answer = {E.SUPPORTED: "prefers the collapsed decoder", E.CONTRADICTED: "prefers the separated decoder",
                  E.INCONCLUSIVE: "cannot be said to prefer either"}.get(r["verdict"], r["verdict"])
        sentence += (f" With {which} in $U$, the VAE objective $J$ {answer}: $J$(collapsed) $-$ $J$(separated) = "
                     f"{decimals(r['effect'])} nats per point, 95\\,\\% interval [{decimals(r['ci_low'])}, "
                     f"{decimals(r['ci_high'])}], over {int(r['n'])} versions.")
    return sentence


def restart_counts(outdir: Path) -> list[str]:
    """\\AllRestarts and \\FailedRestarts: every per-restart result of the run, and those failed."""
    statuses = pd.concat([read_csv(p)["status"] for p in sorted((outdir / "selected").glob("*-all-restarts.csv"))])
    return [f"\\newcommand{{\\AllRestarts}}{{{len(statuses)}}}",
            f"\\newcommand{{\\FailedRestarts}}{{{int((statuses != 'ok').sum())}}}"]


def settings_rows(settings: dict) -> str:
    return "\n".join(f"\\texttt{{{tex(k)}}} & \\texttt{{{tex(json.dumps(v))}}} \\\\"
                     for k, v in sorted(settings.items()))


def surrogate_rows(outdir: Path, settings: dict) -> str:
    rows = []
    for base in base_datasets(settings):
        rec = read_json(outdir / "surrogates" / f"{base}.json")
        rows.append(f"{DATASET_TITLES[base]} & {rec['mse']:.2e} & {'yes' if rec['reached_target'] else 'no'} "
                    f"& {rec['seconds']:.0f} \\\\")
    return "\n".join(rows)


def gt_encoder_rows(outdir: Path, settings: dict) -> str:
    """Validation ELBO of the chosen phi_GT against the ground truth's exact log-likelihood."""
    rows = []
    for dataset in all_datasets(settings):
        records = [read_json(p) for p in sorted((outdir / "gt_encoders" / dataset).glob("v*.json"))]
        if not records:
            continue
        elbo = np.mean([r["valid_elbo"][r["chosen_restart"]] for r in records])
        exact = np.mean([r["valid_exact_log_px"] for r in records])
        rows.append(f"{tex(dataset)} & {elbo:.3f} & {exact:.3f} & {exact - elbo:.3f} \\\\")
    return "\n".join(rows)


def run_time_rows(outdir: Path) -> tuple[str, float]:
    """Wall-clock minutes of the training jobs per experiment, from the run record."""
    times = read_csv(outdir / "record" / "runtimes.csv")
    train = times[times["stage"] == "train"]
    totals = train.groupby(train["job"].str.split("/").str[0], sort=False)["seconds"].sum()
    rows = "\n".join(f"{tex(e)} & {s / 60:.1f} \\\\" for e, s in totals.items())
    return rows, float(totals.sum())


def provenance_macros(outdir: Path) -> list[str]:
    """What the per-restart results recorded: code versions, packages, devices, seeds."""
    prov = read_json(outdir / "record" / "provenance.json")
    commits = ", ".join(f"{c[:12]}{c[40:]} ({n})" for c, n in prov["result_git_commits"].items())
    devices = ", ".join(f"{d} ({n})" for d, n in prov["result_devices"].items())
    packages = "; ".join(", ".join(f"{k} {v}" for k, v in p["packages"].items()) + f" ({p['results']})"
                         for p in prov["result_packages"])
    seeds = prov["seeds"]
    return [
        f"\\newcommand{{\\RunCommits}}{{\\texttt{{{tex(commits)}}}}}",
        f"\\newcommand{{\\RunDevices}}{{{tex(devices)}}}",
        f"\\newcommand{{\\RunPackages}}{{{tex(packages)}}}",
        f"\\newcommand{{\\ResultFiles}}{{{prov['result_files']}}}",
        f"\\newcommand{{\\DistinctSeeds}}{{{seeds['distinct']}}}",
    ]


def _figure(path: Path, caption: str) -> str:
    return ("\\begin{figure}[p]\\centering"
            f"\\includegraphics[width=\\linewidth]{{{path.resolve()}}}"
            f"\\caption{{{caption}}}\\end{{figure}}")


def panel_figures(settings: dict, outdir: Path) -> str:
    return "\n".join(
        _figure(outdir / panel_figure(d, m, ".pdf"),
                f"{METHOD_TITLES[m]} on {DATASET_TITLES[d]} (the paper's Figures 6--14 show such panels): "
                "(a) test data and model samples with the learned $f(z)$; (b) true and learned $f$; "
                "(c) aggregate posterior and prior; (d) exact posteriors under the true decoder; "
                "(e) exact posteriors under the learned decoder, with $q(z|x)$ dashed.")
        for d in settings["unsupervised_datasets"] for m in METHODS)


def latent_figures(settings: dict, outdir: Path) -> str:
    return "\n".join(
        _figure(outdir / latent_figure(f"{d}-5d", ".pdf"),
                f"Posteriors of the VAE's learned decoder for {DATASET_TITLES[d]} embedded in 5-D, for each latent "
                "dimension $K$ (the paper's Figures 21--22).")
        for d in settings["latent_datasets"])


def ss_figures(settings: dict, outdir: Path) -> str:
    variant = ("the paper's $q(z|x)$" if settings["ss_unlabelled_posteriors"][0] == "x"
               else "Kingma et al.'s $q(z|x,y)$")
    return "\n".join(
        _figure(outdir / ss_panel_figure(d, m, ".pdf"),
                f"Semi-supervised {METHOD_TITLES[m]} on the {DATASET_TITLES[d]}, {variant} in the unlabelled bound (the "
                "paper's Figures 15--20 show such panels): (a) $p(x)$, (b) $f(y,z)$ per $y$, (c) each cohort "
                "$p(x|y)$, true and learned; exact posteriors under (d) the true and (e) the learned decoder.")
        for d in settings["ss_datasets"] for m in METHODS)


def label_share_figure(outdir: Path) -> str:
    path = outdir / f"{LABEL_SHARE_FIGURE}.pdf"
    if not path.exists():
        return "The labelled share was not varied in this run (\\texttt{ss\\_label\\_fractions} is empty)."
    return ("\\begin{figure}[H]\\centering"
            f"\\includegraphics[width=\\linewidth]{{{path.resolve()}}}"
            "\\caption{The collapse of Figure~2 against the share of observed labels and $\\gamma$: label separation "
            "of every VAE restart (the paper's $q(z|x)$ in $U$) relative to the truth's, from random starts (left) and "
            "from the truth (right); mean $\\pm$ sd over versions and $\\alpha$, dots single restarts.}"
            "\\label{fig:label-share}\\end{figure}")


def generated_tex(settings: dict, outdir: Path, scale: str) -> str:
    version = code_version()
    commit = version["git_commit"] + (" (with uncommitted changes)" if version["git_dirty"] else "")
    time_rows, total = run_time_rows(outdir)
    claims = read_csv(outdir / table_path(CLAIMS_TABLE))
    cells = read_csv(outdir / table_path(PAPER_SCALE_TABLES[0]))
    scale_summary = read_csv(outdir / table_path(PAPER_SCALE_TABLES[1]))
    noise = read_csv(outdir / table_path(EVALUATION_NOISE_TABLE))
    gamma_header = " & ".join(f"$\\gamma={g:g}$" for g in settings["ss_gammas"])
    t_cells = cells[cells["scale"].isin(["t", "native"])] if len(cells) else cells
    deficit_cells = cells[cells["scale"] == "deficit"] if len(cells) else cells
    count = lambda frame, status: int((frame["status"] == status).sum()) if len(frame) else 0   # noqa: E731
    return "\n".join([
        "% Generated by vaefail.report from recorded results; do not edit.",
        f"\\newcommand{{\\ResultsDir}}{{{outdir.resolve()}}}",
        f"\\newcommand{{\\ResultsDirText}}{{{tex(str(outdir.resolve()))}}}",   # for display: _ etc. escaped
        f"\\newcommand{{\\GitCommit}}{{\\texttt{{{tex(commit)}}}}}",
        *provenance_macros(outdir),
        f"\\newcommand{{\\SettingsHash}}{{\\texttt{{{settings_hash(settings)}}}}}",
        f"\\newcommand{{\\Scale}}{{\\texttt{{{tex(scale)}}}}}",
        f"\\newcommand{{\\Versions}}{{{settings['versions']}}}",
        f"\\newcommand{{\\UciSplits}}{{{settings['uci_splits']}}}",
        f"\\newcommand{{\\LabelFraction}}{{{settings['label_fraction']:g}}}",
        f"\\newcommand{{\\Restarts}}{{{settings['restarts_random']} random + {settings['restarts_gt']} ground-truth}}",
        f"\\newcommand{{\\SsRestarts}}{{{settings['ss_restarts_random']} random + {settings['ss_restarts_gt']} ground-truth}}",
        f"\\newcommand{{\\KnnK}}{{{settings['knn_k']}}}",
        f"\\newcommand{{\\KnnTemperature}}{{{settings['knn_temperature']}}}",
        f"\\newcommand{{\\KnnDraws}}{{{settings['knn_draws']}}}",
        f"\\newcommand{{\\Selection}}{{{tex(settings['selection'])}}}",
        f"\\newcommand{{\\TrainingMinutes}}{{{total / 60:.1f}}}",
        f"\\newcommand{{\\CellsCompared}}{{{len(t_cells)}}}",
        f"\\newcommand{{\\CellsConsistent}}{{{count(t_cells, 'consistent')}}}",
        f"\\newcommand{{\\CellsDiffer}}{{{count(t_cells, 'differs')}}}",
        f"\\newcommand{{\\CellsNotComparable}}{{{count(t_cells, 'not comparable')}}}",
        f"\\newcommand{{\\DeficitCellsCompared}}{{{len(deficit_cells)}}}",
        f"\\newcommand{{\\DeficitCellsConsistent}}{{{count(deficit_cells, 'consistent')}}}",
        f"\\newcommand{{\\DeficitCellsDiffer}}{{{count(deficit_cells, 'differs')}}}",
        f"\\newcommand{{\\DeficitCellsNotComparable}}{{{count(deficit_cells, 'not comparable')}}}",
        f"\\newcommand{{\\SettingsRows}}{{{settings_rows(settings)}}}",
        f"\\newcommand{{\\SurrogateRows}}{{{surrogate_rows(outdir, settings)}}}",
        f"\\newcommand{{\\RunTimeRows}}{{{time_rows}}}",
        f"\\newcommand{{\\GtEncoderRows}}{{{gt_encoder_rows(outdir, settings)}}}",
        f"\\newcommand{{\\CellRows}}{{{cell_rows(cells)}}}",
        f"\\newcommand{{\\ScaleSummaryRows}}{{{scale_summary_rows(scale_summary)}}}",
        f"\\newcommand{{\\ClaimRows}}{{{claim_rows(claims)}}}",
        *claim_counts(claims),
        f"\\newcommand{{\\CouldChangeRows}}{{{could_change_rows(claims)}}}",
        f"\\newcommand{{\\ForestFigure}}{{{(outdir / f'{FOREST_FIGURE}.pdf').resolve()}}}",
        f"\\newcommand{{\\ConvergenceRows}}{{{convergence_rows(outdir, settings)}}}",
        f"\\newcommand{{\\ConvergenceChecks}}{{{CHECKS}}}",
        f"\\newcommand{{\\ConvergenceTail}}{{{TAIL_SHARE:g}}}",
        f"\\newcommand{{\\ConvergenceTolerance}}{{{TOLERANCE:g}}}",
        f"\\newcommand{{\\EvaluationNoiseRows}}{{{evaluation_noise_rows(noise)}}}",
        f"\\newcommand{{\\SeparationRows}}{{{separation_rows(outdir, settings)}}}",
        f"\\newcommand{{\\SeparationGammaColumns}}{{{'c' * (len(settings['ss_gammas']) + 1)}}}",
        f"\\newcommand{{\\SeparationGammaHeader}}{{{gamma_header}}}",
        f"\\newcommand{{\\CollapseSentence}}{{{collapse_sentence(outdir)}}}",
        f"\\newcommand{{\\LabelShareFigure}}{{{label_share_figure(outdir)}}}",
        f"\\newcommand{{\\CollapsedFraction}}{{{COLLAPSED_FRACTION:g}}}",
        f"\\newcommand{{\\TheoremOneThreshold}}{{{settings['theorem1_threshold']:g}}}",
        *restart_counts(outdir),
        f"\\newcommand{{\\PanelFigures}}{{{panel_figures(settings, outdir)}}}",
        f"\\newcommand{{\\LatentFigures}}{{{latent_figures(settings, outdir)}}}",
        f"\\newcommand{{\\SemiSupervisedFigures}}{{{ss_figures(settings, outdir)}}}",
        "",
    ])


def build_paper(settings: dict, outdir: str, out: str, scale: str | None = None) -> None:
    outdir = Path(outdir)
    if scale is None:
        scale = read_json(outdir / "settings.json").get("scale", "custom")
    build = outdir / "paper_build"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    for source in PAPER_SOURCES.glob("*.tex"):
        shutil.copy(source, build / source.name)
    (build / "generated.tex").write_text(generated_tex(settings, outdir, scale))
    if shutil.which("latexmk") is None:
        raise RuntimeError("latexmk is not installed: install TeX Live (Debian: apt-get install "
                           "texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk)")
    result = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
                            cwd=build, capture_output=True, text=True)
    if result.returncode != 0:
        log_tail = (build / "report.log").read_text()[-3000:] if (build / "report.log").exists() else result.stdout[-3000:]
        raise RuntimeError(f"latexmk failed (exit {result.returncode}); end of report.log:\n{log_tail}")
    shutil.copy(build / "report.pdf", out)
