"""Tests of the class-balanced sampler (``train.sampler: balanced``): balance, seeded reproducibility, the
labels it reads from medtl's datasets, its share per process under DDP, and the double-correction warning."""

from __future__ import annotations

import logging
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch import nn
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from medtl.config import TrainConfig
from medtl.data.transforms import ImageArrayDataset
from medtl.errors import TrainingError
from medtl.train import engine
from medtl.transfer.prefix_cache import PrefixViewsDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nine_to_one(n: int = 1000) -> TensorDataset:
    """``n`` items, 90% class 0 and 10% class 1 (item i's feature is i, so the draw can be read back)."""
    y = (torch.arange(n) % 10 == 0).long()
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], y)


def drawn(seed: int, dataset: TensorDataset | None = None, epochs: int = 1) -> list[int]:
    dataset = dataset or nine_to_one()
    cfg = TrainConfig(sampler="balanced", batch_size=50, device="cpu", num_workers=0)
    dl = engine.loader(dataset, cfg, shuffle=True, seed=seed, balanced=True)
    return [int(i) for _ in range(epochs) for x, _ in dl for i in x[:, 0]]


def test_balanced_sampler_draws_a_nine_to_one_set_about_equally() -> None:
    data = nine_to_one()
    for seed in (0, 1, 2):
        items = drawn(seed, data)
        assert len(items) == len(data)  # an epoch is as long as the training set
        share = float(data.tensors[1][items].float().mean())
        assert 0.45 < share < 0.55, share  # shuffling would give 0.10
        assert len(set(items)) < len(items)  # with replacement: minority images repeat
        assert len({i for i in items if i % 10 == 0}) > 80  # most minority images appear


def test_balanced_sampler_is_reproducible_for_a_seed_and_changes_with_it_and_by_epoch() -> None:
    assert drawn(7) == drawn(7)
    assert drawn(7) != drawn(8)
    two = drawn(7, epochs=2)
    assert two[:1000] == drawn(7) and two[1000:] != two[:1000]


def test_balanced_sampler_with_three_classes_weights_by_inverse_count() -> None:
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    sampler = engine.balanced_sampler(labels, torch.Generator().manual_seed(0))
    probs = sampler.weights / sampler.weights.sum()
    for c in range(3):  # every class has total probability 1/3
        assert float(probs[labels == c].sum()) == pytest.approx(1 / 3)
    counts = Counter(labels[list(sampler)].tolist())
    assert all(abs(counts[c] / 1000 - 1 / 3) < 0.06 for c in range(3)), counts


def test_dataset_targets_reads_medtl_datasets_without_images() -> None:
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    images = np.zeros((7, 4, 4, 3), dtype=np.uint8)
    plain = ImageArrayDataset(images, labels, np.array([6, 1, 2]))
    assert engine.dataset_targets(plain).tolist() == [0, 1, 1]
    views = PrefixViewsDataset([np.zeros((7, 2, 2, 2), dtype=np.float16)], np.array([4, 0]), labels)
    assert engine.dataset_targets(views).tolist() == [1, 0]
    both = ConcatDataset([plain, Subset(views, [1]), TensorDataset(torch.zeros(2, 1), torch.tensor([1, 1]))])
    assert engine.dataset_targets(both).tolist() == [0, 1, 1, 0, 1, 1]
    assert [int(both[i][1]) for i in range(len(both))] == engine.dataset_targets(both).tolist()
    with pytest.raises(TrainingError, match="cannot read the labels of a list"):
        engine.dataset_targets([(0, 1)])
    with pytest.raises(TrainingError, match="training set is empty"):
        engine.balanced_sampler(np.array([], dtype=int), torch.Generator())


def test_under_ddp_each_process_reads_its_share_of_the_same_balanced_draw() -> None:
    """What Lightning does with train.strategy: ddp: each process's sampler (same seed: same draw) is wrapped in
    a ``DistributedSamplerWrapper``; the shares of two processes are the one-process draw, split."""
    labels = nine_to_one(100).tensors[1].numpy()
    whole = list(engine.balanced_sampler(labels, torch.Generator().manual_seed(5)))
    shares = [list(DistributedSamplerWrapper(engine.balanced_sampler(labels, torch.Generator().manual_seed(5)),
                                             num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 50
    assert Counter(shares[0] + shares[1]) == Counter(whole)


def test_fit_with_the_balanced_sampler_learns_and_warns_about_double_correction(
        caplog: pytest.LogCaptureFixture) -> None:
    g = torch.Generator().manual_seed(0)
    y = (torch.arange(200) % 10 == 0).long()
    x = torch.stack([y * 3.0 - 1.5, torch.zeros(200)], 1) + 0.7 * torch.randn(200, 2, generator=g)
    cfg = TrainConfig(optimizer="adam", lr=0.05, batch_size=32, epochs=4, device="cpu", num_workers=0, progress=False,
                      scheduler="constant", warmup_epochs=0.0, sampler="balanced", class_weights="balanced")
    L.seed_everything(0, verbose=False)
    module = engine.ClassifierModule(nn.Linear(2, 2), cfg, 1)
    with caplog.at_level(logging.WARNING, logger="medtl.train.engine"):
        result = engine.fit(module, TensorDataset(x, y), TensorDataset(x, y), cfg, 0, progress=False)
    assert "corrects the class imbalance twice" in caplog.text
    assert result.history[-1]["val_auc"] > 0.95
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medtl.train.engine"):
        engine.fit(engine.ClassifierModule(nn.Linear(2, 2), cfg.model_copy(update={"class_weights": "none"}), 1),
                   TensorDataset(x, y), None, cfg.model_copy(update={"class_weights": "none"}), 0, progress=False)
    assert "twice" not in caplog.text
