"""The training jobs: every member of one grid setting (its data versions x restarts, and for
M2 every alpha x gamma [x sigma^2]) trained as batched ensembles, one result file (metrics)
and one weights file per member.

TrainingJob is what every job shares: its members, their seeds and initialisations, the
chunks they are trained in, the result record, saving, and the report of failed members.  A
subclass says how one chunk is built, trained and evaluated: VAETrainingJob here (experiments
unsupervised, noise, latent, disentangle) and semisupervised.M2TrainingJob (semisupervised,
uci).
"""
from __future__ import annotations

import logging
import math
import time

import torch

from .. import grid
from ..convergence import converged
from ..data.dataset_files import dataset_example, load_versions
from ..data.surrogate import GroundTruthDecoder
from ..engine.ensembles import build_ensemble, load_gt_encoder, member_state
from ..engine.train import LinSettings, TrainLog, TrainSettings, train_vae
from ..evaluation.evaluate import evaluate_members
from ..files import save_torch, write_json
from ..provenance import provenance
from ..randomness import MemberStreams, derive_seed
from ..runtime import torch_device

log = logging.getLogger(__name__)

# Rows per batched matmul on CPU: beyond ~20k the working set leaves the cache and IWAE
# with many samples slows down (shared/notes/measured-facts.md), so large ensembles are
# trained in chunks of members one after another.  GPUs take whole ensembles.
CPU_ROWS_PER_CHUNK = 20_000


class TrainingJob:
    """One training job; subclasses implement train_chunk (and, where their records say more
    than the common fields, member_fields)."""

    def __init__(self, settings: dict, experiment: str, dataset: str, setting_id: str, out_stems: list[str],
                 device: str, manifest: str | None = None):
        self.settings, self.experiment, self.dataset, self.device = settings, experiment, dataset, device
        self.manifest = manifest
        self.dev = torch_device(device, settings)
        self.setting = grid.find_setting(settings, experiment, setting_id, dataset)
        self.members = grid.job_members(settings, experiment)
        if len(out_stems) != len(self.members):
            raise ValueError(f"{len(out_stems)} output stems for {len(self.members)} restarts")
        self.out_stems = out_stems
        self.inits = [grid.restart_init(settings, self.setting, m.restart) for m in self.members]
        self.epochs = grid.experiment_epochs(settings, experiment)
        self.train_settings = training_settings(settings, self.setting, self.epochs)

    def seed_parts(self, member: grid.Member) -> tuple:
        """What a member's seed is derived from, besides the job."""
        raise NotImplementedError

    def member_fields(self, member: grid.Member) -> dict:
        """A member's record fields beyond those every training job writes."""
        return {}

    def train_chunk(self, members: list[grid.Member], inits: list[str], streams: MemberStreams
                    ) -> tuple[object, TrainLog, list[dict]]:
        """Build, train and evaluate these members as one ensemble: (the ensemble, its training
        log, per member its evaluation: status and metrics)."""
        raise NotImplementedError

    def run(self) -> None:
        settings, setting, members = self.settings, self.setting, self.members
        name = f"{self.experiment}/{self.dataset}/{setting.id}"
        prov = provenance(settings, self.device)
        chunks = _chunks(len(members), settings["batch_size"] * setting.samples, self.dev)
        n_failed = 0
        start = time.perf_counter()
        for c, chunk in enumerate(chunks):
            log.info("%s: training members %d-%d of %d (chunk %d/%d)", name,
                     chunk.start, chunk.stop - 1, len(members), c + 1, len(chunks))
            part = [members[i] for i in chunk]
            seeds = [derive_seed(settings["seed"], self.experiment, self.dataset, setting.id, *self.seed_parts(m))
                     for m in part]
            model, train_log, results = self.train_chunk(part, [self.inits[i] for i in chunk],
                                                         MemberStreams(seeds, self.dev))
            for j, i in enumerate(chunk):
                member, result = members[i], dict(results[j])
                if result["status"] != "ok":
                    result.setdefault("reason", failure_reason(train_log, j, self.epochs))
                    n_failed += 1
                    log.warning("%s: member failed: %s", self.out_stems[i], result["reason"])
                record = {
                    "experiment": self.experiment, "dataset": self.dataset, "setting": setting.id,
                    "method": setting.method, "latent_dim": setting.latent_dim, "samples": setting.samples,
                    "lin_threshold": setting.lin_threshold, "lin_inner_steps": setting.lin_inner_steps,
                    "sigma2_mode": setting.sigma2_mode, **self.member_fields(member),
                    "version": member.version, "restart": member.restart, "init": self.inits[i], "seed": seeds[j],
                    "train": {"epochs": self.epochs, "final_loss": float(train_log.final_loss[j]),
                              "failed_epoch": int(train_log.failed_epoch[j]),
                              "lin_aggressive_epochs": int(train_log.aggressive_epochs[j]),
                              "lin_inner_steps_taken": int(train_log.inner_steps[j]),
                              "ensemble_size": len(chunk),
                              "ensemble_seconds": round(train_log.seconds, 2),
                              **validation_curve(train_log, j, self.epochs)},
                    **result,
                    "provenance": prov,
                }
                save_torch(self.out_stems[i] + ".pt", member_state(model, j))
                write_json(self.out_stems[i] + ".json", record)
        report_failures(name, n_failed, len(members))
        if self.manifest:    # last: its presence says every member's result was written
            write_json(self.manifest, {"experiment": self.experiment, "dataset": self.dataset, "setting": setting.id,
                                       "members": len(members), "failed": n_failed,
                                       "seconds": round(time.perf_counter() - start, 2), "provenance": prov})


class VAETrainingJob(TrainingJob):
    """VAE, IWAE and LIN on unlabelled data.  Ground-truth restarts start with the surrogate
    decoder and the encoder phi_GT fitted to it for their data version (gt_encoders)."""

    def __init__(self, settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
                 data_paths: list[str], gt_encoder_paths: list[str], out_stems: list[str], device: str = "cpu",
                 manifest: str | None = None):
        super().__init__(settings, experiment, dataset, setting_id, out_stems, device, manifest)
        self.example = dataset_example(settings, dataset)
        uses_gt = "gt" in self.inits
        self.gt_decoder = GroundTruthDecoder(surrogate_pt, self.example.embedded) if uses_gt else None
        self.gt_encoders = [load_gt_encoder(p) for p in gt_encoder_paths] if uses_gt else None
        self.data = {split: load_versions(data_paths, split, torch.float32, self.dev)
                     for split in ("train", "valid", "test")}

    def seed_parts(self, member: grid.Member) -> tuple:
        return member.version, member.restart

    def train_chunk(self, members, inits, streams):
        setting, versions = self.setting, [m.version for m in members]
        model = build_ensemble(self.settings, self.example, setting.latent_dim, setting.sigma2_mode, streams,
                               inits, self.gt_decoder, self.gt_encoders, versions, self.dev)
        version_index = torch.tensor(versions)
        train_log = train_vae(model, self.data["train"], self.data["valid"], version_index, streams,
                              self.train_settings)
        member_data = {split: x[version_index.to(self.dev)] for split, x in self.data.items()}
        results = evaluate_members(model, member_data, streams.child("eval"), objective=setting.objective,
                                   samples=setting.samples, settings=self.settings, failed=train_log.failed)
        return model, train_log, results


def train_job(settings: dict, experiment: str, dataset: str, setting_id: str, surrogate_pt: str | None,
              data_paths: list[str], gt_encoder_paths: list[str], out_stems: list[str],
              device: str = "cpu", manifest: str | None = None) -> None:
    """Train every restart of every data version of one setting of an unsupervised experiment."""
    VAETrainingJob(settings, experiment, dataset, setting_id, surrogate_pt, data_paths, gt_encoder_paths,
                   out_stems, device, manifest).run()


def training_settings(settings: dict, setting: grid.Setting, epochs: int) -> TrainSettings:
    """How one grid setting trains: its objective, S, LIN's T and R, and the shared optimiser."""
    lin = (LinSettings(setting.lin_threshold, setting.lin_inner_steps, settings["lin_mi_patience"])
           if setting.method == "lin" else None)
    return TrainSettings(objective=setting.objective, samples=setting.samples, epochs=epochs,
                         batch_size=settings["batch_size"], learning_rate=settings["learning_rate"], lin=lin,
                         record_curve=True)


def validation_curve(train_log: TrainLog, j: int, epochs: int) -> dict:
    """Member j's validation curve and the convergence rule's verdict on it, for its record."""
    if train_log.valid_curve is None:
        return {}
    values = [float(v) for v in train_log.valid_curve[:, j]]
    return {"valid_curve_epochs": list(train_log.check_epochs),
            "valid_curve": [v if math.isfinite(v) else None for v in values],
            "converged": converged(train_log.check_epochs, values, epochs)}


def _chunks(n_members: int, rows_per_member: int, device: torch.device) -> list[range]:
    size = n_members if device.type == "cuda" else max(1, CPU_ROWS_PER_CHUNK // rows_per_member)
    return [range(s, min(s + size, n_members)) for s in range(0, n_members, size)]


def failure_reason(train_log: TrainLog, j: int, epochs: int) -> str:
    """Why member j of a training log failed, for its result file."""
    epoch = int(train_log.failed_epoch[j])
    if epoch >= 0:
        return f"non-finite training loss (NaN or inf) in epoch {epoch + 1} of {epochs}"
    return "non-finite evaluation"


def report_failures(job: str, n_failed: int, n_members: int) -> None:
    """End a training job with a summary of its failed members (selection skips them)."""
    if n_failed == n_members:
        log.error("%s: all %d members failed (see the warnings above); their results are recorded "
                  "with status 'failed' and selection leaves this setting out (a table cell with no "
                  "other setting of its method stays empty). A learning_rate too large for this "
                  "objective is a common cause.", job, n_members)
    elif n_failed:
        log.warning("%s: %d of %d members failed; selection skips them", job, n_failed, n_members)
