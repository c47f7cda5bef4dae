"""Outages, as users meet them: the database going away (waited out, or one line naming the
storage; trials that never beat failed and retried in any time zone) and the latency agent
going away (the worker stops until ``resume``). Outages are made on the test's own database
only (its connections terminated, new ones refused for a while), never by stopping the server.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import FLOW, postgres_database, run_cli
from optuna.trial import TrialState
from worker_fixtures import (FAST_HEARTBEAT, ONE_THREAD, SMOKE, TOKEN, Background, Outage, Reader,
                             assert_exact_and_whole, assert_one_line_errors, drop_connections, free_port,
                             needs_postgres, study_created, wait_for, with_password)

from autosculpt.search.study.storage import RetryStaleTrial, _Storage

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
