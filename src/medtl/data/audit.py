"""``medtl audit``: leakage and data-quality report of a data config or a finished run.

Every image is decoded once; from the decoded image come its exact hash (decoded pixels, as used for
grouping: :func:`~medtl.data.images.pixel_hash` / :func:`~medtl.data.images.array_hash`), its
perceptual hash (``imagehash.phash``) and its size and mode. The report then lists:

* patients (groups) present in more than one split of a fold;
* exact duplicates, and near-duplicates (perceptual hashes at most ``distance`` bits apart, beyond
  the exact ones), within and across splits, and those whose labels conflict;
* class balance per split, unreadable files, image size and mode statistics.

The splits audited are, for a run directory, those of its ``splits.csv``; for a data config, the
source's predefined split when it has one (as published, before medtl removes straddling groups),
else the folds the config would make. Leakage (a patient or an exact duplicate in two splits of a
fold) makes :attr:`AuditReport.leakage` true; near-duplicates across splits are reported as
suspects, since a perceptual hash cannot prove two images are the same.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
import yaml
from PIL import Image
from rich.progress import track
from rich.table import Table

from medtl.config import DataConfig, ExperimentConfig, expand_vars, parse_config, resolve_paths
from medtl.data.sources import SampleTable, get_source, load_table
from medtl.data.splits import assign_groups, close_pairs, make_folds, read_manifest
from medtl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_LISTED = 50


@dataclass
class _Facts:
    exact: str
    phash: np.ndarray
    size: tuple[int, int]
    mode: str


@dataclass
class AuditReport:
    """The audit of one data set; :meth:`to_dict` is the JSON written by ``medtl audit --json``.

    Attributes:
        target: What was audited.
        source: Data source kind (``folder``, ``csv``, ``medmnist``, ``dicom``).
        location: The data location.
        split_origin: Where the audited splits come from.
        n_samples: Samples listed by the source.
        n_folds: Folds audited.
        leakage: A patient or an exact duplicate sits in two splits of a fold.
        sections: The report body (see the module docstring).
    """

    target: str
    source: str
    location: str
    split_origin: str
    n_samples: int
    n_folds: int
    leakage: bool
    sections: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        head = {k: getattr(self, k) for k in ("target", "source", "location", "split_origin", "n_samples",
                                               "n_folds", "leakage")}
        return head | self.sections


# ---------------------------------------------------------------- entry point


def audit(target: Path, distance: int = 2, hash_size: int = 8, progress: bool = True) -> AuditReport:
    """Audit a run directory, a YAML config (with a ``data`` block), a class folder or a MedMNIST ``.npz``.

    Args:
        target: Run directory (with ``splits.csv`` and ``config.yaml``), YAML file, folder or ``.npz``.
        distance: Largest Hamming distance between perceptual hashes counted as a near-duplicate.
        hash_size: Perceptual hash side (``hash_size**2`` bits).
        progress: Show a progress bar.

    Returns:
        The report.

    Raises:
        ConfigError: The target is none of the above, or its config is invalid.
        DataError: The data cannot be listed.
    """
    if distance < 0 or hash_size < 2:
        raise ConfigError(f"audit: distance must be >= 0 (got {distance}) and hash_size >= 2 (got {hash_size})")
    cfg, manifest = _resolve_target(Path(target))
    table = load_table(cfg)
    facts, unreadable = _decode_all(table, cfg, hash_size, progress)
    folds, origin = _assignments(table, cfg, facts, manifest)
    report = AuditReport(str(target), table.source, table.location, origin, len(table.samples), len(folds), False)
    report.sections = _analyse(table, facts, folds, distance, hash_size)
    report.sections["unreadable"] = [{"id": i, "reason": r} for i, r in table.bad + unreadable]
    report.leakage = bool(report.sections["patients"]["crossing"] or
                          report.sections["exact_duplicates"]["crossing_splits"])
    return report


def _resolve_target(target: Path) -> tuple[DataConfig, Path | None]:
    if target.is_dir() and (target / "splits.csv").is_file():
        return _yaml_data_config(target / "config.yaml"), target / "splits.csv"
    if target.is_dir():
        return DataConfig(source="folder", root=target.absolute()), None
    if target.suffix == ".npz":
        return DataConfig(source="medmnist", path=target.absolute()), None
    if target.suffix in (".yaml", ".yml"):
        return _yaml_data_config(target), None
    raise ConfigError(f"{target}: not a run directory (with splits.csv), YAML config, image folder or .npz; "
                      "pass one of these to medtl audit")


def _yaml_data_config(path: Path) -> DataConfig:
    if not path.is_file():
        raise ConfigError(f"{path} not found; a run directory holds config.yaml next to splits.csv")
    tree = yaml.safe_load(path.read_text()) or {}
    data = tree.get("data", tree) if isinstance(tree, dict) else tree
    cfg: ExperimentConfig = parse_config({"data": expand_vars(data)}, str(path))
    return resolve_paths(cfg, path.parent).data


# ---------------------------------------------------------------- decoding


def _decode_all(table: SampleTable, cfg: DataConfig, hash_size: int,
                progress: bool) -> tuple[list[_Facts | None], list[tuple[str, str]]]:
    facts: list[_Facts | None] = [None] * len(table.samples)
    bad: list[tuple[str, str]] = []
    items = track(_iter_images(table, cfg), total=len(table.samples), description="auditing images",
                  disable=not progress, transient=True)
    for i, image, exact in items:
        if isinstance(image, str):
            bad.append((table.samples[i].id, image))
            continue
        facts[i] = _Facts(exact, imagehash.phash(image, hash_size).hash.reshape(-1), image.size, image.mode)
    return facts, bad


def _iter_images(table: SampleTable, cfg: DataConfig) -> Iterator[tuple[int, Image.Image | str, str]]:
    """``(sample index, decoded image or failure reason, exact hash)`` for every sample, through its source."""
    return get_source(table.source).iter_decoded(table, cfg)


# ---------------------------------------------------------------- splits


def _assignments(table: SampleTable, cfg: DataConfig, facts: list[_Facts | None],
                 manifest: Path | None) -> tuple[list[list[str]], str]:
    """Role of every sample in every fold (``unassigned`` when a fold does not use it)."""
    samples = table.samples
    if manifest is not None:
        return _manifest_roles(table, manifest), f"run manifest {manifest}"
    if any(s.split is not None for s in samples):
        return [[s.split or "unassigned" for s in samples]], "predefined split of the source (as published)"
    ok = [i for i, f in enumerate(facts) if f is not None]
    hashes = [facts[i].exact for i in ok]  # type: ignore[union-attr]
    sub = [samples[i] for i in ok]
    labels = np.array([s.label for s in sub])
    links: list[tuple[int, int]] = []
    if cfg.split.near_duplicates is not None:  # group exactly as a run would
        bits = np.packbits(np.stack([facts[i].phash for i in ok]).astype(bool), axis=1)  # type: ignore[union-attr]
        links = close_pairs(bits, cfg.split.near_duplicates)
    groups = assign_groups(sub, hashes, links)
    folds = make_folds(labels, groups, [None] * len(sub), cfg.split, cfg.train_fraction, class_names=table.class_names)
    roles = []
    for fold in folds:
        fold_roles = ["unassigned"] * len(samples)
        for role in ("train", "val", "test"):
            for j in fold.role(role):
                fold_roles[ok[int(j)]] = role
        roles.append(fold_roles)
    return roles, f"folds made by the config (data.split.method {cfg.split.method})"


def _manifest_roles(table: SampleTable, manifest: Path) -> list[list[str]]:
    rows = read_manifest(manifest)
    index = {s.id: i for i, s in enumerate(table.samples)}
    unknown = sorted({r["id"] for r in rows} - set(index))
    if unknown:
        raise DataError(f"{manifest}: {len(unknown)} sample ids are not in the data the run's config lists "
                        f"(e.g. {unknown[:5]}); the data changed since the run")
    n_folds = max(r["fold"] for r in rows) + 1
    roles = [["unassigned"] * len(table.samples) for _ in range(n_folds)]
    for r in rows:
        if r["role"] in ("train", "val", "test"):
            roles[r["fold"]][index[r["id"]]] = r["role"]
    return roles


# ---------------------------------------------------------------- analysis


def _analyse(table: SampleTable, facts: list[_Facts | None], folds: list[list[str]], distance: int,
             hash_size: int) -> dict[str, Any]:
    exact_groups = _exact_groups(facts)
    near_groups, n_pairs = near_duplicate_groups(facts, exact_groups, distance)
    return {
        "images": _image_stats(facts),
        "class_balance": _class_balance(table, folds),
        "patients": _patients(table, folds),
        "exact_duplicates": _describe_groups(table, exact_groups, folds) | {
            "n_redundant": sum(len(g) - 1 for g in exact_groups)},
        "near_duplicates": _describe_groups(table, near_groups, folds) | {
            "distance": distance, "hash_size": hash_size, "n_pairs": n_pairs,
            "note": "groups of images with different pixels whose perceptual hashes differ in at most "
                    "'distance' bits (exact duplicates counted once)"},
    }


def _exact_groups(facts: list[_Facts | None]) -> list[list[int]]:
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f is not None:
            by_hash[f.exact].append(i)
    return [idx for idx in by_hash.values() if len(idx) > 1]


def near_duplicate_groups(facts: list[_Facts | None], exact_groups: list[list[int]],
                          distance: int) -> tuple[list[list[int]], int]:
    """Groups of distinct images linked by perceptual-hash distance <= ``distance``.

    Each exact-duplicate set is represented once; a group lists every member of the linked sets.

    Returns:
        The groups (sample indices) and the number of linked pairs of distinct images.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f is not None:
            members[f.exact].append(i)
    reps = [idx[0] for idx in members.values()]
    if len(reps) < 2:
        return [], 0
    bits = np.packbits(np.stack([facts[i].phash for i in reps]).astype(bool), axis=1)  # type: ignore[union-attr]
    pairs = close_pairs(bits, distance)
    parent = list(range(len(reps)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        parent[find(a)] = find(b)
    linked = {find(a) for a, _ in pairs}
    comps: dict[int, list[int]] = defaultdict(list)
    for r in range(len(reps)):
        if find(r) in linked:
            comps[find(r)] += members[facts[reps[r]].exact]  # type: ignore[union-attr]
    return [sorted(g) for g in comps.values()], len(pairs)


def _describe_groups(table: SampleTable, groups: list[list[int]], folds: list[list[str]]) -> dict[str, Any]:
    rows = []
    for g in groups:
        labels = sorted({table.class_names[table.samples[i].label] for i in g})
        crossing = [k for k, roles in enumerate(folds) if len({roles[i] for i in g} - {"unassigned"}) > 1]
        rows.append({"ids": [table.samples[i].id for i in g], "labels": labels,
                     "splits": sorted({folds[0][i] for i in g}), "crosses_splits": bool(crossing),
                     "crossing_folds": crossing, "conflicting_labels": len(labels) > 1})
    rows.sort(key=lambda r: (not r["crosses_splits"], not r["conflicting_labels"], r["ids"]))
    return {"n_groups": len(rows), "n_images": sum(len(g) for g in groups),
            "crossing_splits": sum(r["crosses_splits"] for r in rows),
            "conflicting_labels": sum(r["conflicting_labels"] for r in rows),
            "within_one_split": sum(not r["crosses_splits"] for r in rows), "groups": rows}


def _patients(table: SampleTable, folds: list[list[str]]) -> dict[str, Any]:
    if not table.has_patients:
        return {"has_patients": False, "n_patients": 0, "crossing": [],
                "note": "the source has no patient ids: patient leakage cannot be checked, only duplicates"}
    crossing = []
    for k, roles in enumerate(folds):
        seen: dict[str, set[str]] = defaultdict(set)
        for i, s in enumerate(table.samples):
            if s.patient is not None and roles[i] != "unassigned":
                seen[s.patient].add(roles[i])
        crossing += [{"fold": k, "patient": p, "splits": sorted(r)} for p, r in sorted(seen.items()) if len(r) > 1]
    n = len({s.patient for s in table.samples if s.patient is not None})
    return {"has_patients": True, "n_patients": n, "crossing": crossing[:_LISTED], "n_crossing": len(crossing)}


def _class_balance(table: SampleTable, folds: list[list[str]]) -> list[dict[str, Any]]:
    out = []
    for k, roles in enumerate(folds):
        for role in ("train", "val", "test", "unassigned"):
            counts = Counter(table.samples[i].label for i in range(len(roles)) if roles[i] == role)
            if counts:
                out.append({"fold": k, "split": role, "n": sum(counts.values()),
                            "counts": {n: counts.get(c, 0) for c, n in enumerate(table.class_names)}})
    return out


def _image_stats(facts: list[_Facts | None]) -> dict[str, Any]:
    ok = [f for f in facts if f is not None]
    if not ok:
        return {"n_decoded": 0}
    widths, heights = np.array([f.size[0] for f in ok]), np.array([f.size[1] for f in ok])

    def stats(v: np.ndarray) -> dict[str, float]:
        return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}

    return {"n_decoded": len(ok), "modes": dict(Counter(f.mode for f in ok).most_common()),
            "width": stats(widths), "height": stats(heights), "n_sizes": len({f.size for f in ok}),
            "most_common_sizes": [{"size": f"{w}x{h}", "n": n} for (w, h), n in
                                  Counter(f.size for f in ok).most_common(5)]}


# ---------------------------------------------------------------- terminal output


def report_tables(report: AuditReport, max_rows: int = 20) -> list[Table]:
    """Rich tables of a report: summary, class balance, and the duplicate groups that matter most."""
    return [_summary_table(report), _balance_table(report), _issues_table(report, max_rows)]


def _summary_table(report: AuditReport) -> Table:
    d = report.sections
    exact, near, patients, images = d["exact_duplicates"], d["near_duplicates"], d["patients"], d["images"]
    table = Table(title=f"medtl audit: {report.location}")
    table.add_column("check")
    table.add_column("result")
    rows = [
        ("source / splits", f"{report.source}; {report.split_origin}; {report.n_folds} fold(s)"),
        ("samples / unreadable", f"{report.n_samples} / {len(d['unreadable'])}"),
        ("patients in >1 split", f"{patients.get('n_crossing', 0)} of {patients['n_patients']}"
         if patients["has_patients"] else "no patient ids in the source"),
        ("exact-duplicate groups", f"{exact['n_groups']} ({exact['n_redundant']} redundant images)"),
        ("  crossing splits / conflicting labels", f"{exact['crossing_splits']} / {exact['conflicting_labels']}"),
        (f"near-duplicate groups (distance <= {near['distance']})", f"{near['n_groups']} ({near['n_pairs']} pairs)"),
        ("  crossing splits / conflicting labels", f"{near['crossing_splits']} / {near['conflicting_labels']}"),
        ("image modes", ", ".join(f"{m} {n}" for m, n in images.get("modes", {}).items())),
        ("image sizes", _sizes(images)),
        ("leakage", "[bold red]YES[/]" if report.leakage else "no"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _sizes(images: dict[str, Any]) -> str:
    if not images.get("n_decoded"):
        return "no image decoded"
    w, h = images["width"], images["height"]
    return (f"{images['n_sizes']} distinct; width {w['min']}-{w['max']} (median {w['median']:g}), "
            f"height {h['min']}-{h['max']} (median {h['median']:g})")


def _balance_table(report: AuditReport) -> Table:
    balance = report.sections["class_balance"]
    names = list(balance[0]["counts"]) if balance else []
    table = Table(title="class balance per split")
    for col in ("fold", "split", "n", *names):
        table.add_column(col)
    for row in balance:
        table.add_row(str(row["fold"]), row["split"], str(row["n"]), *[str(row["counts"][n]) for n in names])
    return table


def _issues_table(report: AuditReport, max_rows: int) -> Table:
    table = Table(title=f"duplicate groups crossing splits or with conflicting labels (first {max_rows})")
    for col in ("kind", "images", "labels", "splits (fold 0)"):
        table.add_column(col)
    for kind in ("exact_duplicates", "near_duplicates"):
        groups = [g for g in report.sections[kind]["groups"] if g["crosses_splits"] or g["conflicting_labels"]]
        for g in groups[:max_rows]:
            table.add_row(kind.split("_")[0], " == ".join(g["ids"][:4]) + (" ..." if len(g["ids"]) > 4 else ""),
                          ", ".join(g["labels"]), ", ".join(g["splits"]))
    return table
