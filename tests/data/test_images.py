"""Tests of medtl.data.images: decoding by content, corrupt files, hashing, resizing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medtl.data.images import array_hash, find_image_files, open_image, pixel_hash, to_array
from medtl.errors import DataError


def _noise(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


def _stripe_image() -> Image.Image:
    """100 wide x 50 high, black, with a white stripe in columns 0..9."""
    arr = np.zeros((50, 100), dtype=np.uint8)
    arr[:, :10] = 255
    return Image.fromarray(arr, mode="L")


def test_png_with_jpg_extension_opens(tmp_path: Path) -> None:
    path = tmp_path / "really_png.jpg"
    _noise().save(path, format="PNG")
    img = open_image(path)
    assert img.format == "PNG"
    assert img.size == (64, 48)


def test_truncated_jpeg_raises_naming_file(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _noise((256, 256)).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.jpg: cannot decode image"):
        open_image(path)


def test_not_an_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is text")
    with pytest.raises(DataError, match="notes.png"):
        open_image(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        open_image(tmp_path / "nope.png")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "I", "F", "LA", "1", "CMYK"])
@pytest.mark.parametrize(("color", "channels"), [("grayscale", 1), ("rgb", 3)])
def test_to_array_shape_and_dtype(mode: str, color: str, channels: int) -> None:
    img = Image.new("I;16", (37, 23), 300) if mode == "I;16" else _noise((37, 23)).convert(mode)
    arr = to_array(img, 16, color, "squash")  # type: ignore[arg-type]
    assert arr.shape == (16, 16, channels)
    assert arr.dtype == np.uint8


def test_sixteen_bit_is_scaled_min_max() -> None:
    values = np.linspace(1000, 2000, 32 * 32).reshape(32, 32).astype(np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    arr = to_array(img, 32, "grayscale", "squash")
    assert arr.min() == 0
    assert arr.max() == 255


def test_transparent_pixels_become_black() -> None:
    rgba = np.full((20, 20, 4), 255, dtype=np.uint8)
    rgba[:, :10, 3] = 0  # left half fully transparent white
    arr = to_array(Image.fromarray(rgba, mode="RGBA"), 20, "rgb", "squash")
    assert arr[:, :8].max() == 0
    assert arr[:, 12:].min() == 255


def test_squash_keeps_everything_stretched() -> None:
    arr = to_array(_stripe_image(), 40, "grayscale", "squash")[..., 0]
    assert arr[:, :3].min() > 200
    assert arr[:, 6:].max() < 50


def test_pad_keeps_aspect_and_centres() -> None:
    arr = to_array(_stripe_image(), 40, "grayscale", "pad")[..., 0]
    assert arr[:10].max() == 0 and arr[30:].max() == 0  # 40x20 content pasted at rows 10..29
    assert arr[11:29, :3].min() > 200
    assert arr[11:29, 6:].max() < 50


def test_crop_takes_the_centre() -> None:
    arr = to_array(_stripe_image(), 40, "grayscale", "crop")[..., 0]
    assert arr.shape == (40, 40)
    assert arr.max() < 50  # the stripe at the left edge is cropped away


def test_crop_and_pad_of_tall_image() -> None:
    tall = _stripe_image().transpose(Image.Transpose.ROTATE_90)  # 50 wide x 100 high, stripe at the bottom
    padded = to_array(tall, 40, "rgb", "pad")
    assert padded[:, :10].max() == 0 and padded[:, 30:].max() == 0
    assert to_array(tall, 40, "rgb", "crop").max() < 50


def test_pixel_hash_equal_for_identical_pixels(tmp_path: Path) -> None:
    img = _noise(mode="L")
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "b.tiff")
    img.convert("RGBA").convert("L").save(tmp_path / "c.bmp")
    hashes = {pixel_hash(open_image(tmp_path / name)) for name in ("a.png", "b.tiff", "c.bmp")}
    assert len(hashes) == 1


def test_pixel_hash_ignores_palette_and_opaque_alpha() -> None:
    palette = _noise((16, 16)).quantize(colors=16)
    assert palette.mode == "P"
    rgb = palette.convert("RGB")
    assert pixel_hash(palette) == pixel_hash(rgb)
    assert pixel_hash(rgb) == pixel_hash(rgb.convert("RGBA"))
    see_through = rgb.convert("RGBA")
    see_through.putalpha(128)
    assert pixel_hash(see_through) != pixel_hash(rgb)


def test_pixel_hash_differs_for_one_changed_pixel() -> None:
    img = _noise(mode="L")
    other = img.copy()
    other.putpixel((3, 4), (img.getpixel((3, 4)) + 1) % 256)  # type: ignore[operator]
    assert pixel_hash(img) != pixel_hash(other)
    assert pixel_hash(img) != pixel_hash(img.convert("RGB"))  # mode is part of the hash
    assert len(pixel_hash(img)) == 64


def test_array_hash() -> None:
    arr = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert array_hash(arr) == array_hash(arr.copy())
    assert array_hash(arr) != array_hash(arr.astype(np.int16))
    assert array_hash(arr) != array_hash(arr.reshape(14, 56))
    changed = arr.copy()
    changed[0, 0] += 1
    assert array_hash(arr) != array_hash(changed)
    assert array_hash(arr.T) == array_hash(np.ascontiguousarray(arr.T))


def test_find_image_files_skips_hidden_entries_and_folder_links(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for rel in ("b.PNG", "sub/a.jpg", "._b.PNG", ".DS_Store", ".hidden/c.jpg", "notes.txt"):
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "sub" / "loop").symlink_to("..")
    images, others = find_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["b.PNG", "sub/a.jpg"]
    assert [p.name for p in others] == ["notes.txt"]
