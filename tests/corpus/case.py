"""One row of the bad-input corpus: an input made in a temporary folder, a ``medtl`` command, and what must happen.

Case tables live in ``tests/corpus/cases_*.py`` (each module exports ``CASES: list[Case]``); one
table-driven test (``test_corpus.py``) runs them all, and ``docs/reliability.md`` lists every case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Case:
    """A bad (or awkward) input and the behaviour medtl promises for it.

    Attributes:
        id: Unique, readable id (``csv-empty-label``); the pytest id and the row key in docs/reliability.md.
        item: ``"#22.N"`` for failure N of issue 22 (fixed), ``"held"`` for a case that already held.
        what: The input, in a few words (docs/reliability.md).
        expect: What medtl does with it, in a few words (docs/reliability.md).
        make: Builds the input under the given folder (the test's working directory) and returns the
            ``medtl`` argv, without the program name.
        exit_code: Expected exit code (0 success, 2 user error, 130 interrupted).
        phrase: Must occur in the combined output, compared case-insensitively with whitespace removed
            (rich wraps long lines); ``""`` checks nothing.
        good: Counts the good inputs that were still processed (e.g. rows of an output CSV), given the folder.
        expected_good: What ``good`` must return.
        slow: Trains a model (marked ``slow``).
        patch: Applied to the test's ``MonkeyPatch`` before the command runs (e.g. a Ctrl-C at a chosen
            point of a real run); ``None`` for most cases.
    """

    id: str
    item: str
    what: str
    expect: str
    make: Callable[[Path], list[str]]
    exit_code: int
    phrase: str = ""
    good: Callable[[Path], int] | None = None
    expected_good: int | None = None
    slow: bool = False
    patch: Callable[[Any], None] | None = None
