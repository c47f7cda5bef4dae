"""Several workers on one study, run as users run them: CLI subprocesses on the smoke preset.

The trial count comes out exact, a killed worker's trial is failed by the heartbeat and
retried, and the storage password shows up nowhere. The PostgreSQL tests need
$AUTOSCULPT_TEST_POSTGRES_URL (CI sets it). Outages: tests/test_outages.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from conftest import FLOW, postgres_database, run_cli
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from worker_fixtures import (FAST_HEARTBEAT, GRACE_S, ONE_THREAD, PASSWORD, SMOKE, Background, Reader,
                             assert_exact_and_whole, assert_one_line_errors, needs_postgres, study_created, wait_for,
                             with_password)

from autosculpt.search.study.quota import COUNTED, is_surplus

# --- several workers, exact counts ----------------------------------------------------


@dataclass
class Crowd:
    """A search run once with several workers; read by more than one test."""

    url: str
    name: str
    workers: int
    trials: int
    folder: Path
    artifacts: Path
    done: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """``crowd(backend)``: the search on that backend, run on first use (4 workers on
    PostgreSQL, with a password in the URL; 2 on SQLite)."""
    runs: dict[str, Crowd] = {}
    drops = []

    def run(backend: str) -> Crowd:
        if backend not in runs:
            folder = tmp_path_factory.mktemp(f"crowd-{backend}")
            if backend == "postgresql":
                url, drop = postgres_database()
                drops.append(drop)
                url, workers, trials = with_password(url), 4, 6
            else:
                url, workers, trials = f"sqlite:///{folder / 'studies.db'}", 2, 4
            artifacts = folder / "artifacts"
            done = run_cli("search", *SMOKE, "--study", "crowd", "--storage", url, "--workers", str(workers),
                           "--trials", str(trials), "--epochs", "4", "--out", str(folder / "best"),
                           env={**ONE_THREAD, "AUTOSCULPT_ARTIFACTS": str(artifacts)}, cwd=folder)
            runs[backend] = Crowd(url, "crowd", workers, trials, folder, artifacts, done)
        return runs[backend]

    yield run
    for drop in drops:
        drop()


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=needs_postgres), "sqlite"])
def test_workers_finish_exactly_the_trials_asked(crowd, backend):
    run = crowd(backend)
    assert run.done.returncode in FLOW, run.done.stderr[-3000:]
    assert_one_line_errors(run.done.stderr)
    reader = Reader(run.url)
    try:
        everything = assert_exact_and_whole(reader, run.name, run.trials, run.artifacts)
    finally:
        reader.close()
    failed = [t for t in everything if t.state == TrialState.FAIL]
    assert all(is_surplus(t) for t in failed)
    spans = sorted((t.datetime_start, t.datetime_complete) for t in everything if t.state in COUNTED)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two trials ran at the same time"
    for index in range(1, run.workers):  # every spawned worker ran and said so
        assert f"worker {index}: " in run.done.stdout


# --- a worker killed mid-trial ----------------------------------------------------------


@needs_postgres
def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path):
    url, drop = postgres_database()
    reader = Reader(url)
    env = {**FAST_HEARTBEAT, "AUTOSCULPT_ARTIFACTS": str(tmp_path / "artifacts")}
    search = Background.start(tmp_path, "search", "search", *SMOKE, "--study", "killed", "--storage", url,
                              "--trials", "5", "--epochs", "60", "--out", str(tmp_path / "best"), env=env)  # long enough for the worker to join
    worker = None
    try:
        wait_for(lambda: study_created(search, "killed"), "study", search)
        worker = Background.start(tmp_path, "worker", "worker", "killed", "--storage", url, "--index", "7",
                                  "--quiet", env=env)

        def both_fine_tuning():
            running = [t for t in reader.trials("killed")
                       if t.state == TrialState.RUNNING and t.user_attrs.get("dice_by_epoch")]
            return running if len(running) == 2 else None

        running = wait_for(both_fine_tuning, "two trials fine-tuning at once", search)
        before = reader.complete("killed")
        worker.process.send_signal(signal.SIGKILL)
        killed_at = datetime.now()
        worker.wait(timeout=10)
        assert search.wait(timeout=300) == 0, search.output()[-3000:]
    finally:
        search.stop()
        if worker is not None:
            worker.stop()
    assert_one_line_errors(search.output())
    everything = {t.number: t for t in assert_exact_and_whole(reader, "killed", 5, tmp_path / "artifacts")}
    reader.close()
    drop()

    states = sorted(everything[t.number].state.name for t in running)
    assert states in (["COMPLETE", "FAIL"], ["FAIL", "PRUNED"]), states  # the killed worker's trial failed, the other went on
    victim = next(everything[t.number] for t in running if everything[t.number].state == TrialState.FAIL)
    assert "fail_reason" not in victim.user_attrs  # failed by the heartbeat, not by the trial
    # Failed once its heartbeat was older than the grace period (it beat until the kill), not before.
    assert killed_at + timedelta(seconds=GRACE_S - 1.5) <= victim.datetime_complete <= killed_at + timedelta(seconds=120)
    retries = [t for t in everything.values() if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state in COUNTED and retries[0].params == victim.params
    assert retries[0].user_attrs["recipe"] == victim.user_attrs["recipe"]
    assert all(everything[n].state == TrialState.COMPLETE and everything[n].values == values
               for n, (values, _) in before.items())


# --- the password ---------------------------------------------------------------------------


@needs_postgres
def test_storage_password_never_shown(crowd, tmp_path):
    """Not in logs, reports, model cards, stored attributes or error messages."""
    run = crowd("postgresql")
    assert run.done.returncode in FLOW, run.done.stderr[-3000:]
    assert "postgres:***@127.0.0.1" in run.done.stderr  # the URL is shown, masked
    texts = {"search": run.done.stdout + run.done.stderr}
    env = {**ONE_THREAD, "AUTOSCULPT_ARTIFACTS": str(run.artifacts)}
    for args in (("report", run.name, "--out", str(tmp_path / "report.html")), ("trials", run.name, "--format", "json"),
                 ("studies",), ("env",)):
        done = run_cli(*args, "--storage", run.url, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        texts[args[0]] = done.stdout + done.stderr
    unreachable = make_url(run.url).set(port=1).render_as_string(hide_password=False)
    missing = make_url(run.url).set(database="no_such_database_here").render_as_string(hide_password=False)
    for url, expected in ((unreachable, "cannot open storage"), (missing, "no_such_database_here")):
        done = run_cli("trials", run.name, "--storage", url, env=env, cwd=tmp_path)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        texts[f"error {expected}"] = done.stdout + done.stderr
    for label, text in texts.items():
        assert PASSWORD not in text, label
        assert "Traceback" not in text, label

    written = [path for folder in (run.folder, tmp_path) for path in folder.rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"report.html", "model.json", "model.onnx"} <= names
    for path in written:
        assert PASSWORD.encode() not in path.read_bytes(), path

    study = optuna.load_study(study_name=run.name, storage=run.url)
    stored = json.dumps([study.user_attrs] + [[t.user_attrs, t.system_attrs] for t in study.trials], default=str)
    assert PASSWORD not in stored
