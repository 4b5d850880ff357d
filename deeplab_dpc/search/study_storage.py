"""The storage of a search study: an Optuna RDB storage that survives dead workers.

Where: by default the SQLite file `search_dir/study.db` (write-ahead log, 60 s
lock timeout) for the workers of one machine, or a `postgresql://` /
`mysql://` URL for workers on many machines. In Optuna 5 only `RDBStorage`
records heartbeats (the journal storage has none), and heartbeats are how the
others notice a killed worker; hence SQLite, not a journal file, is the local
default.

Dead workers: a RUNNING trial is stale when it has had no heartbeat for
`grace_period` seconds; the next worker that starts a trial or waits fails
every stale trial, and `RetryHeartbeatStaleTrialCallback` queues its cell
again (WAITING, up to `max_retry` times) for the next free worker. Optuna's
own check skips a trial that has no heartbeat at all: the trial of a worker
killed after `ask()` created or claimed it and before the heartbeat thread
recorded its first beat, or one made by a client without heartbeats. It
stayed RUNNING forever and the other workers waited for it at the end of the
study. `StudyStorage` also counts such a trial stale once this process has
seen it RUNNING without a heartbeat for `grace_period` seconds (timed on this
process's monotonic clock, so the workers' clocks need not agree). A live
worker's first beat comes milliseconds after `ask()`: samplers propose the
parameters later, at the objective's first suggestion.

SQLite transactions: Optuna claims a WAITING trial with a read-then-update
that relies on `SELECT ... FOR UPDATE`, which SQLite ignores, so two
processes could both claim one queued trial and train it twice. Every
transaction on a SQLite storage therefore starts with `BEGIN IMMEDIATE`,
which takes the database's write lock before the first read.

Secrets: `redact` masks the password of a storage URL
(`postgresql://user:***@host/db`, `mysql+pymysql://user:***@host/db`)
wherever the search logs, raises or writes one. A `postgresql` URL without a
password lets libpq find it (`PGPASSWORD`, `~/.pgpass`); a `mysql` one takes
it from `DEEPLAB_DPC_STORAGE_PASSWORD` (`PASSWORD_ENV`), which is how local
workers get it (`without_password`).
A `postgresql://` URL without a driver uses psycopg2 when psycopg (3),
SQLAlchemy's default, is not installed.
"""

import contextlib
import functools
import importlib.util
import os
import re
import sqlite3
import time
import warnings
from typing import Optional

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna.storages._rdb import models
from optuna.trial import TrialState

STORAGE_FILE = "study.db"
# The password of a `mysql` storage URL given without one (what local
# workers get instead of a password in their flag file; PostgreSQL's
# libpq reads PGPASSWORD by itself).
PASSWORD_ENV = "DEEPLAB_DPC_STORAGE_PASSWORD"


# `scheme://user:password@`: the password part.
_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*:?//[^:/@\s]*:)([^@\s/]+)(@)")


def redact(text) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _PASSWORD.sub(r"\1***\3", str(text))


def _with_driver(url):
    """`postgresql://` made `postgresql+psycopg2://` when psycopg is missing."""
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return url.set(drivername="postgresql+psycopg2")
    return url


def _with_password_from_env(url):
    """A `mysql` URL without a password gets `PASSWORD_ENV`'s, if set."""
    password = os.environ.get(PASSWORD_ENV)
    if url.get_backend_name() == "mysql" and url.password is None and password:
        return url.set(password=password)
    return url


def default_storage(search_dir) -> str:
    """The URL of the default storage: the SQLite file `search_dir/study.db`."""
    return "sqlite:///" + os.path.abspath(os.path.join(search_dir, STORAGE_FILE))


def _connect_sqlite(path: str) -> sqlite3.Connection:
    # isolation_level=None: the driver begins no transaction by itself (it
    # would begin one only before writing); `_begin_immediate` begins them.
    conn = sqlite3.connect(
        path, timeout=60, check_same_thread=False, isolation_level=None
    )
    # In WAL mode synchronous=NORMAL never corrupts the file and loses no
    # commit when a process dies (only at a power cut); it saves an fsync a commit.
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _begin_immediate(connection) -> None:
    """SQLAlchemy "begin" listener: a SQLite transaction that holds the write lock."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class StudyStorage(optuna.storages.RDBStorage):
    """An `RDBStorage` that also fails trials that never sent a heartbeat.

    Takes the arguments of `optuna.storages.RDBStorage`. Use `open_storage`
    to make one: on SQLite it also sets the connection up so that each
    transaction can begin with `BEGIN IMMEDIATE`.
    """

    def __init__(self, url: str, **kwargs):
        super().__init__(url, **kwargs)
        self._lock_sqlite_transactions()
        # {study_id: {trial_id: monotonic time first seen without a heartbeat}}
        self._unbeaten = {}

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._lock_sqlite_transactions()
        self._unbeaten = {}  # Times of another process's clock mean nothing here.

    def _lock_sqlite_transactions(self) -> None:
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "begin", _begin_immediate)

    def _get_stale_trial_ids(self, study_id: int) -> list:
        """Trials past the grace period since their last heartbeat or first sight."""
        stale = super()._get_stale_trial_ids(study_id)
        trial, heartbeat = models.TrialModel, models.TrialHeartbeatModel
        query = (
            sqlalchemy.select(trial.trial_id)
            .outerjoin(heartbeat, heartbeat.trial_id == trial.trial_id)
            .where(
                trial.study_id == study_id,
                trial.state == TrialState.RUNNING,
                heartbeat.trial_heartbeat_id.is_(None),
            )
        )
        with sqlalchemy.orm.Session(self.engine) as session:
            unbeaten = session.scalars(query).all()
        now = time.monotonic()
        seen = self._unbeaten.get(study_id, {})
        seen = {trial_id: seen.get(trial_id, now) for trial_id in unbeaten}
        self._unbeaten[study_id] = seen
        grace_period = self.grace_period or 2 * self.heartbeat_interval
        return stale + [
            trial_id for trial_id, since in seen.items() if now - since > grace_period
        ]


def open_storage(
    storage: Optional[str] = None,
    *,
    search_dir=None,
    heartbeat_interval: int = 60,
    grace_period: Optional[int] = None,
    max_retry: int = 3,
) -> StudyStorage:
    """Opens a study storage with heartbeats and retries of dead trials.

    Args:
        storage: URL (`sqlite:///path`, `postgresql://...` or `mysql://...`,
            optionally `+driver`), or None for `default_storage(search_dir)`.
        search_dir: directory of the default storage (created if needed).
        heartbeat_interval: int > 0, seconds between heartbeats.
        grace_period: int > 0, seconds without a heartbeat after which a
            running trial is failed; None for 2 * heartbeat_interval.
        max_retry: int, how often a dead trial's cell is queued again.

    Returns:
        A `StudyStorage`.

    Raises:
        ValueError: if neither argument is given or the URL is not an RDB one.
    """
    if storage is None:
        if search_dir is None:
            raise ValueError("give a storage URL or a search_dir for the default")
        os.makedirs(search_dir, exist_ok=True)
        storage = default_storage(search_dir)
    try:
        url = sqlalchemy.engine.make_url(storage) if "://" in storage else None
    except sqlalchemy.exc.ArgumentError:
        url = None
    if url is None or url.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise ValueError(
            f"storage is {redact(storage)!r}; it must be a URL starting with "
            "sqlite:///, postgresql:// or mysql://"
        )
    url = _with_password_from_env(_with_driver(url))
    storage = url.render_as_string(hide_password=False)
    engine_kwargs = {}
    if url.get_backend_name() != "sqlite":
        engine_kwargs["pool_pre_ping"] = True
    elif url.database and url.database != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
        try:
            with contextlib.closing(_connect_sqlite(url.database)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")  # Persists in the file.
        except sqlite3.DatabaseError as e:
            raise _unusable(url.database, e) from None
        engine_kwargs["creator"] = functools.partial(_connect_sqlite, url.database)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return StudyStorage(
                storage,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=(
                    optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=max_retry
                    )
                ),
            )
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.DatabaseError) as e:
        where = url.database if url.get_backend_name() == "sqlite" else storage
        raise _unusable(where, e) from None
    except ImportError as e:  # Optuna's "Failed to import DB access module".
        raise ValueError(
            f"study storage {redact(storage)} cannot be used: its database "
            f"driver {url.get_driver_name()!r} is not installed (e.g. pip install "
            f"{_DRIVER_PACKAGES.get(url.get_driver_name(), url.get_driver_name())})"
        ) from None


# SQLAlchemy driver name -> the pip package that provides it.
_DRIVER_PACKAGES = {
    "mysqldb": "mysqlclient",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg",
}


def _unusable(where, error):
    """ValueError naming a storage that cannot be opened, password masked."""
    first = redact(str(error).strip().splitlines()[0] if str(error).strip() else error)
    return ValueError(
        f"study storage {redact(where)} cannot be used ({first}); a corrupt "
        "SQLite file can be moved away to start a new study"
    )


def without_password(text, storage):
    """`text` (e.g. recorded flags) with `storage`'s password taken out.

    Args:
      text: str holding `storage` verbatim.
      storage: the storage URL or None.

    Returns:
      (text, env): for a `postgresql` or `mysql` URL with a password, `text`
      with the URL without it, and the environment in which a worker reading
      the text finds it: `{"PGPASSWORD": password}` (libpq reads it) or
      `{PASSWORD_ENV: password}` (`open_storage` reads it); otherwise `text`
      unchanged and None.
    """
    if not storage or "://" not in storage:
        return text, None
    try:
        url = sqlalchemy.engine.make_url(storage)
    except sqlalchemy.exc.ArgumentError:
        return text, None
    backend = url.get_backend_name()
    if url.password is None or backend not in ("postgresql", "mysql"):
        return text, None
    bare = sqlalchemy.engine.URL.create(
        url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    ).render_as_string(hide_password=False)
    variable = "PGPASSWORD" if backend == "postgresql" else PASSWORD_ENV
    return text.replace(storage, bare), {variable: str(url.password)}
