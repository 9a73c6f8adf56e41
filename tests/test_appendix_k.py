"""Tests of appendix K (analyses.appendix_k with its geometry and projections, and
report.analysis_tables, which writes its tables and Figure 5) on a tiny output folder built
here: small surrogate decoders, data, and random "trained" models saved as the training jobs
save them, with selected/*.csv naming them.
"""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vaefail import grid
from vaefail.analyses import appendix_k as AK
from vaefail.analyses import appendix_k_geometry as AKG
from vaefail.analyses import appendix_k_projections as AKP
from vaefail.analyses import projection as PJ
from vaefail.data.dataset_files import make_dataset
from vaefail.data.datasets import EMBEDDING, clusters, example, figure_eight
from vaefail.data.surrogate import make_surrogate
from vaefail.engine.ensembles import build_ensemble, member_state
from vaefail.files import save_torch
from vaefail.randomness import MemberStreams
from vaefail.report.analysis_tables import write_appendix_k

SETTINGS = {
    "seed": 11, "hidden_layers": [16, 16], "versions": 2, "restarts_random": 1, "restarts_gt": 1,
    "latent_datasets": ["figure-8", "clusters"], "latent_dims": [1, 2], "iwae_samples": [3],
    "noise_dataset": "spiral-dots", "unsupervised_datasets": ["spiral-dots"], "lin_thresholds": [0.1],
    "lin_inner_steps": [5], "n_train": 40, "n_valid": 20, "n_test": 60, "surrogate_adam_steps": 300,
    "surrogate_lbfgs_iterations": 0, "surrogate_grid_points": 2001, "surrogate_target_mse": 1e-4,
    "matmul_precision": "highest", "uci_splits": 1, "ss_versions": 1,
    "attack_points": 10, "attack_budgets": [0.0, 1.0, 3.0, 8.0], "attack_steps": 4, "attack_restarts": 2,
    "attack_gain": 3.0,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_member(path: Path, dataset: str, latent_dim: int, sigma2: float, seed: int, sigma2_mode="learned") -> None:
    ex = example(dataset)
    model = build_ensemble(SETTINGS, ex, latent_dim, sigma2_mode, MemberStreams([seed], torch.device("cpu")),
                                ["random"], None, None, [0], torch.device("cpu"))
    model.set_sigma2(torch.tensor(sigma2))
    save_torch(path, member_state(model, 0))


def build_outdir(root: Path) -> Path:
    torch.set_num_threads(1)
    for base in ("figure-8", "clusters", "spiral-dots"):
        make_surrogate(SETTINGS, base, str(root / grid.surrogate_path(base)))
    selected = {"latent": [], "noise": [], "unsupervised": []}
    for dataset in ("figure-8-5d", "clusters-5d", "spiral-dots"):
        ex = example(dataset)
        paths = [str(root / grid.data_path(dataset, v)) for v in range(SETTINGS["versions"])]
        make_dataset(SETTINGS, dataset, str(root / grid.surrogate_path(ex.base)), paths)
        for v in range(SETTINGS["versions"]):   # phi_GT: a random encoder of the right shape
            model = build_ensemble(SETTINGS, ex, 1, "fixed", MemberStreams([v], torch.device("cpu")),
                                        ["random"], None, None, [0], torch.device("cpu"))
            encoder = {name: view[0].clone() for name, view in model.encoder.views.items()}
            save_torch(root / grid.gt_encoder_path(dataset, v), {"encoder": encoder})
    jobs_ = [("latent", d, s) for d in ("figure-8-5d", "clusters-5d")
             for s in grid.experiment_settings(SETTINGS, "latent")]
    jobs_ += [("noise", "spiral-dots", grid.Setting("noise", "vae")),
              ("unsupervised", "spiral-dots", grid.Setting("unsupervised", "vae"))]
    for i, (experiment, dataset, setting) in enumerate(jobs_):
        truth = example(dataset).noise_variance
        sigma2 = truth if setting.sigma2_mode == "fixed" else truth / (2 * setting.latent_dim)
        for v in range(SETTINGS["versions"]):
            for r in range(grid.n_restarts(SETTINGS, experiment)):
                stem = grid.run_stem(experiment, dataset, setting.id, v, r)
                save_member(root / f"{stem}.pt", dataset, setting.latent_dim, sigma2, 100 * i + 10 * v + r,
                            setting.sigma2_mode)
            selected[experiment].append({"dataset": dataset, "setting": setting.id, "method": setting.method,
                                         "latent_dim": setting.latent_dim, "version": v, "restart": v % 2,
                                         "init": "random"})
    for experiment, rows in selected.items():
        (root / "selected").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_csv(root / "selected" / f"{experiment}.csv", index=False)
    return root


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return build_outdir(tmp_path_factory.mktemp("appendix_k"))


@pytest.fixture(scope="module")
def tables(outdir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    denoising = AK.denoising_table(SETTINGS, outdir)
    attack = AK.attack_table(SETTINGS, outdir, denoising)
    torch.set_num_threads(threads)
    return denoising, attack


# --- building blocks -----------------------------------------------------------------------
def test_plane_of_the_5d_embedding_is_orthonormal_and_recovers_2d_coordinates():
    plane = AKG.plane_of("figure-8-5d")
    np.testing.assert_allclose((plane.Q.T @ plane.Q).numpy(), np.eye(2), atol=1e-12)
    np.testing.assert_allclose((plane.N.T @ plane.N).numpy(), np.eye(3), atol=1e-12)
    np.testing.assert_allclose((plane.Q.T @ plane.N).numpy(), 0.0, atol=1e-12)
    uv = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = uv @ EMBEDDING
    np.testing.assert_allclose(plane.coords(x.numpy()), uv.numpy(), atol=1e-12)
    np.testing.assert_allclose(plane.off_plane_norm(x.numpy()), 0.0, atol=1e-12)
    flat = AKG.plane_of("spiral-dots")
    assert flat.N.shape == (2, 0) and np.allclose(flat.coords(uv.numpy()), uv.numpy())


def test_tilted_classifier_is_the_true_one_on_the_plane_and_tilts_off_it():
    plane = AKG.plane_of("clusters-5d")
    base = PJ.HalfSpaceClassifier(plane.to_2d[:, 0], 0.1)
    g = AKG.OffPlaneTiltedClassifier(base, plane, 3.0)
    gen = torch.Generator().manual_seed(1)
    on_plane = torch.randn(200, 2, dtype=torch.float64, generator=gen) @ EMBEDDING
    np.testing.assert_array_equal(g(on_plane).numpy(), base(on_plane).numpy())
    w = plane.Q[:, 0]
    n = g.off_plane_partner(w)
    assert float(n @ plane.Q @ plane.Q.T @ n) < 1e-24 and float(n.norm()) == pytest.approx(1.0)
    np.testing.assert_allclose(g.seen(on_plane + 0.2 * n).numpy(), (on_plane + 0.6 * w).numpy(), atol=1e-12)
    # an off-plane direction outside N2 changes nothing
    third = plane.N[:, 2]
    np.testing.assert_array_equal(g(on_plane + 5 * third).numpy(), base(on_plane).numpy())
    # gain 0: the classifier ignores every off-plane direction
    g0 = AKG.OffPlaneTiltedClassifier(base, plane, 0.0)
    np.testing.assert_array_equal(g0(on_plane + 5 * n).numpy(), base(on_plane).numpy())


def test_clusters_classifier_labels_the_flat_stretches():
    plane = AKG.plane_of("clusters-5d")
    decoder = lambda z: clusters(z) @ EMBEDDING  # noqa: E731
    g, _ = AKG.plane_classifier("clusters-5d", decoder, plane)
    assert g.centres.shape == (4, 5)
    z = AKG.prior_quantiles(2001)
    labels = PJ.manifold_labels(g, decoder, z)
    flat = AKG.cluster_index(z)
    # every point away from the links (u(z) within 0.1 of a step at odd u) is labelled by its cluster
    u = 2 * math.pi / (1 + torch.exp(-0.5 * math.pi * z.reshape(-1)))
    on_link = ((u - 1) / 2 - torch.round((u - 1) / 2)).abs() * 2 < 0.1
    assert bool((labels == flat)[~on_link].all())
    assert float((labels == flat).double().mean()) > 0.9


@pytest.mark.parametrize("dataset, decoder, sigma2", [("figure-8-5d", figure_eight, 0.02),
                                                      ("clusters-5d", clusters, 0.2)])
def test_true_projections_return_points_on_the_manifold(dataset, decoder, sigma2):
    """The orthogonal projection onto the true manifold returns a point on it (to its search
    grid); the true model's posterior-mean projection returns it up to its encoder error (a
    fraction of the noise), where the posterior is unimodal (away from Figure-8's crossing and
    from the overlapping end clusters of Clusters)."""
    plane = AKG.plane_of(dataset)
    f = lambda z: decoder(z) @ plane.from_2d  # noqa: E731
    truth = AKP.TruthData(dataset, f, sigma2, plane)
    z = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64).unsqueeze(-1)
    z = z[z.abs().squeeze(-1) > 0.15]
    x = f(z)
    nearest = (AKP.nearest_point_projector(truth)(x.unsqueeze(0))[0] - x).norm(dim=-1)
    assert float(nearest.max()) < 0.1 * math.sqrt(sigma2)
    mean = (AKP.truth_projector(truth)(x.unsqueeze(0))[0] - x).norm(dim=-1)
    assert float(mean.median()) < 0.25 * math.sqrt(sigma2)     # E[z|x] shrinks towards the prior a little


def test_nearest_point_projection_has_the_tangent_projector_as_its_jacobian():
    plane = AKG.plane_of("figure-8-5d")
    f = lambda z: figure_eight(z) @ plane.from_2d  # noqa: E731
    project = PJ.decoder_projector(f, PJ.nearest_point_encoder(f))
    z0 = torch.tensor([[0.7]], dtype=torch.float64)
    x0 = f(z0)[0]
    J = torch.autograd.functional.jacobian(lambda x: project(x.reshape(1, 1, -1)).reshape(-1), x0)
    t = torch.autograd.functional.jacobian(lambda z: f(z.reshape(1, 1)).reshape(-1), z0.reshape(1)).reshape(-1)
    # exact up to the tangent being taken at the nearest grid point (spacing 0.003)
    np.testing.assert_allclose(J.numpy(), torch.outer(t, t).numpy() / float(t @ t), atol=5e-3)


# --- the tables ----------------------------------------------------------------------------
def test_denoising_table_has_every_model_and_no_nan(tables):
    denoising, _ = tables
    assert list(denoising.columns) == AK.DENOISING_COLUMNS
    assert set(denoising["dataset"]) == {"figure-8-5d", "clusters-5d", "spiral-dots"}
    assert set(denoising["version"]) == {0, 1}
    per_dataset = denoising.groupby(["dataset", "version"])["model"].apply(set)
    latent_models = {"truth", "truth (nearest point)", "truth (phi_GT)", "VAE K=1", "VAE K=2", "IWAE K=1",
                     "IWAE K=2"}
    assert per_dataset[("figure-8-5d", 0)] == latent_models
    assert per_dataset[("spiral-dots", 1)] == {"truth", "truth (nearest point)", "truth (phi_GT)",
                                               "VAE (sigma^2 learned)", "VAE (sigma^2 fixed)"}
    numeric = ["latent_dim", "sigma2_learned", "sigma2_true", "noise", "observed_noise", "projection_error", "ratio"]
    assert not denoising[numeric].isna().any().any()
    assert (denoising["note"].fillna("") == "").all()
    np.testing.assert_allclose(denoising["ratio"], denoising["projection_error"] / denoising["noise"])
    five_d = denoising[denoising["dataset"] != "spiral-dots"]
    np.testing.assert_allclose(five_d["noise"], 5 * five_d["sigma2_true"])
    learned = denoising[denoising["model"] == "VAE K=2"]
    np.testing.assert_allclose(learned["sigma2_learned"], learned["sigma2_true"] / 4, rtol=1e-6)
    # the orthogonal projection onto the true manifold removes noise
    nearest = denoising[denoising["model"] == "truth (nearest point)"]
    assert (nearest["ratio"] < 1).all()


def test_attack_table_zero_budget_never_succeeds_and_success_grows(tables):
    _, attack = tables
    assert list(attack.columns) == AK.ATTACK_COLUMNS
    assert set(attack["dataset"]) == {"figure-8-5d", "clusters-5d"}
    assert {"truth", "truth (nearest point)", "no defence (identity)", "VAE K=2", "IWAE K=1"} <= set(attack["model"])
    numeric = ["latent_dim", "sigma2_learned", "budget", "n_points", "n_correct", "success_rate", "robust_accuracy"]
    ok = attack[attack["n_correct"] > 0]
    assert not ok[numeric].isna().any().any()
    assert (attack.loc[attack["budget"] == 0, "success_rate"].fillna(0) == 0).all()
    for _, frame in attack.groupby(["dataset", "model"]):
        rates = frame.sort_values("budget")["success_rate"].to_numpy()
        if np.isfinite(rates).all():
            assert (np.diff(rates) >= 0).all()
        robust = frame.sort_values("budget")["robust_accuracy"].to_numpy()
        assert (np.diff(robust) <= 0).all()
    identity = attack[(attack["model"] == "no defence (identity)")]
    assert (identity["clean_accuracy"] == 1).all() and (identity["latent_dim"] == 5).all()
    assert identity["success_rate"].max() > 0       # the tilted classifier falls without a defence
    np.testing.assert_allclose(attack["budget"], attack["budget_in_sigma"] * np.sqrt(attack["sigma2_true"]))


def test_a_missing_model_is_a_row_with_a_note(outdir, tmp_path):
    import shutil
    copy = tmp_path / "out"
    shutil.copytree(outdir, copy)
    stem = grid.run_stem("latent", "clusters-5d", "vae-K2", 1, 1)          # the selected restart of v1
    (copy / f"{stem}.pt").unlink()
    table = AK.denoising_table(SETTINGS, copy)
    row = table[(table["dataset"] == "clusters-5d") & (table["model"] == "VAE K=2") & (table["version"] == 1)]
    assert len(row) == 1 and np.isnan(row["ratio"].iloc[0]) and "weights missing" in row["note"].iloc[0]
    others = table.drop(row.index)
    assert not others["ratio"].isna().any()


def test_inputs_list_exactly_what_the_job_reads(outdir):
    paths = grid.appendix_k_inputs(SETTINGS)
    # the training jobs stand for their weights by their manifests (written after every member)
    jobs = [p for p in paths if p.endswith("/job.json")]
    assert all((outdir / p).exists() for p in paths if p not in jobs)
    assert any(p.startswith("gt_encoders/") for p in paths)
    assert "runs/noise/spiral-dots/vae/job.json" in jobs
    assert "runs/unsupervised/spiral-dots/vae/job.json" in jobs
    assert set(grid.experiment_manifests(SETTINGS, "latent")) <= set(jobs)


def test_write_appendix_k_writes_tables_and_figure(outdir, tmp_path):
    caption = write_appendix_k(SETTINGS, outdir, tmp_path / "tables" / "appendix_k_denoising.csv",
                                  tmp_path / "tables" / "appendix_k_attack.csv",
                                  tmp_path / "figures" / "figure5")
    assert "Figure 5" in caption
    for name in ("appendix_k_denoising", "appendix_k_attack"):
        table = pd.read_csv(tmp_path / "tables" / f"{name}.csv")
        assert len(table)
        tex = (tmp_path / "tables" / f"{name}.tex").read_text()
        assert tex.count("\\toprule") == 1 and tex.count("\\bottomrule") == 1
    for ext in ("pdf", "png"):
        assert (tmp_path / "figures" / f"figure5.{ext}").stat().st_size > 10_000
    assert not list(tmp_path.rglob("*.tmp*"))
