"""``medtl tune``: the search block, inner folds, and nested / flat / resumed / multi-worker searches on real data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medtl import rundir
from medtl.cli import app
from medtl.errors import ConfigError
from medtl.experiment import prepare_data
from medtl.tune import OPTIMISTIC, inner_folds, load_tune, make_sampler, open_storage, parse_search, redact

SEARCH = {"train.lr": {"loguniform": [0.0003, 0.03]}, "model.head.dropout": {"uniform": [0.0, 0.5]}}


def write_tune(tmp_path: Path, root: Path, search: dict | None = None, **over: object) -> Path:
    """A tiny nested search on real brain MRI: 48 images at 32 px, frozen features, 2 epochs."""
    tree = {"name": "tiny",
            "data": {"source": "folder", "root": str(root), "positive_class": "yes", "image_size": 32,
                     "max_per_class": 24, "split": {"method": "kfold", "folds": 2, "seed": 0, "val_fraction": 0.25}},
            "transfer": {"strategy": "feature_extraction"},
            "train": {"lr": 0.003, "epochs": 2, "warmup_epochs": 0, "progress": False},
            "evaluate": {"bootstrap": 50, "report": False, "label_issues": False},
            "search": SEARCH if search is None else search} | over
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def tune(*args: str) -> object:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["tune", *args, "--quiet"])
    assert result.exit_code == 0, result.output
    return result


# --------------------------------------------------------------------------- the search block (fast)


@pytest.mark.parametrize(("search", "phrase"), [
    ({"train.lrr": {"loguniform": [0.001, 0.01]}}, "Did you mean 'lr'"),
    ({"train.lr": {"logunifrom": [0.001, 0.01]}}, "Did you mean 'loguniform'"),
    ({"train.lr": {"loguniform": [0.0, 0.01]}}, "must be positive"),
    ({"train.lr": {"uniform": [0.1, 0.01]}}, "low must be below high"),
    ({"train.epochs": {"int": [1.5, 4]}}, "whole numbers"),
    ({"transfer.unfreeze_from": {"choice": []}}, "non-empty list"),
    ({"data.image_size": {"choice": [32, 64]}}, "cannot be searched"),
    ({"model.head.dropout": {"uniform": [0.0, 1.5]}}, "model.head.dropout"),
])
def test_bad_search_blocks_are_clear_errors(tmp_path: Path, search: dict, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(")):
        load_tune(write_tune(tmp_path, tmp_path, search))


def test_search_block_parses_and_sets_keys(tmp_path: Path) -> None:
    spec = load_tune(write_tune(tmp_path, tmp_path, SEARCH | {"data.augment.rotate": {"choice": [0, 15]}}))
    cfg = spec.config({"train.lr": 0.01, "model.head.dropout": 0.3, "data.augment.rotate": 15})
    assert cfg.train.lr == 0.01 and cfg.model.head.dropout == 0.3 and cfg.data.augment.rotate == 15
    assert spec.base.train.lr == 0.003
    with pytest.raises(ConfigError, match="no 'search:' block"):
        path = tmp_path / "plain.yaml"
        path.write_text("data: {source: folder, root: x}\n")
        load_tune(path)
    with pytest.raises(ConfigError, match="grid needs finite values"):
        make_sampler("grid", parse_search(SEARCH, "t"), 0)
    assert make_sampler("grid", parse_search({"train.epochs": {"int": [1, 3]}}, "t"), 0) is not None
    assert redact("postgresql://me:secret@db/x") == "postgresql://me:***@db/x"


def test_inner_folds_never_share_a_group_with_the_outer_test_fold(brain_mri: Path, tmp_path: Path) -> None:
    spec = load_tune(write_tune(tmp_path, brain_mri))
    data = prepare_data(spec.base, progress=False)
    groups = np.array(data.groups, dtype=object)
    for outer in data.folds:
        inner = inner_folds(data, outer, 2, spec.base.data.split)
        outer_test = set(groups[outer.test])
        training = set(np.concatenate([outer.train, outer.val]).tolist())
        assert np.array_equal(np.sort(np.concatenate([f.test for f in inner])), np.sort(list(training)))
        for fold in inner:
            roles = [set(groups[fold.train]), set(groups[fold.val]), set(groups[fold.test])]
            assert not any(r & outer_test for r in roles)
            assert not (roles[0] & roles[1] or roles[0] & roles[2] or roles[1] & roles[2])
            assert set(np.concatenate([fold.train, fold.val, fold.test]).tolist()) <= training


def _postgres_binaries() -> tuple[str, str] | None:
    """initdb and pg_ctl: on PATH, or in Debian's versioned folder (the package does not put them on PATH)."""
    for folder in [None, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        found = [shutil.which(name, path=str(folder) if folder else None) for name in ("initdb", "pg_ctl")]
        if all(found):
            return found[0], found[1]
    return None


def test_postgresql_storage() -> None:
    """A real PostgreSQL server started by the test on a Unix socket (no TCP port), stopped by the test.

    Runs when the server (Debian's ``postgresql``) and the driver (``psycopg2``) are installed; the server
    refuses to run as root, so as root it runs as the ``postgres`` user the package creates.
    """
    binaries = _postgres_binaries()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL storage not tested: no PostgreSQL driver (psycopg2) in the environment")
    if binaries is None:
        pytest.skip("PostgreSQL storage not tested: initdb/pg_ctl not installed (Debian package postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL storage not tested: running as root and there is no 'postgres' user")
        as_user = ["runuser", "-u", "postgres", "--"]
    initdb, pg_ctl = binaries
    root = Path(tempfile.mkdtemp(prefix="medtl-pg-"))
    root.chmod(0o777)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    sock.chmod(0o777)
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "medtl"], check=True,
                       capture_output=True, timeout=120)
        # the server outlives pg_ctl: its output goes to a log file, not to pipes this test would wait on
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-o",
                        f"-k {sock} -p 55433 -h ''", "-w", "start"], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
        storage = open_storage(f"postgresql+psycopg2://medtl@/postgres?host={sock}&port=55433")
        import optuna

        study = optuna.create_study(storage=storage, study_name="pg")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        again = optuna.load_study(study_name="pg", storage=open_storage(
            f"postgresql+psycopg2://medtl@/postgres?host={sock}&port=55433"))
        assert len(again.trials) == 2
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- real searches (slow)


def _studies(url: str) -> dict[str, list]:
    import optuna

    storage = open_storage(url)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in optuna.get_all_study_summaries(storage)}


@pytest.mark.slow
def test_nested_search_end_to_end_and_resume(brain_mri: Path, tmp_path: Path) -> None:
    config, out = write_tune(tmp_path, brain_mri), tmp_path / "run"
    tune(str(config), "--out", str(out), "--trials", "2", "--inner-folds", "2")
    assert rundir.is_complete(out)
    for name in ("predictions.csv", "metrics.json", "splits.csv", "config.yaml", "tune.json", "optuna.db"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "tune.json").read_text())
    metrics = rundir.read_metrics(out)
    assert summary["nested"] and len(summary["outer"]) == 2
    assert summary["pooled_outer_auc"] == metrics["auc"]["value"] and metrics["auc"]["ci95"]
    best = np.mean([o["best_inner_auc"] for o in summary["outer"]])
    assert summary["optimism"] == pytest.approx(best - metrics["auc"]["value"])
    for o in summary["outer"]:
        assert set(o["params"]) == set(SEARCH) and o["trials"]["complete"] + o["trials"]["pruned"] == 2
    assert metrics["tune"]["estimate"].startswith("unbiased")
    # provenance (issue 19.3): in metrics.json and model.json, never failing
    env = metrics["environment"]
    assert {"medtl", "git_commit", "git_dirty", "torch", "timm", "lightning", "device", "device_name",
            "torch_threads", "deterministic_algorithms"} <= set(env) and env["torch_threads"] >= 1
    assert json.loads((out / "model" / "model.json").read_text())["environment"] == env
    # resume: the storage holds 2 finished trials per outer fold; --trials 3 runs exactly one more each
    before = {k: len(v) for k, v in _studies(f"sqlite:///{out / 'optuna.db'}").items()}
    tune(str(config), "--out", str(out), "--trials", "3", "--inner-folds", "2")
    after = _studies(f"sqlite:///{out / 'optuna.db'}")
    assert before == {"tiny-outer0": 2, "tiny-outer1": 2}
    assert {k: len(v) for k, v in after.items()} == {"tiny-outer0": 3, "tiny-outer1": 3}
    assert rundir.is_complete(out)
    other = write_tune(tmp_path, brain_mri, {"train.lr": {"loguniform": [0.001, 0.01]}})
    refused = CliRunner().invoke(app, ["tune", str(other), "--out", str(out), "--trials", "3", "--inner-folds", "2"])
    assert refused.exit_code == 2 and "another search block" in " ".join(refused.output.split())


@pytest.mark.slow
def test_flat_search_says_it_is_optimistic(brain_mri: Path, tmp_path: Path) -> None:
    result = tune(str(write_tune(tmp_path, brain_mri)), "--out", str(tmp_path / "flat"), "--trials", "2",
                  "--no-nest", "--sampler", "random")
    metrics = rundir.read_metrics(tmp_path / "flat")
    assert OPTIMISTIC in metrics["warnings"] and metrics["tune"]["estimate"] == OPTIMISTIC
    assert "optimistic" in result.output.lower() and not metrics["tune"]["nested"]


@pytest.mark.slow
def test_two_workers_on_one_journal_share_the_search(brain_mri: Path, tmp_path: Path) -> None:
    config, journal = write_tune(tmp_path, brain_mri), tmp_path / "search.journal"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                      os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, "-c", "from medtl.cli import app; app()", "tune", str(config),
                                 "--out", str(tmp_path / f"w{k}"), "--trials", "4", "--inner-folds", "2",
                                 "--storage", f"journal:{journal}", "--quiet"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    studies = _studies(f"journal:{journal}")
    ran = [json.loads((tmp_path / f"w{k}" / "tune.json").read_text()) for k in range(2)]
    for index, (_, trials) in enumerate(sorted(studies.items())):
        numbers = [t.number for t in trials]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(numbers) == len(set(numbers)) and 4 <= len(finished) <= 5  # a worker may overshoot by one
        by_worker = [set(r["outer"][index]["trials_run_here"]) for r in ran]
        assert not by_worker[0] & by_worker[1]  # no trial was run by both workers
        assert by_worker[0] | by_worker[1] == set(numbers)
        assert {t.user_attrs["worker"] for t in trials} <= {w.pid for w in workers}
