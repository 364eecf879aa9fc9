"""The fold trainer's single dispatch: which fit path each configuration takes."""

from __future__ import annotations

import pytest

from medtl.config import parse_config
from medtl.train.fold import build_model, choose_fit


def config(**over) -> object:
    tree = {"name": "t", "data": {"source": "folder", "root": ".", "image_size": 32},
            "model": {"backbone": "tf_efficientnet_lite0", "weights": "none"}, "transfer": {}, "train": {}}
    for key, value in over.items():
        tree[key] = {**tree.get(key, {}), **value}
    return parse_config(tree)


@pytest.mark.parametrize(("over", "path"), [
    ({"transfer": {"strategy": "feature_extraction", "classifier": "logistic"}}, "classical"),
    ({"transfer": {"strategy": "feature_extraction"}}, "bank"),
    ({"transfer": {"strategy": "feature_extraction"}, "data": {"augment": {"hflip": True}}}, "full"),
    ({"transfer": {"strategy": "fine_tune", "unfreeze_from": "blocks.5"}, "train": {"prefix_cache": True}}, "cached"),
    ({"transfer": {"strategy": "fine_tune", "unfreeze_from": "blocks.5"}}, "full"),
    ({"transfer": {"strategy": "scratch"}, "train": {"prefix_cache": True}}, "full"),
])
def test_one_place_chooses_the_fit_path(over: dict, path: str) -> None:
    cfg = config(**over)
    model, _ = build_model(cfg, 2)
    from medtl.transfer.freeze import apply_strategy

    apply_strategy(model, cfg.transfer)
    assert choose_fit(cfg, model).name == path
