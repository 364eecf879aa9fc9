"""``data.source: dicom``: DICOM files under ``data.root``, one sample per frame.

Listing and labelling (from ``data.csv`` or class folders) is :func:`medtl.data.dicom.dicom_samples`;
pixels go through :func:`medtl.data.dicom.iter_frames`. pydicom is imported only when this source is used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from typing import ClassVar

from PIL import Image

from medtl.config import DataConfig
from medtl.data.dicom import decode_samples, dicom_samples, iter_frames
from medtl.data.samples import Listing, Sample, SampleTable
from medtl.data.sources.base import DataSource, Result
from medtl.errors import DataError

_FRAME = re.compile(r"^(.*)::frame\[(\d+)\]$")


class DicomSource(DataSource):
    """DICOM files (classic and multi-frame); unusable files are reported in ``Listing.bad``."""

    name: ClassVar[str] = "dicom"

    def list_samples(self, cfg: DataConfig) -> Listing:
        """One sample per frame of every usable file, labelled from ``data.csv`` or class folders."""
        samples, class_names, bad = dicom_samples(cfg)
        return Listing(samples, class_names, bad)

    def decode(self, sample: Sample, cfg: DataConfig) -> tuple[Image.Image, str]:
        """One frame rendered per ``data.dicom`` and the hash of its stored values."""
        match = _FRAME.match(sample.path)
        path, frame = (match.group(1), int(match.group(2))) if match else (sample.path, 0)
        for decoded in iter_frames(path, [frame], cfg.dicom):
            return decoded.image, decoded.digest
        raise DataError(f"{path}: frame {frame} not found in the file")

    def fixed_color(self, cfg: DataConfig) -> str | None:
        """``rgb`` when three windows are stacked as channels (``data.dicom.channels: windows``)."""
        return "rgb" if cfg.dicom.channels == "windows" else None

    def iter_decoded(self, table: SampleTable, cfg: DataConfig) -> Iterator[tuple[int, Image.Image | str, str]]:
        """Every listed frame at full resolution, each file opened once for all its frames."""
        by_file: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(table.samples):
            by_file[s.path.split("::", 1)[0]].append(i)
        for path, idx in by_file.items():
            frames = {int(table.samples[i].meta.get("frame", 0)): i for i in idx}
            try:
                for frame in iter_frames(path, list(frames), cfg.dicom):
                    yield frames[frame.index], frame.image, frame.digest
            except DataError as exc:
                yield from ((i, str(exc), "") for i in idx)

    def decode_all(self, table: SampleTable, cfg: DataConfig, progress: bool) -> list[Result]:
        """Every listed frame, each file opened and decoded once for all its frames."""
        return decode_samples(table, cfg, progress)
