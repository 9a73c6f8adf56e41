"""Configuration: presets, overrides, and errors that name the key, the value and the fix."""
import json
import subprocess
import sys

import pytest
import yaml

from vaefail import config, files, grid
from vaefail.config import ROOT, ConfigError


@pytest.fixture
def raw():
    with open(ROOT / "config.yaml") as fh:
        return yaml.safe_load(fh)


def test_every_preset_resolves(raw):
    for scale in ("smoke", "default", "decisive", "paper"):
        settings = config.resolve({**raw, "scale": scale})
        assert settings["versions"] >= 1


def test_the_paper_preset_is_the_papers_grid(raw):
    s = config.resolve({**raw, "scale": "paper"})
    assert (s["versions"], s["restarts_random"], s["restarts_gt"], s["epochs"]) == (5, 5, 5, 100)
    assert s["iwae_samples"] == [3, 10, 20]
    assert s["lin_thresholds"] == [0.05, 0.1] and s["lin_inner_steps"] == [5, 10]
    assert s["latent_dims"] == [1, 2, 3]
    assert (s["n_train"], s["n_valid"], s["n_test"], s["batch_size"]) == (5000, 2000, 2000, 100)
    assert s["hidden_layers"] == [50, 50, 50] and s["learning_rate"] == 0.001
    settings_ids = [x.id for x in grid.experiment_settings(s, "unsupervised")]
    assert settings_ids == ["vae", "lin-T0.05-R5", "lin-T0.05-R10", "lin-T0.1-R5", "lin-T0.1-R10",
                            "iwae-S3", "iwae-S10", "iwae-S20"]


def test_top_level_keys_override_the_preset(raw):
    s = config.resolve({**raw, "scale": "paper", "epochs": 7})
    assert s["epochs"] == 7
    assert config.settings_hash(s) != config.settings_hash(config.resolve({**raw, "scale": "paper"}))


@pytest.mark.parametrize("override, words", [
    ({"restarts_gt": -1}, ["restarts_gt", "-1", "minimum"]),
    ({"epochs": "ten"}, ["epochs", "'ten'", "integer"]),
    ({"scale": "huge"}, ["scale", "huge", "smoke", "paper"]),
    ({"selection": "best"}, ["selection", "knn", "validation_loss"]),
    ({"unsupervised_datasets": ["moons"]}, ["unsupervised_datasets", "moons", "figure-8"]),
    ({"epoch": 3}, ["unknown config key", "'epoch'", "epochs"]),
    ({"n_train": 5050}, ["n_train", "5050", "batch_size"]),
    ({"restarts_random": 0, "restarts_gt": 0}, ["restarts_random", "at least one"]),
    ({"knn_k": 5000}, ["knn_k", "5000"]),
    ({"linear_gaussian": {"singular_values": [2.0], "angle_degrees": 45, "sigma2": 0.01, "epochs": 2}},
     ["linear_gaussian.singular_values", "[2.0]", "minItems 2"]),
    ({"linear_gaussian": {"singular_values": [2.0, 0.5], "angle_degrees": 45, "sigma2": 0.01}},
     ["linear_gaussian", "'epochs' is a required property"]),
])
def test_bad_values_fail_with_a_message_naming_key_value_and_what_is_allowed(raw, override, words):
    with pytest.raises(ConfigError) as err:
        config.resolve({**raw, **override})
    for word in words:
        assert word in str(err.value)


def test_an_output_folder_never_mixes_two_settings(raw, tmp_path):
    s = config.resolve(raw)
    (tmp_path / "settings.json").write_text(json.dumps({"settings": s}))
    files.check_output_dir(s, tmp_path)   # same settings: fine
    with pytest.raises(ConfigError) as err:
        files.check_output_dir({**s, "epochs": 3}, tmp_path)
    assert "epochs: 100 -> 3" in str(err.value) and "outdir" in str(err.value)


def test_grid_paths_and_restart_kinds(raw):
    s = config.resolve({**raw, "scale": "paper"})
    assert len(grid.job_run_stems(s, "unsupervised", "clusters", "vae")) == 5 * 10
    kinds = [grid.restart_init(s, grid.Setting("unsupervised", "vae"), r) for r in range(10)]
    assert kinds == ["random"] * 5 + ["gt"] * 5
    k2 = grid.Setting("latent", "vae", latent_dim=2)
    assert {grid.restart_init(s, k2, r) for r in range(10)} == {"random"}
    # appendix F's disentanglement: VAE and IWAE with K = 2, the unsupervised restarts, all random
    disentangle = grid.experiment_settings(s, "disentangle")
    assert [x.id for x in disentangle] == ["vae", "iwae-S3", "iwae-S10", "iwae-S20"]
    assert {x.latent_dim for x in disentangle} == {2} and {x.sigma2_mode for x in disentangle} == {"fixed"}
    assert {grid.restart_init(s, x, r) for x in disentangle for r in range(10)} == {"random"}
    assert len(grid.job_run_stems(s, "disentangle", grid.LINEAR_GAUSSIAN, "vae")) == 5 * 10
    assert grid.LINEAR_GAUSSIAN not in grid.base_datasets(s)   # no surrogate decoder
    with pytest.raises(ValueError, match="known:"):
        grid.find_setting(s, "unsupervised", "iwae-S7")


def test_semisupervised_restarts_are_counted_apart_from_the_unsupervised_ones(raw):
    s = config.resolve({**raw, "scale": "paper", "ss_restarts_random": 1, "ss_restarts_gt": 2})
    ss = grid.Setting("semisupervised", "vae")
    assert grid.n_restarts(s, "semisupervised") == 3 and grid.n_restarts(s, "unsupervised") == 10
    assert [grid.restart_init(s, ss, r) for r in range(3)] == ["random", "gt", "gt"]
    assert len(grid.job_members(s, "semisupervised")) == 3 * 4 * 5 * 3  # alpha x gamma x versions x restarts
    with pytest.raises(config.ConfigError, match="ss_restarts_random"):
        config.resolve({**raw, "scale": "paper", "ss_restarts_random": 0, "ss_restarts_gt": 0})


# --- the command line (issue 10) -------------------------------------------------------------
def snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_list_settings_given_as_text_take_the_schemas_types(raw):
    # what `snakemake --config 'ss_alphas=[0.0,1.0]' ...` hands over: list items as text
    s = config.resolve({**raw, "scale": "smoke", "ss_alphas": ["0.0", "1.0"], "iwae_samples": ["10"],
                        "uci_latent_dims": {"diabetic-retinopathy": ["2", "5"], "contraceptive": ["2"], "titanic": ["1"]}})
    assert s["ss_alphas"] == [0.0, 1.0] and s["iwae_samples"] == [10]
    assert s["uci_latent_dims"]["diabetic-retinopathy"] == [2, 5]
    with pytest.raises(ConfigError, match=r"config key 'ss_alphas.0' = 'one': 'one' is not of type 'number'"):
        config.resolve({**raw, "ss_alphas": ["one"]})


def test_list_settings_can_be_overridden_on_the_command_line(tmp_path):
    result = snakemake("-n", "--config", "scale=smoke", f"outdir={tmp_path}", "ss_alphas=[0.0,1.0]",
                       "iwae_samples=[10]", "uci_latent_dims={diabetic-retinopathy: [2], contraceptive: [2], titanic: [1, 2]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "setting=iwae-S10" in result.stdout and "setting=iwae-S3" not in result.stdout
    assert "dataset=titanic, setting=vae-K2" in result.stdout


def test_an_outdir_with_braces_is_refused(raw):
    with pytest.raises(ConfigError, match=r"config key 'outdir' = 'runs/\{x\}'.*no \{ or \}"):
        config.resolve({**raw, "outdir": "runs/{x}"})


def test_a_yaml_error_names_its_line(tmp_path):
    # a copy of config.yaml with one bad line, read from another working directory
    lines = (ROOT / "config.yaml").read_text().splitlines()
    bad_line = lines.index("device: auto        # auto | cpu | cuda  (cuda: training rules request `gpu: 1` from the executor)")
    lines[bad_line] = "device: auto\n  misindented: value"
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\n")
    result = snakemake("-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert (f"config.yaml is not valid YAML: mapping values are not allowed here at line {bad_line + 2}, column 14; "
            "fix that line") in result.stdout + result.stderr
