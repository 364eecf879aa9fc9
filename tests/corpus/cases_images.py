"""Corpus cases: awkward image files in a folder dataset, audited (``medtl audit FOLDER``) or trained on.

Every folder holds 6 + 6 real brain MRI JPEGs plus the awkward files; ``good`` counts the images that
were still decoded (from the audit JSON or the run's ``splits.csv``) and checks that exactly the
expected files were reported unreadable.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from corpus.case import Case
from corpus.inputs import N_PER_CLASS, audit_decoded, brain_images, csv_rows, first_image, image_folder, tiny_config

GOOD = 2 * N_PER_CLASS
AUDIT = ["audit", "images", "--json", "audit.json", "--quiet"]


def _spare(k: int) -> Image.Image:
    """A real image that is not in the folder (so derived files are no near-duplicates of its images)."""
    return Image.open(sorted((brain_images() / "no").iterdir())[N_PER_CLASS + k])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header that declares a ``side`` x ``side`` gray image (10^10 pixels) with almost no data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _writers() -> dict[str, Callable[[Path, Path], None]]:
    """Awkward file name -> writer(path, folder) of that file."""
    return {
        "zero.jpg": lambda p, f: p.write_bytes(b""),
        "truncated.jpg": lambda p, f: p.write_bytes(first_image(f).read_bytes()[:3000]),
        "corrupt.png": lambda p, f: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
        "notes.png": lambda p, f: p.write_text("patient list\nthis is text saved as .png\n"),
        "bomb.png": lambda p, f: p.write_bytes(_bomb_png()),
        "cmyk.jpg": lambda p, f: _spare(0).convert("CMYK").save(p, format="JPEG"),
        "deep16.png": lambda p, f: Image.fromarray(
            np.asarray(_spare(1).convert("L"), dtype=np.uint16) * 257).save(p, format="PNG"),
        "dot.png": lambda p, f: Image.new("L", (1, 1), 200).save(p, format="PNG"),
        "really_a_gif.jpg": lambda p, f: _spare(2).convert("P").save(p, format="GIF"),
    }


def _with(name: str) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        folder = image_folder(root)
        _writers()[name](folder / "yes" / name, folder)
        return AUDIT
    return make


def _decoded(unreadable: set[str]) -> Callable[[Path], int]:
    return lambda root: audit_decoded(root / "audit.json", unreadable)


def _hidden(root: Path) -> list[str]:
    folder = image_folder(root)
    (folder / "yes" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + b"\0" * 64)
    (folder / "yes" / f"._{first_image(folder).name}").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X" + b"\0" * 64)
    (folder / "no" / ".thumbs").mkdir()
    shutil.copy(first_image(folder), folder / "no" / ".thumbs" / "thumb.jpg")
    return AUDIT


def _symlink_loop(root: Path) -> list[str]:
    folder = image_folder(root)
    os.symlink("..", folder / "yes" / "parent_loop")
    os.symlink(".", folder / "no" / "self_loop")
    return AUDIT


def _unicode(root: Path) -> list[str]:
    folder = image_folder(root)
    for cls, new in (("yes", "脑 MRI – ñandú.jpg"), ("no", "Ärztin école 1.jpeg")):
        old = sorted((folder / cls).iterdir())[0]
        old.rename(folder / cls / new)
    return AUDIT


def _train_mixed(limit: float | None) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        folder = image_folder(root)
        for name in ("zero.jpg", "truncated.jpg", "notes.png"):
            _writers()[name](folder / "yes" / name, folder)
        first_image(folder).rename(folder / "yes" / "脑 ñandú.jpg")
        tiny_config(root, **({} if limit is None else {"max_bad_fraction": limit}))
        return ["train", "tiny.yaml", "--out", "run", "--quiet"]
    return make


def _split_ids(root: Path) -> int:
    """Distinct images in the run's splits.csv, or -1 when an unreadable one or the unicode name is wrong."""
    path = root / "run" / "splits.csv"
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    if "zero.jpg" in text or "notes.png" in text or "truncated.jpg" in text or "脑 ñandú.jpg" not in text:
        return -1
    return csv_rows(path)


_SAME = "the other images are audited"
CASES = [
    Case("img-zero-byte", "held", "a zero-byte `.jpg` among real images", "listed unreadable; " + _SAME,
         _with("zero.jpg"), 0, "13 / 1", _decoded({"yes/zero.jpg"}), GOOD),
    Case("img-truncated", "held", "a JPEG cut after 3 kB", "listed unreadable (never padded); " + _SAME,
         _with("truncated.jpg"), 0, "13 / 1", _decoded({"yes/truncated.jpg"}), GOOD),
    Case("img-corrupt", "held", "PNG signature followed by garbage", "listed unreadable; " + _SAME,
         _with("corrupt.png"), 0, "13 / 1", _decoded({"yes/corrupt.png"}), GOOD),
    Case("img-text-as-png", "held", "a text file named `.png`", "listed unreadable; " + _SAME,
         _with("notes.png"), 0, "13 / 1", _decoded({"yes/notes.png"}), GOOD),
    Case("img-decompression-bomb", "held", "a PNG declaring 100000 x 100000 pixels",
         "refused by PIL's bomb check before decoding, listed unreadable; " + _SAME,
         _with("bomb.png"), 0, "13 / 1", _decoded({"yes/bomb.png"}), GOOD),
    Case("img-cmyk-jpeg", "held", "a CMYK JPEG", "decoded (converted like any colour image)",
         _with("cmyk.jpg"), 0, "13 / 0", _decoded(set()), GOOD + 1),
    Case("img-16bit-png", "held", "a 16-bit grayscale PNG", "decoded (scaled to 8 bits by its own min and max)",
         _with("deep16.png"), 0, "13 / 0", _decoded(set()), GOOD + 1),
    Case("img-1x1", "held", "a 1 x 1 pixel PNG", "decoded", _with("dot.png"), 0, "13 / 0", _decoded(set()),
         GOOD + 1),
    Case("img-gif-named-jpg", "held", "a GIF saved as `.jpg`", "decoded by content, not by extension",
         _with("really_a_gif.jpg"), 0, "13 / 0", _decoded(set()), GOOD + 1),
    Case("img-hidden-files", "held", "`.DS_Store`, a macOS `._x.jpg` fork and a `.thumbs/` folder",
         "hidden entries skipped", _hidden, 0, "12 / 0", _decoded(set()), GOOD),
    Case("img-symlink-loop", "held", "symbolic links to `..` and `.` inside class folders",
         "links to folders not followed: no loop, each image once", _symlink_loop, 0, "12 / 0", _decoded(set()),
         GOOD),
    Case("img-unicode-names", "held", "non-ASCII file names (`脑 MRI – ñandú.jpg`)", "read and reported by name",
         _unicode, 0, "12 / 0", _decoded(set()), GOOD),
    Case("img-train-bad-over-limit", "held", "train on 12 images + 3 unreadable (default `max_bad_fraction` 0.05)",
         "exit 2 naming the files and `data.max_bad_fraction`", _train_mixed(None), 2,
         "3 of 15 images (20.0%) cannot be decoded, more than data.max_bad_fraction"),
    Case("img-train-bad-skipped", "held", "train on 12 images (one unicode name) + 3 unreadable, "
         "`max_bad_fraction: 0.3`", "unreadable files skipped with a warning; the run uses the 12",
         _train_mixed(0.3), 0, "", _split_ids, GOOD, slow=True),
]
