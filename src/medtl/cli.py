"""The ``medtl`` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import sys
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ParamSpec

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from medtl.errors import ConfigError, MedtlError, RunInterrupted

if TYPE_CHECKING:
    from medtl.config import DataConfig

P = ParamSpec("P")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning with CNNs for medical image classification.")
weights_app = typer.Typer(no_args_is_help=True, help="The weights registry.")
app.add_typer(weights_app, name="weights")
cache_app = typer.Typer(no_args_is_help=True, help="The caches: frozen-prefix activations (train.prefix_cache) and "
                        "decoded images (data.cache).")
app.add_typer(cache_app, name="cache")
console = Console(stderr=True)
_PIPE_WIDTH = 100_000
"""Width of tables written to a pipe or file: wide enough that no cell is ever cut."""

_WARNINGS = logging.getLogger("medtl.warnings")
"""Python warnings (all third-party: medtl itself reports through logging) land here: in the run log."""


def _out() -> Console:
    """rich output on stdout: the terminal's width, or unlimited when stdout is a pipe or a file."""
    return Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)


class _TerminalFilter(logging.Filter):
    """Keeps third-party warnings off the terminal (they stay in the run log) unless ``--verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or not record.name.startswith(_WARNINGS.name)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the CLI: every warning becomes a ``medtl.warnings`` log record.

    Like :func:`logging.captureWarnings`, but under the ``medtl`` logger, so the run's log file
    (attached to ``medtl``) keeps Lightning's, torch's and timm's warnings; nothing is filtered out.
    """
    _WARNINGS.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and third-party "
                                                "warnings on the terminal.")] = False) -> None:
    handler = RichHandler(console=console, show_path=False)
    handler.addFilter(_TerminalFilter(verbose))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler])
    warnings.showwarning = _log_warning  # the CLI owns the process: route warnings into logging
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def handled(command: Callable[P, None]) -> Callable[P, None]:
    """Run a command: a medtl error or Ctrl-C ends it with a message on stderr and its exit code.

    ``MedtlError`` → ``error: <message>``, exit ``exc.exit_code`` (2 for user errors;
    :class:`~medtl.errors.RunInterrupted` → ``interrupted: <message>``, 130). ``KeyboardInterrupt``
    → ``interrupted (Ctrl-C): <command>``, 130. Anything else is a bug and keeps its traceback.
    """
    name = command.__name__.replace("_", " ")

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except RunInterrupted as exc:
            console.print(f"[bold yellow]interrupted:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except MedtlError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print(f"[bold yellow]interrupted (Ctrl-C):[/] {name}; nothing more was written")
            raise typer.Exit(RunInterrupted.exit_code) from None

    return run


def _file_on_the_way(path: Path) -> Path | None:
    """The nearest existing ``path`` or ancestor, when it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _out_dir(path: Path | None, option: str) -> None:
    """Refuse a folder option (``--out`` of train/study/demo, convert's OUT_DIR) that names a file."""
    blocker = _file_on_the_way(path) if path is not None else None
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a folder; pass a folder path "
                          "(it is created when missing)")


def _out_file(path: Path | None, option: str) -> None:
    """Refuse a file option that names a folder, or a file whose parent is a file."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; pass a file name (e.g. {path / 'out.json'})")
    blocker = _file_on_the_way(path.parent)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a folder; pass a path in a folder")


def _choice(value: str, choices: tuple[str, ...], option: str) -> str:
    """``value`` when it is one of ``choices``, else a :class:`ConfigError` naming the option (did-you-mean)."""
    if value in choices:
        return value
    hint = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
    raise ConfigError(f"{option} '{value}' is not a valid option." + (f" Did you mean '{hint[0]}'?" if hint else "")
                      + f" Choose one of: {', '.join(choices)}")


def _print_json(document: object) -> None:
    """One JSON document on stdout (NaN and infinities as null, paths as strings)."""
    sys.stdout.write(json.dumps(_plain(document), indent=2) + "\n")


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return str(value)


@app.command()
@handled
def train(config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
          out_dir: Annotated[Path, typer.Option("--out", help="Run directory to create.")],
          overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
          resume: Annotated[bool, typer.Option(help="Continue the unfinished run in --out (same config).")]
          = False,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Train and evaluate one experiment; writes the run directory."""
    from medtl.config import load_config
    from medtl.evaluate.table import metrics_table
    from medtl.experiment import run_experiment

    _out_dir(out_dir, "--out")
    cfg = load_config(config, overrides or [])
    metrics = run_experiment(cfg, out_dir, progress=not quiet, resume=resume)
    _out().print(metrics_table([(cfg.name, metrics)]))
    _out().print(f"run directory: {out_dir}")


@app.command()
@handled
def tune(config: Annotated[Path, typer.Argument(help="Experiment YAML with a search: block.")],
         out_dir: Annotated[Path, typer.Option("--out", help="Run directory (an earlier search there is continued).")],
         trials: Annotated[int, typer.Option(min=1, help="Finished trials per study (per outer fold when nested).")]
         = 20,
         timeout: Annotated[float | None, typer.Option(min=1, help="Seconds per study (per outer fold).")] = None,
         storage: Annotated[str | None, typer.Option(help="Optuna storage: RDB URL or journal:PATH (default "
                                                     "sqlite:///OUT/optuna.db); workers on one storage share it.")]
         = None,
         sampler: Annotated[str, typer.Option(help="tpe, random or grid.")] = "tpe",
         nest: Annotated[bool, typer.Option("--nest/--no-nest", help="Nested search (unbiased); --no-nest: one "
                                            "flat search whose figure is optimistic.")] = True,
         inner_folds: Annotated[int, typer.Option(min=2, max=20, help="Inner folds per outer fold.")] = 3,
         overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
         quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Hyperparameter search on Optuna, nested by default; writes a run directory with tune.json."""
    from medtl.tune import SAMPLERS, TuneOptions, load_tune, run_tune, tune_table

    _out_dir(out_dir, "--out")
    spec = load_tune(config, overrides or [])
    options = TuneOptions(trials, timeout, storage, _choice(sampler, SAMPLERS, "--sampler"), nest, inner_folds)
    summary = run_tune(spec, out_dir, options, progress=not quiet)
    _out().print(tune_table(summary))
    _out().print(f"run directory: {out_dir}")


@app.command()
@handled
def synth(config: Annotated[Path, typer.Argument(help="Experiment YAML (its data, split and seed are used).")],
          out_dir: Annotated[Path, typer.Option("--out", help="Folder for the synthetic images, manifest.csv and "
                                                "synth.json.")],
          size: Annotated[int, typer.Option(help="Generator image size: 64 or 128 (32 for quick tests).")] = 64,
          steps: Annotated[int, typer.Option(min=1, help="GAN updates per fold.")] = 1000,
          batch_size: Annotated[int, typer.Option(min=1, help="Real images per GAN update.")] = 32,
          lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate of both networks.")] = 2e-4,
          width: Annotated[int, typer.Option(min=4, help="Base channel width of the networks.")] = 32,
          per_class: Annotated[int | None, typer.Option(min=1, help="Images per class and fold (default: as many "
                                                        "as the class's real training images).")] = None,
          seed: Annotated[int | None, typer.Option(help="Seed of fold 0 (fold k: seed + k); default train.seed.")]
          = None,
          quality: Annotated[bool, typer.Option("--quality/--no-quality", help="FD (Lite0 features) and "
                                                "precision/recall per fold.")] = True,
          overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value")] = None,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Train a class-conditional GAN on each fold's training images only; write synthetic images for data.synthetic."""
    from medtl.config import load_config
    from medtl.synth import SynthOptions, run_synth, synth_table

    _out_dir(out_dir, "--out")
    cfg = load_config(config, overrides or [])
    options = SynthOptions(size=size, steps=steps,
                           batch_size=batch_size, lr=lr, width=width, per_class=per_class, seed=seed, quality=quality)
    summary = run_synth(cfg, out_dir, options, progress=not quiet)
    _out().print(synth_table(summary))
    _out().print(f"synthetic images: {out_dir} (use data.synthetic: {{dir: {out_dir}, fraction: 0.5}})")


@app.command()
@handled
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

    _out_file(out_file, "--out")
    metrics = evaluate_run(run_dir, _data_config(data) if data else None, out_file, tta=tta)
    _out().print(metrics_table([(str(run_dir), metrics)]))


def _data_config(path: Path) -> DataConfig:
    """``--data``: an image folder, or a YAML file read like ``train`` reads its config."""
    from medtl.config import DataConfig, load_data_config

    if path.is_dir():
        return DataConfig(source="folder", root=path.absolute())
    return load_data_config(path)


@app.command()
@handled
def predict(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
            paths: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
            out_file: Annotated[Path | None, typer.Option("--out", help="CSV file (default: stdout).")] = None,
            ) -> None:
    """Class probabilities for images (CSV), averaged over the run's fold models."""
    from medtl.artifact import load_meta
    from medtl.predict import predict_files, rows_to_csv

    _out_file(out_file, "--out")
    rows = predict_files(run_dir, paths)
    text = rows_to_csv(rows, load_meta(run_dir).class_names)
    if out_file:
        out_file.write_text(text)
        console.print(f"{len(rows)} rows written to {out_file}")
    else:
        sys.stdout.write(text)
    if any(r["error"] for r in rows):
        console.print(f"[yellow]{sum(bool(r['error']) for r in rows)} file(s) could not be read (see 'error')")


_JSON = typer.Option("--json", help="One JSON document on stdout instead of tables.")


@weights_app.command("list")
@handled
def weights_list(as_json: Annotated[bool, _JSON] = False) -> None:
    """Print the weights registry."""
    import dataclasses

    from medtl.models.registry import list_weights

    specs = list_weights()
    if as_json:
        _print_json([dataclasses.asdict(s) | {"offline": s.offline} for s in specs])
        return
    table = Table(title="medtl weights")
    for col in ("name", "architecture", "offline", "input", "mean / std", "license", "sha256"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, s.architecture, "yes" if s.offline else "no (hub)", str(s.input_size),
                      f"{_fmt3(s.mean)} / {_fmt3(s.std)}", s.license, (s.sha256 or "")[:12])
    _out().print(table)
    _out().print("Also: hub:<any timm pretrained tag>, file:<checkpoint>, none")


def _fmt3(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:.3g}" for v in values)


@app.command()
@handled
def layers(backbone: Annotated[str, typer.Argument(help="A timm architecture, e.g. tf_efficientnet_lite0.")],
           weights: Annotated[str, typer.Option(help="Weights to load (shapes do not depend on them).")] = "none",
           image_size: Annotated[int, typer.Option(help="Input size for the output shapes (8 to 4096 px).")] = 224,
           as_json: Annotated[bool, _JSON] = False) -> None:
    """Print a backbone's cut points: valid names for transfer.unfreeze_from / truncate_at / schedule."""
    from medtl.models.cuts import describe
    from medtl.models.network import create_model

    if not 8 <= image_size <= 4096:
        raise ConfigError(f"--image-size {image_size}: the input size must be 8 to 4096 px (e.g. 224)")
    model, _ = create_model(backbone, weights, 2)
    rows = describe(model.backbone, image_size)
    if as_json:
        _print_json({"backbone": backbone, "image_size": image_size, "cut_points": [
            {"name": r.name, "shape": list(r.shape), "params": r.params, "params_below": r.params_below,
             "params_from_here": r.params_from_here, "stage": r.stage} for r in rows]})
        return
    table = Table(title=f"{backbone} cut points at {image_size} px")
    for col in ("cut point", "output (C, H, W)", "parameters", "frozen below", "trained from here", "timm stage"):
        table.add_column(col, justify="right" if col not in ("cut point", "timm stage") else "left",
                         no_wrap=col == "cut point")
    for row in rows:
        table.add_row(row.name, "×".join(map(str, row.shape)), f"{row.params:,}", f"{row.params_below:,}",
                      f"{row.params_from_here:,}", row.stage)
    _out().print(table)
    _out().print("unfreeze_from: head or any cut point (it and everything above train); "
                 "truncate_at: any cut point (layers above are dropped)")


@app.command()
@handled
def demo(out_dir: Annotated[Path, typer.Option("--out", help="Where the run directories go.")] = Path("runs"),
         quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Feature extraction vs fine-tuning, EfficientNet-Lite0, 5-fold CV on brain MRI."""
    from medtl.demo import run_demo
    from medtl.evaluate.table import metrics_table

    _out_dir(out_dir, "--out")
    results = run_demo(out_dir, progress=not quiet)
    _out().print(metrics_table([(name, m) for name, m, _ in results], title="medtl demo (95% CI)"))
    for name, m, run_dir in results:
        _out().print(f"{name}: {run_dir}  ({m['seconds']:.0f} s)")


@app.command()
@handled
def study(study_file: Annotated[Path, typer.Argument(help="Study YAML (base experiment + axes).")],
          out_dir: Annotated[Path | None, typer.Option("--out", help="Study directory (default "
                                                       "runs/studies/<name>).")] = None,
          overrides: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value for the base")]
          = None,
          only: Annotated[list[str] | None, typer.Option("--only", help="Run only this cell (repeatable).")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and list the cells; run nothing.")]
          = False,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
          workers: Annotated[int, typer.Option("--workers", min=1, help="Cells run at once as local processes "
                                               "(with --scheduler: Dask tasks; default one per Dask worker).")]
          = 1,
          scheduler: Annotated[str | None, typer.Option("--scheduler", "--dask", help="Run the cells on a Dask "
                                                        "cluster: dask://HOST:PORT of its scheduler.")]
          = None) -> None:
    """Run a grid of experiments (resuming finished cells) and compare them; exit 1 if a cell failed."""
    from medtl.study import load_study, plan_table, run_study, study_table

    _out_dir(out_dir, "--out")
    spec = load_study(study_file, overrides or [])
    result = run_study(spec, out_dir, progress=not quiet, only=only, dry_run=dry_run, workers=workers,
                       scheduler=scheduler)
    if dry_run:
        _out().print(plan_table(result))
        return
    _out().print(study_table(result))
    _out().print(f"study directory: {result.out_dir}")
    if result.failed:
        console.print(f"[bold red]{len(result.failed)} cell(s) failed:[/] {', '.join(result.failed)} "
                      f"(see {result.out_dir / 'study.json'})")
        raise typer.Exit(1)


@app.command()
@handled
def compare(run_dirs: Annotated[list[Path] | None, typer.Argument(help="Finished run directories.")] = None,
            baseline: Annotated[Path | None, typer.Option(help="Run to test against (default: the first).")]
            = None,
            groups: Annotated[list[str] | None, typer.Option(
                "--group", help="Runs of one configuration, one per seed: comma-separated run directories or a glob "
                "pattern (repeat per configuration; the first is the baseline; same seed order in each).")] = None,
            csv_file: Annotated[Path | None, typer.Option("--csv", help="Write the comparison as CSV.")] = None,
            md_file: Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown table.")] = None,
            as_json: Annotated[bool, _JSON] = False) -> None:
    """Metrics with 95% CIs side by side; DeLong and McNemar tests against the baseline on shared images
    (clustered by patient where patients have several images); --group: mean ± sd and paired tests over seeds."""
    from medtl import rundir
    from medtl.evaluate.compare import (
        SEED_COLUMNS,
        comparison_csv,
        comparison_markdown,
        comparison_table,
        default_columns,
        seed_markdown,
        seed_table,
    )

    _out_file(csv_file, "--csv")
    _out_file(md_file, "--markdown")
    if bool(run_dirs) == bool(groups):
        raise ConfigError("give either run directories or --group options (one per configuration), not both")
    if groups:
        rows = rundir.compare_seed_groups([_run_group(g) for g in groups])
        table, columns, markdown = seed_table(rows), list(SEED_COLUMNS), seed_markdown
    else:
        rows = rundir.compare_runs(run_dirs or [], baseline)
        table, columns, markdown = comparison_table(rows), default_columns(), comparison_markdown
    if as_json:
        _print_json(rows)
    else:
        _out().print(table)
    if csv_file:
        csv_file.write_text(comparison_csv(rows, columns))
        console.print(f"comparison written to {csv_file}")
    if md_file:
        md_file.write_text(markdown(rows))
        console.print(f"markdown table written to {md_file}")


def _run_group(spec: str) -> list[Path]:
    """The run directories of one ``--group``: comma-separated paths, or a glob pattern (sorted)."""
    if any(ch in spec for ch in "*?["):
        matches = sorted(Path().glob(spec)) if not Path(spec).is_absolute() else sorted(
            Path(Path(spec).anchor).glob(str(Path(spec).relative_to(Path(spec).anchor))))
        if not matches:
            raise ConfigError(f"--group '{spec}': the pattern matches no run directory")
        return matches
    return [Path(p.strip()) for p in spec.split(",") if p.strip()]


def _convert_choices(field: str) -> tuple[str, ...]:
    """The valid values of a ``ConvertOptions`` field (its ``Literal``)."""
    import typing

    from medtl.data.convert import ConvertOptions

    return typing.get_args(typing.get_type_hints(ConvertOptions)[field])


@app.command()
@handled
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
    import typing

    from medtl.config import DicomConfig
    from medtl.data.convert import ConvertOptions, convert_dicom

    # custom needs a center and width, which convert has no options for
    windows = tuple(w for w in typing.get_args(DicomConfig.model_fields["window"].annotation) if w != "custom")
    _choice(window, windows, "--window")
    _choice(fmt, _convert_choices("format"), "--format")
    _choice(label_key, _convert_choices("label_key"), "--label-key")
    _choice(dates, _convert_choices("dates"), "--dates")
    _out_dir(out_dir, "OUT_DIR")
    options = ConvertOptions(format=fmt, dicom=DicomConfig(window=window), labels=labels,  # type: ignore[arg-type]
                             label_key=label_key, label_column=label_column, dates=dates,  # type: ignore[arg-type]
                             key=key, log_source_paths=log_source_paths)
    report = convert_dicom(src_dir, out_dir, options, progress=not quiet, overwrite=overwrite)
    for source, reason in report.errors:
        console.print(f"[red]not converted[/] {escape(str(source))}: {escape(str(reason))}")
    _out().print(f"{report.n_converted} of {report.n_files} files converted into {report.n_outputs} outputs in "
                 f"{out_dir}; {len(report.errors)} errors, {len(report.warnings)} warnings (see {report.report.name})")


@app.command()
@handled
def audit(target: Annotated[Path, typer.Argument(help="Run directory, YAML config, image folder or .npz.")],
          json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report here.")] = None,
          distance: Annotated[int, typer.Option(help="Max perceptual-hash distance of near-duplicates.")] = 2,
          hash_size: Annotated[int, typer.Option(help="Perceptual hash side (bits = side^2).")] = 8,
          quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False) -> None:
    """Leakage and data-quality report; exit code 1 when a patient or exact duplicate crosses splits."""
    from medtl.data.audit import audit as run_audit
    from medtl.data.audit import report_tables

    _out_file(json_path, "--json")
    report = run_audit(target, distance=distance, hash_size=hash_size, progress=not quiet)
    for table in report_tables(report):
        _out().print(table)
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2))
        _out().print(f"report written to {json_path}")
    if report.leakage:
        console.print("[bold red]leakage:[/] a patient or an identical image is in more than one split")
        raise typer.Exit(1)


@app.command()
@handled
def report(target: Annotated[Path, typer.Argument(help="A run directory or a study directory.")],
           out_file: Annotated[Path | None, typer.Option("--out", help="HTML file (default: TARGET/report.html).")]
           = None,
           cam: Annotated[bool, typer.Option(help="Grad-CAM gallery (loads the models).")] = True,
           bootstrap: Annotated[int | None, typer.Option(help="Bootstrap resamples (default: the run's).")] = None,
           ) -> None:
    """One self-contained HTML report of a run or a study (figures embedded, no network)."""
    from medtl.report import write_report

    _out_file(out_file, "--out")
    path = write_report(target, out_file, cam=cam, n_boot=bootstrap)
    _out().print(f"report written to {path}")


@app.command()
@handled
def export(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
           fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
           out_dir: Annotated[Path | None, typer.Option("--out", help="Folder (default: RUN/export).")] = None,
           quantize: Annotated[str | None, typer.Option(help="int8: also an onnxruntime-quantised graph.")] = None,
           as_json: Annotated[bool, _JSON] = False) -> None:
    """One inference graph (fold ensemble, test-time views, temperature) with its contract as metadata."""
    from medtl.export import FORMATS, QUANTIZE, export_run

    _choice(fmt, FORMATS, "--format")
    if quantize is not None:
        _choice(quantize, QUANTIZE, "--quantize")
    _out_dir(out_dir, "--out")
    result = export_run(run_dir, fmt, out_dir, quantize)
    if as_json:
        _print_json({"graph": result.graph, "contract": result.contract_file, "int8": result.int8,
                     "seconds": result.seconds})
        return
    _out().print(f"exported to {result.graph} (contract: {result.contract_file})"
                 + (f"; int8: {result.int8}" if result.int8 else ""))


@app.command()
@handled
def serve(source: Annotated[Path, typer.Argument(help="A finished run directory, an export folder or a .onnx/.ts "
                                                      "file.")],
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
          max_mb: Annotated[float, typer.Option(help="Largest request body in MiB.", min=0.001)] = 32.0,
          max_batch: Annotated[int, typer.Option(help="Most images per forward pass.", min=1)] = 32,
          max_wait_ms: Annotated[float, typer.Option(help="Wait for a batch to fill (ms).", min=0.0)] = 5.0,
          threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads.", min=1)] = None,
          ) -> None:
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /metrics."""
    from medtl.serve import ServeOptions, run_server

    options = ServeOptions(max_bytes=int(max_mb * 2**20), max_batch=max_batch, max_wait_ms=max_wait_ms,
                           threads=threads)
    run_server(source, host, port, options)


@app.command()
@handled
def card(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
         as_json: Annotated[bool, _JSON] = False) -> None:
    """Write the model card (RUN/model_card.md): use, data, protocol, metrics, calibration, lineage, shifts."""
    from medtl.report.card import card_data, write_card

    path = write_card(run_dir)
    if as_json:
        _print_json(card_data(run_dir))
        return
    _out().print(f"model card written to {path}")


_CACHE_ROOT = typer.Option("--root", help="Activation cache folder (default: $MEDTL_CACHE/activations or "
                           "~/.cache/medtl/activations). The decoded-image cache is $MEDTL_CACHE/decoded.")


class _CacheKind(StrEnum):
    activations = "activations"
    decoded = "decoded"
    all = "all"


@cache_app.command("info")
@handled
def cache_info(root: Annotated[Path | None, _CACHE_ROOT] = None,
               entries: Annotated[bool, typer.Option("--entries", help="List every entry.")] = False,
               as_json: Annotated[bool, _JSON] = False) -> None:
    """Where the activation and decoded-image caches are, and how many entries and bytes they hold."""
    from medtl.caches import cache_report

    report = cache_report(root, entries)
    if as_json:
        _print_json(report.to_dict())
        return
    out = _out()
    act, decoded = report.activations, report.decoded
    out.print("activation cache (train.prefix_cache)")
    if act is None:
        out.print(f"root: {report.activation_root}\nentries: 0\nbytes: 0 (the folder does not exist yet)")
    else:
        out.print(f"root: {act.root}\nentries: {act.entries}\nbytes: {act.bytes:,} ({_size(act.bytes)})")
        if report.activation_entries:
            out.print(_cache_table(report.activation_entries))
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
@handled
def cache_clear(root: Annotated[Path | None, _CACHE_ROOT] = None,
                what: Annotated[_CacheKind, typer.Option("--what", help="Which cache to clear.")] = _CacheKind.all,
                yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete cached activations and/or decoded images (they are recomputed when next needed)."""
    from medtl.caches import clear_plan

    targets, looked = clear_plan(root, what.value)  # type: ignore[arg-type]
    if not targets:
        out_paths = " and ".join(str(p) for p in looked)
        _out().print(f"nothing to clear: {out_paths} {'does' if len(looked) == 1 else 'do'} not exist")
        return
    if not yes:
        listed = " and ".join(f"{t.entries} {t.label} ({_size(t.bytes)}) under {t.path}" for t in targets)
        typer.confirm(f"delete {listed}?", abort=True)
    for target in targets:
        removed, size = target.clear()
        _out().print(f"removed {removed} entries ({size:,} bytes, {_size(size)}) from {target.path}")


if __name__ == "__main__":
    app()
