"""The appendix-F table and its claims (analyses.appendix_f, report.analysis_tables,
report.claims.disentanglement_claims) on synthetic results: linear-Gaussian models whose
encoders are exact posterior means, saved as the `disentangle` experiment's restarts, so every
MIG the table reports is known in closed form."""
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vaefail import catalogue, config, grid
from vaefail.analyses import disentanglement as F
from vaefail.config import ROOT
from vaefail.data import linear_gaussian
from vaefail.engine.ensembles import member_state
from vaefail.files import save_torch
from vaefail.report.analysis_tables import build_disentanglement_table
from vaefail.report.claims import Claims, disentanglement_claims


@pytest.fixture(scope="module")
def settings():
    with open(ROOT / "config.yaml") as fh:
        # four versions: enough for the claims' intervals to decide
        return config.resolve({**yaml.safe_load(fh), "scale": "smoke", "n_test": 400, "versions": 4})


def write_results(settings, outdir, kept_models: dict[str, str]) -> pd.DataFrame:
    """Data, weights and selection's all-restarts table of the experiment.  Per setting, the kept
    restart (r1) holds the model kept_models names (appendix_f_models) and the other restarts hold
    the opposite one, so reading a wrong restart shows in the MIG."""
    linear_gaussian.make_dataset(settings, [str(outdir / grid.data_path(grid.LINEAR_GAUSSIAN, v))
                                       for v in range(grid.n_versions(settings, "disentangle"))])
    truth = linear_gaussian.truth(settings)
    models = F.appendix_f_models(truth.A, truth.noise_variance)
    opposite = {"original": "elbo_maximising", "elbo_maximising": "original"}
    rows = []
    for i, setting in enumerate(grid.experiment_settings(settings, "disentangle")):
        for v in range(grid.n_versions(settings, "disentangle")):
            for r in range(grid.n_restarts(settings, "disentangle")):
                kept = r == 1
                name = kept_models[setting.id] if kept else opposite[kept_models[setting.id]]
                ensemble = F.linear_gaussian_ensemble(models[name], truth.b, truth.noise_variance)
                stem = grid.run_stem("disentangle", grid.LINEAR_GAUSSIAN, setting.id, v, r)
                save_torch(outdir / f"{stem}.pt", member_state(ensemble, 0))
                rows.append({"setting": setting.id, "version": v, "restart": r, "status": "ok",
                             "kept_restart": kept, "log_px_test": -3.0 - i - 0.1 * v,
                             "elbo_test": -3.5 - i - 0.2 * v, "objective_test": -3.2 - i + 0.1 * r - 0.3 * v})
    runs = pd.DataFrame(rows)
    runs.to_csv(outdir / "all-restarts.csv", index=False)
    return runs


def build(settings, tmp_path, kept_models):
    runs = write_results(settings, tmp_path, kept_models)
    out = tmp_path / "tables" / "disentanglement.csv"
    build_disentanglement_table(settings, str(tmp_path / "all-restarts.csv"), str(tmp_path), str(out))
    return runs, pd.read_csv(out), out.with_suffix(".tex").read_text()


def value(table, row, column):
    return table.loc[(table["row"] == row) & (table["column"] == column), "mean"].item()


def test_the_table_holds_the_closed_form_and_each_kept_restarts_numbers(settings, tmp_path):
    runs, table, tex = build(settings, tmp_path, {"vae": "elbo_maximising", "iwae-S3": "original"})
    versions = grid.n_versions(settings, "disentangle")
    assert list(table.columns) == ["table", "row", "column", "mean", "sd", "n", "paper_mean", "paper_sd"]
    assert (table["n"] == versions).all() and table["mean"].notna().all()
    assert list(dict.fromkeys(table["row"])) == [*catalogue.DISENTANGLEMENT_MODEL_ROWS.values(), "VAE", "IWAE S=3"]
    truth, rotated, best = catalogue.DISENTANGLEMENT_MODEL_ROWS.values()
    # (a) equal p(x); the rotations close the mean-field gap, so their ELBO is log p(x) itself
    log_px = value(table, truth, catalogue.LOG_PX)
    assert value(table, rotated, catalogue.LOG_PX) == pytest.approx(log_px, abs=1e-9)
    assert value(table, rotated, catalogue.ELBO) == pytest.approx(log_px, abs=1e-9)
    t = linear_gaussian.truth(settings)
    gap = float(F.mean_field_gap(t.A, t.noise_variance))
    assert value(table, truth, catalogue.ELBO) == pytest.approx(log_px - gap, abs=1e-9) and gap > 0.1
    # the true model's posterior means keep z apart; the ELBO-preferred ones mix them
    assert value(table, truth, catalogue.MIG) > 0.1 > 0.02 > value(table, best, catalogue.MIG)
    assert value(table, rotated, catalogue.MIG_NATS) == pytest.approx(value(table, best, catalogue.MIG_NATS), abs=1e-9)
    # (b) the kept restart's codes: the VAE holds A R*, IWAE the true A (the other restarts the opposite)
    for row, model in [("VAE", best), ("IWAE S=3", truth)]:
        for column in (catalogue.MIG, catalogue.MIG_NATS):
            assert value(table, row, column) == pytest.approx(value(table, model, column), abs=1e-9)
    # its metrics, mean and sd over versions of the kept restarts only
    kept = runs[runs["kept_restart"] & (runs["setting"] == "vae")]
    cell = table[(table["row"] == "VAE") & (table["column"] == catalogue.BOUND)]
    assert cell["mean"].item() == pytest.approx(kept["objective_test"].mean())
    assert cell["sd"].item() == pytest.approx(kept["objective_test"].std()) and cell["sd"].item() > 0
    assert value(table, "VAE", catalogue.ELBO) == pytest.approx(kept["elbo_test"].mean())
    assert catalogue.BOUND not in set(table.loc[table["row"] == truth, "column"])
    assert tex.count("\\toprule") == 1 and "Appendix F" in tex and "IWAE S=3" in tex


@pytest.mark.parametrize("kept_models, verdicts", [
    ({"vae": "elbo_maximising", "iwae-S3": "original"}, ["exact", "supported", "supported"]),
    # the VAE kept the true A itself: its MIG equals the truth's on every version, no difference at all
    ({"vae": "original", "iwae-S3": "elbo_maximising"}, ["exact", "inconclusive", "contradicted"]),
])
def test_the_claims_follow_the_per_version_table(settings, tmp_path, kept_models, verdicts):
    build(settings, tmp_path, kept_models)
    versions = pd.read_csv(tmp_path / "tables" / "disentanglement-versions.csv")
    assert sorted(versions["version"].unique()) == list(range(4))
    claims = Claims([])
    disentanglement_claims(claims, versions, pd.DataFrame(), settings)
    scored = claims.frame()
    assert list(scored["verdict"]) == verdicts
    assert list(scored["n"]) == [4, 4, 4]
    assert scored["claim"].str.contains("IWAE S=3").tolist() == [False, False, True]
    # without the trained rows, their claims have no data: inconclusive
    claims = Claims([])
    disentanglement_claims(claims, versions[versions["row"].isin(catalogue.DISENTANGLEMENT_MODEL_ROWS.values())],
                           pd.DataFrame(), settings)
    assert list(claims.frame()["verdict"]) == ["exact", "inconclusive", "inconclusive"]


def test_the_data_hold_the_true_latents_of_the_configured_model(settings, tmp_path):
    path = tmp_path / "v0.npz"
    linear_gaussian.make_dataset(settings, [str(path)])
    data = np.load(path)
    assert data["z_test"].shape == (settings["n_test"], 2) and data["x_train"].shape == (settings["n_train"], 5)
    t = linear_gaussian.truth(settings)
    residual = data["x_train"] - data["z_train"] @ t.A.numpy().T
    assert residual.var() == pytest.approx(settings["linear_gaussian"]["sigma2"], rel=0.1)
    singular_values = torch.linalg.svdvals(t.A).numpy()
    np.testing.assert_allclose(singular_values, settings["linear_gaussian"]["singular_values"], rtol=1e-12)
