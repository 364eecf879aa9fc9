"""``medtl demo``: feature extraction vs fine-tuning of EfficientNet-Lite0 on real brain MRI, 5-fold CV.

Falls back to BreastMNIST (official splits) when the brain MRI folder is not there: from
``$MEDTL_DATA/medmnist`` when present, else downloaded from MedMNIST's Zenodo record (MD5 checked).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from medtl.config import ExperimentConfig, data_root, parse_config
from medtl.data.medmnist import ensure_medmnist
from medtl.experiment import run_experiment

log = logging.getLogger(__name__)

BRAIN_URL = "https://www.kaggle.com/navoneel/brain-mri-images-for-brain-tumor-detection"

_MODEL = {"backbone": "tf_efficientnet_lite0", "weights": "packaged:efficientnet_lite0",
          "head": {"hidden": [], "dropout": 0.2}}
# Small and fast on a 2-core CPU; see docs/results.md for the full-size recipes. Fine-tuning trains
# blocks.5 and up: the frozen layers below run once per image and augmented view (train.prefix_cache).
_FT_TRAIN = {"optimizer": "adamw", "lr": 0.0005, "batch_size": 32, "epochs": 10, "prefix_cache": True,
             "cache_views": 4}
_FT_TRANSFER = {"strategy": "fine_tune", "unfreeze_from": "blocks.5"}
_FE_TRAIN = {"optimizer": "adamw", "lr": 0.003, "batch_size": 32, "epochs": 60, "weight_decay": 0.0001,
             "warmup_epochs": 0}


def demo_configs(root: Path | None = None, cache: Path | None = None) -> list[ExperimentConfig]:
    """The two demo experiments (feature extraction, fine-tuning) on the data that is available."""
    data = _brain_data(root or data_root()) or _breast_data(root or data_root(), cache)
    fe = {"name": "demo-feature-extraction", "data": data, "model": _MODEL,
          "transfer": {"strategy": "feature_extraction"}, "train": _FE_TRAIN}
    ft_data = dict(data, augment={"hflip": True, "rotate": 10, "zoom": 0.1})
    ft = {"name": "demo-fine-tune", "data": ft_data, "model": _MODEL, "transfer": _FT_TRANSFER, "train": _FT_TRAIN}
    return [parse_config(fe, "demo"), parse_config(ft, "demo")]


def _brain_data(root: Path) -> dict | None:
    folder = root / "brain_tumor_mri"
    if not (folder / "yes").is_dir():
        log.warning("brain MRI images not found at %s (set MEDTL_DATA). Get them from %s and put the yes/ "
                    "and no/ folders there. Running the demo on BreastMNIST instead.", folder, BRAIN_URL)
        return None
    return {"source": "folder", "root": str(folder), "positive_class": "yes", "image_size": 224,
            "split": {"method": "kfold", "folds": 5, "seed": 0}}


def _breast_data(root: Path, cache: Path | None) -> dict:
    local = root / "medmnist"
    target = local if (local / "breastmnist.npz").is_file() else (cache or Path.home() / ".cache" / "medtl")
    path = ensure_medmnist("breastmnist", target)
    return {"source": "medmnist", "path": str(path), "positive_class": "malignant", "image_size": 128,
            "split": {"method": "predefined"}}


def run_demo(out_dir: Path, progress: bool = True) -> list[tuple[str, dict, Path]]:
    """Run both demo experiments; returns (name, metrics, run dir) for each."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = []
    for cfg in demo_configs():
        run_dir = Path(out_dir) / f"{cfg.name}-{stamp}"
        metrics = run_experiment(cfg, run_dir, progress=progress)
        results.append((cfg.name, metrics, run_dir))
    return results
