"""Tests of medtl.data.splits: grouping, stratified grouped folds, leakage checks, manifests."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from medtl.config import DataConfig, SplitConfig, data_root
from medtl.data.sources import LoadedImages, Sample, SampleTable, load_images, load_table
from medtl.data.splits import (
    ROLES,
    Fold,
    assign_groups,
    check_folds,
    make_folds,
    read_manifest,
    write_manifest,
)
from medtl.errors import DataError

# The 22 exact-duplicate sets listed in shared/datasets/brain_tumor_mri/README.md.
BRAIN_DUPLICATES = [
    ["no/1 no.jpeg", "no/no 94.jpg"],
    ["no/10 no.jpg", "no/9 no.jpg"],
    ["no/13 no.jpg", "no/42 no.jpg"],
    ["no/17 no.jpg", "no/27 no.jpg"],
    ["no/38 no.jpg", "no/8 no.jpg"],
    ["no/4 no.jpg", "no/N5.jpg"],
    ["no/40 no.jpg", "no/41 no.jpg"],
    ["no/49 no.jpg", "no/no 1.jpg"],
    ["no/N3.jpg", "no/no 4.jpg"],
    ["no/No11.jpg", "no/no 7.jpeg"],
    ["no/No15.jpg", "no/No17.jpg"],
    ["yes/Y10.jpg", "yes/Y37.jpg"],
    ["yes/Y107.jpg", "yes/Y33.jpg"],
    ["yes/Y108.jpg", "yes/Y162.jpg"],
    ["yes/Y13.jpg", "yes/Y169.jpg"],
    ["yes/Y14.jpg", "yes/Y17.jpg"],
    ["yes/Y15.jpg", "yes/Y181.jpg", "yes/Y34.jpg"],
    ["yes/Y154.jpg", "yes/Y79.jpg"],
    ["yes/Y25.jpg", "yes/Y69.jpg"],
    ["yes/Y30.jpg", "yes/Y38.jpg", "yes/Y54.jpg", "yes/Y70.jpg"],
    ["yes/Y31.jpg", "yes/Y62.jpg"],
    ["yes/Y55.jpg", "yes/Y74.jpg"],
]


@pytest.fixture(scope="module")
def brain() -> LoadedImages:
    root = data_root() / "brain_tumor_mri"
    if not root.is_dir():
        pytest.skip(f"shared dataset {root} not available (set MEDTL_DATA)")
    cfg = DataConfig(source="folder", root=root, image_size=32)
    return load_images(load_table(cfg), cfg, progress=False)


def _synthetic(n_patients: int = 80, seed: int = 0) -> tuple[list[Sample], list[str]]:
    """Patients with 1-4 images each, about 30% positive (by patient), unique hashes."""
    rng = np.random.default_rng(seed)
    samples, hashes = [], []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        for k in range(int(rng.integers(1, 5))):
            samples.append(
                Sample(id=f"p{p}/{k}.png", path=f"/x/p{p}/{k}.png", label=label, patient=f"p{p}", split=None)
            )
            hashes.append(f"{p:04d}{k:02d}" + "0" * 58)
    return samples, hashes


def _labels(samples: list[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples])


def _assert_no_group_crosses(folds: list[Fold], groups: list[str]) -> None:
    for fold in folds:
        role_of: dict[str, set[str]] = defaultdict(set)
        for role in ROLES:
            for i in fold.role(role):
                role_of[groups[i]].add(role)
        crossing = {g: r for g, r in role_of.items() if len(r) > 1}
        assert not crossing, f"fold {fold.index}: {crossing}"


# ---------------------------------------------------------------- groups


def test_brain_duplicates_grouped_and_never_split(brain: LoadedImages) -> None:
    ids = [s.id for s in brain.table.samples]
    groups = assign_groups(brain.table.samples, brain.hashes)
    for duplicate_set in BRAIN_DUPLICATES:
        assert len({groups[ids.index(sid)] for sid in duplicate_set}) == 1, duplicate_set
    sizes = defaultdict(int)
    for g in groups:
        sizes[g] += 1
    assert sum(n > 1 for n in sizes.values()) == 22
    assert all(g.startswith("dup:") for g, n in sizes.items() if n > 1)
    assert groups[ids.index("yes/Y1.jpg")] == "img:yes/Y1.jpg"
    folds = make_folds(_labels(brain.table.samples), groups, [None] * len(ids), SplitConfig(folds=5))
    assert len(folds) == 5
    _assert_no_group_crosses(folds, groups)
    tests = np.sort(np.concatenate([f.test for f in folds]))
    assert np.array_equal(tests, np.arange(len(ids)))


def test_groups_join_patients_and_duplicates() -> None:
    samples = [
        Sample("a", "/a", 0, "p1", None),
        Sample("b", "/b", 0, "p2", None),
        Sample("c", "/c", 0, "p2", None),
        Sample("d", "/d", 1, None, None),
        Sample("e", "/e", 1, None, None),
        Sample("f", "/f", 1, None, None),
    ]
    hashes = ["h1", "h1", "h2", "h3", "h3", "h4"]
    groups = assign_groups(samples, hashes)
    assert groups == ["patient:p1"] * 3 + ["dup:h3"] * 2 + ["img:f"]


def test_no_patient_warning_once(caplog: pytest.LogCaptureFixture) -> None:
    samples = [Sample(str(i), f"/{i}", i % 2, None, None) for i in range(4)]
    with caplog.at_level(logging.WARNING):
        assign_groups(samples, ["a", "b", "c", "d"])
    assert caplog.text.count("no patient ids: grouping by duplicate image content only") == 1
    with pytest.raises(DataError, match="4 samples but 3 hashes"):
        assign_groups(samples, ["a", "b", "c"])


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("method", ["kfold", "holdout"])
def test_patients_stay_in_one_role_and_ratios_hold(method: str) -> None:
    samples, hashes = _synthetic(n_patients=150)
    groups = assign_groups(samples, hashes)
    labels = _labels(samples)
    folds = make_folds(labels, groups, [None] * len(samples), SplitConfig(method=method, folds=5))
    assert len(folds) == (5 if method == "kfold" else 1)
    _assert_no_group_crosses(folds, groups)
    overall = labels.mean()
    for fold in folds:
        for role in ROLES:
            assert abs(labels[fold.role(role)].mean() - overall) < 0.08, (fold.index, role)
    if method == "holdout":
        assert abs(len(folds[0].test) / len(labels) - 0.2) < 0.05
        assert abs(len(folds[0].val) / (len(labels) - len(folds[0].test)) - 0.15) < 0.05


def test_determinism_and_seed_dependence() -> None:
    samples, hashes = _synthetic()
    groups = assign_groups(samples, hashes)
    labels = _labels(samples)
    none = [None] * len(samples)
    a = make_folds(labels, groups, none, SplitConfig(seed=3))
    b = make_folds(labels, groups, none, SplitConfig(seed=3))
    c = make_folds(labels, groups, none, SplitConfig(seed=4))
    for fa, fb in zip(a, b, strict=True):
        assert all(np.array_equal(fa.role(r), fb.role(r)) for r in ROLES)
    assert any(not np.array_equal(fa.test, fc.test) for fa, fc in zip(a, c, strict=True))


def test_zero_val_fraction_gives_empty_val() -> None:
    samples, hashes = _synthetic()
    folds = make_folds(
        _labels(samples),
        assign_groups(samples, hashes),
        [None] * len(samples),
        SplitConfig(folds=3, val_fraction=0.0),
    )
    assert all(len(f.val) == 0 for f in folds)


def test_train_fraction_keeps_groups_whole() -> None:
    samples, hashes = _synthetic(n_patients=200)
    groups = assign_groups(samples, hashes)
    labels = _labels(samples)
    none = [None] * len(samples)
    full = make_folds(labels, groups, none, SplitConfig(folds=4))
    half = make_folds(labels, groups, none, SplitConfig(folds=4), train_fraction=0.5)
    for f_full, f_half in zip(full, half, strict=True):
        assert np.array_equal(f_full.val, f_half.val) and np.array_equal(f_full.test, f_half.test)
        assert set(f_half.train) <= set(f_full.train)
        assert abs(len(f_half.train) / len(f_full.train) - 0.5) < 0.1
        kept_groups = {groups[i] for i in f_half.train}
        assert {i for i in f_full.train if groups[i] in kept_groups} == set(f_half.train.tolist())


def test_too_few_groups_for_kfold() -> None:
    labels = np.array([0] * 20 + [1] * 3)
    groups = [f"g{i}" for i in range(23)]
    with pytest.raises(DataError, match="class '1' has 3 patient/image groups but data.split.folds is 5"):
        make_folds(labels, groups, [None] * 23, SplitConfig(folds=5))


def test_class_absent_from_validation_raises() -> None:
    labels = np.array([0] * 50 + [1] * 2)
    groups = [f"g{i}" for i in range(52)]
    with pytest.raises(DataError, match=r"class 'pos' absent from validation of fold 0: .*val_fraction"):
        make_folds(labels, groups, [None] * 52, SplitConfig(method="holdout"), class_names=["neg", "pos"])


# ---------------------------------------------------------------- predefined


def _predefined_data() -> tuple[np.ndarray, list[str], list[str | None]]:
    labels = np.array([0, 1] * 20)
    groups = [f"g{i}" for i in range(40)]
    splits: list[str | None] = ["train"] * 24 + ["val"] * 6 + ["test"] * 10
    return labels, groups, splits


def test_predefined_uses_given_split() -> None:
    labels, groups, splits = _predefined_data()
    (fold,) = make_folds(labels, groups, splits, SplitConfig(method="predefined"))
    assert fold.train.tolist() == list(range(24))
    assert fold.val.tolist() == list(range(24, 30))
    assert fold.test.tolist() == list(range(30, 40))


def test_predefined_without_val_carves_it_from_train() -> None:
    labels, groups, _ = _predefined_data()
    splits: list[str | None] = ["train"] * 30 + ["test"] * 10
    (fold,) = make_folds(labels, groups, splits, SplitConfig(method="predefined", val_fraction=0.2))
    assert fold.test.tolist() == list(range(30, 40))
    assert len(fold.val) == 6 and set(fold.val) | set(fold.train) == set(range(30))


def test_predefined_errors() -> None:
    labels, groups, splits = _predefined_data()
    cfg = SplitConfig(method="predefined")
    with pytest.raises(DataError, match="no sample has split 'test'"):
        make_folds(labels, groups, ["train"] * 34 + ["val"] * 6, cfg)
    with pytest.raises(DataError, match="1 samples have no split.*kfold or holdout"):
        make_folds(labels, groups, splits[:-1] + [None], cfg)


def test_predefined_drops_leaking_copies_from_earlier_split() -> None:
    labels, groups, splits = _predefined_data()
    groups[0] = groups[35] = "dup:shared"  # a train image identical to a test image
    groups[24] = groups[36] = "patient:x"  # a val image of a test patient
    (fold,) = make_folds(labels, groups, splits, SplitConfig(method="predefined"))
    assert 0 not in fold.train and 24 not in fold.val
    assert {35, 36} <= set(fold.test.tolist())


# ---------------------------------------------------------------- check_folds


def _fold(train: list[int], val: list[int], test: list[int], index: int = 0) -> Fold:
    return Fold(index, np.array(train), np.array(val, dtype=np.int64), np.array(test))


def test_check_folds_detects_leakage() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    groups = ["a", "b", "c", "d", "e", "a"]
    with pytest.raises(DataError, match="leakage: group 'a' is in both train and test of fold 2"):
        check_folds([_fold([0, 1, 2, 3], [], [4, 5], index=2)], labels, groups, 2)
    check_folds([_fold([0, 1, 2, 5], [], [3, 4], index=2)], labels, groups, 2)  # fine


def test_check_folds_other_rules() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1])
    groups = list("abcdef")
    with pytest.raises(DataError, match="sample index 3 is in both train and test"):
        check_folds([_fold([0, 1, 2, 3], [], [3, 4])], labels, groups, 2)
    with pytest.raises(DataError, match="class 'no' absent from validation of fold 0"):
        check_folds([_fold([0, 1, 2], [3], [4, 5])], labels, groups, 2, class_names=["no", "yes"])
    with pytest.raises(DataError, match="class '1' absent from training"):
        check_folds([_fold([0, 2], [], [1, 3, 4, 5])], labels, groups, 2)
    with pytest.raises(DataError, match="do not partition the samples"):
        check_folds(
            [_fold([0, 1, 2, 3], [], [4, 5]), _fold([1, 2, 3, 4], [], [0, 5], index=1)], labels, groups, 2
        )


# ---------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path: Path) -> None:
    samples, hashes = _synthetic(n_patients=30)
    table = SampleTable(samples, ["neg", "pos"], 1, "csv", "/x/labels.csv", True)
    groups = assign_groups(samples, hashes)
    folds = make_folds(_labels(samples), groups, [None] * len(samples), SplitConfig(folds=3))
    path = tmp_path / "run" / "splits.csv"
    write_manifest(path, table, groups, folds)
    rows = read_manifest(path)
    assert len(rows) == sum(len(f.train) + len(f.val) + len(f.test) for f in folds)
    first = folds[0].train[0]
    assert rows[0] == {
        "fold": 0,
        "role": "train",
        "id": samples[first].id,
        "path": samples[first].path,
        "label": samples[first].label,
        "class_name": table.class_names[samples[first].label],
        "patient": samples[first].patient,
        "group": groups[first],
        "meta": {},
    }
    assert {r["role"] for r in rows} == set(ROLES)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a medtl manifest"):
        read_manifest(tmp_path / "bad.csv")
