"""Studies: a grid of experiments (strategies × backbones × seeds × ...) run, resumed and compared.

A study file is YAML::

    name: brain-mri-strategies
    base: ../brain_mri_lite0.yaml          # or an inline experiment mapping
    set: {train.epochs: 10}                # optional dotted overrides of the base
    axes:                                  # ordered; cell name = labels joined with '-'
      strategy:
        fe: {transfer.strategy: feature_extraction}
        ft: {transfer.strategy: fine_tune}
      seed: {key: train.seed, values: [0, 1, 2]}
    exclude: [{strategy: fe, seed: "2"}]   # optional partial mappings (a label or a list of labels)
    baseline: fe-0                         # a cell name or a partial mapping {strategy: fe, seed: "0"}
    reuse: [runs/studies/other]            # optional: finished identical cells of other studies are copied

A cell's config is the base, then ``set``, then ``--set`` overrides, then its axis values; where two
axes set the same key, the earlier axis wins (so a ``scratch`` strategy can fix its own backbone
while a later ``backbone`` axis sets it for the others).

Every cell's config is validated before anything runs. Each cell is an ordinary run directory under
``STUDY_DIR/cells/<cell>``; a cell is done when its ``metrics.json`` exists and the config stored
next to it equals the cell's resolved config, so re-running a study only runs new, changed,
failed or interrupted cells. A cell whose resolved config (all but the name) equals a finished cell
of a study directory listed in ``reuse`` is copied from there instead of trained again. The
comparison tests every cell against the baseline cell when both were evaluated on the same images
(see :mod:`medtl.evaluate.compare`).
"""

from __future__ import annotations

import copy
import csv
import difflib
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from medtl import rundir
from medtl.config import ExperimentConfig, dump_config, parse_config, read_yaml, resolve_paths, set_dotted
from medtl.errors import ConfigError, MedtlError, RunInterrupted
from medtl.evaluate.compare import (
    SEED_COLUMNS,
    TEST_COLUMNS,
    comparison_csv,
    comparison_markdown,
    comparison_table,
    format_metric,
    metric_column_names,
    metric_columns,
    seed_markdown,
    seed_rows,
)
from medtl.experiment import run_experiment

log = logging.getLogger(__name__)

STUDY_KEYS = ("name", "description", "base", "set", "axes", "baseline", "exclude", "reuse")
"""Top-level keys of a study file."""

_LABEL = re.compile(r"[A-Za-z0-9_.\-]+")
_FRACTION = "train_fraction"


@dataclass(frozen=True)
class Axis:
    """One axis of a study: an ordered mapping label → dotted overrides."""

    name: str
    levels: dict[str, dict[str, Any]]

    def touches(self, suffix: str) -> bool:
        """True when some level overrides a key ending with ``suffix``."""
        return any(k.split(".")[-1] == suffix for level in self.levels.values() for k in level)


@dataclass
class Cell:
    """One experiment of a study."""

    name: str
    axes: dict[str, str]
    overrides: list[tuple[str, Any]]
    config: ExperimentConfig
    status: str = "pending"
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The cell's entry in ``study.json``."""
        entry = {"name": self.name, "axes": self.axes, "run_dir": f"cells/{self.name}", "status": self.status}
        return entry | ({"error": self.error} if self.error else {})


@dataclass
class Study:
    """A validated study: its axes, the cells (after exclusions) and the baseline cell."""

    name: str
    axes: list[Axis]
    cells: list[Cell]
    baseline: str
    spec: dict[str, Any]
    source: Path | None = None
    reuse: list[Path] = field(default_factory=list)

    def cell(self, name: str) -> Cell:
        """The cell called ``name`` (ConfigError with a suggestion when there is none)."""
        for cell in self.cells:
            if cell.name == name:
                return cell
        raise ConfigError(f"study {self.name}: no cell '{name}'.{_suggest(name, [c.name for c in self.cells])}")


@dataclass
class StudyResult:
    """What :func:`run_study` did and found."""

    study: Study
    out_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Names of the cells that failed."""
        return [c.name for c in self.study.cells if c.status == "failed"]


# --------------------------------------------------------------------------- loading


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read a study YAML file and validate the study and every cell's config.

    Args:
        path: The study file; a relative ``base`` is resolved against its folder.
        overrides: ``dotted.key=value`` assignments applied to the base after the study's ``set``
            (an axis that sets the same key still wins).

    Raises:
        ConfigError: On any problem, naming the file, the cell and the key.
    """
    path = Path(path)
    tree = read_yaml(path, "study file")
    study = parse_study(tree, path.parent, str(path), overrides)
    study.source = path
    return study


def parse_study(tree: Any, base_dir: Path, source: str = "<study>", overrides: list[str] | None = None) -> Study:
    """Validate a parsed study mapping (see the module docstring) into a :class:`Study`.

    Args:
        tree: The study file's content.
        base_dir: Folder against which a ``base`` path (and an inline base's data paths) resolve.
        source: Name used in error messages.
        overrides: ``dotted.key=value`` assignments (as from ``--set``), applied after ``set``.

    Raises:
        ConfigError: On an unknown key, a malformed axis, an unknown label in ``exclude`` or
            ``baseline``, or invalid cell configs (all of them listed, each naming cell and key).
    """
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: a study file must be a mapping with name, base and axes")
    unknown = [k for k in tree if k not in STUDY_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'.{_suggest(unknown[0], STUDY_KEYS)} "
                          f"Valid keys: {', '.join(STUDY_KEYS)}")
    name = _study_name(tree.get("name"), source)
    base, config_dir, base_ref = _load_base(tree.get("base"), base_dir, source)
    cli = [_assignment(a, source) for a in overrides or []]
    common = _overrides(tree.get("set"), f"{source}: set") + cli
    axes = _parse_axes(tree.get("axes"), source)
    _warn_shadowed(cli, axes)
    combos = _exclude(expand_cells(axes), tree.get("exclude") or [], axes, source)
    cells = _build_cells(name, base, config_dir, common, axes, combos, source)
    baseline = _baseline(tree.get("baseline"), cells, axes, source)
    reuse = _reuse_dirs(tree.get("reuse"), source)
    spec = {"name": name, **({"description": tree["description"]} if "description" in tree else {}),
            "base": base_ref, "set": dict(common),
            "axes": {a.name: a.levels for a in axes}, "exclude": tree.get("exclude") or [], "baseline": baseline}
    if reuse:
        spec["reuse"] = [str(p) for p in reuse]
    return Study(name, axes, cells, baseline, spec, reuse=reuse)


def _reuse_dirs(value: Any, source: str) -> list[Path]:
    """``reuse``: study directories whose finished cells may stand in for identical cells of this study."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{source}: 'reuse' must be a study directory or a list of them "
                          f"(e.g. runs/studies/chest-xray-strategies), got {value!r}")
    return [Path(v) for v in items]


def _study_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise ConfigError(f"{source}: 'name' is required and may contain only letters, digits, '.', '_' and '-' "
                          f"(got {name!r}); it names the study directory runs/studies/<name>")
    return name


def _load_base(base: Any, base_dir: Path, source: str) -> tuple[dict[str, Any], Path, Any]:
    """The base experiment tree, the folder its relative paths resolve against, and how to write it back."""
    if isinstance(base, dict):
        return base, base_dir, _absolute_paths(base, base_dir)
    if not isinstance(base, str):
        raise ConfigError(f"{source}: 'base' must be the path of an experiment YAML (relative to the study "
                          "file) or an inline experiment mapping")
    path = (base_dir / base).resolve()
    if not path.is_file():
        raise ConfigError(f"{source}: base experiment {path} not found (paths are relative to the study file)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the base experiment must be a mapping with data/model/transfer/train blocks")
    return tree, path.parent, str(path)


def _absolute_paths(tree: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of an inline base whose relative data paths are absolute, so the written study.yaml runs anywhere."""
    tree = copy.deepcopy(tree)
    blocks = [tree.get("data")] + [s.get("data") for s in tree.get("stages") or [] if isinstance(s, dict)]
    for data in (b for b in blocks if isinstance(b, dict)):
        for key in ("root", "csv", "path"):
            value = data.get(key)
            if isinstance(value, str) and not value.startswith(("/", "$", "~")):
                data[key] = str((base_dir / value).resolve())
    return tree


def _overrides(mapping: Any, where: str) -> list[tuple[str, Any]]:
    """Dotted overrides ``{a.b: value}`` as an ordered list of pairs."""
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values, e.g. {{train.lr: 0.001}}; "
                          f"got {mapping!r}")
    pairs = []
    for key, value in mapping.items():
        if not isinstance(key, str) or not all(key.split(".")):
            raise ConfigError(f"{where}: '{key}' is not a dotted key like train.lr")
        pairs.append((key, value))
    return pairs


def _assignment(text: str, source: str) -> tuple[str, Any]:
    """``dotted.key=value`` (value parsed as YAML) from ``--set``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not all(key.strip().split(".")):
        raise ConfigError(f"{source}: --set '{text}': expected dotted.key=value, e.g. train.epochs=1")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _parse_axes(axes: Any, source: str) -> list[Axis]:
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{source}: 'axes' must be a non-empty mapping axis-name → values, e.g. "
                          "{strategy: {fe: {transfer.strategy: feature_extraction}}, seed: {key: train.seed, "
                          "values: [0, 1]}}")
    return [_parse_axis(str(name), spec, source) for name, spec in axes.items()]


def _parse_axis(name: str, spec: Any, source: str) -> Axis:
    where = f"{source}: axis '{name}'"
    if not _LABEL.fullmatch(name):
        raise ConfigError(f"{where}: axis names may contain only letters, digits, '.', '_' and '-'")
    if isinstance(spec, dict) and set(spec) == {"key", "values"}:
        key, values = spec["key"], spec["values"]
        if not isinstance(key, str) or not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: the short form is {{key: dotted.key, values: [v1, v2, ...]}}")
        levels = {str(v): {key: v} for v in values}
        count = len(values)
    elif isinstance(spec, dict) and spec:
        levels = {str(label): dict(_overrides(over, f"{where}, label '{label}'")) for label, over in spec.items()}
        count = len(spec)
    else:
        raise ConfigError(f"{where}: expected a mapping label → {{dotted.key: value}} or {{key: dotted.key, "
                          f"values: [...]}}; got {spec!r}")
    bad = [label for label in levels if not _LABEL.fullmatch(label)]
    if bad:
        raise ConfigError(f"{where}: label '{bad[0]}' may contain only letters, digits, '.', '_' and '-' "
                          "(it becomes part of the cell's directory name)")
    if len(levels) != count:
        raise ConfigError(f"{where}: two values give the same label; labels must be unique")
    return Axis(name, levels)


def _warn_shadowed(cli: list[tuple[str, Any]], axes: list[Axis]) -> None:
    for key, _ in cli:
        owners = [a.name for a in axes if any(key in level for level in a.levels.values())]
        if owners:
            log.warning("--set %s is overridden by axis %s in the cells that set it", key, ", ".join(owners))


def expand_cells(axes: list[Axis]) -> list[dict[str, str]]:
    """Every combination of labels, as ``{axis: label}`` in axis order (the first axis varies slowest)."""
    return [dict(zip([a.name for a in axes], labels, strict=True))
            for labels in itertools.product(*[list(a.levels) for a in axes])]


def cell_name(labels: dict[str, str]) -> str:
    """The cell's name: its labels joined with ``-`` in axis order."""
    return "-".join(labels.values())


def _exclude(combos: list[dict[str, str]], exclude: Any, axes: list[Axis], source: str) -> list[dict[str, str]]:
    if not isinstance(exclude, list):
        raise ConfigError(f"{source}: 'exclude' must be a list of partial mappings like [{{strategy: scratch, "
                          "backbone: [lite1, lite2]}}]")
    rules = [_partial(rule, axes, f"{source}: exclude[{i}]") for i, rule in enumerate(exclude)]
    for i, rule in enumerate(rules):
        if not any(_matches(c, rule) for c in combos):
            log.warning("%s: exclude[%d] matches no cell", source, i)
    kept = [c for c in combos if not any(_matches(c, rule) for rule in rules)]
    if not kept:
        raise ConfigError(f"{source}: 'exclude' removes every cell")
    return kept


def _partial(rule: Any, axes: list[Axis], where: str) -> dict[str, set[str]]:
    """A partial mapping axis → label (or labels), checked against the axes."""
    if not isinstance(rule, dict) or not rule:
        raise ConfigError(f"{where}: expected a mapping axis → label, e.g. {{strategy: fe}}; got {rule!r}")
    by_name = {a.name: a for a in axes}
    out = {}
    for axis, labels in rule.items():
        axis = str(axis)
        if axis not in by_name:
            raise ConfigError(f"{where}: no axis '{axis}'.{_suggest(axis, list(by_name))} Axes: {', '.join(by_name)}")
        wanted = {str(v) for v in (labels if isinstance(labels, list) else [labels])}
        for label in wanted - set(by_name[axis].levels):
            choices = list(by_name[axis].levels)
            raise ConfigError(f"{where}: axis '{axis}' has no label '{label}'.{_suggest(label, choices)} "
                              f"Labels: {', '.join(choices)}")
        out[axis] = wanted
    return out


def _matches(combo: dict[str, str], rule: dict[str, set[str]]) -> bool:
    return all(combo[axis] in labels for axis, labels in rule.items())


def _build_cells(study: str, base: dict[str, Any], config_dir: Path, common: list[tuple[str, Any]],
                 axes: list[Axis], combos: list[dict[str, str]], source: str) -> list[Cell]:
    """Resolve and validate every cell's config; one ConfigError lists every invalid cell."""
    cells, errors = [], {}
    for combo in combos:
        name = cell_name(combo)
        overrides = common + _axis_overrides(axes, combo, name)
        try:
            cfg = cell_config(base, overrides, f"{study}-{name}", config_dir, f"cell {name}")
        except ConfigError as exc:
            errors[name] = str(exc)
            continue
        cells.append(Cell(name, combo, overrides, cfg))
    if errors:
        raise ConfigError(_group_errors(errors, len(combos), source))
    names = [c.name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: cell names {dupes} occur twice (labels joined with '-' collide); rename labels")
    _warn_identical(cells)
    return cells


def _axis_overrides(axes: list[Axis], combo: dict[str, str], name: str) -> list[tuple[str, Any]]:
    """The cell's axis overrides in the order they are applied: where axes set the same key, the earlier wins.

    An earlier axis is the primary factor: ``strategy: {scratch: {model.backbone: small_cnn}}`` before
    ``backbone: {...}`` keeps the scratch cell's own backbone.
    """
    seen: dict[str, str] = {}
    for axis in axes:
        for key in axis.levels[combo[axis.name]]:
            if key in seen and seen[key] != axis.name:
                log.info("cell %s: %s is set by axis '%s' (the earlier axis wins), not by axis '%s'", name, key,
                         seen[key], axis.name)
            seen.setdefault(key, axis.name)
    return [pair for axis in reversed(axes) for pair in axis.levels[combo[axis.name]].items()]


def _warn_identical(cells: list[Cell]) -> None:
    """Warn about cells that would run the very same experiment (an axis value shadowed by another axis)."""
    first: dict[str, str] = {}
    for cell in cells:
        dump = cell.config.model_dump(mode="json")
        dump.pop("name")
        key = json.dumps(dump, sort_keys=True)
        if key in first:
            log.warning("cells %s and %s have the same config: they run the same experiment", first[key], cell.name)
        first.setdefault(key, cell.name)


def cell_config(base: dict[str, Any], overrides: list[tuple[str, Any]], name: str, config_dir: Path,
                source: str) -> ExperimentConfig:
    """The validated config of one cell: ``base`` with ``name`` and the dotted ``overrides`` applied.

    A mapping value merges into a mapping already at its key (``data.split: {folds: 3}`` keeps the
    other split settings); any other value replaces. Relative data paths resolve against ``config_dir``.

    Raises:
        ConfigError: From the config layer, naming ``source`` and the key (with did-you-mean).
    """
    tree = copy.deepcopy(base)
    tree["name"] = name
    for key, value in overrides:
        set_dotted(tree, key, value, source)
    return resolve_paths(parse_config(tree, source), config_dir)


def _group_errors(errors: dict[str, str], total: int, source: str) -> str:
    """One message for all invalid cells; cells with the same problems are listed together."""
    by_body: dict[str, list[str]] = {}
    for name, message in errors.items():
        first, _, rest = message.partition("\n")
        body = rest if rest else first.split(": ", 1)[-1]
        by_body.setdefault(body, []).append(name)
    lines = [f"{source}: {len(errors)} of {total} cells have an invalid config (nothing was run)"]
    for body, names in by_body.items():
        lines.append(f"cell{'s' if len(names) > 1 else ''} {', '.join(names)}:")
        lines.extend(f"  {line}" for line in body.splitlines())
    return "\n".join(lines)


def _baseline(spec: Any, cells: list[Cell], axes: list[Axis], source: str) -> str:
    names = [c.name for c in cells]
    if spec is None:
        log.info("%s: no baseline given; using the first cell, %s", source, names[0])
        return names[0]
    if isinstance(spec, str):
        if spec not in names:
            raise ConfigError(f"{source}: baseline '{spec}' is not a cell.{_suggest(spec, names)} "
                              f"Cells: {', '.join(names)}")
        return spec
    rule = _partial(spec, axes, f"{source}: baseline")
    found = [c.name for c in cells if _matches(c.axes, rule)]
    if len(found) != 1:
        raise ConfigError(f"{source}: baseline {spec} matches {len(found)} cells ({', '.join(found) or 'none'}); "
                          "it must pick exactly one (name more axes, or give the cell name)")
    return found[0]


def _suggest(value: str, choices: Any) -> str:
    hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{hint[0]}'?" if hint else ""


# --------------------------------------------------------------------------- running


def default_dir(study: Study) -> Path:
    """Where a study writes by default: ``runs/studies/<name>``."""
    return Path("runs") / "studies" / study.name


def cell_is_done(cell: Cell, cell_dir: Path) -> bool:
    """True when ``cell_dir`` holds a finished run of exactly this cell's resolved config."""
    previous = _finished_config(cell_dir, cell.name)
    return previous is not None and previous.model_dump(mode="json") == cell.config.model_dump(mode="json")


def _finished_config(run_dir: Path, label: str) -> ExperimentConfig | None:
    """The resolved config of a finished run in ``run_dir`` (None: unfinished or no longer valid)."""
    stored = run_dir / rundir.CONFIG
    if not rundir.is_complete(run_dir) or not stored.is_file():
        return None
    try:
        return parse_config(yaml.safe_load(stored.read_text()) or {}, str(stored))
    except (ConfigError, yaml.YAMLError) as exc:
        log.info("cell %s: stored config no longer valid (%s); it will be re-run", label, exc)
        return None


def find_reusable(cell: Cell, study_dirs: list[Path]) -> Path | None:
    """A finished cell of another study whose resolved config equals ``cell``'s but for the name."""
    wanted = cell.config.model_dump(mode="json")
    wanted.pop("name", None)
    for study_dir in study_dirs:
        for run_dir in sorted((study_dir / "cells").glob("*/")):
            previous = _finished_config(run_dir, run_dir.name)
            if previous is None:
                continue
            other = previous.model_dump(mode="json")
            other.pop("name", None)
            if other == wanted:
                return run_dir
    return None


def _reuse_cell(cell: Cell, source: Path, cell_dir: Path) -> None:
    """Copy a finished identical run into ``cell_dir`` under this cell's name (nothing is retrained)."""
    if cell_dir.exists():
        shutil.rmtree(cell_dir)
    shutil.copytree(source, cell_dir)
    rundir.write_text(cell_dir / rundir.CONFIG, dump_config(cell.config))
    (cell_dir / "REUSED_FROM").write_text(f"{source.resolve()}\n")
    rundir.mark_complete(cell_dir)
    cell.status, cell.error = "done", None
    log.info("cell %s: identical to the finished run %s; reused it (copied, not retrained)", cell.name, source)


def run_study(study: Study, out_dir: str | Path | None = None, progress: bool = True,
              only: list[str] | None = None, dry_run: bool = False, workers: int = 1,
              scheduler: str | None = None) -> StudyResult:
    """Run every cell of ``study`` that is not done yet, then compare the finished cells.

    Args:
        study: A study from :func:`load_study`.
        out_dir: The study directory (default :func:`default_dir`).
        progress: Show a progress bar over cells (and each run's own bars).
        only: Run only these cells (the others keep their state).
        dry_run: Only report which cells are done and which would run; write nothing.
        workers: Cells run at once as local processes (:mod:`medtl.study_workers`); 1 runs them here.
        scheduler: A Dask scheduler address (``dask://HOST:PORT``): the cells run on that cluster
            (``workers`` tasks, default one per Dask worker).

    Returns:
        The result; ``failed`` names the cells that failed (the study goes on past them).

    Raises:
        ConfigError: When ``only`` names a cell the study does not have.
    """
    out = Path(out_dir) if out_dir is not None else default_dir(study)
    selected = {study.cell(n).name for n in only} if only else {c.name for c in study.cells}
    for cell in study.cells:
        cell.status, cell.error = ("done" if cell_is_done(cell, out / "cells" / cell.name) else "pending"), None
    result = StudyResult(study, out)
    result.skipped = [c.name for c in study.cells if c.status == "done" and c.name in selected]
    todo = [c for c in study.cells if c.status != "done" and c.name in selected]
    log.info("study %s: %d cells, %d done, %d to run", study.name, len(study.cells),
             sum(c.status == "done" for c in study.cells), len(todo))
    if dry_run:
        return result
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(study.spec, sort_keys=False))
    write_state(study, out)
    # No study-wide rich Live display around the cells: Lightning's RichProgressBar pops the global
    # console's live stack when a fit starts, which would remove an enclosing display and make it fail
    # on exit (IndexError from rich). Each cell's steps show their own bars; the study logs its place.
    if workers > 1 or scheduler:
        _run_on_workers(study, out, todo, workers, scheduler)
        result.ran = [c.name for c in todo]
        todo = []
    started = time.perf_counter()
    for i, cell in enumerate(todo, 1):
        source = find_reusable(cell, study.reuse)
        if source is not None:
            _reuse_cell(cell, source, out / "cells" / cell.name)
        else:
            log.info("cell %d/%d %s: running (study %s, %s elapsed)", i, len(todo), cell.name, study.name,
                     _elapsed(time.perf_counter() - started))
            run_cell(cell, out / "cells" / cell.name, progress)
        result.ran.append(cell.name)
        write_state(study, out)
    result.rows = write_comparison(study, out)
    if result.failed:
        log.error("study %s: %d cell(s) failed: %s", study.name, len(result.failed), ", ".join(result.failed))
    return result


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _run_on_workers(study: Study, out: Path, todo: list[Cell], workers: int,
                    scheduler: str | None) -> None:
    """Run ``todo`` on local worker processes or a Dask cluster (:mod:`medtl.study_workers`); set their status.

    Cells identical to a finished cell of a ``reuse`` study are copied here first, as in a serial run.
    """
    from medtl import study_workers as sw

    address = sw.dask_address(scheduler) if scheduler else None
    names: list[str] = []
    for cell in todo:
        source = find_reusable(cell, study.reuse)
        if source is not None:
            _reuse_cell(cell, source, out / "cells" / cell.name)
        else:
            names.append(cell.name)
    token = sw.new_token()
    threads = max(1, (os.cpu_count() or 1) // workers) if address is None else None
    # no progress bars in the workers: several processes drawing on one terminal garble each other
    plan = sw.WorkPlan(study, out, tuple(names), False, run_experiment, token, threads,
                       logging.getLogger("medtl").getEffectiveLevel())
    log.info("study %s: %d cell(s) on %s", study.name, len(names),
             f"the Dask cluster {address}" if address else f"{workers} local worker processes")
    if names and address:
        sw.run_dask(plan, address, workers if workers > 1 else None)
    elif names:
        sw.run_local(plan, workers)
    sw.settle_statuses(study, out, names, token)
    write_state(study, out)


def run_cell(cell: Cell, cell_dir: Path, progress: bool, runner: Callable[..., dict] | None = None) -> None:
    """Run one cell, continuing its unfinished run when it has the same config; a failure is recorded on the
    cell, not raised.

    Args:
        cell: The cell.
        cell_dir: Its run directory (an outdated one is removed first; an unfinished one of the same config
            is continued).
        progress: Progress bars in the run.
        runner: Runs the experiment (default :func:`medtl.experiment.run_experiment`).
    """
    stored = cell_dir / rundir.CONFIG
    same = stored.is_file() and stored.read_text() == dump_config(cell.config)
    if cell_dir.exists() and not same:
        log.info("cell %s: removing its outdated run directory", cell.name)
        shutil.rmtree(cell_dir)
    elif cell_dir.exists():
        log.info("cell %s: continuing its unfinished run", cell.name)
    started = time.perf_counter()
    try:
        metrics = (runner or run_experiment)(cell.config, cell_dir, progress=progress, resume=True)
    except RunInterrupted:
        raise  # Ctrl-C stops the study; the cell stays unfinished and is re-run next time
    except Exception as exc:  # one failed cell must not stop the study: record it (and its traceback) and go on
        cell.status, cell.error = "failed", f"{type(exc).__name__}: {exc}"
        log.error("cell %s failed: %s", cell.name, cell.error, exc_info=not isinstance(exc, MedtlError))
        return
    cell.status = "done"
    log.info("cell %s done in %.0f s: auc %s, accuracy %s", cell.name, time.perf_counter() - started,
             format_metric(metric_columns(metrics), "auc"), format_metric(metric_columns(metrics), "accuracy"))


def write_state(study: Study, out_dir: Path) -> None:
    """Write ``study.json``: the name, the baseline and each cell's axes, directory and status."""
    state = {"name": study.name, "baseline": study.baseline, "axes": [a.name for a in study.axes],
             "cells": [c.to_json() for c in study.cells]}
    (out_dir / "study.json").write_text(json.dumps(state, indent=2))


# --------------------------------------------------------------------------- comparison


def study_rows(study: Study, out_dir: Path) -> list[dict[str, Any]]:
    """Comparison rows of the finished cells: cell, axis labels, metrics with CIs, paired tests.

    Each cell is tested against the baseline cell when both were evaluated on the same images;
    otherwise its p-values are blank and ``reason`` says why.
    """
    done = [c for c in study.cells if c.status == "done"]
    if not done:
        return []
    base = study.cell(study.baseline)
    dirs = [out_dir / "cells" / c.name for c in done]
    names = [c.name for c in done]
    if base.status == "done":
        rows = rundir.compare_runs(dirs, out_dir / "cells" / base.name, names)
    else:
        why = f"baseline cell {base.name} has no results ({base.status})"
        rows = [r | {"p_auc_delong": None, "p_acc_mcnemar": None, "paired_with": None, "reason": why}
                for r in rundir.compare_runs(dirs, dirs[0], names)]
    return [{"cell": c.name, **c.axes, **r} for c, r in zip(done, rows, strict=True)]


def write_comparison(study: Study, out_dir: Path) -> list[dict[str, Any]]:
    """Write ``comparison.csv``, ``comparison.md`` and (for a train-fraction axis) ``learning_curve.csv``."""
    rows = study_rows(study, out_dir)
    axes = [a.name for a in study.axes]
    columns = ["cell", *axes, *metric_column_names(), *TEST_COLUMNS]
    (out_dir / "comparison.csv").write_text(comparison_csv(rows, columns))
    seeds = seed_summary(study, out_dir)
    markdown = _markdown(study, rows)
    if seeds:
        (out_dir / "seeds.csv").write_text(comparison_csv(seeds, list(SEED_COLUMNS)))
        markdown += "\n## Over seeds\n\n" + seed_markdown(seeds)
    (out_dir / "comparison.md").write_text(markdown)
    fraction = _fraction_axis(study)
    if fraction is not None:
        _write_learning_curve(out_dir / "learning_curve.csv", study, fraction, rows)
    return rows


def seed_summary(study: Study, out_dir: Path) -> list[dict[str, Any]]:
    """With a seed axis: per combination of the other axes, mean ± sd over seeds and a paired test over seeds
    against the baseline's combination (seeds finished in every combination only). [] without a seed axis."""
    axis = next((a for a in study.axes if a.name == "seed" or a.touches("seed")), None)
    if axis is None:
        return []
    done = [c for c in study.cells if c.status == "done"]
    others = [a.name for a in study.axes if a is not axis]
    combos: dict[str, dict[str, Cell]] = {}
    for cell in done:
        combos.setdefault("-".join(cell.axes[a] for a in others) or "all", {})[cell.axes[axis.name]] = cell
    base = "-".join(study.cell(study.baseline).axes[a] for a in others) or "all"
    seeds = [s for s in axis.levels if all(s in cells for cells in combos.values())]
    if base not in combos or len(seeds) < 2:
        return []
    order = [base, *[k for k in combos if k != base]]
    return seed_rows([(k, [rundir.load_result(out_dir / "cells" / combos[k][s].name) for s in seeds]) for k in order])


def _markdown(study: Study, rows: list[dict[str, Any]]) -> str:
    text = f"# Study {study.name}\n\n" + comparison_markdown(rows, [a.name for a in study.axes], study.baseline)
    missing = [c for c in study.cells if c.status != "done"]
    if missing:
        text += "\nNot in the table: " + ", ".join(f"{c.name} ({c.status})" for c in missing) + "\n"
    return text


def study_table(result: StudyResult) -> Table:
    """The comparison as a rich table, one row per finished cell."""
    title = f"Study {result.study.name} (95% CI; p against {result.study.baseline})"
    return comparison_table(result.rows, [a.name for a in result.study.axes], title)


def plan_table(result: StudyResult) -> Table:
    """The cells of a study: axis labels, status, and the resolved value of every key an axis sets."""
    study = result.study
    table = Table(title=f"Study {study.name}: {len(study.cells)} cells in {result.out_dir}")
    table.add_column("cell")
    for axis in study.axes:
        table.add_column(axis.name)
    table.add_column("status")
    keys = list(dict.fromkeys(k for a in study.axes for level in a.levels.values() for k in level))
    for key in keys:
        table.add_column(key, overflow="ellipsis", max_width=24)
    for cell in study.cells:
        dump = cell.config.model_dump(mode="json")
        baseline = " (baseline)" if cell.name == study.baseline else ""
        table.add_row(cell.name + baseline, *cell.axes.values(), "done" if cell.status == "done" else "to run",
                      *[_short(lookup(dump, k)) for k in keys])
    return table


def _short(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def lookup(tree: Any, key: str) -> Any:
    """The value at dotted ``key`` in a nested mapping, or None."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# --------------------------------------------------------------------------- learning curves


def _fraction_axis(study: Study) -> Axis | None:
    """The axis that varies the training fraction: named ``train_fraction`` or setting ``*.train_fraction``."""
    for axis in study.axes:
        if axis.name == _FRACTION or axis.touches(_FRACTION):
            return axis
    return None


def train_fraction(cell: Cell, axis: Axis) -> float:
    """The training fraction of a cell: the value it sets, else its config's, else its label."""
    for key, value in reversed(cell.overrides):
        if key.split(".")[-1] == _FRACTION:
            return float(value)
    dump = cell.config.model_dump(mode="json")
    for path in ("data.split.train_fraction", "data.train_fraction"):
        value = lookup(dump, path)
        if isinstance(value, int | float):
            return float(value)
    try:
        return float(cell.axes[axis.name])
    except ValueError:
        return math.nan


def _write_learning_curve(path: Path, study: Study, axis: Axis, rows: list[dict[str, Any]]) -> None:
    """One row per finished cell: the other axes' labels as ``series``, the fraction, AUC and accuracy."""
    others = [a.name for a in study.axes if a is not axis]
    records = []
    for row in rows:
        cell = study.cell(row["cell"])
        series = "-".join(cell.axes[a] for a in others) or "all"
        records.append({"series": series, "train_fraction": train_fraction(cell, axis), "cell": cell.name,
                        **{k: row.get(k) for k in _CURVE_METRICS}})
    records.sort(key=lambda r: (r["series"], r["train_fraction"]))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["series", "train_fraction", *_CURVE_METRICS, "cell"])
        for r in records:
            writer.writerow([r["series"], f"{r['train_fraction']:g}", *[_num(r[k]) for k in _CURVE_METRICS],
                             r["cell"]])


_CURVE_METRICS = ("auc", "auc_lo", "auc_hi", "accuracy", "accuracy_lo", "accuracy_hi")


def _num(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.6g}"
