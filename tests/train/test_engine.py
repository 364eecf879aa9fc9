"""Tests of medtl.train.engine: LR schedule, class weights, a tiny real fit, early stopping with
best-weights restore, and the NaN guard."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import TensorDataset

from medtl.config import EarlyStoppingConfig, TrainConfig
from medtl.errors import TrainingError
from medtl.evaluate.metrics import compute_metrics
from medtl.train.engine import (
    BestWeights,
    ClassifierModule,
    class_weights_for,
    fit,
    lightning_precision,
    make_optimizer,
    validation_scores,
    warmup_cosine,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blobs(n: int, seed: int, flip: bool = False) -> TensorDataset:
    """Two well separated 2-D Gaussian blobs (labels swapped when ``flip``)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    x = centers[y] + 0.5 * torch.randn(n, 2, generator=gen)
    return TensorDataset(x, 1 - y if flip else y)


def config(**kwargs: object) -> TrainConfig:
    base = {"optimizer": "adam", "lr": 0.05, "batch_size": 32, "epochs": 5, "device": "cpu",
            "num_workers": 0, "progress": False, "scheduler": "constant", "warmup_epochs": 0.0}
    return TrainConfig(**{**base, **kwargs})


class Recorder(ClassifierModule):
    """Keeps a copy of the weights at the end of every training epoch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.states.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


# ---------------------------------------------------------------- schedule, weights, optimizer


def test_warmup_cosine_shape() -> None:
    f = warmup_cosine(10, 110)
    values = [f(s) for s in range(111)]
    assert values[0] == pytest.approx(0.01)
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.505)  # half-way through the cosine
    assert values[110] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(values[:10], values[1:11], strict=True))  # warm-up rises
    assert all(a > b for a, b in zip(values[10:110], values[11:111], strict=True))  # cosine falls
    assert f(500) == pytest.approx(0.01)  # stays at the floor past the end


def test_warmup_then_constant() -> None:
    f = warmup_cosine(4, 100, cosine=False)
    assert f(0) == pytest.approx(0.01)
    assert f(2) == pytest.approx(0.01 + 0.99 * 0.5)
    assert [f(s) for s in (4, 50, 100, 200)] == [1.0, 1.0, 1.0, 1.0]


def test_no_warmup_starts_at_full_rate() -> None:
    assert warmup_cosine(0, 100)(0) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_class_weights_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=200, p=[0.6, 0.3, 0.1])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    got = class_weights_for(labels, 3, "balanced")
    assert got is not None and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert class_weights_for(labels, 3, "none") is None


def test_optimizer_skips_frozen_and_decays_only_weights() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = make_optimizer(model, config(optimizer="sgd", weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model[2].weight)}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3  # BN weight, BN bias, last bias
    model.requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        make_optimizer(model, config())


# ---------------------------------------------------------------- fit


def test_tiny_fit_learns_separable_data() -> None:
    torch.manual_seed(0)
    module = ClassifierModule(nn.Linear(2, 2), config(epochs=5), positive_index=1)
    val = blobs(100, seed=2)
    result = fit(module, blobs(200, seed=1), val, config(epochs=5), seed=0, progress=False)
    x, y = val.tensors
    with torch.no_grad():
        accuracy = float((result.model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9
    assert len(result.history) == 5
    assert [row["epoch"] for row in result.history] == list(range(5))
    for row in result.history:
        assert {"train_loss", "train_accuracy", "lr", "val_loss", "val_accuracy", "val_auc"} <= set(row)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_auc"] > 0.95
    assert not result.stopped_early and result.best_epoch >= 0


def test_early_stopping_restores_the_best_epoch() -> None:
    """Train labels are clean, 20% of validation labels are swapped: as the model grows confident,
    val_loss first falls and then rises, so training stops and must go back to the best epoch."""
    x, y = blobs(100, seed=2).tensors
    swapped = torch.rand(100, generator=torch.Generator().manual_seed(3)) < 0.2
    y = torch.where(swapped, 1 - y, y)
    linear = nn.Linear(2, 2)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    cfg = config(epochs=30, lr=0.005, early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=1, min_epochs=0))
    module = Recorder(linear, cfg, positive_index=1)
    result = fit(module, blobs(200, seed=1), TensorDataset(x, y), cfg, seed=0, progress=False)

    losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early
    assert len(result.history) < cfg.epochs
    assert result.best_epoch == int(np.argmin(losses)) > 0
    assert len(result.history) == result.best_epoch + 1 + 1  # stopped after `patience` bad epochs
    assert result.best_score == pytest.approx(losses[result.best_epoch])

    final = result.model.state_dict()
    best, last = module.states[result.best_epoch], module.states[-1]
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)
    with torch.no_grad():
        recomputed = float(nn.functional.cross_entropy(result.model(x), y))
    assert recomputed == pytest.approx(losses[result.best_epoch], rel=1e-5)


class NaNAfter(nn.Module):
    """A linear model whose output turns NaN after ``calls`` forward passes."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.calls_left = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.calls_left -= 1
        return out * float("nan") if self.calls_left < 0 else out


def test_nan_from_the_start_raises_without_last_good() -> None:
    module = ClassifierModule(NaNAfter(0), config(), positive_index=1)
    with pytest.raises(TrainingError) as info:
        fit(module, blobs(64, seed=1), None, config(), seed=0, progress=False)
    assert "lr" in str(info.value) and "epoch 0" in str(info.value)
    assert info.value.last_good is None


def test_nan_in_the_second_epoch_keeps_the_first_epochs_weights() -> None:
    torch.manual_seed(0)
    model = NaNAfter(2)  # 64 samples / batch 32 = 2 batches: epoch 0 is clean, epoch 1 is NaN
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = ClassifierModule(model, config(), positive_index=1)
    with pytest.raises(TrainingError) as info:
        fit(module, blobs(64, seed=1), None, config(), seed=0, progress=False)
    assert "lr" in str(info.value) and "epoch 1" in str(info.value)
    last_good = info.value.last_good
    assert isinstance(last_good, dict) and set(last_good) == set(before)
    for key, value in last_good.items():
        assert torch.isfinite(value).all()
        assert torch.equal(value, model.state_dict()[key].cpu())  # weights after epoch 0
        assert not torch.equal(value, before[key])  # epoch 0 did train


def test_early_stopping_waits_for_min_epochs_by_default() -> None:
    from medtl.train.engine import min_epochs

    cfg = config(epochs=15, early_stopping=EarlyStoppingConfig(monitor="val_auc", patience=1))
    assert min_epochs(cfg) == 8
    cfg = config(epochs=15, early_stopping=EarlyStoppingConfig(monitor="val_auc", patience=1, min_epochs=3))
    assert min_epochs(cfg) == 3
    assert min_epochs(config(epochs=7)) == 7


def test_fit_trains_in_train_mode_even_after_eval() -> None:
    """A backbone left in eval mode (e.g. after a linear probe) must train with live BatchNorm."""
    seen: list[bool] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                seen.append(self.net[1].training)
            return self.net(x)

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = Spy().eval()
    module = ClassifierModule(model, config(epochs=1), positive_index=1)
    fit(module, TensorDataset(x, y), None, config(epochs=1), seed=0, progress=False)
    assert seen and all(seen)


# ---------------------------------------------------------------- precision and compile


@pytest.mark.parametrize(("setting", "expected"), [("auto", "32-true"), ("32", "32-true"), ("bf16", "bf16-mixed")])
def test_precision_on_cpu(setting: str, expected: str) -> None:
    assert lightning_precision(config(precision=setting)) == expected


def test_float16_amp_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(TrainingError, match="needs a GPU"):
        lightning_precision(config(precision="16-mixed"))


def test_bf16_training_learns_and_keeps_float32_weights() -> None:
    torch.manual_seed(0)
    cfg = config(epochs=5, precision="bf16")
    module = ClassifierModule(nn.Linear(2, 2), cfg, positive_index=1)
    result = fit(module, blobs(200, seed=1), blobs(100, seed=2), cfg, seed=0, progress=False)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.history[-1]["val_auc"] > 0.95


def test_compile_keeps_parameter_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.compile`` compiles in place: the saved state dict has the module's own names."""
    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 2))
    cfg = config(epochs=1, compile=True)
    result = fit(ClassifierModule(net, cfg, positive_index=1), blobs(64, seed=1), None, cfg, seed=0,
                 progress=False)
    assert compiled == [net]
    assert set(result.model.state_dict()) == {"0.weight", "0.bias"}


# ---------------------------------------------------------------- weight EMA


class StepRecorder(ClassifierModule):
    """Keeps a copy of the live weights after every optimizer step."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, *args: object) -> None:
        self.steps.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})


def test_ema_weights_are_the_warmed_up_moving_average_of_the_steps() -> None:
    from timm.utils.model_ema import ModelEmaV3

    torch.manual_seed(0)
    cfg = config(epochs=3, batch_size=20, ema_decay=0.9)
    module = StepRecorder(nn.Linear(2, 2), cfg, positive_index=1)
    result = fit(module, blobs(100, seed=1), None, cfg, seed=0, progress=False)
    assert len(module.steps) == 15
    decay = ModelEmaV3(nn.Linear(2, 2), decay=0.9, use_warmup=True).get_decay  # timm's own schedule
    expected = {k: v.clone() for k, v in module.steps[0].items()}  # step 1 has decay 0: a copy
    for step, state in enumerate(module.steps[1:], start=2):
        d = decay(step)
        assert 0.0 < d <= 0.9
        expected = {k: d * expected[k] + (1 - d) * state[k] for k in state}
    final = result.model.state_dict()
    for key in expected:
        torch.testing.assert_close(final[key], expected[key])
        assert not torch.allclose(final[key], module.steps[-1][key])  # not the live weights


def test_ema_is_what_validation_scores_and_early_stopping_keeps() -> None:
    torch.manual_seed(0)
    cfg = config(epochs=4, lr=0.01, ema_decay=0.8, early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=10))
    val = blobs(60, seed=2)
    module = Recorder(nn.Linear(2, 2), cfg, positive_index=1)
    result = fit(module, blobs(100, seed=1), val, cfg, seed=0, progress=False)
    x, y = val.tensors
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(result.model(x), y))
        live = module.states[result.best_epoch]
        live_loss = float(nn.functional.cross_entropy(nn.functional.linear(x, live["weight"], live["bias"]), y))
    assert loss == pytest.approx(result.history[result.best_epoch]["val_loss"], rel=1e-5)
    assert loss != pytest.approx(live_loss, rel=1e-3)


# ---------------------------------------------------------------- ties in best-weights selection


def _replay(keeper: BestWeights, scores: list[float], losses: list[float], se: float = 0.03) -> list[int]:
    """Feed per-epoch validation scores to ``keeper``; returns the epochs it trained (stops honoured)."""
    from types import SimpleNamespace

    module = SimpleNamespace(model=nn.Linear(1, 1))
    trained = []
    for epoch, (score, loss) in enumerate(zip(scores, losses, strict=True)):
        with torch.no_grad():
            module.model.weight.fill_(float(epoch))  # the kept state tells which epoch it came from
        trainer = SimpleNamespace(current_epoch=epoch, should_stop=False, callback_metrics={
            "val_auc": torch.tensor(score), "val_loss": torch.tensor(loss), "val_auc_se": torch.tensor(se)})
        keeper.on_train_epoch_end(trainer, module)
        trained.append(epoch)
        if trainer.should_stop:
            break
    assert int(keeper.best_state["weight"].item()) == keeper.best_epoch
    return trained


SCORES = [0.90, 0.95, 0.93, 0.94, 0.925, 0.96, 0.85, 0.84, 0.83, 0.82, 0.81]
LOSSES = [0.50, 0.40, 0.30, 0.45, 0.35, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00]


def test_later_ties_keep_the_last_epoch_validation_cannot_tell_apart() -> None:
    keeper = BestWeights("val_auc", patience=2, tie_tolerance=None, ties="later")
    trained = _replay(keeper, SCORES, LOSSES)
    # 0.93, 0.94 and 0.925 are within one SE (0.03) of 0.95: each replaces the kept weights and resets
    # patience; 0.96 is a new best; 0.85 and 0.84 are clearly worse: stop after two of them.
    assert keeper.best_epoch == 5 and keeper.best_score == pytest.approx(0.96)
    assert trained == list(range(8)) and keeper.stopped
    keeper = BestWeights("val_auc", patience=2, tie_tolerance=None, ties="later")
    _replay(keeper, SCORES[:5] + [0.90, 0.80, 0.80], LOSSES[:8])
    assert keeper.best_epoch == 4  # the last tie of the best 0.95, not the best itself


def test_lower_loss_ties_replace_the_best_only_with_a_lower_loss() -> None:
    keeper = BestWeights("val_auc", patience=2, tie_tolerance=None, ties="lower_loss")
    trained = _replay(keeper, SCORES[:5] + [0.90, 0.80, 0.80], LOSSES[:8])
    # epoch 2 (0.93, loss 0.30 < 0.40) replaces epoch 1; epoch 3 (loss 0.45) and 4 (0.35) do not;
    # 3 and 4 count as epochs without improvement, so training stops at epoch 4.
    assert keeper.best_epoch == 2
    assert trained == [0, 1, 2, 3, 4]


def test_zero_tolerance_means_no_ties() -> None:
    keeper = BestWeights("val_auc", patience=2, tie_tolerance=0.0, ties="later")
    trained = _replay(keeper, SCORES, LOSSES)
    assert keeper.best_epoch == 1 and trained == [0, 1, 2, 3]


# ---------------------------------------------------------------- mixup / cutmix


def test_mixup_mixes_each_image_with_its_reverse_partner_and_keeps_an_odd_last_image() -> None:
    np.random.seed(0)
    module = ClassifierModule(nn.Linear(3, 2), config(mixup=0.4), positive_index=1)
    x = torch.randn(7, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 1])
    before = x.clone()
    mixed, target = module._mix(x, y)
    assert target.shape == (7, 2)
    assert torch.allclose(target.sum(1), torch.ones(7))
    partner = torch.arange(5, -1, -1)  # the even part (6 images) is mixed with its reverse
    lam = float(target[2, 1])  # image 2 (label 1) with image 3 (label 0): its target gives the coefficient
    assert 0.0 < lam < 1.0
    for i in range(6):
        j = int(partner[i])
        assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)
        expected = lam * nn.functional.one_hot(y[i], 2).float() + (1 - lam) * nn.functional.one_hot(y[j], 2).float()
        assert torch.allclose(target[i], expected, atol=1e-6)
    assert torch.equal(mixed[6], x[6])  # the odd one out is not mixed and not dropped
    assert torch.equal(target[6], torch.tensor([0.0, 1.0]))
    assert torch.equal(x, before)  # the caller's batch is not modified in place


def test_mixup_targets_include_label_smoothing() -> None:
    np.random.seed(1)
    module = ClassifierModule(nn.Linear(3, 2), config(mixup=0.4, label_smoothing=0.2), positive_index=1)
    _, target = module._mix(torch.randn(3, 3), torch.tensor([1, 1, 1]))
    assert torch.allclose(target, torch.tensor([[0.1, 0.9]]).expand(3, 2))


def test_cutmix_pastes_a_box_of_the_partner_image_and_weights_the_targets_by_its_area() -> None:
    np.random.seed(2)
    module = ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(2 * 16 * 16, 2)), config(cutmix=1.0),
                              positive_index=1)
    x = torch.stack([torch.zeros(2, 16, 16), torch.ones(2, 16, 16)])
    mixed, target = module._mix(x, torch.tensor([0, 1]))
    pasted = float(mixed[0].mean())  # image 0 is zeros: the pasted ones are the partner's share
    assert 0.0 < pasted < 1.0
    assert torch.allclose(mixed[1], 1 - mixed[0])  # the same box the other way round
    assert target[0, 1] == pytest.approx(pasted, abs=1e-6)


def test_cutmix_on_frozen_features_is_a_clear_error() -> None:
    module = ClassifierModule(nn.Linear(3, 2), config(cutmix=1.0), positive_index=1)
    with pytest.raises(TrainingError, match="train.cutmix needs image-shaped input"):
        module._mix(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))


def test_fit_with_mixup_learns_and_changes_the_training() -> None:
    val = blobs(100, seed=2)
    results = {}
    for alpha in (0.0, 0.4):
        torch.manual_seed(0)
        module = ClassifierModule(nn.Linear(2, 2), config(mixup=alpha), positive_index=1)
        results[alpha] = fit(module, blobs(201, seed=1), val, config(mixup=alpha), seed=0, progress=False)
    x, y = val.tensors
    with torch.no_grad():
        accuracy = float((results[0.4].model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9
    assert results[0.4].history[0]["train_loss"] != results[0.0].history[0]["train_loss"]
    # soft targets keep the training loss away from zero on separable data
    assert results[0.4].history[-1]["train_loss"] > results[0.0].history[-1]["train_loss"]


@pytest.mark.parametrize("key", ["mixup", "cutmix"])
def test_negative_mix_alpha_is_rejected(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        TrainConfig(**{key: -0.1})


@pytest.mark.parametrize(("k", "positive", "seed"), [(2, None, 0), (2, 0, 1), (3, None, 2), (4, None, 3), (2, None, 4)])
def test_validation_scores_equal_compute_metrics_bit_for_bit(k: int, positive: int | None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    logits = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    probs = logits.softmax(1).numpy()  # float32, as the engine has them
    y = rng.integers(0, k, size=n) if seed != 4 else np.zeros(n, dtype=int)  # seed 4: one class, nan AUC
    accuracy, auc = validation_scores(y, probs, positive)
    want = compute_metrics(y, probs, positive)
    assert accuracy == want["accuracy"]
    assert auc == want["auc"] or (np.isnan(auc) and np.isnan(want["auc"]))


def test_ctrl_c_during_training_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT afterwards; fit() gives back both."""
    import signal

    from medtl.train import engine

    def interrupt(self, batch, batch_idx):
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(engine.ClassifierModule, "training_step", interrupt)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    module = engine.ClassifierModule(torch.nn.Linear(4, 2), TrainConfig(epochs=1, batch_size=8), 1)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(module, TensorDataset(x, y), None, TrainConfig(epochs=1, batch_size=8), 0, progress=False)
    assert signal.getsignal(signal.SIGINT) == before


class _StopAfter(L.Callback):
    """Simulates a kill at the end of epoch ``epoch`` (after the epoch checkpoint is written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("mixup", "imbalance"), [(0.0, {}), (0.4, {}), (0.0, {"sampler": "balanced"}),
                                                  (0.4, {"sampler": "balanced", "loss": "focal"})])
def test_a_fit_resumed_from_its_epoch_checkpoint_equals_the_uninterrupted_fit(tmp_path, mixup: float,
                                                                              imbalance: dict) -> None:
    """Weights, optimizer, schedule, early stopping, history, RNG and data order (shuffled, or the balanced
    sampler's draw) all continue exactly."""
    from medtl.train import engine

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 6, generator=g), (torch.rand(48, generator=g) < 0.25).long()
    train, val = TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
    cfg = TrainConfig(epochs=5, batch_size=8, lr=0.05, warmup_epochs=1, mixup=mixup,
                      early_stopping=EarlyStoppingConfig(monitor="val_loss", patience=10), **imbalance)

    def run(checkpoint, callbacks=None):
        L.seed_everything(1, verbose=False)  # as every fold member does
        net = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 2))
        module = engine.ClassifierModule(net, cfg, 1)
        return engine.fit(module, train, val, cfg, 0, progress=False, callbacks=callbacks, checkpoint=checkpoint)

    whole = run(tmp_path / "a.ckpt")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b.ckpt", [_StopAfter(3)])
    resumed = run(tmp_path / "b.ckpt")
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3, 4]
    assert resumed.history == whole.history
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
