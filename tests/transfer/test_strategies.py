"""Every transfer strategy on a tiny real subset of the brain MRI set: at each epoch exactly the
right parameters are trainable, and training changes only those (and no frozen BatchNorm statistic)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from medtl.config import DataConfig, TrainConfig, TransferConfig, UnfreezeStep, parse_config
from medtl.data.sources import load_images, load_table
from medtl.data.transforms import ImageArrayDataset, Normalizer
from medtl.errors import ConfigError
from medtl.models.cuts import cut_points
from medtl.models.network import TransferNet, create_model
from medtl.train.engine import ClassifierModule, fit, make_optimizer
from medtl.transfer.freeze import apply_strategy, check_schedule, count
from medtl.transfer.gradual import GradualUnfreeze, step_lr_mults

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(brain_mri: Path) -> tuple[np.ndarray, np.ndarray]:
    """24 real brain MRI images at 64 px (12 per class)."""
    cfg = DataConfig(source="folder", root=brain_mri, image_size=64, max_per_class=12)
    loaded = load_images(load_table(cfg), cfg, progress=False)
    labels = np.array([s.label for s in loaded.table.samples])
    return loaded.images, labels


def lite0() -> TransferNet:
    return create_model("tf_efficientnet_lite0", "packaged:efficientnet_lite0", 2)[0]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def train(model: TransferNet, tiny: tuple[np.ndarray, np.ndarray], epochs: int, transfer: TransferConfig,
          callbacks: list[L.Callback] | None = None) -> None:
    images, labels = tiny
    cfg = TrainConfig(optimizer="adam", lr=1e-3, epochs=epochs, batch_size=8, warmup_epochs=0, progress=False)
    gradual = transfer.strategy == "gradual"
    module = ClassifierModule(model, cfg, 1, prepare=Normalizer((0.5,) * 3, (0.5,) * 3), include_frozen=gradual,
                              lr_mults=step_lr_mults(model, transfer.schedule, cfg.lr) if gradual else None)
    L.seed_everything(0, verbose=False)
    fit(module, ImageArrayDataset(images, labels, np.arange(len(labels))), None, cfg, 0, False, callbacks)


def under(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {n for n in names if n.startswith(prefixes)}


def test_feature_extraction_changes_only_the_head(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    model = lite0()
    transfer = TransferConfig(strategy="feature_extraction")
    apply_strategy(model, transfer)
    before = snapshot(model)
    train(model, tiny, 1, transfer)
    assert changed(before, model) == {"head.1.weight", "head.1.bias"} or changed(before, model) == {
        "head.0.weight", "head.0.bias"}


def test_fine_tune_from_cut_point_changes_only_layers_above(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    model = lite0()
    transfer = TransferConfig(strategy="fine_tune", unfreeze_from="blocks.6")
    apply_strategy(model, transfer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("backbone.blocks.6", "backbone.conv_head", "backbone.bn2", "head."))
                             for n in trainable)
    before = snapshot(model)
    train(model, tiny, 1, transfer)
    moved = changed(before, model)
    assert moved <= trainable  # bn frozen (default): no running statistic moves either
    assert under(moved, ("backbone.blocks.6",)) and under(moved, ("head.",))


def test_gradual_unfreezes_on_schedule_and_only_moves_unfrozen(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    model = lite0()
    schedule = [UnfreezeStep(epoch=0, unfreeze_from="head"), UnfreezeStep(epoch=1, unfreeze_from="blocks.6"),
                UnfreezeStep(epoch=2, unfreeze_from="blocks.5", lr=1e-4)]
    transfer = TransferConfig(strategy="gradual", schedule=schedule)
    apply_strategy(model, transfer)
    assert count(model, True) == sum(p.numel() for p in model.head.parameters())
    callback = GradualUnfreeze(schedule)
    before = snapshot(model)
    train(model, tiny, 3, transfer, [callback])
    head = sum(p.numel() for p in model.head.parameters())
    above6 = sum(p.numel() for n, p in model.backbone.named_parameters()
                 if n.startswith(("blocks.6", "conv_head", "bn2")))
    block5 = sum(p.numel() for p in model.backbone.blocks[5].parameters())
    assert callback.trainable_per_epoch == [head, head + above6, head + above6 + block5]
    moved = changed(before, model)
    assert under(moved, ("backbone.blocks.5.",)) and under(moved, ("backbone.blocks.6.",))
    assert not under(moved, ("backbone.conv_stem", "backbone.bn1", *(f"backbone.blocks.{i}." for i in range(5))))


def test_gradual_step_lr_and_optimizer_groups_up_front() -> None:
    model = lite0()
    schedule = [UnfreezeStep(epoch=0, unfreeze_from="head"), UnfreezeStep(epoch=2, unfreeze_from="blocks.5", lr=1e-4)]
    apply_strategy(model, TransferConfig(strategy="gradual", schedule=schedule))
    mults = step_lr_mults(model, schedule, 1e-3)
    assert set(mults) == {"blocks.5", "blocks.6", "conv_head", "bn2"} and all(v == pytest.approx(0.1)
                                                                              for v in mults.values())
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3), include_frozen=True, extra_mults=mults)
    in_optimizer = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert in_optimizer == count(model)  # frozen ones included, so the schedule needs no new groups
    lrs = sorted({round(g["lr"], 12) for g in optimizer.param_groups})
    assert lrs == [1e-4, 1e-3]


def test_gradual_schedule_must_not_refreeze() -> None:
    model = lite0()
    bad = [UnfreezeStep(epoch=0, unfreeze_from="blocks.3"), UnfreezeStep(epoch=2, unfreeze_from="blocks.5")]
    with pytest.raises(ConfigError, match="freeze layers again"):
        check_schedule(model, bad)
    with pytest.raises(ConfigError, match="Did you mean 'blocks.5'"):
        check_schedule(model, [UnfreezeStep(epoch=0, unfreeze_from="block.5")])


def test_truncated_keeps_names_and_trains_all_kept(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    model, _ = create_model("tf_efficientnet_lite0", "packaged:efficientnet_lite0", 2, truncate_at="blocks.4")
    full = lite0()
    assert cut_points(model.backbone) == cut_points(full.backbone)[:cut_points(full.backbone).index("blocks.4") + 1]
    assert model.backbone.num_features == 112 and model.head[-1].in_features == 112
    # the kept layers carry the pretrained weights under their original names
    assert torch.equal(model.backbone.blocks[4][0].conv_pw.weight, full.backbone.blocks[4][0].conv_pw.weight)
    assert count(model) < count(full) / 3
    transfer = TransferConfig(strategy="truncated", truncate_at="blocks.4")
    apply_strategy(model, transfer)
    assert count(model, True) == count(model)
    before = snapshot(model)
    train(model, tiny, 1, transfer)
    assert under(changed(before, model), ("backbone.conv_stem", "backbone.blocks.0."))


def test_scratch_small_cnn_trains_everything_and_its_batchnorm(tiny: tuple[np.ndarray, np.ndarray]) -> None:
    model, spec = create_model("small_cnn", "none", 2)
    assert spec.source == "none"
    transfer = TransferConfig(strategy="scratch")
    apply_strategy(model, transfer)
    assert count(model, True) == count(model) and not model.freeze_bn_stats
    before = snapshot(model)
    train(model, tiny, 1, transfer)
    moved = changed(before, model)
    assert "backbone.blocks.0.1.running_mean" in moved  # BatchNorm learns its statistics from scratch
    assert {n for n, _ in model.named_parameters()} <= moved


def test_strategy_config_errors() -> None:
    base = {"data": {"source": "folder", "root": "/x"}}
    with pytest.raises(ConfigError, match="needs transfer.schedule"):
        parse_config({**base, "transfer": {"strategy": "gradual"}})
    with pytest.raises(ConfigError, match="needs transfer.truncate_at"):
        parse_config({**base, "transfer": {"strategy": "truncated"}})
    with pytest.raises(ConfigError, match="model.weights: none"):
        parse_config({**base, "transfer": {"strategy": "scratch"}})
    with pytest.raises(ConfigError, match="bridge stage hands one model"):
        parse_config({**base, "stages": [{"name": "b", "data": {"source": "folder", "root": "/y"}}]})
    with pytest.raises(ConfigError, match="Did you mean 'gradual'"):
        parse_config({**base, "transfer": {"strategy": "gradul"}})
