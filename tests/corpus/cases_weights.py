"""Corpus cases: ``model.weights: file:...`` checkpoints that are malicious or not checkpoints at all.

A malicious checkpoint is a pickle whose unpickling creates a marker file (``open(marker, "w")``):
medtl must refuse it without unpickling it (safetensors, or ``torch.load(weights_only=True)``), so the
marker never appears. ``good`` is 1 when the marker is absent.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from corpus.case import Case
from corpus.inputs import image_folder, tiny_config

MARKER = "PWNED"


class _Payload:
    """Unpickling this object runs ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _write_torch(path: Path, marker: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1), "extra": _Payload(marker)}, path)


def _write_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))


def _write_fake_safetensors(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


def _weights(name: str, writer: Callable[[Path, Path], None]) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        image_folder(root)
        writer(root / name, root / MARKER)
        tiny_config(root)
        return ["train", "tiny.yaml", "--out", "run", "--quiet", "--set", f"model.weights=file:{root / name}",
                "--set", "transfer.strategy=fine_tune"]
    return make


def _marker_absent(root: Path) -> int:
    return int(not (root / MARKER).exists())


CASES = [
    Case("weights-pickle-pt", "held", "`model.weights: file:evil.pt`, a torch.save'd pickle that runs code on load",
         "refused (weights-only loading), exit 2; the code never runs", _weights("evil.pt", _write_torch), 2,
         "not a weights-only checkpoint", _marker_absent, 1),
    Case("weights-pickle-pth", "held", "`file:evil.pth`, a plain pickle that runs code on load",
         "refused, exit 2; the code never runs", _weights("evil.pth", _write_pickle), 2,
         "not a weights-only checkpoint", _marker_absent, 1),
    Case("weights-fake-safetensors", "new", "`file:evil.safetensors` holding a pickle",
         "refused as not safetensors, exit 2; the code never runs", _weights("evil.safetensors",
                                                                           _write_fake_safetensors), 2,
         "not a readable safetensors file", _marker_absent, 1),
]
