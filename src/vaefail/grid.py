"""The experiment grid and where each of its results lives.

Pure Python (no torch), so the Snakefile can import it quickly.  One place for the
expansion datasets x methods x hyperparameters x versions x restarts and for the paths
of every output; the workflow and the package both call these functions.

Experiments:
  unsupervised    Table 1, Figures 1 and 6-14: 2-D examples, K = 1, sigma^2 fixed at the truth.
  noise           Theorem 2: Spiral-Dots, VAE with sigma^2 learned jointly with (theta, phi).
  latent          Table 2, Figures 21-22: Figure-8 and Clusters embedded in 5-D, K in
                  latent_dims, sigma^2 learned; only K = 1 has GT-initialised restarts.
  semisupervised  Tables 3-4, Figures 2 and 15-20: M2 on the Semi-Circle examples, K = 1,
                  sigma^2 fixed at the truth, alpha x gamma per job.
  uci             Tables 5-6: M2 on three UCI data sets; K and sigma^2 are hyperparameters
                  (sigma^2 trained within the job, like alpha and gamma), "versions" are the
                  data splits, all restarts random.
  disentangle     Appendix F: VAE and IWAE with K = 2 on data of a linear-Gaussian truth
                  (config key linear_gaussian), sigma^2 fixed at the truth, all restarts random.
  labelshare      Figure 2's collapse against the labelled share: the semisupervised
                  experiment's VAE (the first z-posterior) on the Discrete Semi-Circle, with
                  each share of observed labels in ss_label_fractions (one job each); the share
                  label_fraction itself is the semisupervised experiment's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

EXPERIMENTS = ("unsupervised", "noise", "latent", "semisupervised", "uci", "disentangle", "labelshare")
SEMI_SUPERVISED_EXPERIMENTS = ("semisupervised", "uci", "labelshare")
# The synthetic semi-supervised experiments: their own versions, restarts and epochs (ss_*).
SEMI_CIRCLE_EXPERIMENTS = ("semisupervised", "labelshare")
LABEL_SHARE_DATASET = "discrete-semicircle"
METHODS = ("vae", "lin", "iwae")
UCI_DATASETS = ("diabetic-retinopathy", "contraceptive", "titanic")
# Appendix F's data: drawn from a linear-Gaussian truth (data.linear_gaussian), no surrogate decoder.
LINEAR_GAUSSIAN = "linear-gaussian"
LINEAR_GAUSSIAN_LATENT_DIM = 2


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of one method within one experiment (one training job;
    semi-supervised jobs train every (alpha, gamma) of the grid besides)."""

    experiment: str
    method: str
    latent_dim: int = 1
    samples: int = 1                      # S: IWAE importance samples
    lin_threshold: float | None = None    # T
    lin_inner_steps: int | None = None    # R
    unlabelled_posterior: str | None = None   # M2: "x" = q(z|x) in U (the paper), "xy" = q(z|x,y)
    label_fraction: float | None = None       # labelshare: the share of observed labels

    @property
    def id(self) -> str:
        parts = [self.method]
        if self.method == "iwae":
            parts.append(f"S{self.samples}")
        if self.method == "lin":
            parts += [f"T{self.lin_threshold:g}", f"R{self.lin_inner_steps}"]
        if self.experiment in ("latent", "uci"):
            parts.append(f"K{self.latent_dim}")
        if self.unlabelled_posterior == "xy":
            parts.append("qzxy")
        if self.label_fraction is not None:
            parts.append(f"L{self.label_fraction:g}")
        return "-".join(parts)

    @property
    def sigma2_mode(self) -> str:
        return "learned" if self.experiment in ("noise", "latent") else "fixed"

    @property
    def objective(self) -> str:
        return "iwae" if self.method == "iwae" else "elbo"

    def has_gt_restarts(self) -> bool:
        # Appendix F: only the ground-truth latent dimensionality can start at the truth;
        # real data have no ground truth; the disentanglement experiment asks which rotation of
        # the latents training finds, which a start at the truth would decide.
        return self.latent_dim == 1 and self.experiment not in ("uci", "disentangle")


def experiment_datasets(cfg: dict, experiment: str) -> list[str]:
    if experiment == "unsupervised":
        return list(cfg["unsupervised_datasets"])
    if experiment == "noise":
        return [cfg["noise_dataset"]]
    if experiment == "latent":
        return [f"{name}-5d" for name in cfg["latent_datasets"]]
    if experiment == "semisupervised":
        return list(cfg["ss_datasets"])
    if experiment == "uci":
        return list(cfg["uci_datasets"])
    if experiment == "disentangle":
        return [LINEAR_GAUSSIAN]
    if experiment == "labelshare":
        return [LABEL_SHARE_DATASET] if LABEL_SHARE_DATASET in cfg["ss_datasets"] and cfg["ss_label_fractions"] else []
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def active_experiments(cfg: dict) -> list[str]:
    """The experiments with at least one data set in this configuration."""
    return [e for e in EXPERIMENTS if experiment_datasets(cfg, e)]


def _method_settings(cfg: dict, experiment: str, **fixed) -> list[Setting]:
    out = [Setting(experiment, "vae", **fixed)]
    out += [Setting(experiment, "lin", lin_threshold=t, lin_inner_steps=r, **fixed)
            for t in cfg["lin_thresholds"] for r in cfg["lin_inner_steps"]]
    out += [Setting(experiment, "iwae", samples=s, **fixed) for s in cfg["iwae_samples"]]
    return out


def experiment_settings(cfg: dict, experiment: str, dataset: str | None = None) -> list[Setting]:
    """The jobs' settings; for `uci` they depend on the data set (its latent dimensions).
    The Semi-Circles train each variant of M2's unlabelled z-posterior in ss_unlabelled_posteriors
    (the variants after the first for the methods in ss_variant_methods); the UCI data sets the
    first one."""
    if experiment == "unsupervised":
        return _method_settings(cfg, experiment)
    if experiment == "semisupervised":
        first, *others = cfg["ss_unlabelled_posteriors"]
        return [*_method_settings(cfg, experiment, unlabelled_posterior=first),
                *(s for variant in others for s in _method_settings(cfg, experiment, unlabelled_posterior=variant)
                  if s.method in cfg["ss_variant_methods"])]
    if experiment == "noise":
        return [Setting(experiment, "vae")]
    if experiment == "latent":
        out = []
        for k in cfg["latent_dims"]:
            out.append(Setting(experiment, "vae", latent_dim=k))
            out += [Setting(experiment, "iwae", latent_dim=k, samples=s) for s in cfg["iwae_samples"]]
        return out
    if experiment == "uci":
        if dataset is None:
            raise ValueError("the uci experiment's settings depend on the data set")
        variant = cfg["ss_unlabelled_posteriors"][0]
        return [s for k in cfg["uci_latent_dims"][dataset]
                for s in _method_settings(cfg, experiment, latent_dim=k, unlabelled_posterior=variant)]
    if experiment == "disentangle":
        k = LINEAR_GAUSSIAN_LATENT_DIM
        return [Setting(experiment, "vae", latent_dim=k),
                *(Setting(experiment, "iwae", latent_dim=k, samples=s) for s in cfg["iwae_samples"])]
    if experiment == "labelshare":
        variant = cfg["ss_unlabelled_posteriors"][0]
        return [Setting(experiment, "vae", unlabelled_posterior=variant, label_fraction=float(f))
                for f in cfg["ss_label_fractions"]]
    raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")


def find_setting(cfg: dict, experiment: str, setting_id: str, dataset: str | None = None) -> Setting:
    for setting in experiment_settings(cfg, experiment, dataset):
        if setting.id == setting_id:
            return setting
    known = ", ".join(s.id for s in experiment_settings(cfg, experiment, dataset))
    raise ValueError(f"setting {setting_id!r} is not in the {experiment} grid of this config; known: {known}")


def n_versions(cfg: dict, experiment: str) -> int:
    """Data versions (UCI: data splits) of an experiment."""
    return {"uci": cfg["uci_splits"], "semisupervised": cfg["ss_versions"],
            "labelshare": cfg["ss_versions"]}.get(experiment, cfg["versions"])


def experiment_epochs(cfg: dict, experiment: str) -> int:
    """Training epochs of an experiment's jobs."""
    return {"uci": cfg["uci_epochs"], "semisupervised": cfg["ss_epochs"], "labelshare": cfg["ss_epochs"],
            "disentangle": cfg["linear_gaussian"]["epochs"]}.get(experiment, cfg["epochs"])


def n_restarts(cfg: dict, experiment: str = "unsupervised") -> int:
    if experiment == "uci":
        return cfg["uci_restarts"]
    if experiment in SEMI_CIRCLE_EXPERIMENTS:
        return cfg["ss_restarts_random"] + cfg["ss_restarts_gt"]
    return cfg["restarts_random"] + cfg["restarts_gt"]


def restart_init(cfg: dict, setting: Setting, restart: int) -> str:
    """'random' or 'gt': the first restarts_random (ss_restarts_random) restarts are random, the
    rest start at the ground truth; settings without a ground truth use random starts throughout."""
    n_random = cfg["ss_restarts_random" if setting.experiment in SEMI_CIRCLE_EXPERIMENTS else "restarts_random"]
    if restart < n_random or not setting.has_gt_restarts():
        return "random"
    return "gt"


class Member(NamedTuple):
    """One member of a training job's ensemble (one restart file)."""

    version: int
    restart: int
    alpha: float | None = None    # M2: weight of the discriminator term
    gamma: float | None = None    # M2: weight of the labelled bound
    sigma2: float | None = None   # UCI: the fixed observation variance (a hyperparameter)


def member_weights(cfg: dict, experiment: str) -> list[tuple]:
    """The (alpha, gamma, sigma^2) combinations trained within each job of an experiment."""
    if experiment in SEMI_CIRCLE_EXPERIMENTS:
        return [(a, g, None) for a in cfg["ss_alphas"] for g in cfg["ss_gammas"]]
    if experiment == "uci":
        return [(a, g, s2) for a in cfg["ss_alphas"] for g in cfg["ss_gammas"] for s2 in cfg["uci_sigma2"]]
    return [(None, None, None)]


def base_datasets(cfg: dict) -> list[str]:
    """The synthetic examples whose surrogate decoders the grid needs."""
    names = []
    for experiment in EXPERIMENTS:
        if experiment in ("uci", "disentangle"):   # real data; a linear truth in closed form
            continue
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


def dataset_versions(cfg: dict, dataset: str) -> int:
    """Versions of a data set: the most any experiment that uses it needs."""
    return max(n_versions(cfg, e) for e in EXPERIMENTS if dataset in experiment_datasets(cfg, e))


# --- paths (relative to the output folder) -------------------------------------------
def surrogate_path(base: str) -> str:
    return f"surrogates/{base}.pt"


def data_path(dataset: str, version: int) -> str:
    return f"data/{dataset}/v{version}.npz"


def gt_encoder_path(dataset: str, version: int) -> str:
    return f"gt_encoders/{dataset}/v{version}.pt"


def weights_folder(alpha=None, gamma=None, sigma2=None) -> str:
    """The sub-folder of a job's (alpha, gamma[, sigma^2]) members; empty when unsupervised."""
    if alpha is None:
        return ""
    return f"a{alpha:g}-g{gamma:g}" + ("" if sigma2 is None else f"-s{sigma2:g}") + "/"


def run_stem(experiment: str, dataset: str, setting_id: str, version: int, restart: int,
             alpha=None, gamma=None, sigma2=None) -> str:
    folder = weights_folder(alpha, gamma, sigma2)
    return f"runs/{experiment}/{dataset}/{setting_id}/{folder}v{version}/r{restart}"


def job_manifest_path(experiment: str, dataset: str, setting_id: str) -> str:
    """A training job's manifest, written after every member's result: what the workflow asks
    for instead of each of the job's (up to 1 200) per-restart files."""
    return f"runs/{experiment}/{dataset}/{setting_id}/job.json"


def experiment_manifests(cfg: dict, experiment: str) -> list[str]:
    return [job_manifest_path(experiment, dataset, setting.id) for dataset in experiment_datasets(cfg, experiment)
            for setting in experiment_settings(cfg, experiment, dataset)]


def job_members(cfg: dict, experiment: str) -> list[Member]:
    """Every member of one training job, in order."""
    return [Member(v, r, a, g, s2) for a, g, s2 in member_weights(cfg, experiment)
            for v in range(n_versions(cfg, experiment)) for r in range(n_restarts(cfg, experiment))]


def member_stem(experiment: str, dataset: str, setting_id: str, member: Member) -> str:
    return run_stem(experiment, dataset, setting_id, member.version, member.restart, member.alpha,
                    member.gamma, member.sigma2)


def job_run_stems(cfg: dict, experiment: str, dataset: str, setting_id: str) -> list[str]:
    """Every restart of every version (and alpha, gamma, sigma^2) that one training job produces."""
    return [member_stem(experiment, dataset, setting_id, m) for m in job_members(cfg, experiment)]


def experiment_run_stems(cfg: dict, experiment: str) -> list[str]:
    return [stem for dataset in experiment_datasets(cfg, experiment)
            for setting in experiment_settings(cfg, experiment, dataset)
            for stem in job_run_stems(cfg, experiment, dataset, setting.id)]


def training_jobs(cfg: dict) -> list[tuple[str, str, str]]:
    """(experiment, dataset, setting id) of every training job."""
    return [(experiment, dataset, setting.id) for experiment in EXPERIMENTS
            for dataset in experiment_datasets(cfg, experiment)
            for setting in experiment_settings(cfg, experiment, dataset)]


def appendix_k_datasets(cfg: dict) -> list[str]:
    """Appendix K's data sets: the latent experiment's 5-D ones and the noise experiment's."""
    names = list(experiment_datasets(cfg, "latent"))
    if cfg["noise_dataset"] not in names:
        names.append(cfg["noise_dataset"])
    return names


def appendix_k_inputs(cfg: dict) -> list[str]:
    """Every file (relative to the output folder) that appendix K's job reads."""
    paths = [f"selected/{e}.csv" for e in ("latent", "noise", "unsupervised")]
    datasets = appendix_k_datasets(cfg)
    paths += [surrogate_path(d.removesuffix("-5d")) for d in datasets]
    versions = range(n_versions(cfg, "latent"))
    paths += [data_path(d, v) for d in datasets for v in versions]
    if cfg["restarts_gt"] > 0:     # the ground-truth encoders phi_GT are one of its projections
        paths += [gt_encoder_path(d, v) for d in datasets for v in versions]
    paths += experiment_manifests(cfg, "latent")       # the jobs whose weights it reads
    noise = cfg["noise_dataset"]
    paths.append(job_manifest_path("noise", noise, "vae"))
    if noise in experiment_datasets(cfg, "unsupervised"):
        paths.append(job_manifest_path("unsupervised", noise, "vae"))
    return list(dict.fromkeys(paths))
