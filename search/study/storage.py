"""Where studies live: Optuna's RDB storage (SQLite by default, PostgreSQL for many workers).

Optuna's tables stay exactly as Optuna writes them, so ``optuna studies`` and
optuna-dashboard read our studies. Trial weights go to an Optuna artifact store on disk.
"""

from __future__ import annotations

import copy
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from ...errors import UserError

_CREDENTIALS = re.compile(r"(//[^/@:\s]*:)[^/\s]*@")  # the password of //user:password@host, up to its last @

STORAGE_ENV = "AUTOSCULPT_STORAGE"
ARTIFACTS_ENV = "AUTOSCULPT_ARTIFACTS"
DEFAULT_STORAGE = "sqlite:///studies/autosculpt.db"

# A worker that stops beating for the grace period is presumed dead: its RUNNING trial is
# failed by the next worker that starts a trial, and retried once with the same parameters.
# Both can be set from the environment (a slow shared file system may need a longer grace).
HEARTBEAT_SECONDS = int(os.environ.get("AUTOSCULPT_HEARTBEAT_SECONDS", 5))
GRACE_SECONDS = int(os.environ.get("AUTOSCULPT_GRACE_SECONDS", 20))
# A worker whose storage fails (server restarting, connections dropped) retries with
# backoff for this long before it stops with a one-line error (see runner.Outage).
STORAGE_PATIENCE_SECONDS = float(os.environ.get("AUTOSCULPT_STORAGE_PATIENCE_SECONDS", 60))


def storage_url(cli_value: str | None) -> str:
    """The storage URL: ``--storage``, else ``$AUTOSCULPT_STORAGE``, else the SQLite default."""
    return cli_value or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***``: the only form that is ever printed.

    Works on the text, not a parse: a malformed URL, or a password holding an unescaped
    ``@`` (which a URL parser splits at the first ``@``), never shows its password.
    """
    return _CREDENTIALS.sub(r"\1***@", url)


def open_storage(url: str) -> RDBStorage:
    """Connect to (and, if new, create) the Optuna storage at ``url``.

    Heartbeats are on, so trials of a killed worker are failed after the grace period
    and retried once. A malformed or unreachable URL raises :class:`UserError` whose
    message shows the URL with its password masked.
    """
    try:
        parsed = make_url(url)
    except Exception:
        raise UserError(
            f"storage URL {masked(url)} is malformed: use e.g. sqlite:///studies/autosculpt.db "
            "or postgresql://user:password@host:5432/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        return _Storage(
            url,
            engine_kwargs=_engine_kwargs(parsed.get_backend_name()),
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=1),
        )
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError) as error:
        reason = failure_reason(error, url)
        raise UserError(f"cannot open storage {masked(url)}: {reason} (check the URL and that the server is up)") from None


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, with its parameters only.

    Optuna's callback copies the failed attempt's attributes into the retry, so the
    retry's own latency constraint would be ignored (Optuna keeps the first one set) and
    its figures mixed with the dead attempt's. Kept: the parameters, the retry history
    and ``fixed_params``; dropped: user attributes, constraints and artifact records.
    """

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trial = copy.deepcopy(trial)
        trial.user_attrs = {}
        trial.system_attrs = {key: value for key, value in trial.system_attrs.items()
                              if not key.startswith(("constraints:", "artifacts:"))}
        super().__call__(study, trial)


class _Storage(RDBStorage):
    """Optuna's RDB storage whose heartbeat survives a dropped connection.

    Optuna beats from a thread that dies on the first storage error, so one dropped
    connection would leave a live worker's trial without heartbeats, to be failed and
    retried elsewhere while it still runs. Here a failed beat is skipped: the next one,
    ``HEARTBEAT_SECONDS`` later, takes a fresh connection. Only a storage down for the
    whole grace period makes the trial stale, as a dead worker's.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials plus running ones that never got a heartbeat.

        Optuna skips a trial with no heartbeat at all, so a trial created just before the
        storage went away, whose worker then stopped, stayed RUNNING for ever and kept the
        study one trial short (seen in the outage test). Such a trial is stale once it
        started more than the grace period ago, as a live worker beats within one interval.
        ``datetime_start`` is what Optuna wrote from its worker's local clock
        (``datetime.now()``), so it is compared with this process's local clock, not the
        database's (UTC in SQLite): workers of one study share a time zone, as Optuna's own
        timestamps assume.
        """
        stale = super()._get_stale_trial_ids(study_id)
        now = datetime.now()
        with self.scoped_session() as session:
            running = (session.query(models.TrialModel)
                       .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                       .filter(models.TrialModel.state == TrialState.RUNNING, models.TrialModel.study_id == study_id).all())
            limit = timedelta(seconds=self.grace_period + self.heartbeat_interval)
            beatless = [t.trial_id for t in running if not t.heartbeats and t.datetime_start and now - t.datetime_start > limit]
        return stale + [trial_id for trial_id in beatless if trial_id not in stale]


def exception_chain(error: BaseException):
    """``error`` and the exceptions it was raised from or while handling."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_storage_failure(error: BaseException) -> bool:
    """True when ``error`` comes from the storage being unreachable or busy (a dropped
    connection, a server restarting, SQLite locked past its timeout), not from our data."""
    return any(isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
               or (isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated) for e in exception_chain(error))


def failure_reason(error: BaseException, url: str) -> str:
    """The first line of the database driver's message in ``error``, any password masked."""
    cause = next((e for e in exception_chain(error) if isinstance(e, sqlalchemy.exc.DBAPIError) and e.orig is not None), error)
    text = str(getattr(cause, "orig", None) or cause).strip()
    reason = text.splitlines()[0] if text else cause.__class__.__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    return reason.replace(str(password), "***") if password else reason


def _engine_kwargs(backend: str) -> dict:
    """SQLite waits for a locked database instead of failing (several local workers);
    server databases check pooled connections before use (survive a server restart)."""
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def artifact_dir(url: str) -> Path:
    """Folder of the artifact store for the storage at ``url``.

    ``$AUTOSCULPT_ARTIFACTS`` if set (a shared volume when workers run on several
    machines); else ``artifacts/`` beside a SQLite file, or ``./studies/artifacts``.
    """
    if os.environ.get(ARTIFACTS_ENV):
        path = Path(os.environ[ARTIFACTS_ENV])
    else:
        parsed = make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
        path = Path(database).parent / "artifacts" if database and database != ":memory:" else Path("studies/artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifact_store(url: str) -> optuna.artifacts.FileSystemArtifactStore:
    """Optuna's file-system artifact store for the storage at ``url``."""
    return optuna.artifacts.FileSystemArtifactStore(str(artifact_dir(url)))


def load_study(name: str, storage: RDBStorage) -> optuna.Study:
    """The stored study ``name``; an unknown name is a :class:`UserError` listing those that exist."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none yet"
        raise UserError(f"no study named {name!r} in this storage (studies: {known}); start one with autosculpt search")
    return optuna.load_study(study_name=name, storage=storage)
