"""The three real (UCI / KEEL) data sets of the paper's semi-supervised experiments.

Appendix J ("Real Datasets") uses Diabetic Retinopathy Debrecen, Contraceptive Method
Choice and Titanic, treats the outcome as a label observed 10 % of the time, and splits
each data set "5 different ways into equally sized train/validation/test".

The files live in the repository's data/uci folder (sources, licences, checksums and
column meanings: data/uci/PROVENANCE.md).  Every load first checks the file's sha256
against the value recorded here, so a changed or truncated file is refused rather than
silently used.

Feature encoding.  Every column is kept as the numeric code found in the file: binary
columns stay 0/1, ordinal columns (education, standard of living, ...) stay as their
integer levels, counts stay counts, and the KEEL Titanic columns keep KEEL's real-valued
codes (no one-hot encoding anywhere).  `load_uci` returns these raw codes.  `split_uci`
then standardises each feature to zero mean and unit variance using the statistics of
the TRAINING split only (population standard deviation, ddof=0); the validation and
test parts are transformed with those same training statistics.  A feature that is
constant on the training split (this happens, e.g., for Debrecen's quality column, which
has only 4 zeros in 1151 rows) is only centred: its scale is set to 1.
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..catalogue import DATASET_TITLES
from ..config import ROOT
from ..grid import UCI_DATASETS

DEFAULT_DATA_DIR = ROOT / "data" / "uci"


class DataIntegrityError(ValueError):
    """A data file's bytes are not the ones recorded in data/uci/PROVENANCE.md."""


@dataclass(frozen=True)
class UCISpec:
    name: str
    path: str                    # relative to the data directory (the repo's data/uci)
    sha256: str
    n_rows: int
    class_names: tuple[str, ...]  # index = label value 0..C-1
    class_counts: tuple[int, ...]
    feature_names: tuple[str, ...]
    # For documentation only: what each raw numeric code of a feature means.
    feature_codes: dict[str, dict[float, str]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return DATASET_TITLES[self.name]   # the catalogue holds every data set's title

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


_DEBRECEN_FEATURES = (
    ("quality",            # 0 = bad, 1 = sufficient image quality
     "prescreening",       # 1 = severe retinal abnormality found, 0 = none
     *(f"ma_alpha_{a}" for a in ("0.5", "0.6", "0.7", "0.8", "0.9", "1.0")),  # microaneurysm counts
     *(f"exudate_{i}" for i in range(1, 9)),   # exudate lesions / ROI diameter, 8 confidence levels
     "macula_od_distance",  # macula centre to optic-disc centre, / ROI diameter
     "optic_disc_diameter",
     "am_fm_result")        # binary AM/FM-based classification
)

SPECS: dict[str, UCISpec] = {
    "diabetic-retinopathy": UCISpec(
        name="diabetic-retinopathy",
        path="debrecen/messidor_features.arff",
        sha256="b83485dd519127ac1ba06a95da5f1d12d4bde2a362eb32d7d353bdcabfa08a93",
        n_rows=1151,
        class_names=("no signs of DR", "signs of DR"),
        class_counts=(540, 611),
        feature_names=_DEBRECEN_FEATURES,
        feature_codes={"quality": {0: "bad", 1: "sufficient"},
                       "prescreening": {0: "no severe abnormality", 1: "severe abnormality"}},
    ),
    "contraceptive": UCISpec(
        name="contraceptive",
        path="cmc/cmc.data",
        sha256="ad2a49da55df24b061a994ecc4d90c856aba35acd05138851aa251c4f06303c9",
        n_rows=1473,
        class_names=("no use", "long-term", "short-term"),   # file codes 1, 2, 3
        class_counts=(629, 333, 511),
        feature_names=("wife_age", "wife_education", "husband_education", "children",
                       "wife_religion", "wife_working", "husband_occupation",
                       "standard_of_living", "media_exposure"),
        feature_codes={"wife_education": {1: "low", 4: "high"},
                       "husband_education": {1: "low", 4: "high"},
                       "wife_religion": {0: "non-Islam", 1: "Islam"},
                       "wife_working": {0: "yes", 1: "no"},
                       # cmc.names in data/uci says "1=high ... 4=low" here: a third-party
                       # edit, not UCI's wording (codes 1..4 unlabelled). See PROVENANCE.md.
                       "husband_occupation": {},
                       "standard_of_living": {1: "low", 4: "high"},
                       "media_exposure": {0: "good", 1: "not good"}},
    ),
    "titanic": UCISpec(
        name="titanic",
        path="titanic/titanic.dat",
        sha256="367671d4845539ff66774acd4ccff332e466664ea49dd179ee103193be8e0349",
        n_rows=2201,
        class_names=("did not survive", "survived"),        # file codes -1.0, 1.0
        class_counts=(1490, 711),
        feature_names=("class", "age", "sex"),
        # The decoding that fits the counts (Dawson 1995); the dictionary in KEEL's
        # titanic-names.txt is wrong (it swaps sex and survival and rotates class).
        feature_codes={"class": {-1.87: "first", -0.923: "second", 0.0214: "third",
                                 0.965: "crew"},
                       "age": {-0.228: "adult", 4.38: "child"},
                       "sex": {-1.92: "female", 0.521: "male"}},
    ),
}


def uci_spec(name: str) -> UCISpec:
    if name not in SPECS:
        raise ValueError(f"unknown UCI data set {name!r}; known: {', '.join(UCI_DATASETS)}")
    return SPECS[name]


def _data_dir(data_dir) -> Path:
    return DEFAULT_DATA_DIR if data_dir is None else Path(data_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(name: str, data_dir: str | Path | None = None) -> Path:
    """Return the path of `name`'s data file after checking its sha256.

    Raises FileNotFoundError naming the path if the file is absent, and
    DataIntegrityError (a ValueError) with the expected and actual sha256 if it differs.
    `data_dir` defaults to the repository's data/uci.
    """
    spec = uci_spec(name)
    path = _data_dir(data_dir) / spec.path
    restore = (f"restore it byte for byte from data/uci/{spec.path} in the vaefail repository "
               f"(git checkout -- data/uci/{spec.path}) or from the source named in "
               f"data/uci/PROVENANCE.md")
    if not path.is_file():
        raise FileNotFoundError(f"{spec.title} data file not found: {path}; {restore}")
    actual = _sha256(path)
    if actual != spec.sha256:
        raise DataIntegrityError(
            f"{spec.title} data file {path} has sha256 {actual}, expected {spec.sha256}: "
            f"its bytes differ from the recorded copy (edited, truncated, or converted line "
            f"endings?); {restore}")
    return path


def _data_rows(path: Path, n_columns: int) -> np.ndarray:
    """The comma-separated rows after the '@data' line of an ARFF / KEEL .dat file."""
    lines = path.read_text(encoding="ascii").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().lower() == "@data") + 1
    except StopIteration:
        raise DataIntegrityError(f"{path}: no '@data' line") from None
    rows = [line.split(",") for line in lines[start:] if line.strip() and not line.startswith("%")]
    bad = [i for i, row in enumerate(rows) if len(row) != n_columns]
    if bad:
        raise DataIntegrityError(f"{path}: data row {bad[0] + 1} has {len(rows[bad[0]])} fields, "
                                 f"expected {n_columns}")
    return np.array(rows, dtype=np.float64)


def _to_labels(codes: np.ndarray, mapping: dict[float, int], path: Path) -> np.ndarray:
    labels = np.full(len(codes), -1, dtype=np.int64)
    for code, label in mapping.items():
        labels[codes == code] = label
    if (labels < 0).any():
        raise DataIntegrityError(f"{path}: unexpected class code {codes[labels < 0][0]!r}")
    return labels


def load_uci(name: str, data_dir: str | Path | None = None
             ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load one data set as raw numeric codes: (features, labels, feature_names).

    features: float64 (n, d), the columns exactly as coded in the file (not standardised;
    `split_uci` standardises with training statistics).  labels: int64 (n,) in 0..C-1:
    - diabetic-retinopathy (1151 x 19): ARFF class 0/1 kept as is (540 / 611);
    - contraceptive (1473 x 9): method 1/2/3 -> 0/1/2 (no use 629, long-term 333,
      short-term 511);
    - titanic (2201 x 3: class, age, sex as KEEL codes): survived 1.0 -> 1 (711),
      -1.0 -> 0 (1490).  For the meaning of the codes see UCISpec.feature_codes.
    The file's sha256 is verified first (see verify_checksum).
    """
    spec = uci_spec(name)
    path = verify_checksum(name, data_dir)
    if name == "diabetic-retinopathy":
        table = _data_rows(path, 20)
        labels = _to_labels(table[:, -1], {0.0: 0, 1.0: 1}, path)
    elif name == "contraceptive":
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        labels = _to_labels(table[:, -1], {1.0: 0, 2.0: 1, 3.0: 2}, path)
    else:  # titanic
        table = _data_rows(path, 4)
        labels = _to_labels(table[:, -1], {-1.0: 0, 1.0: 1}, path)
    features = np.ascontiguousarray(table[:, :-1])
    counts = tuple(np.bincount(labels, minlength=spec.n_classes).tolist())
    if features.shape != (spec.n_rows, spec.n_features) or counts != spec.class_counts:
        raise DataIntegrityError(f"{path}: parsed {features.shape} with class counts {counts}, "
                                 f"expected {(spec.n_rows, spec.n_features)} and {spec.class_counts}")
    return features, labels, spec.feature_names


def standardise(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the training features: scale = population sd, or 1 where the
    feature is constant on the training split (so it is only centred)."""
    mean = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    constant = np.ptp(x_train, axis=0) == 0
    return mean, np.where(constant, 1.0, sd)


def split_seed_sequence(name: str, seed: int, split_index: int) -> np.random.SeedSequence:
    """SeedSequence([seed, crc32(name as UTF-8), split_index]) — stable across processes,
    platforms and numpy versions that keep SeedSequence/PCG64 stream-compatible."""
    return np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8")), split_index])


def _allocate(counts: np.ndarray, m: int, at_least_one: bool) -> np.ndarray:
    """Split m labelled points among classes proportionally to `counts` (largest remainder,
    ties to the lower class index); if `at_least_one`, then every class present gets >= 1,
    each extra point taken from the class holding the most (ties: lower index)."""
    n = counts.sum()
    exact = m * counts / n
    quota = np.floor(exact).astype(np.int64)
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quota[c]), c))
    for c in order[: m - quota.sum()]:
        quota[c] += 1
    if at_least_one:
        for c in np.flatnonzero((counts > 0) & (quota == 0)):
            donor = int(np.argmax(quota))
            quota[donor] -= 1
            quota[c] += 1
    return quota


def _label_mask(y: np.ndarray, n_classes: int, label_fraction: float,
                rng: np.random.Generator, part: str, require_all: bool) -> np.ndarray:
    m = round(float(label_fraction) * len(y))
    counts = np.bincount(y, minlength=n_classes)
    present = int((counts > 0).sum())
    if require_all and m < present:
        raise ValueError(f"label_fraction={label_fraction!r} labels only {m} of {len(y)} {part} "
                         f"points, fewer than the {present} classes that must each get one")
    quota = _allocate(counts, m, at_least_one=m >= present)
    mask = np.zeros(len(y), dtype=bool)
    for c in range(n_classes):
        if quota[c]:
            mask[rng.choice(np.flatnonzero(y == c), size=quota[c], replace=False)] = True
    return mask


def split_uci(name: str, data_dir: str | Path | None = None, split_index: int = 0,
              seed: int = 0, label_fraction: float = 0.1) -> dict:
    """Split `name` into equal thirds, standardise, and choose which labels are observed.

    Seeding: ss = SeedSequence([seed, zlib.crc32(name.encode()), split_index]) and
    ss.spawn(3) gives three independent numpy default_rng streams: (1) the row
    permutation, (2) the labelled points of train, (3) those of valid — so a different
    label_fraction never changes the partition.

    Partition: the permuted rows are cut as valid = next n // 3, test = next n // 3 after
    the first n - 2 (n // 3) rows, which form train (so train takes the n % 3 remainder
    points: Debrecen 385/383/383, Contraceptive 491/491/491, Titanic 735/733/733).

    Labels: in train and in valid exactly m = round(label_fraction * n_part) points
    (Python round, half to even) are marked labelled.  m is shared out over the classes in
    proportion to their counts in that part (largest-remainder rounding, ties to the lower
    class index); any class present that got no labelled point then receives one, taken
    from the class with the most.  Within each class the points are drawn uniformly without
    replacement.  Every class therefore has at least one labelled training point (a
    ValueError if m is smaller than the number of classes in train).  Unlabelled points'
    labels are still returned, for evaluation only: training must go through the masks.

    Features are standardised with the training part's mean and sd (see the module
    docstring; constant training columns: centred, scale 1).  Returns a dict with
    x_train, y_train, labelled_train, x_valid, y_valid, labelled_valid, x_test, y_test,
    feature_mean, feature_std (the scale used), train_index / valid_index / test_index
    (rows of load_uci's arrays), feature_names and class_names.
    """
    spec = uci_spec(name)
    if isinstance(split_index, bool) or not isinstance(split_index, (int, np.integer)) or split_index < 0:
        raise ValueError(f"split_index must be an integer >= 0, got {split_index!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(label_fraction, bool) or not isinstance(label_fraction, (int, float, np.floating)) \
            or not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction!r}")

    features, labels, feature_names = load_uci(name, data_dir)
    n = len(labels)
    perm_ss, train_ss, valid_ss = split_seed_sequence(name, int(seed), int(split_index)).spawn(3)
    perm = np.random.default_rng(perm_ss).permutation(n)
    third = n // 3
    n_train = n - 2 * third
    parts = {"train": perm[:n_train], "valid": perm[n_train:n_train + third],
             "test": perm[n_train + third:]}

    mean, scale = standardise(features[parts["train"]])
    out: dict = {}
    for part, idx in parts.items():
        out[f"x_{part}"] = (features[idx] - mean) / scale
        out[f"y_{part}"] = labels[idx]
        out[f"{part}_index"] = idx
    out["labelled_train"] = _label_mask(out["y_train"], spec.n_classes, label_fraction,
                                        np.random.default_rng(train_ss), "train", require_all=True)
    out["labelled_valid"] = _label_mask(out["y_valid"], spec.n_classes, label_fraction,
                                        np.random.default_rng(valid_ss), "valid", require_all=False)
    out["feature_mean"] = mean
    out["feature_std"] = scale
    out["feature_names"] = feature_names
    out["class_names"] = spec.class_names
    return out
