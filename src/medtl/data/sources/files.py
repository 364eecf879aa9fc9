"""Decoding for sources whose samples are image files (``folder``, ``csv``), through the decoded cache."""

from __future__ import annotations

import logging
from functools import partial

from PIL import Image

from medtl.config import DataConfig
from medtl.data.decoded_cache import DecodedCache
from medtl.data.images import open_image, pixel_hash
from medtl.data.samples import Sample, SampleTable
from medtl.data.sources.base import DataSource, Result, map_with_progress, prepare

logger = logging.getLogger(__name__)


class ImageFileSource(DataSource):
    """A source whose sample paths are image files (any format Pillow reads, sniffed from the bytes)."""

    def decode(self, sample: Sample, cfg: DataConfig) -> tuple[Image.Image, str]:
        """The image file of ``sample`` and its pixel hash."""
        img = open_image(sample.path)
        return img, pixel_hash(img)

    def decode_all(self, table: SampleTable, cfg: DataConfig, progress: bool) -> list[Result]:
        """Every file decoded once per content and size policy (``data.cache``, :mod:`~medtl.data.decoded_cache`)."""
        cache = DecodedCache.for_config(cfg)
        decode = partial(self.decode, cfg=cfg)
        if cache is None:
            results = map_with_progress(partial(prepare, decode=decode, cfg=cfg), table.samples, progress)
            logger.info("decoded images: 0 from cache, %d decoded (data.cache is off)", len(results))
            return results

        def cached(sample: Sample) -> Result:
            return cache.fetch(sample.path, partial(prepare, sample, decode, cfg))

        results = map_with_progress(cached, table.samples, progress)
        cache.finish()
        logger.info("decoded images: %d from cache, %d decoded", cache.hits, cache.decoded)
        return results
