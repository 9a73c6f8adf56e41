"""The data sets' files: the jobs that draw them (synthetic data from the ground-truth decoder,
appendix F's linear-Gaussian data, the UCI splits) and how the training jobs load them.

Each version of a data set is one .npz file (grid.data_path) with the splits x_train,
x_valid, x_test (and their true latents z_* for synthetic data); semi-supervised data also
hold the labels y_*, which train and validation labels are observed (labelled_*) and the
cohort samples x_cohort<i> of p(x | y = cohort_values[i]).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import grid
from ..files import load_npz, save_npz
from ..models.m2 import Labels, encode_labels
from ..randomness import derive_seed
from . import linear_gaussian
from .datasets import example, sample_split
from .surrogate import GroundTruthDecoder
from .uci import split_uci, uci_spec


def dataset_example(settings: dict, dataset: str):
    """The example a data set is drawn from; appendix F's linear-Gaussian truth takes its
    parameters from the settings."""
    if dataset == grid.LINEAR_GAUSSIAN:
        return linear_gaussian.truth(settings)
    return example(dataset)


def dataset_labels(dataset: str) -> Labels:
    """The kind and number of a semi-supervised data set's labels."""
    if dataset in grid.UCI_DATASETS:
        return Labels("discrete", uci_spec(dataset).n_classes)
    ex = example(dataset)
    return Labels(ex.label_kind, ex.classes)


# --- drawing (the dataset and uci-splits jobs) ------------------------------------------------
def make_dataset(settings: dict, dataset: str, surrogate_pt: str | None, out_paths: list[str]) -> None:
    """Every version of a synthetic data set, one file each."""
    if dataset == grid.LINEAR_GAUSSIAN:   # no surrogate: drawn from the linear model itself
        return linear_gaussian.make_dataset(settings, out_paths)
    ex = example(dataset)
    if hasattr(ex, "label_kind"):   # a semi-supervised example
        return make_ss_dataset(settings, dataset, surrogate_pt, out_paths)
    decoder = GroundTruthDecoder(surrogate_pt)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}
    for version, path in enumerate(out_paths):
        split = sample_split(decoder, ex, sizes, derive_seed(settings["seed"], "data", dataset, version))
        save_npz(path, split)


def _labelled_mask(n: int, fraction: float, gen: torch.Generator) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[torch.randperm(n, generator=gen)[:round(fraction * n)].numpy()] = True
    return mask


def make_ss_dataset(settings: dict, dataset: str, surrogate_pt: str, out_paths: list[str]) -> None:
    """Each version: y ~ p(y), z ~ N(0,1), x = f_GT(y, z) + noise for train/valid/test, a random
    `label_fraction` of train and valid labels observed, and n_test ground-truth samples of
    each cohort p(x | y = c) of Table 4."""
    ex = example(dataset)
    decoder = GroundTruthDecoder(surrogate_pt)
    sizes = {"train": settings["n_train"], "valid": settings["n_valid"], "test": settings["n_test"]}

    def draw(y, gen):
        z = torch.randn(len(y), 1, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            mean = decoder(torch.cat([ex.encode_label(y), z], -1))
        noise = torch.randn(len(y), ex.data_dim, generator=gen, dtype=torch.float64)
        return (mean + math.sqrt(ex.noise_variance) * noise).numpy(), z.numpy()

    for version, path in enumerate(out_paths):
        gen = torch.Generator().manual_seed(derive_seed(settings["seed"], "data", dataset, version))
        arrays = {"cohort_values": np.asarray(ex.cohorts, dtype=np.float64)}
        for split, n in sizes.items():
            y = ex.sample_labels(gen, n)
            arrays[f"x_{split}"], arrays[f"z_{split}"] = draw(y, gen)
            arrays[f"y_{split}"] = y.numpy()
            if split != "test":
                arrays[f"labelled_{split}"] = _labelled_mask(n, settings["label_fraction"], gen)
        for i, value in enumerate(ex.cohorts):
            y = torch.full((settings["n_test"],), value, dtype=torch.float64)
            arrays[f"x_cohort{i}"], _ = draw(y.long() if ex.label_kind == "discrete" else y, gen)
        save_npz(path, arrays)


def make_uci_splits(settings: dict, dataset: str, out_paths: list[str]) -> None:
    """Each split: thirds, training-set standardisation, exactly `label_fraction` labels
    observed (data.uci.split_uci); the cohorts of Table 6 are the test points of each class."""
    for k, path in enumerate(out_paths):
        split = split_uci(dataset, split_index=k, seed=settings["seed"], label_fraction=settings["label_fraction"])
        arrays = {key: split[key] for key in ("x_train", "y_train", "labelled_train", "x_valid", "y_valid",
                                             "labelled_valid", "x_test", "y_test")}
        classes = np.arange(uci_spec(dataset).n_classes)
        arrays["cohort_values"] = classes.astype(np.float64)
        for c in classes:
            arrays[f"x_cohort{c}"] = split["x_test"][split["y_test"] == c]
        save_npz(path, arrays)


# --- loading (the training jobs) --------------------------------------------------------------
def load_versions(paths: list[str], split: str, dtype, device) -> torch.Tensor:
    """One split of every version, stacked: (V, N, D)."""
    return torch.stack([torch.from_numpy(load_npz(p)[f"x_{split}"]) for p in paths]).to(dtype).to(device)


def relabelled(arrays: dict, fraction: float, seed: int, dataset: str, version: int) -> dict:
    """A version's arrays with a fresh random `fraction` of its training and validation labels
    observed (the labelshare experiment), drawn from a seed of its own."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "labels", dataset, version, f"{fraction:g}"))
    out = dict(arrays)
    for split in ("train", "valid"):
        out[f"labelled_{split}"] = _labelled_mask(len(arrays[f"y_{split}"]), fraction, gen)
    return out


def load_ss_versions(paths: list[str], labels: Labels, dtype, device, label_fraction: float | None = None,
                     seed: int = 0, dataset: str = "") -> dict:
    """Stack each version's arrays: the training split as unlabelled/labelled parts, the
    validation split likewise and whole, the test split, and per-version cohort samples.
    With label_fraction, each version's observed labels are drawn afresh at that share."""
    files = [load_npz(p) for p in paths]
    if label_fraction is not None:
        files = [relabelled(f, label_fraction, seed, dataset, v) for v, f in enumerate(files)]

    def stack(key, select=None, encode=False):
        parts = []
        for f in files:
            a = f[key] if select is None else f[key][f[select] if select.startswith("labelled") else ~f[select[1:]]]
            parts.append(encode_labels(labels, a) if encode else torch.from_numpy(np.asarray(a, dtype=np.float64)))
        return torch.stack(parts).to(dtype).to(device)

    return {
        "x_unlabelled": stack("x_train", "~labelled_train"),
        "x_labelled": stack("x_train", "labelled_train"),
        "y_labelled": stack("y_train", "labelled_train", encode=True),
        "x_valid": stack("x_valid"),
        "x_valid_unlabelled": stack("x_valid", "~labelled_valid"),
        "x_valid_labelled": stack("x_valid", "labelled_valid"),
        "y_valid_labelled": stack("y_valid", "labelled_valid", encode=True),
        "x_test": stack("x_test"),
        "y_test": stack("y_test"),
        "cohort_values": files[0]["cohort_values"].tolist(),
        "cohorts": [[f[f"x_cohort{i}"] for i in range(len(f["cohort_values"]))] for f in files],
    }
