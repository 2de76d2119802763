"""The tracking store as `pipeline.tracking` meets it: every failure reported as one TrackingError
(`reported`), and the checks before first use (`check_store`): a server's /health, a database's
first connection, a SQLite file's lock while MLflow creates its schema.

MLflow raises MlflowException for most failures, but not all: a store it cannot create (a SQLite
file locked by another process, a database that refuses the role) raises SQLAlchemy's own error,
and only after ~100 s of retries (`mlflow.store.db.utils.create_sqlalchemy_engine_with_retry`); a
database whose schema it cannot migrate (another program's, such as Optuna's) raises Alembic's.
`check_store` connects first, so that what cannot heal fails at once.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import sqlalchemy.exc
from alembic.util import CommandError as SchemaError
from mlflow.exceptions import MlflowException

from pipeline.urls import masked

__all__ = ["TrackingError", "check_store", "reported"]

# Connection errors that no retry heals: a role, database or password the server refuses, from
# PostgreSQL (psycopg, psycopg2), MySQL (mysqlclient, pymysql) and SQL Server; lowercase.
_CANNOT_HEAL = ("does not exist", "authentication failed", "no pg_hba.conf entry", "no password supplied",
                "access denied", "unknown database", "login failed")
_DATABASES = ("postgresql", "mysql", "mssql")  # MLflow's database stores but SQLite (a file: _sqlite_lock)


class TrackingError(RuntimeError):
    """The tracking server or database cannot be used."""


def _reason(text: object) -> str:
    """The first line of an error's text (SQLAlchemy's go on with the SQL and a link), masked."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return masked(lines[0][:300] if lines else type(text).__name__)


@contextmanager
def reported(tracking_uri: str, doing: str = ""):
    """MLflow failures (after the client's own retries) as one TrackingError naming the store and
    what was being done, in one line; never a raw MlflowException or SQLAlchemy traceback."""
    where = f"MLflow at {masked(tracking_uri)}{': ' + doing if doing else ''} failed"
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"{where}: {_reason(exc.message)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, SchemaError) as exc:  # past MLflow's wrapping: see the module's doc
        raise TrackingError(f"{where}: {_reason(exc)}") from None
    except OSError as exc:  # an artifact store that cannot be written (a read-only folder, a full disk)
        raise TrackingError(f"{where}: {exc}") from None


@contextmanager
def check_store(tracking_uri: str, wait: float = 0.0):
    """The context to create (or migrate) the store in: a server must answer, a database accept a
    connection (tried for `wait` seconds, unless the error cannot heal); a SQLite file is locked."""
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        _wait_for_server(tracking_uri, wait)
    elif scheme in _DATABASES:
        _wait_for_database(tracking_uri, wait)
    with _sqlite_lock(tracking_uri):
        yield


@contextmanager
def _sqlite_lock(tracking_uri: str):
    """For a SQLite store, hold an exclusive lock on its file while MLflow creates or migrates the
    schema: processes starting together otherwise race ("table ... already exists"). Other stores
    (a server, PostgreSQL) serialise this themselves."""
    if not tracking_uri.startswith("sqlite:///") or os.name != "posix":
        yield
        return
    import fcntl

    path = tracking_uri.removeprefix("sqlite:///").split("?")[0]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # SQLite takes an empty file as a new database
    except OSError as exc:
        raise TrackingError(f"MLflow at {tracking_uri}: cannot create or open {path} ({exc.strerror}); "
                            "run from a writable folder or pass --tracking-uri") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an flock, independent of SQLite's own fcntl locks
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_server(tracking_uri: str, wait: float) -> None:
    """Check the server answers /health; keep trying for `wait` seconds (a worker joining during a
    short outage), then fail with the server named."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
            return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TrackingError(f"cannot reach the MLflow tracking server at {masked(tracking_uri)} ({exc})") from None
            time.sleep(1.0)


def _wait_for_database(tracking_uri: str, wait: float) -> None:
    """Connect once, as MLflow will: a missing driver, an unknown role or database or a refused
    password fail at once; another error (the server down or restarting) is tried again for `wait`
    seconds (a worker joining during a short outage), then fails with the database named."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    shown = masked(tracking_uri)
    timeout = {"connect_timeout": 10} if tracking_uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = create_engine(tracking_uri, poolclass=NullPool, connect_args=timeout)
    except (ImportError, sqlalchemy.exc.ArgumentError) as exc:  # NoSuchModuleError is an ArgumentError
        raise TrackingError(f"--tracking-uri {shown}: no database driver for it ({_reason(exc)}); install one, "
                            "or name an installed one in the URI (such as postgresql+psycopg2://)") from None
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                with engine.connect():
                    return
            except sqlalchemy.exc.SQLAlchemyError as exc:
                reason = _reason(getattr(exc, "orig", None) or exc)
                if any(words in reason.lower() for words in _CANNOT_HEAL) or time.monotonic() > deadline:
                    raise TrackingError(f"cannot connect to the MLflow tracking database at {shown} "
                                        f"({reason})") from None
            time.sleep(1.0)
    finally:
        engine.dispose()
