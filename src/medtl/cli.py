"""The ``medtl`` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from medtl.errors import MedtlError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning with CNNs for medical image classification.")
weights_app = typer.Typer(no_args_is_help=True, help="The weights registry.")
app.add_typer(weights_app, name="weights")
cache_app = typer.Typer(no_args_is_help=True, help="The caches: frozen-prefix activations (train.prefix_cache) and "
                        "decoded images (data.cache).")
app.add_typer(cache_app, name="cache")
console = Console(stderr=True)
out = Console()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def train(config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
          out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
          overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Train and evaluate one experiment; writes the run directory."""
    from medtl.config import load_config
    from medtl.evaluate.table import metrics_table
    from medtl.experiment import run_experiment

    try:
        cfg = load_config(config, overrides or [])
        metrics = run_experiment(cfg, out_dir, progress=not quiet)
    except MedtlError as exc:
        _fail(exc)
    out.print(metrics_table([(cfg.name, metrics)]))
    out.print(f"run directory: {out_dir}")


@app.command()
def evaluate(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
             data: Annotated[Path | None, typer.Option(help="YAML with a data block, or an image folder.")] = None,
             out_file: Annotated[Path | None, typer.Option("--out", help="Write metrics JSON here.")] = None,
             tta: Annotated[str | None, typer.Option(
                 help="Test-time augmentation instead of the run's: none, hflip or hflip_zoom. Without --data the "
                      "run's own test (out-of-fold) images are predicted again by their fold's model.")] = None,
             ) -> None:
    """Metrics of a run: recomputed from its predictions, or on other data with its model."""
    from medtl.evaluate.table import metrics_table
    from medtl.predict import evaluate_run

    try:
        metrics = evaluate_run(run_dir, _data_config(data) if data else None, out_file, tta=tta)
    except MedtlError as exc:
        _fail(exc)
    out.print(metrics_table([(str(run_dir), metrics)]))


def _data_config(path: Path):
    import yaml

    from medtl.config import DataConfig, expand_vars

    if path.is_dir():
        return DataConfig(source="folder", root=path)
    tree = expand_vars(yaml.safe_load(path.read_text()) or {})
    return DataConfig.model_validate(tree.get("data", tree))


@app.command()
def predict(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
            paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
            out_file: Annotated[Path | None, typer.Option("--out", help="CSV file (default: stdout).")] = None,
            ) -> None:
    """Class probabilities for images (CSV), averaged over the run's fold models."""
    from medtl.artifact import load_meta
    from medtl.predict import predict_files, rows_to_csv

    try:
        rows = predict_files(run_dir, paths)
        text = rows_to_csv(rows, load_meta(run_dir).class_names)
    except MedtlError as exc:
        _fail(exc)
    if out_file:
        out_file.write_text(text)
        console.print(f"{len(rows)} rows written to {out_file}")
    else:
        sys.stdout.write(text)
    if any(r["error"] for r in rows):
        console.print(f"[yellow]{sum(bool(r['error']) for r in rows)} file(s) could not be read (see 'error')")


@weights_app.command("list")
def weights_list() -> None:
    """Print the weights registry."""
    from medtl.models.registry import list_weights

    table = Table(title="medtl weights")
    for col in ("name", "architecture", "offline", "input", "mean / std", "license", "sha256"):
        table.add_column(col)
    for s in list_weights():
        table.add_row(s.name, s.architecture, "yes" if s.offline else "no (hub)", str(s.input_size),
                      f"{_fmt3(s.mean)} / {_fmt3(s.std)}", s.license, (s.sha256 or "")[:12])
    out.print(table)
    out.print("Also: hub:<any timm pretrained tag>, file:<checkpoint>, none")


def _fmt3(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.3g}" for v in values)


@app.command()
def layers(backbone: Annotated[str, typer.Argument(help="A timm architecture, e.g. tf_efficientnet_lite0.")],
           weights: Annotated[str, typer.Option(help="Weights to load (shapes do not depend on them).")] = "none",
           image_size: Annotated[int, typer.Option(help="Input size for the output shapes.")] = 224) -> None:
    """Print a backbone's cut points: valid names for transfer.unfreeze_from / truncate_at / schedule."""
    from medtl.models.network import create_model
    from medtl.transfer.cuts import describe

    try:
        model, _ = create_model(backbone, weights, 2)
    except MedtlError as exc:
        _fail(exc)
    table = Table(title=f"{backbone} cut points at {image_size} px")
    for col in ("cut point", "output (C, H, W)", "parameters", "frozen below", "trained from here", "timm stage"):
        table.add_column(col, justify="right" if col not in ("cut point", "timm stage") else "left",
                         no_wrap=col == "cut point")
    for row in describe(model.backbone, image_size):
        table.add_row(row.name, "×".join(map(str, row.shape)), f"{row.params:,}", f"{row.params_below:,}",
                      f"{row.params_from_here:,}", row.stage)
    out.print(table)
    out.print("unfreeze_from: head or any cut point (it and everything above train); "
              "truncate_at: any cut point (layers above are dropped)")


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="Where the run directories go.")] = Path("runs"),
         quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Feature extraction vs fine-tuning, EfficientNet-Lite0, 5-fold CV on brain MRI."""
    from medtl.demo import run_demo
    from medtl.evaluate.table import metrics_table

    try:
        results = run_demo(out_dir, progress=not quiet)
    except MedtlError as exc:
        _fail(exc)
    out.print(metrics_table([(name, m) for name, m, _ in results], title="medtl demo (95% CI)"))
    for name, m, run_dir in results:
        out.print(f"{name}: {run_dir}  ({m['seconds']:.0f} s)")


@app.command()
def study(study_file: Annotated[Path, typer.Argument(help="Study YAML (base experiment + axes).")],
          out_dir: Annotated[Path | None, typer.Option("--out", help="Study directory (default "
                                                       "runs/studies/<name>).")] = None,
          overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value for the base")]
          = None,
          only: Annotated[list[str] | None, typer.Option("--only", help="Run only this cell (repeatable).")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the cells; run nothing.")]
          = False,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Run a grid of experiments (resuming finished cells) and compare them; exit 1 if a cell failed."""
    from medtl.study import load_study, plan_table, run_study, study_table

    try:
        spec = load_study(study_file, overrides or [])
        result = run_study(spec, out_dir, progress=not quiet, only=only, dry_run=dry_run)
    except MedtlError as exc:
        _fail(exc)
    if dry_run:
        out.print(plan_table(result))
        return
    out.print(study_table(result))
    out.print(f"study directory: {result.out_dir}")
    if result.failed:
        console.print(f"[bold red]{len(result.failed)} cell(s) failed:[/] {', '.join(result.failed)} "
                      f"(see {result.out_dir / 'study.json'})")
        raise typer.Exit(1)


@app.command()
def compare(run_dirs: Annotated[list[Path], typer.Argument(help="Finished run directories.")],
            baseline: Annotated[Path | None, typer.Option(help="Run to test against (default: the first).")]
            = None,
            csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the comparison as CSV.")] = None,
            md_file: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table.")] = None,
            ) -> None:
    """Metrics with 95% CIs side by side; DeLong and McNemar tests against the baseline on shared images."""
    from medtl.evaluate.compare import (
        compare_runs,
        comparison_csv,
        comparison_markdown,
        comparison_table,
        default_columns,
    )

    try:
        rows = compare_runs(run_dirs, baseline)
    except MedtlError as exc:
        _fail(exc)
    out.print(comparison_table(rows))
    if csv_file:
        csv_file.write_text(comparison_csv(rows, default_columns()))
        console.print(f"comparison written to {csv_file}")
    if md_file:
        md_file.write_text(comparison_markdown(rows))
        console.print(f"markdown table written to {md_file}")



@app.command()
def convert(src_dir: Annotated[Path, typer.Argument(help="Folder of DICOM files (recursive).")],
            out_dir: Annotated[Path, typer.Argument(help="New or empty output folder (outside SRC_DIR).")],
            fmt: Annotated[str, typer.Option("--format", help="png8 (windowed), png16 (stored values) or dicom.")]
            = "png8",
            window: Annotated[str, typer.Option(help="file, minmax, brain, subdural, bone, lung, mediastinum.")]
            = "file",
            labels: Annotated[Path | None, typer.Option(help="Labels CSV (keyed on the original values).")] = None,
            label_key: Annotated[str, typer.Option(help="PatientID, StudyInstanceUID, SOPInstanceUID or path.")]
            = "PatientID",
            label_column: Annotated[str, typer.Option(help="Label column of the labels CSV.")] = "label",
            dates: Annotated[str, typer.Option(help="shift (consistently) or remove.")] = "shift",
            key: Annotated[str | None, typer.Option(help="Secret for reproducible pseudonyms (default random).")]
            = None,
            log_source_paths: Annotated[bool, typer.Option(help="Name source paths in the audit log.")] = False,
            overwrite: Annotated[bool, typer.Option(help="Empty OUT_DIR first when it holds an earlier conversion.")]
            = False,
            quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """DICOM to de-identified PNG (or DICOM) + manifest.csv + de-identification audit log.

    Files that cannot be converted are listed with the reason (and in convert_report.json); the others
    are converted and the exit code stays 0.
    """
    from pydantic import ValidationError

    from medtl.config import DicomConfig
    from medtl.data.convert import ConvertOptions, convert_dicom

    try:
        options = ConvertOptions(format=fmt, dicom=DicomConfig(window=window), labels=labels,  # type: ignore[arg-type]
                                 label_key=label_key, label_column=label_column, dates=dates,  # type: ignore[arg-type]
                                 key=key, log_source_paths=log_source_paths)
        report = convert_dicom(src_dir, out_dir, options, progress=not quiet, overwrite=overwrite)
    except (MedtlError, ValidationError) as exc:
        _fail(exc)
    for source, reason in report.errors:
        console.print(f"[red]not converted[/] {source}: {reason}")
    out.print(f"{report.n_converted} of {report.n_files} files converted into {report.n_outputs} outputs in "
              f"{out_dir}; {len(report.errors)} errors, {len(report.warnings)} warnings (see {report.report.name})")


@app.command()
def audit(target: Annotated[Path, typer.Argument(help="Run directory, YAML config, image folder or .npz.")],
          json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report here.")] = None,
          distance: Annotated[int, typer.Option(help="Max perceptual-hash distance of near-duplicates.")] = 2,
          hash_size: Annotated[int, typer.Option(help="Perceptual hash side (bits = side^2).")] = 8,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Leakage and data-quality report; exit code 1 when a patient or exact duplicate crosses splits."""
    import json

    from medtl.data.audit import audit as run_audit
    from medtl.data.audit import report_tables

    try:
        report = run_audit(target, distance=distance, hash_size=hash_size, progress=not quiet)
    except MedtlError as exc:
        _fail(exc)
    for table in report_tables(report):
        out.print(table)
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
        out.print(f"report written to {json_path}")
    if report.leakage:
        console.print("[bold red]leakage:[/] a patient or an identical image is in more than one split")
        raise typer.Exit(1)


@app.command()
def report(target: Annotated[Path, typer.Argument(help="A run directory or a study directory.")],
           out_file: Annotated[Path | None, typer.Option("--out", help="HTML file (default: TARGET/report.html).")]
           = None,
           cam: Annotated[bool, typer.Option(help="Grad-CAM gallery (loads the models).")] = True,
           bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples (default: the run's).")] = None,
           ) -> None:
    """One self-contained HTML report of a run or a study (figures embedded, no network)."""
    from medtl.report import write_report

    try:
        path = write_report(target, out_file, cam=cam, n_boot=bootstrap)
    except MedtlError as exc:
        _fail(exc)
    out.print(f"report written to {path}")


_CACHE_ROOT = typer.Option("--root", help="Activation cache folder (default: $MEDTL_CACHE/activations or "
                           "~/.cache/medtl/activations). The decoded-image cache is $MEDTL_CACHE/decoded.")


class _CacheKind(StrEnum):
    activations = "activations"
    decoded = "decoded"
    all = "all"


@cache_app.command("info")
def cache_info(root: Annotated[Path | None, _CACHE_ROOT] = None,
               entries: Annotated[bool, typer.Option("--entries", help="List every entry.")] = False) -> None:
    """Where the activation and decoded-image caches are, and how many entries and bytes they hold."""
    from medtl.data import decoded_cache
    from medtl.transfer.prefix_cache import ActivationCache, default_root

    folder = root or default_root()
    out.print("activation cache (train.prefix_cache)")
    if not folder.is_dir():
        out.print(f"root: {folder}\nentries: 0\nbytes: 0 (the folder does not exist yet)")
    else:
        try:
            cache = ActivationCache(folder)
            info = cache.info()
        except MedtlError as exc:
            _fail(exc)
        out.print(f"root: {info.root}\nentries: {info.entries}\nbytes: {info.bytes:,} ({_size(info.bytes)})")
        if entries and info.entries:
            out.print(_cache_table(cache.entries()))
    decoded = decoded_cache.info()
    off = "" if decoded.enabled else " (disk tier off: $MEDTL_DECODED_CACHE=0)"
    out.print(f"\ndecoded-image cache (data.cache){off}\nroot: {decoded.root}\nentries: {decoded.entries}\n"
              f"bytes: {decoded.bytes:,} ({_size(decoded.bytes)} of at most {_size(decoded.max_bytes)})")
    if entries and decoded.entries:
        table = Table(title="decoded images per policy (largest first)")
        for col in ("policy", "images", "size"):
            table.add_column(col)
        for policy, (n, size) in decoded.policies.items():
            table.add_row(policy, str(n), _size(size))
        out.print(table)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _cache_table(rows: list[dict]) -> Table:
    import time

    table = Table(title="activation cache entries (most recently used first)")
    for col in ("digest", "backbone", "cut", "view", "images", "shape", "size", "last used"):
        table.add_column(col)
    for row in rows:
        parts = row.get("parts") or {}
        table.add_row(str(row["digest"])[:12], str(parts.get("backbone", "?")), str(parts.get("cut", "?")),
                      str(row.get("view", "?")), str(row.get("images", "?")), "×".join(map(str, row.get("shape", []))),
                      _size(int(row["bytes"])), time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"])))
    return table


@cache_app.command("clear")
def cache_clear(root: Annotated[Path | None, _CACHE_ROOT] = None,
                what: Annotated[_CacheKind, typer.Option("--what", help="Which cache to clear.")] = _CacheKind.all,
                yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete cached activations and/or decoded images (they are recomputed when next needed)."""
    from medtl.data import decoded_cache
    from medtl.transfer.prefix_cache import ActivationCache, default_root

    folder = root or default_root()
    targets: list[tuple[str, Path, int, int, Callable[[], tuple[int, int]]]] = []
    try:
        if what != _CacheKind.decoded and folder.is_dir():
            cache = ActivationCache(folder)
            info = cache.info()
            targets.append(("activation entries", folder, info.entries, info.bytes, cache.clear))
    except MedtlError as exc:
        _fail(exc)
    decoded_root = decoded_cache.default_root()
    if what != _CacheKind.activations and decoded_root.is_dir():
        decoded = decoded_cache.info(decoded_root)
        targets.append(("decoded images", decoded_root, decoded.entries, decoded.bytes,
                        lambda: decoded_cache.clear(decoded_root)))
    if not targets:
        wanted = [str(folder)] * (what != _CacheKind.decoded) + [str(decoded_root)] * (what != _CacheKind.activations)
        out.print(f"nothing to clear: {' and '.join(wanted)} {'does' if len(wanted) == 1 else 'do'} not exist")
        return
    if not yes:
        listed = " and ".join(f"{n} {label} ({_size(size)}) under {path}" for label, path, n, size, _ in targets)
        typer.confirm(f"delete {listed}?", abort=True)
    for _, path, _, _, clear in targets:
        try:
            removed, size = clear()
        except MedtlError as exc:
            _fail(exc)
        out.print(f"removed {removed} entries ({size:,} bytes, {_size(size)}) from {path}")


if __name__ == "__main__":
    app()
