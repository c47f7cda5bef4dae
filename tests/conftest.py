"""Fixtures shared by every test module.

Data and baselines are cached once per test session in a temporary AUTOSCULPT_CACHE,
so the suite never reads or writes the user's cache. ``storage_url`` runs a test over
every storage backend: SQLite always, PostgreSQL when $AUTOSCULPT_TEST_POSTGRES_URL is
set (CI sets it), each test in a fresh database that is dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy.engine import make_url

POSTGRES_ENV = "AUTOSCULPT_TEST_POSTGRES_URL"


# Tests train tiny networks, often several processes at once on 2 cores: one thread each
# is faster than PyTorch's default of one per core (set before any test imports torch,
# and inherited by every CLI subprocess).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from autosculpt.search.deploy.verdict import EXIT_VERDICT_FAILED  # noqa: E402 - after the thread count is set

# Exit statuses of a search that ran: where a test is about the flow, not the verdict (tested on its own).
FLOW = (0, EXIT_VERDICT_FAILED)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """One cache folder for the whole session (data and baselines are built once)."""
    folder = tmp_path_factory.mktemp("autosculpt-cache")
    previous = os.environ.get("AUTOSCULPT_CACHE")
    os.environ["AUTOSCULPT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("AUTOSCULPT_CACHE", None)
    else:
        os.environ["AUTOSCULPT_CACHE"] = previous


def postgres_database() -> tuple[str, callable]:
    """A fresh PostgreSQL database on the test server: its URL and a function dropping it."""
    import psycopg

    server = make_url(os.environ[POSTGRES_ENV])
    name = f"autosculpt_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(host=server.host, port=server.port or 5432, user=server.username,
                            password=server.password, dbname=server.database, autocommit=True)
    admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        cursor = admin.cursor()
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return server.set(database=name).render_as_string(hide_password=False), drop


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    not os.environ.get(POSTGRES_ENV), reason=f"set {POSTGRES_ENV} to run against PostgreSQL (CI does)"))]


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path):
    """A fresh, empty storage URL for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'studies.db'}"
        return
    url, drop = postgres_database()
    yield url
    drop()


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
    """Run ``autosculpt ARGS`` in a subprocess, as a user would; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "autosculpt.search.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """A fresh cache for one test, so it depends on neither the user's nor another test's cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("AUTOSCULPT_CACHE", str(folder))
    return folder

