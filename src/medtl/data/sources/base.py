"""The data source protocol and its registry.

Every ``data.source`` value names one :class:`DataSource` subclass in :data:`SOURCES`, imported
only when it is used (pydicom, nibabel). A source lists samples without decoding pixels
(:meth:`DataSource.list_samples`) and decodes one sample at full resolution
(:meth:`DataSource.decode`); :func:`medtl.data.sources.load_table` and
:func:`~medtl.data.sources.load_images` do the checks shared by every source.
"""

from __future__ import annotations

import difflib
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import ClassVar

import numpy as np
from PIL import Image
from rich.progress import track

from medtl.config import DataConfig
from medtl.data.images import to_array
from medtl.data.samples import Listing, Sample, SampleTable
from medtl.errors import ConfigError, DataError

Result = tuple[np.ndarray, str] | str
"""One decoded sample: ``(uint8 array, pixel hash)``, or the reason it failed."""

SOURCES: dict[str, str] = {
    "folder": "medtl.data.sources.folder:FolderSource",
    "csv": "medtl.data.sources.csvfile:CsvSource",
    "medmnist": "medtl.data.sources.medmnist:MedmnistSource",
    "dicom": "medtl.data.sources.dicom:DicomSource",
    "nifti": "medtl.data.sources.nifti:NiftiSource",
}
"""``data.source`` value -> ``module:Class`` of its :class:`DataSource`."""


class DataSource(ABC):
    """One kind of data: how its samples are listed and how one sample is decoded."""

    name: ClassVar[str]
    """The ``data.source`` value."""

    @abstractmethod
    def list_samples(self, cfg: DataConfig) -> Listing:
        """The samples and class names of ``cfg``'s location, without decoding pixels.

        Raises:
            DataError: Missing location, bad labels, or no usable sample (naming the file and fix).
        """

    @abstractmethod
    def decode(self, sample: Sample, cfg: DataConfig) -> tuple[Image.Image, str]:
        """One sample at full resolution and its pixel hash.

        Raises:
            DataError: The sample cannot be decoded (the reason; OSError/ValueError are read alike).
        """

    def fixed_color(self, cfg: DataConfig) -> str | None:
        """The colour this configuration always produces (``grayscale``/``rgb``), or None to look at the data."""
        return None

    def iter_decoded(self, table: SampleTable, cfg: DataConfig) -> Iterator[tuple[int, Image.Image | str, str]]:
        """``(sample index, full-resolution image or failure reason, pixel hash)`` for every sample, in order."""
        for i, sample in enumerate(table.samples):
            try:
                image, digest = self.decode(sample, cfg)
            except (DataError, OSError, ValueError) as exc:
                yield i, str(exc), ""
                continue
            yield i, image, digest

    def decode_all(self, table: SampleTable, cfg: DataConfig, progress: bool) -> list[Result]:
        """Every sample of ``table`` decoded and converted per ``cfg`` (concrete ``color``), in order.

        The default maps :meth:`decode` over a thread pool; sources override it where batching pays.
        """
        work = partial(prepare, decode=partial(self.decode, cfg=cfg), cfg=cfg)
        return map_with_progress(work, table.samples, progress)


def prepare(sample: Sample, decode: Callable[[Sample], tuple[Image.Image, str]], cfg: DataConfig) -> Result:
    """Array (``cfg.image_size``, ``color``, ``resize``, ``crop``) and hash of one sample, or why it failed."""
    try:
        img, digest = decode(sample)
        return to_array(img, cfg.image_size, cfg.color, cfg.resize, cfg.crop), digest
    except DataError as exc:
        return str(exc)
    except (OSError, ValueError, IndexError) as exc:
        return f"{sample.path}: cannot convert image ({type(exc).__name__}: {exc})"


def map_with_progress(work: Callable[[Sample], Result], samples: list[Sample], progress: bool) -> list[Result]:
    """``work`` over ``samples`` on a small thread pool, in order, with a transient progress bar."""
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(work, samples)
        return list(track(results, total=len(samples), description="decoding images", disable=not progress,
                          transient=True))


def register_source(name: str, target: str) -> None:
    """Register ``module:Class`` as ``data.source: name``.

    Raises:
        ConfigError: ``name`` is already registered (a source has exactly one class).
    """
    if name in SOURCES:
        raise ConfigError(f"data source '{name}' is already registered ({SOURCES[name]}); choose another name")
    SOURCES[name] = target


def get_source(name: str) -> DataSource:
    """The source registered as ``name`` (its module is imported now).

    Raises:
        ConfigError: Unknown name (with did-you-mean), or its module cannot be imported.
    """
    if name not in SOURCES:
        close = difflib.get_close_matches(name, list(SOURCES), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"data.source '{name}' is not a data source; known: {', '.join(SOURCES)}.{hint}")
    module_name, _, class_name = SOURCES[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"data.source '{name}' cannot be used: {SOURCES[name]} cannot be imported ({exc}); "
                          "install what it needs or use another data.source") from None
    if cls.name != name:
        raise ConfigError(f"{SOURCES[name]} calls itself '{cls.name}' but is registered as '{name}'")
    return cls()
