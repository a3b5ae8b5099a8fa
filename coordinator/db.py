"""The SQLAlchemy handle and column types shared by every model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, Executable, MetaData
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator, TypeEngine

from coordinator import prepared

# Explicit constraint names keep Alembic migrations identical on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)


def now_utc() -> datetime:
    return datetime.now(UTC)


def core(statement: Executable, params: Any = None) -> Any:
    """Run a Core statement (table rows, no ORM objects) in the request session's
    transaction, on its connection.

    The session's own ``execute`` runs the ORM's execution path around it (compile
    state, autoflush, result adaptation): about twice what SQLAlchemy spends on the
    statement through the connection, which in turn costs about ten times the driver's
    work (coordinator/prepared.py runs it through the driver when it can). The
    statements every job passes many times (authentication, transitions, the poll's
    reads) run here. With ORM objects waiting to be flushed the session runs it, as it
    always did: it flushes them first.
    """
    session = db.session()
    if _flushes_first(session):
        return session.execute(statement, params)
    connection = session.connection()
    result = prepared.execute(connection, statement, params)
    if result is prepared.UNSUPPORTED:
        return connection.execute(statement, params)
    return result


def _flushes_first(session: Any) -> bool:
    """Whether ORM objects wait to be flushed: the session must run the statement."""
    return bool(session.new or session.dirty or session.deleted)


@contextmanager
def streamed(statement: Executable, params: dict[str, Any], batch: int) -> Iterator[Iterable[Any]]:
    """The rows of a read that may be long (a stream's frames), ``batch`` at a time, in
    the request session's transaction; closed when the block ends, also when it stops
    early. Through the driver where it can (SQLite: coordinator/prepared.py), else the
    session's streaming read (``yield_per``, a server-side cursor)."""
    session = db.session()
    rows = None
    if not _flushes_first(session):
        rows = prepared.iterate(session.connection(), statement, params, batch)
    if rows is not None:
        with closing(rows):
            yield rows
        return
    with session.execute(statement, params, execution_options={"yield_per": batch}) as result:
        yield result


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (every backend agrees on that), hands back aware UTC datetimes.

    Microseconds are kept everywhere: MariaDB/MySQL's plain DATETIME drops them, which
    would make "oldest first" and lease comparisons tie within a second.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)
