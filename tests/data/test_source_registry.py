"""The data source registry (medtl.data.sources.base) and ``data.color: auto`` (medtl.data.sources.loading)."""

from __future__ import annotations

import logging
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.config import LOCATION_KEYS, DataConfig
from medtl.data.images import carries_color
from medtl.data.sources import SOURCES, DataSource, get_source, load_images, load_table, register_source
from medtl.errors import ConfigError

from .conftest import write_csv


def _pngs(root: Path, color: bool, n: int = 3) -> Path:
    """Two class folders of small PNGs: RGB with distinct channels, or grey pixels stored as RGB."""
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            grey = np.random.default_rng(10 * c + i).integers(0, 256, (24, 24), dtype=np.uint8)
            channels = (grey, 255 - grey, grey // 2) if color else (grey, grey, grey)
            Image.fromarray(np.stack(channels, axis=-1)).save(root / name / f"{i}.png")
    return root


def _tiny_input(name: str, tmp_path: Path, datasets: Path, dicom_dir: Path) -> DataConfig:
    """A tiny real input for every registered source."""
    if name == "folder":
        return DataConfig(source="folder", root=_pngs(tmp_path / "f", color=True), image_size=16)
    if name == "csv":
        root = _pngs(tmp_path / "c", color=False)
        rows = [[f"{c}/{i}.png", c] for c in ("a", "b") for i in range(3)]
        return DataConfig(source="csv", csv=write_csv(root / "labels.csv", ["path", "label"], rows), image_size=16)
    if name == "medmnist":
        return DataConfig(source="medmnist", path=datasets / "medmnist" / "breastmnist.npz", image_size=28)
    if name == "dicom":
        return DataConfig(source="dicom", root=dicom_dir, csv=dicom_dir.parent / "labels.csv", image_size=16,
                          dicom={"label_key": "path"}, max_bad_fraction=0.5)
    pytest.skip(f"no tiny input for data.source '{name}' in this test (its own tests cover it)")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_source_lists_and_decodes(name: str, tmp_path: Path, datasets: Path, dicom_dir: Path) -> None:
    cfg = _tiny_input(name, tmp_path, datasets, dicom_dir)
    source = get_source(name)
    assert isinstance(source, DataSource) and source.name == name
    listing = source.list_samples(cfg)
    assert len(listing.samples) >= 2 and len(listing.class_names) >= 2 and listing.bad == []
    image, digest = source.decode(listing.samples[0], cfg)
    assert image.size[0] > 0 and len(digest) == 64
    table = load_table(cfg)
    loaded = load_images(table, cfg, progress=False)
    assert loaded.bad == [] and len(loaded.images) == len(table.samples)
    assert loaded.images.shape[-1] == (3 if loaded.color == "rgb" else 1)


def test_unknown_source_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'dicom'"):
        get_source("dicon")
    with pytest.raises(ConfigError, match="known: folder, csv"):
        get_source("xyz")


def test_duplicate_registration_is_refused() -> None:
    before = dict(SOURCES)
    with pytest.raises(ConfigError, match="already registered"):
        register_source("csv", "somewhere:Else")
    assert before == SOURCES


def test_registered_source_that_cannot_be_imported_names_itself() -> None:
    register_source("test-missing", "medtl.data.sources.no_such_module:Missing")
    try:
        with pytest.raises(ConfigError, match="test-missing.*cannot be imported"):
            get_source("test-missing")
    finally:
        del SOURCES["test-missing"]


def test_every_config_source_is_registered_with_a_location() -> None:
    names = typing.get_args(DataConfig.model_fields["source"].annotation)
    assert set(names) <= set(SOURCES)
    assert set(names) == set(LOCATION_KEYS)


# ---------------------------------------------------------------- data.color auto


def test_auto_keeps_colour_of_a_colour_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(source="folder", root=_pngs(tmp_path / "d", color=True), image_size=16)
    assert cfg.color == "auto"
    with caplog.at_level(logging.INFO, logger="medtl.data.sources"):
        loaded = load_images(load_table(cfg), cfg, progress=False)
    assert loaded.color == "rgb" and loaded.images.shape == (6, 16, 16, 3)
    assert "data.color auto: 6 of 6 sampled images carry colour -> rgb" in caplog.text


def test_auto_makes_grey_rgb_files_grayscale(tmp_path: Path) -> None:
    cfg = DataConfig(source="folder", root=_pngs(tmp_path / "d", color=False), image_size=16)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    assert loaded.color == "grayscale" and loaded.images.shape == (6, 16, 16, 1)
    explicit = cfg.model_copy(update={"color": "grayscale"})
    assert np.array_equal(load_images(load_table(explicit), explicit, progress=False).images, loaded.images)


def test_auto_on_the_brain_mri_jpegs_is_grayscale(brain_mri: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(source="folder", root=brain_mri, image_size=32, max_per_class=12)
    with caplog.at_level(logging.INFO, logger="medtl.data.sources"):
        loaded = load_images(load_table(cfg), cfg, progress=False)
    assert loaded.color == "grayscale" and loaded.images.shape[-1] == 1
    assert "0 of 24 sampled images carry colour -> grayscale (replicated to 3 channels)" in caplog.text


@pytest.mark.parametrize("color", ["grayscale", "rgb"])
def test_explicit_colour_is_kept(tmp_path: Path, color: str) -> None:
    cfg = DataConfig(source="folder", root=_pngs(tmp_path / "d", color=color == "grayscale"), image_size=16,
                     color=color)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    assert loaded.color == color and loaded.images.shape[-1] == (1 if color == "grayscale" else 3)


def test_carries_colour_tolerates_jpeg_noise(tmp_path: Path) -> None:
    grey = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.jpg", quality=75)
    assert not carries_color(Image.open(tmp_path / "g.jpg"))
    assert not carries_color(Image.fromarray(grey))
    tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 60, 0, 255).astype(np.uint8)], axis=-1)
    assert carries_color(Image.fromarray(tinted))
