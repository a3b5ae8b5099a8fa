"""Engine settings per database and the schema's version (Alembic).

``dffmpeg-admin db upgrade`` creates or upgrades the schema. The coordinator creates it
on an empty database and refuses to start on an out-of-date one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from sqlalchemy import Engine, column, event, exc, inspect, select, table
from sqlalchemy.engine import make_url

from coordinator.db import db

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaError(RuntimeError):
    pass


def check_location(url: str) -> None:
    """Refuse, in one line, a SQLite file that cannot be created or written.

    The driver would otherwise fail deep inside the first query with a traceback that
    never names the directory; a fresh machine without ``/var/lib/dffmpeg`` is the
    common case. (Server databases report their own errors, which the commands show
    as one line.)
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    name = parsed.database or ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name).expanduser().absolute()
    directory = path.parent
    if not directory.is_dir():
        raise SchemaError(
            f"the database directory {directory} does not exist: create it, writable by "
            "the user the coordinator runs as (docs/setup.md), or change database_url"
        )
    # SQLite writes its -wal and -shm files beside the database, also to read it.
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SchemaError(f"the database directory {directory} is not writable by this user")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise SchemaError(f"the database file {path} is not writable by this user")


def engine_options(url: str) -> dict[str, Any]:
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # Long busy timeout: SQLite has one writer, the others wait instead of failing.
        # A pool as large as a process's request threads: SQLite connections cost
        # little, and a request never waits for one.
        return {
            "connect_args": {"timeout": 30, "check_same_thread": False},
            "pool_size": 10,
            "max_overflow": 30,
        }
    # No pool_pre_ping: it costs a round trip on every checkout, and a request checks a
    # connection out after each of its commits. install_engine_events pings only a
    # connection that sat unused long enough to have gone stale.
    options: dict[str, Any] = {"pool_size": 10, "max_overflow": 20}
    if backend in ("mysql", "mariadb"):
        # Long-polls re-read rows in a loop; under REPEATABLE READ they would not see
        # other transactions' commits.
        options["isolation_level"] = "READ COMMITTED"
    return options


# A completed checkpoint truncates the write-ahead log to at most this much (the
# janitor's checkpoints truncate it to nothing: coordinator/storage.py).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    cursor.close()


# A pooled connection unused for this long is pinged before use: a database restart or
# a server-side idle timeout meanwhile would otherwise fail the next request.
IDLE_PING_SECONDS = 10.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Any:
    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get("checked_in_at")
        if last is not None and time.monotonic() - last < IDLE_PING_SECONDS:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception:
            alive = False
        if not alive:
            # The pool discards this connection and checks out a fresh one.
            raise exc.DisconnectionError("pooled connection is gone")

    return checkout


def install_engine_events(engine: Engine) -> None:
    """SQLite pragmas on every new connection; idle pings on the server databases."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", _ping_if_idle(engine))


def install_app_engine_events(app: Flask) -> None:
    with app.app_context():
        install_engine_events(db.engine)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision of the migrations shipped (read once: they do not change)."""
    script = ScriptDirectory(str(MIGRATIONS))
    return script.get_current_head()


_VERSION: Any = select(column("version_num")).select_from(table("alembic_version"))


def stamped_revision(engine: Engine) -> str | None:
    """The revision the database is at, in one plain read (for readiness checks).

    Raises SQLAlchemyError when the database cannot be reached or has no schema yet.
    """
    with engine.connect() as conn:
        return conn.execute(_VERSION).scalar_one_or_none()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def make_private(url: str) -> None:
    """A SQLite database file (and its write-ahead log) readable by its owner only: it
    holds the identities, their (encrypted) keys and every job's arguments."""
    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not name or name == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name + suffix, 0o600)


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest version; return (before, after) revisions."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


# How long a coordinator waits for another one that is creating the schema right now.
CREATION_WAIT_SECONDS = 60.0


def _await_head(engine: Engine, timeout: float, quiet: float | None = None) -> bool:
    """Wait until the schema reaches the newest revision (another process creates it).

    With ``quiet``, give up early once the revision stood still that long: an old
    database nobody is upgrading is refused after a moment, not after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_change = time.monotonic()
    while True:
        try:
            revision: object = current_revision(engine)
        except exc.SQLAlchemyError:
            revision = "unreadable"  # the other process has not made the version table yet
        if revision == head_revision():
            return True
        now = time.monotonic()
        if revision != last:
            last, last_change = revision, now
        if now >= deadline or (quiet is not None and now - last_change >= quiet):
            return False
        time.sleep(0.2)


def ensure_current(engine: Engine | None = None) -> None:
    """Create the schema on an empty database; refuse an out-of-date one.

    Several coordinators started at once on a new database race to create it: the
    losers' statements fail (the tables exist) or find tables without a revision yet,
    and they wait for the winner to finish instead of giving up.
    """
    engine = engine if engine is not None else db.engine
    if is_empty(engine):
        try:
            upgrade(engine)
        except exc.SQLAlchemyError:
            if not _await_head(engine, CREATION_WAIT_SECONDS):
                raise
        return
    current, head = current_revision(engine), head_revision()
    # Tables without the newest revision may be another process's creation in
    # progress (MariaDB stamps each migration as it goes): wait while it moves.
    if current != head and _await_head(engine, CREATION_WAIT_SECONDS, quiet=2.0):
        return
    if current != head:
        raise SchemaError(
            f"database schema is at revision {current}, this coordinator needs {head}: "
            "run 'dffmpeg-admin --config FILE db upgrade' first"
        )
