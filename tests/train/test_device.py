"""Tests of medtl.train.device: ``train.device`` to a torch device, never a silent fallback."""

from __future__ import annotations

import logging

import pytest

from medtl.errors import ConfigError
from medtl.train import device as device_module
from medtl.train.device import resolve_device


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_announced", set())


@pytest.fixture
def with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module, "_announced", set())


def test_cpu_is_always_cpu(with_cuda: None) -> None:
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_cuda_is_an_error_naming_the_key(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match=r"train\.device is 'cuda'.*auto or cpu") as info:
        resolve_device("cuda")
    assert info.value.exit_code == 2


def test_cuda_with_cuda(with_cuda: None) -> None:
    assert resolve_device("cuda") == "cuda"


@pytest.mark.parametrize(("fixture", "expected"), [("no_cuda", "cpu"), ("with_cuda", "cuda")])
def test_auto_picks_and_says_so_once(fixture: str, expected: str, request: pytest.FixtureRequest,
                                     caplog: pytest.LogCaptureFixture) -> None:
    request.getfixturevalue(fixture)
    with caplog.at_level(logging.INFO, logger="medtl.train.device"):
        assert resolve_device("auto") == expected
        assert resolve_device("auto") == expected
    lines = [r.getMessage() for r in caplog.records if r.name == "medtl.train.device"]
    assert len(lines) == 1 and f"using {expected}" in lines[0]


def test_unknown_value_names_the_choices(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device("gpu")
