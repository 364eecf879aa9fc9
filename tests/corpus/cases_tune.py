"""Corpus cases of ``medtl tune``: bad search blocks and options give clear errors before anything trains."""

from __future__ import annotations

from pathlib import Path

from corpus.case import Case

_BASE = ("name: corpus\ndata: {source: folder, root: images, image_size: 32}\n"
         "transfer: {strategy: feature_extraction}\ntrain: {epochs: 1}\nevaluate: {report: false}\n")


def _tune(search: str, *options: str) -> callable:
    def make(root: Path) -> list[str]:
        (root / "tune.yaml").write_text(_BASE + search)
        return ["tune", str(root / "tune.yaml"), "--out", str(root / "run"), *options]
    return make


CASES: list[Case] = [
    Case("tune-search-key-typo", "#19", "`search:` over a misspelt key (`train.lrr`)",
         "exit 2 naming `train.lrr`, did-you-mean `lr`",
         _tune("search: {train.lrr: {loguniform: [0.0001, 0.01]}}\n"), 2, "Did you mean 'lr'"),
    Case("tune-search-distribution-typo", "#19", "a misspelt distribution (`logunifrom`)",
         "exit 2, did-you-mean `loguniform`, lists the distributions",
         _tune("search: {train.lr: {logunifrom: [0.0001, 0.01]}}\n"), 2, "Did you mean 'loguniform'"),
    Case("tune-search-bounds-reversed", "#19", "`uniform: [0.5, 0.1]`", "exit 2: low must be below high",
         _tune("search: {model.head.dropout: {uniform: [0.5, 0.1]}}\n"), 2, "low must be below high"),
    Case("tune-search-loguniform-zero", "#19", "`loguniform: [0, 0.01]`", "exit 2: bounds must be positive",
         _tune("search: {train.lr: {loguniform: [0, 0.01]}}\n"), 2, "loguniform bounds must be positive"),
    Case("tune-search-out-of-range", "#19", "a bound the schema refuses (`model.head.dropout` up to 1.5)",
         "exit 2 naming the key and the value", _tune("search: {model.head.dropout: {uniform: [0.0, 1.5]}}\n"), 2,
         "search key 'model.head.dropout' (value 1.5)"),
    Case("tune-search-data-key", "#19", "`search:` over `data.image_size`",
         "exit 2: data, folds and architecture are fixed per tune (augmentation may be searched)",
         _tune("search: {data.image_size: {choice: [32, 64]}}\n"), 2, "cannot be searched"),
    Case("tune-search-missing", "#19", "tune YAML without a `search:` block", "exit 2 with an example block",
         _tune(""), 2, "no 'search:' block"),
    Case("tune-grid-continuous", "#19", "`--sampler grid` over a `loguniform` key",
         "exit 2: grid needs choice/int values",
         _tune("search: {train.lr: {loguniform: [0.0001, 0.01]}}\n", "--sampler", "grid"), 2,
         "grid needs finite values"),
    Case("tune-sampler-typo", "#19", "`--sampler tpee`", "exit 2, did-you-mean `tpe`",
         _tune("search: {train.lr: {loguniform: [0.0001, 0.01]}}\n", "--sampler", "tpee"), 2, "Did you mean 'tpe'"),
]
