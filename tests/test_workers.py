"""Several workers on one study, run as users run them: CLI subprocesses on the smoke preset.

The trial count comes out exact, a killed worker's trial is failed by the heartbeat and
retried, a storage outage is waited out (or ends in one line naming the storage), a
latency agent going away stops the worker until ``resume``, and the storage password
shows up nowhere. The PostgreSQL tests need $AUTOSCULPT_TEST_POSTGRES_URL (CI sets it);
outages are made on the test's own database only (its connections terminated, new ones
refused for a while), never by stopping the server.

Subprocesses train on one thread (OMP_NUM_THREADS=1): the smoke nets train fastest so,
and several workers share the two cores of a small CI machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from conftest import FLOW, POSTGRES_ENV, postgres_database, run_cli
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from autosculpt.search.quota import COUNTED, is_surplus
from autosculpt.search.storage import RetryStaleTrial, _Storage

SMOKE = ("--preset", "smoke", "--budget-ms", "50")  # every candidate is within 50 ms: all are fine-tuned
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAST_HEARTBEAT = {"AUTOSCULPT_HEARTBEAT_SECONDS": "1", "AUTOSCULPT_GRACE_SECONDS": "4"}
GRACE_S = 4
PASSWORD = "Sup3rSecretPw"
TOKEN = "workers-test-token-9c1d"

needs_postgres = pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"set {POSTGRES_ENV} (CI does)")



# --- helpers -------------------------------------------------------------------------


def with_password(url: str) -> str:
    """``url`` with the test password (trust authentication ignores it; nothing may show it)."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def admin_connection():
    import psycopg

    server = make_url(os.environ[POSTGRES_ENV])
    return psycopg.connect(host=server.host, port=server.port or 5432, user=server.username,
                           password=server.password, dbname=server.database, autocommit=True)


def drop_connections(url: str, times: int = 1, every: float = 0.0) -> None:
    """Terminate every connection to the database of ``url``, ``times`` times."""
    database = make_url(url).database
    with admin_connection() as admin:
        for _ in range(times):
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
            time.sleep(every)


class Outage:
    """The database of ``url`` refuses connections, and its open ones are dropped, until ``end()``.

    The server keeps serving every other database.
    """

    def __init__(self, url: str):
        self.database = make_url(url).database
        self.admin = admin_connection()
        self.admin.execute(f'ALTER DATABASE "{self.database}" WITH ALLOW_CONNECTIONS false')
        self.drop()

    def drop(self) -> None:
        self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,))

    def end(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.database}" WITH ALLOW_CONNECTIONS true')
        self.admin.close()


class Reader:
    """Reads a study from the test process through one storage (one connection pool)."""

    def __init__(self, url: str):
        self.storage = optuna.storages.RDBStorage(url)

    def trials(self, name: str) -> list[FrozenTrial]:
        for attempt in range(5):  # the test's own connections are dropped with the workers'
            try:
                return optuna.load_study(study_name=name, storage=self.storage).get_trials()
            except optuna.exceptions.StorageInternalError:
                self.storage.engine.dispose()
                time.sleep(0.2 * attempt)
        return optuna.load_study(study_name=name, storage=self.storage).get_trials()

    def counted(self, name: str) -> list[FrozenTrial]:
        return [t for t in self.trials(name) if t.state in COUNTED]

    def complete(self, name: str) -> dict[int, tuple]:
        """Number -> (values, weights artifact) of every COMPLETE trial."""
        return {t.number: (t.values, t.user_attrs.get("weights_artifact"))
                for t in self.trials(name) if t.state == TrialState.COMPLETE}

    def close(self) -> None:
        self.storage.engine.dispose()


@dataclass
class Background:
    """A CLI command running in the background, its output going to files."""

    process: subprocess.Popen
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, folder: Path, label: str, *args: str, env: dict | None = None) -> "Background":
        stdout, stderr = folder / f"{label}.out", folder / f"{label}.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            process = subprocess.Popen([sys.executable, "-m", "autosculpt.search.cli", *args], stdout=out, stderr=err,
                                       env={**os.environ, **ONE_THREAD, **(env or {})}, cwd=folder)
        return cls(process, stdout, stderr)

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_for(condition, what: str, process: Background | None = None, limit: float = 180):
    """The first true value of ``condition()``, polled while ``process`` runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            raise AssertionError(f"the command ended before {what}:\n{process.output()[-3000:]}")
        try:
            value = condition()
        except KeyError:  # the study does not exist yet
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {limit:.0f} s" + (f":\n{process.output()[-3000:]}" if process else ""))


def study_created(process: Background, name: str) -> bool:
    """Whether ``process`` (a search) said it created study ``name`` (rich may wrap the line)."""
    return re.search(rf"resume with:\s+autosculpt resume {name}\b", process.stderr.read_text()) is not None


def assert_exact_and_whole(reader: Reader, name: str, trials: int, artifacts: Path) -> list[FrozenTrial]:
    """The study has exactly ``trials`` counted trials, unique numbers, nothing left running,
    and every COMPLETE trial has its value, figures and (fine-tuned) stored weights."""
    everything = reader.trials(name)
    numbers = [t.number for t in everything]
    assert sorted(numbers) == list(range(len(everything))), f"duplicate or missing trial numbers: {numbers}"
    assert len([t for t in everything if t.state in COUNTED]) == trials
    assert not [t.number for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in everything:
        if trial.state != TrialState.COMPLETE:
            continue
        attrs = trial.user_attrs
        assert trial.values == [attrs["dice"]] and attrs["latency_ms"] > 0, trial.number
        assert not attrs["finetuned"] or (artifacts / attrs["weights_artifact"]).is_file(), trial.number
    return everything


def assert_one_line_errors(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert PASSWORD not in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
                              "--trials", "5", "--epochs", "20", "--out", str(tmp_path / "best"), env=env)
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


# --- the database going away ------------------------------------------------------------


@pytest.fixture(params=["UTC", "Asia/Tokyo", "America/Los_Angeles"])
def time_zone(request, monkeypatch):
    """The process's local time zone: east of, at and west of UTC."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def test_a_trial_that_never_beat_is_failed_and_retried(storage_url, time_zone):
    """A trial created just before the storage went away, whose worker then stopped, has no
    heartbeat at all; Optuna alone would leave it RUNNING and the study a trial short.
    In every time zone: Optuna stamps trials with the worker's local clock."""
    storage = _Storage(storage_url, heartbeat_interval=1, grace_period=1,
                       heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=1))
    study = optuna.create_study(storage=storage)
    study.ask({"keep": optuna.distributions.FloatDistribution(0.1, 1.0)})
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # within the grace period
    time.sleep(3.5)
    optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == study.trials[0].params


@needs_postgres
def test_storage_outage_is_waited_out_or_reported_in_one_line(tmp_path):
    """Connections dropped and a short outage: the workers go on. An outage longer than
    their patience: they stop with one line naming the storage; resume completes the study."""
    url, drop = postgres_database()
    url = with_password(url)
    reader = Reader(url)
    artifacts = tmp_path / "artifacts"
    env = {**FAST_HEARTBEAT, "AUTOSCULPT_STORAGE_PATIENCE_SECONDS": "6", "AUTOSCULPT_ARTIFACTS": str(artifacts)}
    search = Background.start(tmp_path, "search", "search", *SMOKE, "--study", "outage", "--storage", url,
                              "--workers", "2", "--trials", "8", "--epochs", "6", "--out", str(tmp_path / "best"), env=env)
    kept: dict[int, tuple] = {}
    outage = None

    def one_more_counted(what: str) -> None:
        counted = len(reader.counted("outage"))
        wait_for(lambda: len(reader.counted("outage")) > counted, f"a trial counted after {what}", search)
        kept.update(reader.complete("outage"))

    try:
        wait_for(lambda: reader.complete("outage"), "a complete trial", search)
        kept.update(reader.complete("outage"))
        drop_connections(url, times=20, every=0.05)
        one_more_counted("dropped connections")
        outage = Outage(url)
        time.sleep(3)
        outage.end()
        outage = None
        one_more_counted("a 3 s outage")
        reader.storage.engine.dispose()

        outage = Outage(url)  # until the workers give up
        deadline = time.monotonic() + 120
        while search.process.poll() is None and time.monotonic() < deadline:
            outage.drop()
            time.sleep(0.5)
        code = search.wait(timeout=10)
    finally:
        if outage is not None:
            outage.end()
        search.stop()
    log = search.stderr.read_text()
    assert_one_line_errors(search.output())
    assert "answers again: going on" in log
    assert code == 2, log[-3000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors and all("postgresql://postgres:***@127.0.0.1" in line and "unreachable" in line for line in errors)
    assert "autosculpt resume outage" in errors[0]

    done = run_cli("resume", "outage", "--storage", url, "--out", str(tmp_path / "best"),
                   env={**ONE_THREAD, **env}, cwd=tmp_path)
    assert done.returncode in FLOW, done.stderr[-3000:]
    assert_one_line_errors(done.stdout + done.stderr)
    everything = {t.number: t for t in assert_exact_and_whole(reader, "outage", 8, artifacts)}
    reader.close()
    drop()
    assert all(everything[n].state == TrialState.COMPLETE
               and (everything[n].values, everything[n].user_attrs["weights_artifact"]) == values for n, values in kept.items())


# --- the latency agent going away -------------------------------------------------------


def start_agent(folder: Path, port: int, label: str) -> Background:
    agent = Background.start(folder, label, "agent", "--port", str(port), env={"AUTOSCULPT_AGENT_TOKEN": TOKEN})
    wait_for(lambda: "listening" in agent.stdout.read_text(), "agent listening", agent, limit=60)
    return agent


def test_agent_going_away_stops_the_worker_and_resume_completes(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    port = free_port()
    env = {"AUTOSCULPT_AGENT_TOKEN": TOKEN, "AUTOSCULPT_ARTIFACTS": str(tmp_path / "artifacts")}
    agent = start_agent(tmp_path, port, "agent")
    search = Background.start(tmp_path, "search", "search", *SMOKE, "--study", "remote", "--storage", url,
                              "--target", f"http://127.0.0.1:{port}", "--trials", "5", "--epochs", "2", env=env)
    try:
        wait_for(lambda: study_created(search, "remote"), "study", search)
        reader = Reader(url)
        wait_for(lambda: reader.complete("remote"), "a complete trial", search)
        agent.process.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        code = search.wait(timeout=300)
    finally:
        search.stop()
        agent.stop()
    log = search.stderr.read_text()
    assert_one_line_errors(search.output())
    assert "stopping this worker: 3 trials failed in a row" in log and "autosculpt resume remote" in log
    assert code == 2 and log.strip().splitlines()[-1].startswith("error: the latency agent")  # exporting needs it too
    trials = reader.trials("remote")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 3 and [t.number for t in failed] == [t.number for t in trials[-3:]]
    for trial in failed:
        reason = trial.user_attrs["fail_reason"]
        assert f"latency agent at http://127.0.0.1:{port} is unreachable" in reason
        assert f"trial {trial.number} failed: {reason}" in log
    before = reader.complete("remote")
    assert before and len(reader.counted("remote")) < 5

    agent = start_agent(tmp_path, port, "agent-again")
    try:
        done = run_cli("resume", "remote", "--storage", url, env={**ONE_THREAD, **env}, cwd=tmp_path)
    finally:
        agent.stop()
    assert done.returncode in FLOW, done.stderr[-3000:]
    assert_one_line_errors(done.stdout + done.stderr)
    assert_exact_and_whole(reader, "remote", 5, tmp_path / "artifacts")
    assert all(reader.complete("remote")[n] == kept for n, kept in before.items())
    reader.close()
    assert TOKEN not in search.output() + done.stdout + done.stderr + agent.output()


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
