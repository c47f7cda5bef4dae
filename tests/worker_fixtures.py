"""What the multi-worker tests share: servers, outages, background CLI processes, readers.

Subprocesses train on one thread (OMP_NUM_THREADS=1): the smoke nets train fastest so,
and several workers share the two cores of a small CI machine.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from conftest import POSTGRES_ENV
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from autosculpt.search.study.quota import COUNTED, counting

SMOKE = ("--preset", "smoke", "--budget-ms", "50")  # every candidate is within 50 ms: all are fine-tuned
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAST_HEARTBEAT = {"AUTOSCULPT_HEARTBEAT_SECONDS": "1", "AUTOSCULPT_GRACE_SECONDS": "4"}
GRACE_S = 4
PASSWORD = "Sup3rSecretPw"
TOKEN = "workers-test-token-9c1d"

needs_postgres = pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=f"set {POSTGRES_ENV} (CI does)")




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
    """The study has exactly ``trials`` counted trials (repeats free, as the quota counts),
    unique numbers, nothing left running, and every COMPLETE trial has its value, figures
    and (fine-tuned) stored weights."""
    everything = reader.trials(name)
    numbers = [t.number for t in everything]
    assert sorted(numbers) == list(range(len(everything))), f"duplicate or missing trial numbers: {numbers}"
    assert counting([t for t in everything if t.state in COUNTED], trials) == trials
    assert not [t.number for t in everything if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in everything:
        if trial.state != TrialState.COMPLETE:
            continue
        attrs = trial.user_attrs
        assert trial.values == [attrs["dice"]] and attrs["latency_ms"] > 0, trial.number
        assert not attrs["finetuned"] or (artifacts / attrs["weights_artifact"]).is_file(), trial.number
        assert not attrs["finetuned"] or attrs["device"] == "cpu", trial.number  # where it was fine-tuned
    return everything


def assert_one_line_errors(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    assert PASSWORD not in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
