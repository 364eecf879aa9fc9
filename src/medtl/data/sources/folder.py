"""``data.source: folder``: one subfolder of images per class under ``data.root``.

Sample ids are the paths relative to the root (``yes/Y1.jpg``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from medtl.config import DataConfig
from medtl.data.images import IMAGE_EXTENSIONS, find_image_files
from medtl.data.samples import MAX_LISTED, Listing, Sample, require_dir
from medtl.data.sources.files import ImageFileSource
from medtl.errors import DataError

logger = logging.getLogger(__name__)


class FolderSource(ImageFileSource):
    """Class folders: files found recursively inside each (hidden entries skipped)."""

    name: ClassVar[str] = "folder"

    def list_samples(self, cfg: DataConfig) -> Listing:
        """One sample per image file under each class folder of ``cfg.root``."""
        root = require_dir(cfg.root, "root")
        folders = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        _note_loose_files(root)
        class_names = _folder_classes(sorted(folders), cfg.classes, root)
        samples: list[Sample] = []
        for label, name in enumerate(class_names):
            files = _class_files(folders[name])
            if not files:
                raise DataError(
                    f"{folders[name]}: class folder '{name}' has no image files "
                    f"({' '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
                )
            samples += [_folder_sample(f, root, label) for f in files]
        return Listing(samples, class_names)


def _folder_sample(file: Path, root: Path, label: int) -> Sample:
    return Sample(id=file.relative_to(root).as_posix(), path=str(file), label=label, patient=None, split=None)


def _folder_classes(found: list[str], classes: list[str] | None, root: Path) -> list[str]:
    if not found:
        raise DataError(
            f"{root}: no class subfolders; data.source 'folder' expects one subfolder of images per class"
        )
    if classes is None:
        return found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"data.classes names {missing} but {root} has no such subfolder; subfolders: {found}")
    extra = [f for f in found if f not in classes]
    if extra:
        logger.warning("%s: ignoring subfolders %s that are not listed in data.classes", root, extra)
    return list(classes)


def _note_loose_files(root: Path) -> None:
    loose = sorted(f.name for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
    images = [name for name in loose if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        logger.warning(
            "%s: %d images lie outside any class folder and are ignored: %s", root, len(images), images[:MAX_LISTED]
        )
    elif loose:
        logger.info("%s: ignoring non-class files %s", root, loose[:MAX_LISTED])


def _class_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (:func:`~medtl.data.images.find_image_files`); warn about others."""
    images, others = find_image_files(folder)
    if others:
        listed = [p.relative_to(folder).as_posix() for p in others[:MAX_LISTED]]
        logger.warning(
            "%s: %d files without an image extension are ignored: %s (rename them if they are images)",
            folder,
            len(others),
            listed,
        )
    return images
