"""The experiment grid and where each of its results lives.

Pure Python (no torch), so the Snakefile can import it quickly.  One place for the
expansion datasets x methods x hyperparameters x versions x restarts and for the paths
of every output; the workflow and the package both call these functions.

Experiments:
  unsupervised  Table 1, Figures 1 and 6-14: 2-D examples, K = 1, sigma^2 fixed at the truth.
  noise         Theorem 2: Spiral-Dots, VAE with sigma^2 learned jointly with (theta, phi).
  latent        Table 2, Figures 21-22: Figure-8 and Clusters embedded in 5-D, K in
                latent_dims, sigma^2 learned; only K = 1 has GT-initialised restarts.
"""
from __future__ import annotations

from dataclasses import dataclass

EXPERIMENTS = ("unsupervised", "noise", "latent")
METHODS = ("vae", "lin", "iwae")


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of one method within one experiment."""

    experiment: str
    method: str
    latent_dim: int = 1
    samples: int = 1                 # S: IWAE importance samples
    lin_threshold: float | None = None   # T
    lin_inner_steps: int | None = None   # R

    @property
    def id(self) -> str:
        parts = [self.method]
        if self.method == "iwae":
            parts.append(f"S{self.samples}")
        if self.method == "lin":
            parts += [f"T{self.lin_threshold:g}", f"R{self.lin_inner_steps}"]
        if self.experiment == "latent":
            parts.append(f"K{self.latent_dim}")
        return "-".join(parts)

    @property
    def sigma2_mode(self) -> str:
        return "fixed" if self.experiment == "unsupervised" else "learned"

    @property
    def objective(self) -> str:
        return "iwae" if self.method == "iwae" else "elbo"

    def has_gt_restarts(self) -> bool:
        # Appendix F: only the ground-truth latent dimensionality can start at the truth.
        return self.latent_dim == 1


def experiment_datasets(cfg: dict, experiment: str) -> list[str]:
    if experiment == "unsupervised":
        return list(cfg["unsupervised_datasets"])
    if experiment == "noise":
        return [cfg["noise_dataset"]]
    if experiment == "latent":
        return [f"{name}-5d" for name in cfg["latent_datasets"]]
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def experiment_settings(cfg: dict, experiment: str) -> list[Setting]:
    if experiment == "unsupervised":
        out = [Setting(experiment, "vae")]
        out += [Setting(experiment, "lin", lin_threshold=t, lin_inner_steps=r)
                for t in cfg["lin_thresholds"] for r in cfg["lin_inner_steps"]]
        out += [Setting(experiment, "iwae", samples=s) for s in cfg["iwae_samples"]]
        return out
    if experiment == "noise":
        return [Setting(experiment, "vae")]
    if experiment == "latent":
        out = []
        for k in cfg["latent_dims"]:
            out.append(Setting(experiment, "vae", latent_dim=k))
            out += [Setting(experiment, "iwae", latent_dim=k, samples=s) for s in cfg["iwae_samples"]]
        return out
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def find_setting(cfg: dict, experiment: str, setting_id: str) -> Setting:
    for setting in experiment_settings(cfg, experiment):
        if setting.id == setting_id:
            return setting
    known = ", ".join(s.id for s in experiment_settings(cfg, experiment))
    raise ValueError(f"setting {setting_id!r} is not in the {experiment} grid of this config; known: {known}")


def n_restarts(cfg: dict) -> int:
    return cfg["restarts_random"] + cfg["restarts_gt"]


def restart_init(cfg: dict, setting: Setting, restart: int) -> str:
    """'random' or 'gt': the first restarts_random restarts are random, the rest start at
    the ground truth; settings without a ground truth use random starts throughout."""
    if restart < cfg["restarts_random"] or not setting.has_gt_restarts():
        return "random"
    return "gt"


def base_datasets(cfg: dict) -> list[str]:
    """The 2-D examples whose surrogate decoders the grid needs."""
    names = []
    for experiment in EXPERIMENTS:
        for name in experiment_datasets(cfg, experiment):
            base = name.removesuffix("-5d")
            if base not in names:
                names.append(base)
    return names


def all_datasets(cfg: dict) -> list[str]:
    names = []
    for experiment in EXPERIMENTS:
        for name in experiment_datasets(cfg, experiment):
            if name not in names:
                names.append(name)
    return names


# --- paths (relative to the output folder) -------------------------------------------
def surrogate_path(base: str) -> str:
    return f"surrogates/{base}.pt"


def data_path(dataset: str, version: int) -> str:
    return f"data/{dataset}/v{version}.npz"


def gt_encoder_path(dataset: str, version: int) -> str:
    return f"gt_encoders/{dataset}/v{version}.pt"


def run_stem(experiment: str, dataset: str, setting_id: str, version: int, restart: int) -> str:
    return f"runs/{experiment}/{dataset}/{setting_id}/v{version}/r{restart}"


def job_run_stems(cfg: dict, experiment: str, dataset: str, setting_id: str) -> list[str]:
    """Every restart of every version that one training job produces."""
    return [run_stem(experiment, dataset, setting_id, v, r)
            for v in range(cfg["versions"]) for r in range(n_restarts(cfg))]


def experiment_run_stems(cfg: dict, experiment: str) -> list[str]:
    return [stem for dataset in experiment_datasets(cfg, experiment)
            for setting in experiment_settings(cfg, experiment)
            for stem in job_run_stems(cfg, experiment, dataset, setting.id)]


def training_jobs(cfg: dict) -> list[tuple[str, str, str]]:
    """(experiment, dataset, setting id) of every training job."""
    return [(experiment, dataset, setting.id) for experiment in EXPERIMENTS
            for dataset in experiment_datasets(cfg, experiment)
            for setting in experiment_settings(cfg, experiment)]
