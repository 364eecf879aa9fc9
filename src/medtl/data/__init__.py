"""Data layer: sample tables from folders / CSV / MedMNIST, image decoding, grouped splits."""

from medtl.data.images import IMAGE_EXTENSIONS, array_hash, open_image, pixel_hash, to_array
from medtl.data.medmnist import MEDMNIST_FILES, ensure_medmnist, md5_of
from medtl.data.sources import LoadedImages, Sample, SampleTable, load_images, load_table
from medtl.data.splits import (
    MANIFEST_COLUMNS,
    ROLES,
    Fold,
    assign_groups,
    check_folds,
    make_folds,
    read_manifest,
    write_manifest,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "MEDMNIST_FILES",
    "ROLES",
    "Fold",
    "LoadedImages",
    "Sample",
    "SampleTable",
    "array_hash",
    "assign_groups",
    "check_folds",
    "ensure_medmnist",
    "load_images",
    "load_table",
    "make_folds",
    "md5_of",
    "open_image",
    "pixel_hash",
    "read_manifest",
    "to_array",
    "write_manifest",
]
