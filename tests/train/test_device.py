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
    lines = [r.getMessage() for r in caplog.records if r.name == "medtl.train.device" and r.levelno == logging.INFO]
    assert len(lines) == 1 and f"using {expected}" in lines[0]  # (a busy machine may add a WARNING)


def test_unknown_value_names_the_choices(no_cuda: None) -> None:
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        resolve_device("gpu")


def test_release_memory_trims_the_glibc_heap_and_says_when_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    calls = []
    monkeypatch.setattr(device_module, "_libc_malloc_trim", lambda: lambda pad: calls.append(pad) or 1)
    assert device_module.release_memory() is True and calls == [0]
    monkeypatch.setattr(device_module, "_libc_malloc_trim", lambda: None)
    assert device_module.release_memory() is False
    monkeypatch.undo()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":  # the real one is found
        assert device_module._libc_malloc_trim() is not None
        assert device_module.release_memory() is True


def test_busy_cpu_warning_only_when_loaded_and_multithreaded(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device_module.torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(device_module.os, "getloadavg", lambda: (4.2, 3.0, 2.0))
    with caplog.at_level(logging.WARNING, logger="medtl.train.device"):
        message = device_module.warn_if_cpu_busy()
    assert message is not None and "4.2" in message and "OMP_NUM_THREADS=1" in message
    assert message in caplog.text
    monkeypatch.setattr(device_module.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert device_module.warn_if_cpu_busy() is None
    monkeypatch.setattr(device_module.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    monkeypatch.setattr(device_module.torch, "get_num_threads", lambda: 1)
    assert device_module.warn_if_cpu_busy() is None


def test_resolve_device_checks_the_cpu_load_once_per_process(monkeypatch: pytest.MonkeyPatch, no_cuda: None) -> None:
    calls = []
    monkeypatch.setattr(device_module, "warn_if_cpu_busy", lambda: calls.append(1))
    resolve_device("cpu")
    resolve_device("auto")
    assert calls == [1]
