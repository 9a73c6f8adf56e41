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

from .catalogue import (
    CLAIMS_TABLE,
    DATASET_TITLES,
    METHOD_TITLES,
    TABLES,
    latent_figure,
    panel_figure,
    ss_panel_figure,
    table_path,
)
from .claims import COLLAPSED_FRACTION
from .config import ROOT, settings_hash
from .files import read_csv, read_json
from .grid import METHODS, all_datasets, base_datasets
from .provenance import code_version
from .tables import tex_label

PAPER_SOURCES = ROOT / "paper"
AGREEMENT_SDS = 2.0   # "agrees" when |ours - paper| <= 2 * sqrt(sd_ours^2 + sd_paper^2)


def tex(text) -> str:
    """Escape LaTeX's special characters in plain text."""
    text = str(text)
    for a, b in (("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"), ("^", "\\^{}"),
                 ("~", "\\~{}"), ("{", "\\{"), ("}", "\\}")):
        text = text.replace(a, b)
    # without T1 font encoding these print as other glyphs in text mode
    return text.replace("<", "$<$").replace(">", "$>$").replace("|", "$|$")


def _num(v, digits=3) -> str:
    return "--" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def verdict(row) -> str:
    if not np.isfinite(row["paper_mean"]) or not np.isfinite(row["mean"]):
        return "no paper value"
    spread = np.sqrt(np.nan_to_num(row["sd"]) ** 2 + np.nan_to_num(row["paper_sd"]) ** 2)
    return "agrees" if abs(row["mean"] - row["paper_mean"]) <= AGREEMENT_SDS * spread else "differs"


def comparison_rows(tables: dict[str, pd.DataFrame]) -> str:
    lines = []
    for name, cells in tables.items():
        for _, row in cells[cells["paper_mean"].notna()].iterrows():
            lines.append(" & ".join([tex(name), tex_label(row["row"]), tex_label(row["column"]),
                                     f"{_num(row['mean'])} $\\pm$ {_num(row['sd'])}",
                                     f"{_num(row['paper_mean'])} $\\pm$ {_num(row['paper_sd'])}",
                                     verdict(row)]) + " \\\\")
    return "\n".join(lines)


def claim_rows(claims: pd.DataFrame) -> str:
    """The claims table (tables/claims.csv) as longtable rows: claim, source, measured, verdict."""
    return "\n".join(f"{r['claim']} & {tex(r['source'])} & {tex(r['measured'])} & {r['verdict']} \\\\"
                     for _, r in claims.iterrows())


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
    """What this run found for Figure 2, in words, from tables/separation.csv."""
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
        parts.append(f"with {name} in $U$ the selected VAE's separation is {_num(vae, 2)} ({state}) and "
                     f"IWAE's {_num(iwae, 2)}")
    return f"In this run the true separation is {_num(truth, 2)}; " + "; ".join(parts) + "."


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


def generated_tex(settings: dict, outdir: Path, scale: str) -> str:
    tables = {name: read_csv(outdir / table_path(name)) for name in TABLES}
    version = code_version()
    commit = version["git_commit"] + (" (with uncommitted changes)" if version["git_dirty"] else "")
    time_rows, total = run_time_rows(outdir)
    claims = read_csv(outdir / table_path(CLAIMS_TABLE))
    gamma_header = " & ".join(f"$\\gamma={g:g}$" for g in settings["ss_gammas"])
    verdicts = [verdict(r) for name in tables for _, r in tables[name].iterrows()
                if np.isfinite(r["paper_mean"])]
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
        f"\\newcommand{{\\Selection}}{{{tex(settings['selection'])}}}",
        f"\\newcommand{{\\TrainingMinutes}}{{{total / 60:.1f}}}",
        f"\\newcommand{{\\CellsAgree}}{{{verdicts.count('agrees')}}}",
        f"\\newcommand{{\\CellsCompared}}{{{len(verdicts)}}}",
        f"\\newcommand{{\\AgreementSds}}{{{AGREEMENT_SDS:g}}}",
        f"\\newcommand{{\\SettingsRows}}{{{settings_rows(settings)}}}",
        f"\\newcommand{{\\SurrogateRows}}{{{surrogate_rows(outdir, settings)}}}",
        f"\\newcommand{{\\RunTimeRows}}{{{time_rows}}}",
        f"\\newcommand{{\\GtEncoderRows}}{{{gt_encoder_rows(outdir, settings)}}}",
        f"\\newcommand{{\\ComparisonRows}}{{{comparison_rows(tables)}}}",
        f"\\newcommand{{\\ClaimRows}}{{{claim_rows(claims)}}}",
        f"\\newcommand{{\\ClaimsHold}}{{{(claims['verdict'] == 'holds').sum()}}}",
        f"\\newcommand{{\\ClaimsScored}}{{{(claims['verdict'] != 'n/a').sum()}}}",
        f"\\newcommand{{\\SeparationRows}}{{{separation_rows(outdir, settings)}}}",
        f"\\newcommand{{\\SeparationGammaColumns}}{{{'c' * (len(settings['ss_gammas']) + 1)}}}",
        f"\\newcommand{{\\SeparationGammaHeader}}{{{gamma_header}}}",
        f"\\newcommand{{\\CollapseSentence}}{{{collapse_sentence(outdir)}}}",
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
