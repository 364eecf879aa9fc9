"""Decoding, hashing and resizing of single images.

Images are opened by content (PIL sniffs the format, so a PNG saved as ``.jpg`` opens fine) and
fully decoded up front, so a truncated file fails here with a :class:`~medtl.errors.DataError`
instead of deep inside a training loop. Truncated files are never silently padded
(``ImageFile.LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from medtl.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
)
"""File extensions (lower case) that folder and CSV sources treat as images."""

Color = Literal["grayscale", "rgb"]
Resize = Literal["squash", "pad", "crop"]

_RESAMPLE = Image.Resampling.BICUBIC  # antialiased when shrinking
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def find_image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files under ``folder`` (recursive, sorted), split into images (by extension) and other files.

    Hidden entries (names starting with ``.``: ``.DS_Store``, macOS ``._x.jpg`` resource forks, ``.git``)
    are skipped, files and folders alike; symbolic links to folders are not followed, so a link loop
    cannot recurse. Every command that reads an image folder (the folder source, ``predict``) uses this.

    Args:
        folder: The folder to search.

    Returns:
        ``(images, others)``: files with an extension in :data:`IMAGE_EXTENSIONS`, and the remaining files.
    """
    images: list[Path] = []
    others: list[Path] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(current) / name
            (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, others


def open_image(path: str | Path) -> Image.Image:
    """Open an image by its content and decode it completely.

    Args:
        path: Image file. The extension is ignored; the format is sniffed from the bytes.

    Returns:
        The decoded image (pixels loaded, file closed).

    Raises:
        DataError: The file is missing, not an image, corrupt or truncated.
    """
    try:
        with open(path, "rb") as handle:
            img = Image.open(handle)
            img.load()
    except FileNotFoundError:
        raise DataError(
            f"{path}: file not found; check the dataset location (data.root / data.csv)"
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"{path}: cannot decode image ({exc}); re-export or remove the file"
        ) from None
    return img


COLOR_TOLERANCE = 32
"""Channel spread (of 255) above which a pixel counts as coloured: JPEG noise and the faint colour cast of
scanned grey films stay below, skin, stain and fundus colours lie far above."""

COLOR_MIN_SHARE = 0.1
"""Share of coloured pixels from which an image carries colour (a coloured marker or caption does not)."""


def carries_color(img: Image.Image) -> bool:
    """Whether ``img`` shows colour: its RGB channels differ beyond :data:`COLOR_TOLERANCE` in at least
    :data:`COLOR_MIN_SHARE` of the pixels (a grey X-ray saved as RGB does not).

    Args:
        img: A decoded image of any mode.

    Returns:
        False for single-channel modes and for RGB images whose channels (nearly) agree.
    """
    if img.mode in _HIGH_DEPTH_MODES or img.mode in ("1", "L", "LA", "La"):
        return False
    rgb = np.asarray(_to_color(img, "rgb"), dtype=np.int16)
    step = max(1, max(rgb.shape[:2]) // 256)  # look at about 256 x 256 pixels
    rgb = rgb[::step, ::step]
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return bool(np.mean(spread > COLOR_TOLERANCE) >= COLOR_MIN_SHARE)


_SETTING_HINT = re.compile(r",? or raise data\.max_bad_fraction[^;.]*")


def without_setting_hints(reason: str) -> str:
    """``reason`` without the hint to raise ``data.max_bad_fraction``, for callers that have no such setting.

    ``medtl predict`` and ``medtl convert`` report every failed file on its own, so a hint naming a
    training setting would only mislead there.
    """
    return _SETTING_HINT.sub("", reason)


def pixel_hash(img: Image.Image) -> str:
    """SHA-256 of the decoded pixels, independent of file format and metadata.

    Palette images are expanded to RGB (RGBA when they carry transparency) and an alpha channel
    that is fully opaque is dropped, so the same picture stored as palette PNG, RGBA PNG or RGB
    PNG hashes the same. Lossy re-encodings (JPEG) of course hash differently.

    Args:
        img: A decoded image.

    Returns:
        64 hex characters.
    """
    img = _canonical(img)
    digest = hashlib.sha256(f"{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


def array_hash(arr: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (used for MedMNIST images).

    Args:
        arr: Any numpy array.

    Returns:
        64 hex characters.
    """
    digest = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _canonical(img: Image.Image) -> Image.Image:
    """Expand palettes and drop opaque alpha so equal pictures get equal pixel bytes."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema() == (255, 255):
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    return img


def to_array(img: Image.Image, size: int, color: Color, resize: Resize, crop: str = "none") -> np.ndarray:
    """Convert an image to a square uint8 array of the requested colour layout.

    Args:
        img: A decoded image of any PIL mode.
        size: Output height and width in pixels.
        color: ``grayscale`` gives shape ``(size, size, 1)``, ``rgb`` gives ``(size, size, 3)``.
        resize: ``squash`` ignores the aspect ratio; ``pad`` fits the longer side and pads with
            black, centred; ``crop`` fits the shorter side and crops the centre.
        crop: ``foreground`` first crops to the bounding box of the non-background pixels
            (see :func:`foreground_box`); ``none`` keeps the whole image.

    Returns:
        uint8 array of shape ``(size, size, C)``.
    """
    img = _to_color(img, color)
    if crop == "foreground":
        img = img.crop(foreground_box(img))
    img = _RESIZERS[resize](img, size)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def foreground_box(img: Image.Image, level: float = 0.1, min_fraction: float = 0.02,
                   margin: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box ``(left, top, right, bottom)`` of the image's foreground.

    Scans and photos of film sit on black (or near-black) borders of varying size, so the same
    anatomy appears at different scales after resizing. A row or column is foreground when more than
    ``min_fraction`` of its pixels are brighter than ``level`` × the image's 99th percentile (on a
    ≤256 px copy, so cost is independent of image size). The box gets a ``margin`` and falls back to
    the whole image when it would keep less than 10% of the area.
    """
    small = img.convert("L")
    small.thumbnail((256, 256))
    arr = np.asarray(small, dtype=np.float32)
    mask = arr > level * max(float(np.percentile(arr, 99)), 1.0)
    rows = np.flatnonzero(mask.mean(axis=1) > min_fraction)
    cols = np.flatnonzero(mask.mean(axis=0) > min_fraction)
    if len(rows) == 0 or len(cols) == 0:
        return (0, 0, img.width, img.height)
    sx, sy = img.width / arr.shape[1], img.height / arr.shape[0]
    pad_x, pad_y = margin * img.width, margin * img.height
    box = (max(0, int(cols[0] * sx - pad_x)), max(0, int(rows[0] * sy - pad_y)),
           min(img.width, int(np.ceil((cols[-1] + 1) * sx + pad_x))),
           min(img.height, int(np.ceil((rows[-1] + 1) * sy + pad_y))))
    if (box[2] - box[0]) * (box[3] - box[1]) < 0.1 * img.width * img.height:
        return (0, 0, img.width, img.height)
    return box


def _to_color(img: Image.Image, color: Color) -> Image.Image:
    """Convert to mode ``L`` or ``RGB``; alpha is composited on black, deep images scaled min-max."""
    if img.mode in _HIGH_DEPTH_MODES:
        img = _scale_to_l(img)
    elif img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        img = _on_black(img)
    elif img.mode == "P":
        img = img.convert("RGB")
    target = "L" if color == "grayscale" else "RGB"
    return img if img.mode == target else img.convert(target)


def _scale_to_l(img: Image.Image) -> Image.Image:
    """Map a 16-bit / int / float image to 8 bits by its own min and max."""
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _on_black(img: Image.Image) -> Image.Image:
    """Composite an image with alpha onto a black background (RGB result)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _squash(img: Image.Image, size: int) -> Image.Image:
    return img.resize((size, size), _RESAMPLE)


def _pad(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    scale = size / max(width, height)
    new = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
    canvas = Image.new(img.mode, (size, size), 0)
    canvas.paste(img.resize(new, _RESAMPLE), ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def _crop(img: Image.Image, size: int) -> Image.Image:
    width, height = img.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return img.resize(new, _RESAMPLE).crop((left, top, left + size, top + size))


_RESIZERS = {"squash": _squash, "pad": _pad, "crop": _crop}
