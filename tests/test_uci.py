"""The UCI / KEEL loaders, checksum guard, and train/valid/test + label-mask splits."""
import hashlib
import shutil

import numpy as np
import pytest

from vaefail.data.uci import (DEFAULT_DATA_DIR, SPECS, UCI_DATASETS, DataIntegrityError, _allocate,
                         _label_mask, load_uci, split_uci, standardise, uci_spec, verify_checksum)

EXPECTED = {  # name: (rows, features, class counts)
    "diabetic-retinopathy": (1151, 19, [540, 611]),
    "contraceptive": (1473, 9, [629, 333, 511]),
    "titanic": (2201, 3, [1490, 711]),
}


def test_registry():
    assert UCI_DATASETS == ("diabetic-retinopathy", "contraceptive", "titanic")
    assert [SPECS[n].title for n in UCI_DATASETS] == ["Diabetic Retinopathy", "Contraceptive", "Titanic"]
    assert [SPECS[n].n_classes for n in UCI_DATASETS] == [2, 3, 2]


def test_checksums_file_agrees_with_the_registry():
    listed = dict(reversed(line.split("  ", 1)) for line in
                  (DEFAULT_DATA_DIR / "checksums.sha256").read_text().splitlines())
    for name in UCI_DATASETS:
        assert listed[SPECS[name].path] == SPECS[name].sha256


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_loader_shape_and_class_counts(name):
    rows, d, counts = EXPECTED[name]
    x, y, names = load_uci(name)
    assert x.shape == (rows, d) and x.dtype == np.float64
    assert y.shape == (rows,) and np.issubdtype(y.dtype, np.integer)
    assert np.bincount(y).tolist() == counts
    assert len(names) == d
    assert np.isfinite(x).all()


def test_loader_values_are_the_raw_codes():
    x, y, names = load_uci("contraceptive")
    assert x[0].tolist() == [24, 2, 3, 3, 1, 1, 2, 3, 0] and y[0] == 0     # first line of cmc.data
    x, y, names = load_uci("titanic")
    assert names == ("class", "age", "sex")
    assert x[0].tolist() == [-1.87, -0.228, 0.521] and y[0] == 0            # 1st-class adult male, died
    assert x[1].tolist() == [-0.923, -0.228, -1.92] and y[1] == 1           # 2nd-class adult female, survived
    females = x[:, 2] == -1.92
    assert females.sum() == 470 and y[females].sum() == 344                 # the corrected decoding
    x, y, names = load_uci("diabetic-retinopathy")
    assert x[0, :3].tolist() == [1, 1, 22] and x[0, -1] == 1 and y[0] == 0
    assert set(np.unique(x[:, 0])) == {0.0, 1.0} and (x[:, 0] == 0).sum() == 4


@pytest.fixture
def copied(tmp_path):
    def copy(name):
        spec = uci_spec(name)
        target = tmp_path / spec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEFAULT_DATA_DIR / spec.path, target)
        target.chmod(0o644)
        return target
    return copy


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_checksum_refuses_a_flipped_byte(name, copied, tmp_path):
    target = copied(name)
    assert verify_checksum(name, tmp_path) == target                      # intact copy accepted
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataIntegrityError) as info:
        load_uci(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert SPECS[name].sha256 in message and actual in message and str(target) in message
    assert "PROVENANCE.md" in message and "restore" in message


def test_checksum_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="titanic.dat") as info:
        verify_checksum("titanic", tmp_path)
    assert str(tmp_path / "titanic" / "titanic.dat") in str(info.value)
    with pytest.raises(FileNotFoundError):
        split_uci("contraceptive", tmp_path, 0, 0)


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_split_partitions_standardises_and_labels(name):
    x, y, _ = load_uci(name)
    n = len(y)
    s = split_uci(name, None, split_index=2, seed=7)
    idx = [s["train_index"], s["valid_index"], s["test_index"]]
    union = np.concatenate(idx)
    assert len(union) == n and np.array_equal(np.sort(union), np.arange(n))    # disjoint, covers all
    assert [len(i) for i in idx] == [n - 2 * (n // 3), n // 3, n // 3]        # train takes the remainder
    for part, i in zip(("train", "valid", "test"), idx):
        assert np.array_equal(s[f"y_{part}"], y[i])
        # every part is the raw rows transformed with the TRAIN statistics
        assert np.allclose(s[f"x_{part}"] * s["feature_std"] + s["feature_mean"], x[i])
    assert np.allclose(s["feature_mean"], x[s["train_index"]].mean(0))
    assert np.allclose(s["x_train"].mean(0), 0, atol=1e-10)
    sd = s["x_train"].std(0)
    assert np.allclose(sd[sd > 0], 1)
    assert not np.allclose(s["x_test"].mean(0), 0, atol=1e-6)               # test was not re-centred
    for part in ("train", "valid"):
        mask = s[f"labelled_{part}"]
        assert mask.dtype == bool and mask.shape == s[f"y_{part}"].shape
        assert mask.sum() == round(0.1 * len(mask))
    labelled_classes = np.unique(s["y_train"][s["labelled_train"]])
    assert labelled_classes.tolist() == list(range(SPECS[name].n_classes))
    assert "labelled_test" not in s


@pytest.mark.parametrize("name", UCI_DATASETS)
def test_split_is_reproducible_and_varies_with_split_index(name):
    a = split_uci(name, None, 1, 3)
    b = split_uci(name, None, 1, 3)
    for key in ("train_index", "valid_index", "labelled_train", "labelled_valid", "x_test"):
        assert np.array_equal(a[key], b[key])
    c = split_uci(name, None, 2, 3)
    d = split_uci(name, None, 1, 4)
    assert not np.array_equal(a["train_index"], c["train_index"])
    assert not np.array_equal(a["train_index"], d["train_index"])


def test_label_fraction_does_not_move_the_partition():
    a = split_uci("titanic", None, 0, 0, label_fraction=0.1)
    b = split_uci("titanic", None, 0, 0, label_fraction=0.5)
    assert np.array_equal(a["train_index"], b["train_index"])
    assert b["labelled_train"].sum() == round(0.5 * len(b["y_train"]))
    full = split_uci("titanic", None, 0, 0, label_fraction=1.0)
    assert full["labelled_train"].all() and full["labelled_valid"].all()


def test_labelled_points_are_stratified_over_splits():
    for k in range(5):
        s = split_uci("contraceptive", None, k, 0)
        counts = np.bincount(s["y_train"][s["labelled_train"]], minlength=3)
        expected = 49 * np.bincount(s["y_train"], minlength=3) / len(s["y_train"])
        assert counts.sum() == 49 and np.all(np.abs(counts - expected) < 1)   # proportional quotas


def test_allocation_gives_every_class_at_least_one():
    assert _allocate(np.array([98, 1, 1]), 3, True).tolist() == [1, 1, 1]
    assert _allocate(np.array([98, 1, 1]), 10, True).tolist() == [8, 1, 1]
    assert _allocate(np.array([98, 1, 1]), 10, False).tolist() == [10, 0, 0]
    assert _allocate(np.array([50, 30, 20]), 7, True).tolist() == [4, 2, 1]   # 3.5, 2.1, 1.4 -> largest remainder


def test_label_mask_covers_a_rare_class_and_is_exact():
    y = np.array([0] * 98 + [1, 2])
    for seed in range(5):
        mask = _label_mask(y, 3, 0.03, np.random.default_rng(seed), "train", require_all=True)
        assert mask.sum() == 3 and sorted(y[mask].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="0.02"):
        _label_mask(y, 3, 0.02, np.random.default_rng(0), "train", require_all=True)
    mask = _label_mask(y, 3, 0.02, np.random.default_rng(0), "valid", require_all=False)
    assert mask.sum() == 2


def test_constant_training_column_is_only_centred():
    mean, scale = standardise(np.array([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]]))
    assert mean.tolist() == [1.0, 4.0] and scale[0] == 1.0 and np.isclose(scale[1], np.sqrt(8 / 3))
    # Debrecen's quality column has 4 zeros in 1151 rows: some training splits have none
    constant = [s for s in (split_uci("diabetic-retinopathy", None, k, 0) for k in range(20))
                if np.ptp(s["x_train"][:, 0]) == 0]
    assert constant, "expected some split whose training quality column is constant"
    s = constant[0]
    assert s["feature_std"][0] == 1.0 and np.all(s["x_train"][:, 0] == 0)
    assert np.all(np.isfinite(s["x_test"])) and np.all(np.isfinite(s["x_valid"]))


@pytest.mark.parametrize("kwargs, bad", [
    ({"name": "mnist"}, "mnist"),
    ({"label_fraction": 0.0}, "0.0"),
    ({"label_fraction": 1.5}, "1.5"),
    ({"label_fraction": -0.1}, "-0.1"),
    ({"split_index": -1}, "-1"),
    ({"split_index": 1.5}, "1.5"),
    ({"seed": -3}, "-3"),
])
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, bad):
    args = {"name": "titanic", "data_dir": None, "split_index": 0, "seed": 0, "label_fraction": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")) as info:
        split_uci(**args)
    if "name" in kwargs:
        assert all(known in str(info.value) for known in UCI_DATASETS)


def test_unknown_name_in_loader_and_checksum():
    with pytest.raises(ValueError, match="'iris'.*diabetic-retinopathy, contraceptive, titanic"):
        load_uci("iris")
    with pytest.raises(ValueError, match="iris"):
        verify_checksum("iris")


def test_too_few_labels_for_the_classes_is_refused():
    # contraceptive train has 491 points: 0.004 * 491 -> 2 labels < 3 classes
    with pytest.raises(ValueError, match="0.004"):
        split_uci("contraceptive", None, 0, 0, label_fraction=0.004)
