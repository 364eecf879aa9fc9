"""Corpus cases of the NIfTI source (``data.source: nifti``)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from corpus.case import Case


def _volume(path: Path, seed: int, shape: tuple[int, ...] = (16, 16, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)


def _config(root: Path, **nifti: object) -> list[str]:
    cfg = {"name": "n", "data": {"source": "nifti", "root": "vols", "image_size": 32, "nifti": nifti,
                                 "max_bad_fraction": 0.2,
                                 "split": {"method": "kfold", "folds": 2, "val_fraction": 0.0}},
           "transfer": {"strategy": "feature_extraction"},
           "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16}, "evaluate": {"bootstrap": 20, "tta": "none"}}
    (root / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return ["train", "exp.yaml", "--out", "run", "--quiet"]


def _no_volumes(root: Path) -> list[str]:
    for label in ("a", "b"):
        (root / "vols" / label).mkdir(parents=True)
        (root / "vols" / label / "scan.png").write_bytes(b"not a volume")
    return _config(root)


def _every_k_without_k(root: Path) -> list[str]:
    for c, label in enumerate(("a", "b")):
        _volume(root / "vols" / label / "v.nii.gz", c)
    return _config(root, slices="every_k")


def _bad_volumes(root: Path) -> list[str]:
    for c, label in enumerate(("a", "b")):
        for i in range(3):
            _volume(root / "vols" / label / f"v{i}.nii.gz", 10 * c + i)
    whole = (root / "vols" / "a" / "v0.nii.gz").read_bytes()
    (root / "vols" / "a" / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    _volume(root / "vols" / "b" / "flat.nii", 99, shape=(16, 16))
    return _config(root, intensity={"method": "minmax"})


def _volumes_in_run(root: Path) -> int:
    with (root / "run" / "splits.csv").open() as handle:
        return len({row["id"].split("#z=")[0] for row in csv.DictReader(handle)})


CASES = [
    Case("nifti-no-volumes", "#17.4", "NIfTI source whose class folders hold no .nii/.nii.gz",
         "exit 2, names the folder", _no_volumes, 2, "no .nii or .nii.gz volumes"),
    Case("nifti-every-k-without-k", "#17.4", "`data.nifti.slices: every_k` without `k`",
         "exit 2, names data.nifti.k", _every_k_without_k, 2, "data.nifti.k"),
    Case("nifti-bad-volumes-skipped", "#17.4", "NIfTI folder with a truncated .nii.gz and a 2-D file",
         "both reported and skipped, the 6 good volumes train", _bad_volumes, 0, "", _volumes_in_run, 6, slow=True),
]
