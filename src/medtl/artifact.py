"""The model artifact of a run: one safetensors file per fold plus ``model.json`` metadata.

``model.json`` holds everything needed to rebuild and feed the model without the config:
backbone, head, class names, preprocessing, threshold and the weights lineage. Loading never
executes pickles.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from medtl import rundir
from medtl.config import HeadConfig
from medtl.data.transforms import Normalizer
from medtl.errors import MedtlError
from medtl.models.network import Preprocessing, TransferNet, create_model

MODEL_DIR = rundir.MODEL_DIR


@dataclass
class ModelMeta:
    """Metadata stored next to the weights."""

    backbone: str
    head: dict
    class_names: list[str]
    positive_index: int | None
    preprocessing: dict
    threshold: float
    tta: str
    folds: list[str]
    lineage: list[dict]
    config: dict
    threshold_rule: dict | None = None
    temperature: float | None = None
    environment: dict | None = None
    """Provenance: medtl version and git commit, torch/timm/lightning, device, threads, determinism."""

    @property
    def preprocess(self) -> Preprocessing:
        """The :class:`Preprocessing` of this model."""
        p = self.preprocessing
        return Preprocessing(p["image_size"], tuple(p["mean"]), tuple(p["std"]), p["color"], p["resize"],
                             p.get("crop", "none"))

    def normalizer(self) -> Normalizer:
        """Normaliser for uint8 batches."""
        return Normalizer(tuple(self.preprocessing["mean"]), tuple(self.preprocessing["std"]))


def save_fold(run_dir: Path, fold: int, model: nn.Module, member: int = 0) -> str:
    """Write one fold's weights (``member`` of its ensemble) as safetensors; returns the file name."""
    target = run_dir / MODEL_DIR
    target.mkdir(parents=True, exist_ok=True)
    name = f"fold{fold}.safetensors" if member == 0 else f"fold{fold}-m{member}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with rundir.atomic_path(target / name) as tmp:
        save_file(state, str(tmp))
    return name


def save_meta(run_dir: Path, meta: ModelMeta) -> Path:
    """Write ``model/model.json``."""
    return rundir.write_text(run_dir / rundir.MODEL_META, json.dumps(asdict(meta), indent=2))


def load_meta(run_dir: Path) -> ModelMeta:
    """Read ``model/model.json`` of a run directory."""
    path = Path(run_dir) / rundir.MODEL_META
    if not path.is_file():
        raise MedtlError(f"{run_dir}: no {rundir.MODEL_META}; is this a finished medtl run directory?")
    return ModelMeta(**json.loads(path.read_text()))


def load_models(run_dir: Path) -> tuple[list[TransferNet], ModelMeta]:
    """Rebuild every fold's model of a run (random init, then the stored weights)."""
    meta = load_meta(run_dir)
    models = []
    transfer = meta.config.get("transfer", {})
    truncate_at = transfer.get("truncate_at") if transfer.get("strategy") == "truncated" else None
    for name in meta.folds:
        model, _ = create_model(meta.backbone, "none", len(meta.class_names), HeadConfig(**meta.head),
                                truncate_at=truncate_at)
        model.load_state_dict(load_file(str(Path(run_dir) / MODEL_DIR / name)), strict=True)
        models.append(model.eval())
    return models, meta


def load_fold_models(run_dir: Path) -> tuple[dict[int, list[TransferNet]], ModelMeta]:
    """The run's models by fold index (from the ``fold<k>`` file names; the file's position otherwise).

    Each fold maps to its ensemble members (``train.ensemble``), member 0 first.
    """
    try:
        models, meta = load_models(run_dir)
    except TypeError as exc:  # ModelMeta(**model.json): a field this version of medtl does not know
        raise MedtlError(f"{run_dir}/{MODEL_DIR}/model.json does not match this medtl version ({exc})") from None
    by_fold: dict[int, list[TransferNet]] = {}
    for position, name in enumerate(meta.folds):
        match = re.search(r"fold(\d+)", name)
        by_fold.setdefault(int(match.group(1)) if match else position, []).append(models[position])
    return by_fold, meta
