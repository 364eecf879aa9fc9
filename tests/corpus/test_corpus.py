"""The bad-input corpus: every case of ``tests/corpus/cases_*.py`` through the real ``medtl`` CLI."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corpus as corpus_pkg
from corpus.case import Case
from medtl.cli import app


def all_cases() -> list[Case]:
    """Every case of every ``cases_*`` module, ids unique."""
    cases: list[Case] = []
    for info in pkgutil.iter_modules(corpus_pkg.__path__):
        if info.name.startswith("cases_"):
            cases.extend(importlib.import_module(f"corpus.{info.name}").CASES)
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), f"duplicate corpus ids: {sorted({i for i in ids if ids.count(i) > 1})}"
    return cases


CASES = all_cases()


def _squash(text: str) -> str:
    return "".join(text.split()).lower()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_case(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    argv = case.make(tmp_path)
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, argv)
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{case.id}: a traceback instead of a message") from result.exception
    assert result.exit_code == case.exit_code, f"{case.id}: exit {result.exit_code}\n{output}"
    assert _squash(case.phrase) in _squash(output), f"{case.id}: '{case.phrase}' not in\n{output}"
    if case.good is not None:
        assert case.good(tmp_path) == case.expected_good, f"{case.id}: good inputs processed"


def test_every_case_is_documented() -> None:
    doc = Path(__file__).parents[2] / "docs" / "reliability.md"
    text = doc.read_text() if doc.exists() else ""
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/reliability.md does not list: {missing}"
