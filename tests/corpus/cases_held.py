"""Corpus cases that already held when the corpus was started (issue 22's 33)."""

from __future__ import annotations

from pathlib import Path

from corpus.case import Case


def _config_typo(root: Path) -> list[str]:
    (root / "typo.yaml").write_text("name: t\ndata: {source: folder, root: images}\ntrain: {optimiser: adam}\n")
    return ["train", "typo.yaml", "--out", "run", "--quiet"]


CASES = [
    Case("yaml-typo-key", "held", "YAML with a misspelt key (`train.optimiser`)", "exit 2, did-you-mean",
         _config_typo, 2, "optimizer"),
]
