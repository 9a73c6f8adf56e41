"""The Snakemake workflow end to end: lint, the paper-scale grid, a smoke run to the PDF,
redrawing from saved results, and bad input that must stop with a clear message."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from vaefail import config, grid
from vaefail.config import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
HAVE_LATEX = shutil.which("latexmk") is not None


def snakemake(*args, check=True, timeout=1800):
    result = subprocess.run([*SNAKEMAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def test_lint_is_clean():
    result = snakemake("--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_paper_scale_dry_run_lists_the_full_grid(tmp_path):
    result = snakemake("-n", "--quiet", "rules", "--config", "scale=paper", f"outdir={tmp_path}")
    with open(ROOT / "config.yaml") as fh:
        settings = config.resolve({**yaml.safe_load(fh), "scale": "paper"})
    counts = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    # 5 examples x (VAE + 4 LIN + 3 IWAE) + Spiral-Dots with sigma^2 learned + 2 x 3 K x (VAE + 3 IWAE)
    # + appendix F's linear-Gaussian data with K = 2 x (VAE + 3 IWAE)
    assert counts["train"] == 5 * 8 + 1 + 2 * 3 * 4 + 4
    # 2 Semi-Circles x 8 settings x 2 unlabelled z-posteriors (q(z|x), q(z|x,y)); 3 UCI sets x 2 K
    # x 8 settings (sigma^2 is trained within the job; the first z-posterior only)
    assert counts["train_semisupervised"] == 2 * 8 * 2 and counts["train_uci"] == 3 * 2 * 8
    assert sum(counts[r] for r in ("train", "train_semisupervised", "train_uci")) == len(grid.training_jobs(settings))
    # the linear-Gaussian data need no surrogate and no ground-truth encoders
    assert counts["surrogate"] == 7 and counts["dataset"] == 10 and counts["gt_encoders"] == 7
    assert counts["disentanglement_table"] == 1
    assert counts["uci_splits"] == 3
    restarts = {e: len(grid.experiment_run_stems(settings, e)) for e in grid.EXPERIMENTS}
    assert restarts["unsupervised"] + restarts["noise"] + restarts["latent"] + restarts["disentangle"] == 69 * 5 * 10
    # each semi-supervised job trains 3 alphas x 4 gammas x 5 versions x 10 restarts
    # (UCI: x 2 sigma^2 x 5 splits x 5 restarts)
    assert restarts["semisupervised"] == 32 * 12 * 5 * 10 and restarts["uci"] == 48 * 12 * 2 * 5 * 5


@pytest.mark.parametrize("override, words", [
    ("restarts_gt=-1", ["restarts_gt", "-1", "minimum"]),
    ("scale=huge", ["scale", "huge"]),
    ("epoch=3", ["unknown config key", "epoch"]),
])
def test_a_bad_config_stops_the_workflow_with_its_message(tmp_path, override, words):
    result = snakemake("-n", "--config", override, f"outdir={tmp_path}", check=False)
    assert result.returncode != 0
    for word in words:
        assert word in result.stdout + result.stderr


def test_redraw_without_results_names_what_is_missing(tmp_path):
    result = snakemake("-n", "--config", "scale=smoke", f"outdir={tmp_path}", "redraw=true", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "missing" in text and "runs/unsupervised" in text and "without redraw=true" in text


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("smoke")
    snakemake("--cores", "2", "--config", "scale=smoke", f"outdir={outdir}")
    return outdir


def test_smoke_run_writes_tidy_tables(smoke_run):
    for name in ("table1", "table2", "theorem2", "table3", "table4", "table5", "table6"):
        cells = pd.read_csv(smoke_run / "tables" / f"{name}.csv")
        assert list(cells.columns) == ["table", "row", "column", "mean", "sd", "n", "paper_mean", "paper_sd"]
        assert (cells["n"] == 2).all() and cells["mean"].notna().all()
        assert (smoke_run / "tables" / f"{name}.tex").read_text().count("\\toprule") == 1
    table1 = pd.read_csv(smoke_run / "tables" / "table1.csv")
    assert set(table1["column"]) == {"IWAE", "LIN", "VAE"}
    assert table1.loc[(table1["row"] == "Clusters") & (table1["column"] == "VAE"), "paper_mean"].item() == 0.361
    table6 = pd.read_csv(smoke_run / "tables" / "table6.csv")
    cohorts = table6[table6["column"].str.startswith("VAE")].groupby("row")["column"].count()
    assert cohorts.to_dict() == {"Contraceptive": 3, "Diabetic Retinopathy": 2, "Titanic": 2}


def test_smoke_run_builds_the_disentanglement_table_and_scores_its_claims(smoke_run):
    cells = pd.read_csv(smoke_run / "tables" / "disentanglement.csv")
    assert list(dict.fromkeys(cells["row"])) == ["true A", "A R (appendix F)", "A R* (ELBO-maximising)", "VAE", "IWAE S=3"]
    assert (cells["n"] == 2).all() and cells["mean"].notna().all()
    assert (smoke_run / "tables" / "disentanglement.tex").read_text().count("\\toprule") == 1
    claims = pd.read_csv(smoke_run / "tables" / "claims.csv")
    appendix_f = claims[claims["source"] == "Appendix F"]
    assert len(appendix_f) == 3 and appendix_f["verdict"].iloc[0] == "exact"
    # drawn from the linear model itself, with its latents: no surrogate, no ground-truth encoders
    assert "z_test" in np.load(smoke_run / "data/linear-gaussian/v0.npz").files
    assert not (smoke_run / "surrogates/linear-gaussian.pt").exists()
    assert not (smoke_run / "gt_encoders/linear-gaussian").exists()


def test_smoke_run_scores_every_claim_with_its_evidence(smoke_run):
    claims = pd.read_csv(smoke_run / "tables" / "claims.csv")
    assert {"effect", "ci_low", "ci_high", "n", "p", "verdict", "note"} <= set(claims.columns)
    assert len(claims) > 40 and set(claims["verdict"]) <= {"supported", "contradicted", "inconclusive", "exact"}
    # two versions decide nothing; 2 epochs converge nothing
    assert (claims.loc[claims["verdict"] != "exact", "verdict"] == "inconclusive").all()
    assert claims["note"].fillna("").str.contains("not converged").sum() > 20
    assert (claims["n"] == 2).sum() > 40
    for path in ("figures/claims-forest", "figures/collapse-labelshare"):
        assert (smoke_run / f"{path}.pdf").read_bytes()[:4] == b"%PDF"
    cells = pd.read_csv(smoke_run / "tables" / "paper-scale.csv")
    assert set(cells["scale"]) == {"t", "deficit", "native"}
    assert set(cells["status"]) <= {"consistent", "differs", "not comparable"}
    collapse = pd.read_csv(smoke_run / "tables" / "collapse.csv")
    assert (collapse["j_gap_se"] > 0).all() and (collapse["separation_collapsed"] < collapse["separation_separated"]).all()
    shares = pd.read_csv(smoke_run / "tables" / "separation-labelshare.csv")
    assert sorted(shares["label_fraction"].unique()) == [0.1, 0.5]


def test_smoke_run_selects_kept_restarts_with_their_convergence(smoke_run):
    for experiment in ("unsupervised", "semisupervised", "uci"):
        selected = pd.read_csv(smoke_run / "selected" / f"{experiment}.csv")
        assert selected["kept_restart"].all() and selected["converged"].notna().all()
        assert {"tail_gain", "knn_test_deficit", "knn_test_draw_sd"} <= set(selected.columns)
    record = json.loads((smoke_run / "runs/unsupervised/clusters/vae/v1/r0.json").read_text())
    assert record["train"]["valid_curve_epochs"] == [1, 2] and len(record["train"]["valid_curve"]) == 2


def test_smoke_run_records_provenance_per_restart(smoke_run):
    record = json.loads((smoke_run / "runs/unsupervised/clusters/vae/v1/r0.json").read_text())
    settings = json.loads((smoke_run / "settings.json").read_text())
    assert record["provenance"]["settings_hash"] == settings["settings_hash"]
    assert record["status"] == "ok" and record["init"] == "random" and isinstance(record["seed"], int)
    assert {"knn_test", "objective_valid", "sigma2", "sigma2_closed_form", "mi_test"} <= set(record)
    assert (smoke_run / "runs/unsupervised/clusters/vae/v1/r0.pt").exists()


def test_smoke_run_draws_the_figures(smoke_run):
    for path in ["figures/figure1", "figures/panels/clusters-iwae", "figures/latent/figure-8-5d",
                 "figures/figure2", "figures/ss-panels/continuous-semicircle-lin"]:
        assert (smoke_run / f"{path}.pdf").read_bytes()[:4] == b"%PDF"
        assert (smoke_run / f"{path}.png").stat().st_size > 10_000


@pytest.mark.skipif(not HAVE_LATEX, reason="latexmk is not installed")
def test_smoke_run_builds_the_report(smoke_run):
    pdf = (smoke_run / "paper.pdf").read_bytes()
    assert pdf[:4] == b"%PDF" and len(pdf) > 50_000
    generated = (smoke_run / "paper_build" / "generated.tex").read_text()
    assert json.loads((smoke_run / "settings.json").read_text())["settings_hash"] in generated


def smoke_settings():
    with open(ROOT / "config.yaml") as fh:
        return config.resolve({**yaml.safe_load(fh), "scale": "smoke"})


def test_smoke_run_keeps_a_run_record(smoke_run):
    settings = smoke_settings()
    times = pd.read_csv(smoke_run / "record" / "runtimes.csv")
    train = times[times["stage"] == "train"]
    assert len(train) == len(grid.training_jobs(settings)) and (train["seconds"] > 0).all()
    prov = json.loads((smoke_run / "record" / "provenance.json").read_text())
    n_results = sum(len(grid.experiment_run_stems(settings, e)) for e in grid.EXPERIMENTS)
    assert prov["result_files"] == n_results == prov["seeds"]["distinct"]
    recorded_hash = json.loads((smoke_run / "settings.json").read_text())["settings_hash"]
    assert prov["settings_hash"] == recorded_hash and list(prov["result_settings_hashes"]) == [recorded_hash]
    assert sum(prov["result_devices"].values()) == n_results


def test_html_report_holds_tables_figures_and_the_run_record(smoke_run):
    report = smoke_run / "report.html"
    snakemake("--report", str(report), "--config", "scale=smoke", f"outdir={smoke_run}")
    html = report.read_text()
    for name in ("table1.csv", "table6.csv", "figure1.png", "figure2.png", "clusters-iwae.png",
                 "runtimes.csv", "provenance.json", "paper.pdf"):
        assert name in html, f"{name} is not in the HTML report"
    assert "Table 6: smooth kNN statistic of each cohort" in html  # a rendered caption


def test_redraw_rebuilds_outputs_without_training(smoke_run):
    run_file = smoke_run / "runs/unsupervised/clusters/vae/v1/r0.json"
    before = run_file.stat().st_mtime_ns
    table = smoke_run / "tables" / "table1.csv"
    table_before = table.stat().st_mtime_ns
    report = smoke_run / "report-redrawn.html"
    result = snakemake("--cores", "2", "--forceall", "--config", "scale=smoke", f"outdir={smoke_run}", "redraw=true",
                       "--report", str(report), "--report-after-run")
    assert "rule train" not in result.stdout + result.stderr
    assert "table1.csv" in report.read_text()
    assert run_file.stat().st_mtime_ns == before
    assert table.stat().st_mtime_ns > table_before


def test_each_half_of_the_paper_is_a_target_of_its_own(tmp_path):
    def rules(target):
        result = snakemake(target, "-n", "--quiet", "rules", "--profile", "workflow/profiles/local",
                           "--config", "scale=smoke", f"outdir={tmp_path}")
        return {line.split()[0] for line in result.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit()}
    semi, unsup = rules("semisupervised"), rules("unsupervised")
    assert {"train_semisupervised", "train_uci", "figure2"} <= semi and not {"train", "gt_encoders", "paper"} & semi
    assert {"train", "gt_encoders", "figure1"} <= unsup and not {"train_semisupervised", "train_uci", "paper"} & unsup


# --- damaged or deleted results (issue 10), on a copy of the smoke run ----------------------------
@pytest.fixture
def smoke_copy(smoke_run, tmp_path):
    copy = tmp_path / "smoke"
    shutil.copytree(smoke_run, copy, ignore=shutil.ignore_patterns("paper_build", "report*.html"))   # keeps mtimes
    return copy


def test_a_deleted_result_is_redone_by_the_same_command(smoke_copy):
    deleted = smoke_copy / "runs/semisupervised/discrete-semicircle/vae/a0-g1/v1/r0.pt"
    deleted.unlink()
    result = snakemake("-n", "--config", "scale=smoke", f"outdir={smoke_copy}")
    assert "rule train_semisupervised:" in result.stdout and str(deleted) in result.stdout
    assert "wildcards: dataset=discrete-semicircle, setting=vae" in result.stdout


def test_a_damaged_result_is_named_on_screen_by_a_rerun_and_redraw_stops_before_deleting_anything(smoke_copy):
    truncated = smoke_copy / "runs/unsupervised/figure-8/vae/v0/r0.json"
    os.truncate(truncated, 300)
    garbled = smoke_copy / "runs/uci/titanic/vae-K1/a1-g1-s0.5/v1/r0.pt"
    garbled.write_bytes(os.urandom(5000))
    rerun = snakemake("--cores", "2", "--keep-going", "--config", "scale=smoke", f"outdir={smoke_copy}", "--",
                      str(smoke_copy / "selected/unsupervised.csv"), str(smoke_copy / "selected/uci.csv"), check=False)
    text = rerun.stdout + rerun.stderr
    assert rerun.returncode != 0
    assert (f"python -m vaefail select: error: {truncated}: not valid JSON (truncated or corrupted: JSONDecodeError: "
            "Unterminated string") in text
    assert (f"python -m vaefail select: error: {garbled}: not a whole .pt file (BadZipFile: File is not a zip file); "
            "delete it and run the same snakemake command again to rerun the job of rule 'train_uci' that writes it"
            ) in text
    assert f"(log: {smoke_copy}/logs/select/unsupervised.log)" in text

    outputs = {p: p.stat().st_mtime_ns for p in (smoke_copy / "tables").iterdir()}
    redraw = snakemake("--cores", "2", "--forceall", "--config", "scale=smoke", f"outdir={smoke_copy}", "redraw=true",
                       check=False)
    text = redraw.stdout + redraw.stderr
    assert redraw.returncode != 0
    assert "2 of" in text and "cannot be read (nothing was deleted or redrawn)" in text
    assert f"{truncated}: not valid JSON" in text and f"{garbled}: not a whole .pt file" in text
    assert "Delete them and run the workflow without redraw=true" in text
    assert {p: p.stat().st_mtime_ns for p in (smoke_copy / "tables").iterdir()} == outputs
