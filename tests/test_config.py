"""Tests of medtl.config: YAML parsing, ${MEDTL_DATA}, did-you-mean errors, --set overrides, paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medtl.config import ExperimentConfig, data_root, dump_config, load_config, parse_config
from medtl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

EXAMPLE = """\
name: brain-mri-lite0
data:
  source: folder
  root: ${MEDTL_DATA}/brain_tumor_mri
  positive_class: "yes"
  image_size: 224
  split: {method: kfold, folds: 5, seed: 0}
  augment: {hflip: true, rotate: 15, zoom: 0.1, brightness: 0.1}
model:
  backbone: tf_efficientnet_lite0
  weights: packaged:efficientnet_lite0
  head: {hidden: [], dropout: 0.2}
transfer: {strategy: fine_tune}
train: {optimizer: adam, lr: 0.0003, batch_size: 32, epochs: 15, early_stopping: {monitor: val_auc, patience: 4}}
"""


def write(folder: Path, text: str, name: str = "exp.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_example_config_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_DATA", str(tmp_path / "datasets"))
    cfg = load_config(write(tmp_path, EXAMPLE))
    assert cfg.name == "brain-mri-lite0"
    assert cfg.data.source == "folder"
    assert cfg.data.positive_class == "yes"
    assert (cfg.data.split.method, cfg.data.split.folds, cfg.data.split.seed) == ("kfold", 5, 0)
    assert cfg.data.augment.hflip is True and not cfg.data.augment.vflip
    assert cfg.data.augment.rotate == 15.0 and cfg.data.augment.zoom == 0.1
    assert cfg.model.backbone == "tf_efficientnet_lite0"
    assert cfg.model.weights == "packaged:efficientnet_lite0"
    assert cfg.model.head.hidden == [] and cfg.model.head.dropout == 0.2
    assert cfg.transfer.strategy == "fine_tune" and cfg.transfer.unfreeze_from is None
    assert cfg.train.optimizer == "adam" and cfg.train.lr == 3e-4
    assert (cfg.train.batch_size, cfg.train.epochs) == (32, 15)
    assert cfg.train.early_stopping is not None
    assert (cfg.train.early_stopping.monitor, cfg.train.early_stopping.patience) == ("val_auc", 4)


def test_medtl_data_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTL_DATA", str(tmp_path / "elsewhere"))
    assert data_root() == tmp_path / "elsewhere"
    cfg = load_config(write(tmp_path / "cfg", EXAMPLE))
    assert cfg.data.root == tmp_path / "elsewhere" / "brain_tumor_mri"


def test_medtl_data_defaults_next_to_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDTL_DATA", raising=False)
    expected = (REPO.parent / "shared" / "datasets").resolve()
    assert data_root() == expected
    cfg = load_config(write(tmp_path, EXAMPLE))
    assert cfg.data.root == expected / "brain_tumor_mri"


def test_unset_variable_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDTL_TEST_UNSET", raising=False)
    path = write(tmp_path, EXAMPLE.replace("${MEDTL_DATA}", "${MEDTL_TEST_UNSET}"))
    with pytest.raises(ConfigError, match="MEDTL_TEST_UNSET"):
        load_config(path)


@pytest.mark.parametrize(("old", "new", "suggestion", "where"), [
    ("optimizer: adam", "optimiser: adam", "Did you mean 'optimizer'", "train.optimiser"),
    ("augment: {", "augmnt: {", "Did you mean 'augment'", "data.augmnt"),
])
def test_typo_in_key_suggests_the_right_one(tmp_path: Path, old: str, new: str, suggestion: str,
                                            where: str) -> None:
    assert old in EXAMPLE
    path = write(tmp_path, EXAMPLE.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert suggestion in message
    assert where in message
    assert str(path) in message


def test_typo_in_option_value_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE.replace("strategy: fine_tune", "strategy: fine_tuen"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "Did you mean 'fine_tune'" in message
    assert "transfer.strategy" in message
    assert "feature_extraction" in message  # the valid choices are listed


def test_set_overrides_change_typed_values(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    before = load_config(path)
    assert before.train.lr != 0.01 and before.data.augment.hflip is True
    cfg = load_config(path, ["train.lr=0.01", "data.augment.hflip=false", "transfer.unfreeze_from=blocks.5"])
    assert cfg.train.lr == 0.01 and isinstance(cfg.train.lr, float)
    assert cfg.data.augment.hflip is False
    assert cfg.transfer.unfreeze_from == "blocks.5"
    # untouched values stay
    assert cfg.train.optimizer == "adam" and cfg.data.augment.rotate == 15.0


def test_override_can_create_a_missing_block(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, EXAMPLE), ["evaluate.bootstrap=10"])
    assert cfg.evaluate.bootstrap == 10


def test_override_with_a_typo_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        load_config(write(tmp_path, EXAMPLE), ["train.lrr=0.1"])


@pytest.mark.parametrize("bad", ["train.lr", "=0.1", "train.lr.x=1", "train.lr=abc"])
def test_bad_override_raises_config_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, EXAMPLE), [bad])


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_relative_data_paths_resolve_against_the_config_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    folder = tmp_path / "configs" / "sub"
    text = EXAMPLE.replace("${MEDTL_DATA}/brain_tumor_mri", "../images")
    cfg = load_config(write(folder, text))
    assert cfg.data.root == (tmp_path / "configs" / "images").resolve()
    assert cfg.data.root.is_absolute()
    csv_text = "data: {source: csv, csv: tables/labels.csv}\n"
    assert load_config(write(folder, csv_text, "csv.yaml")).data.csv == (folder / "tables" / "labels.csv").resolve()


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, EXAMPLE), ["train.lr=0.01", "model.head.hidden=[32, 16]"])
    text = dump_config(cfg)
    again = parse_config(yaml.safe_load(text))
    assert isinstance(again, ExperimentConfig)
    assert again == cfg
    assert again.model.head.hidden == [32, 16]
    assert "early_stopping" in text and "bootstrap" in text  # defaults are written out


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["data"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("override", "expected"), [
    ("train.early_stopping.ties=latr", "Did you mean 'later'"),
    ("train.ema_decay=1.5", "train.ema_decay"),
    ("evaluate.tta=hflip-zoom", "Did you mean 'hflip_zoom'"),
    ("train.ensemble=0", "train.ensemble"),
    ("train.loss=focall", "Did you mean 'focal'"),
    ("train.sampler=balance", "Did you mean 'balanced'"),
    ("train.focal_gamma=-1", "train.focal_gamma"),
])
def test_bad_values_of_the_new_training_keys_are_named(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, EXAMPLE), [override])
    good = load_config(write(tmp_path, EXAMPLE), ["train.early_stopping.ties=lower_loss", "train.ema_decay=0.9",
                                                  "evaluate.tta=hflip_zoom", "train.ensemble=3", "train.loss=focal",
                                                  "train.sampler=balanced", "train.focal_gamma=1"])
    assert good.train.early_stopping.ties == "lower_loss" and good.train.ema_decay == 0.9
    assert (good.train.loss, good.train.sampler, good.train.focal_gamma) == ("focal", "balanced", 1.0)
    assert good.evaluate.tta == "hflip_zoom" and good.train.ensemble == 3


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_files_validate(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBT_DATA", "/data/dbt")  # the DBT recipe names the user's own copy
    cfg = load_config(path)
    assert cfg.name and cfg.model.backbone


def test_shipped_brain_yaml_is_the_issue_yaml_and_the_small_data_recipe_adds_only_regularisers() -> None:
    exact = load_config(REPO / "experiments" / "brain_mri_lite0.yaml")
    assert dump_config(exact) == dump_config(parse_config(yaml.safe_load(EXAMPLE)))
    recipe = load_config(REPO / "experiments" / "brain_mri_lite0_small_data.yaml")
    changed = exact.model_copy(deep=True)
    changed.name = recipe.name
    changed.model.drop_path_rate, changed.train.mixup, changed.train.ensemble = 0.2, 0.2, 3
    changed.evaluate.tta = "hflip_zoom"
    assert dump_config(recipe) == dump_config(changed)
