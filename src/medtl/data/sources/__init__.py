"""Where samples come from: one registered :class:`DataSource` per ``data.source`` value.

:func:`load_table` lists the samples (id, file, label, patient, predefined split) without decoding
any image; :func:`load_images` then decodes, hashes and resizes them, skipping (and reporting) files
that cannot be decoded. The sources: ``folder`` (class folders), ``csv`` (a labels CSV), ``medmnist``
(an official ``.npz``), ``dicom`` and ``nifti``; see :data:`~medtl.data.sources.base.SOURCES`.

Sample ids are stable and readable: the path relative to the class-folder root (``yes/Y1.jpg``),
the path as written in the CSV, or ``train[115]`` for MedMNIST.
"""

from medtl.data.samples import Listing, LoadedImages, Sample, SampleTable
from medtl.data.sources.base import SOURCES, DataSource, get_source, register_source
from medtl.data.sources.loading import load_images, load_table, load_unlabelled_table, resolve_color

__all__ = [
    "SOURCES",
    "DataSource",
    "Listing",
    "LoadedImages",
    "Sample",
    "SampleTable",
    "get_source",
    "load_images",
    "load_table",
    "load_unlabelled_table",
    "register_source",
    "resolve_color",
]
