"""Throw-away databases on SQLite, MariaDB and PostgreSQL for tests and benchmarks.

Which databases the ``database_url`` fixture covers comes from ``--databases`` or the
environment variable ``DFFMPEG_TEST_DATABASES`` (comma-separated; default ``sqlite``).
Every server database is created under a unique name and dropped afterwards, so
parallel test runs on one server never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.helpers import port_open, require

KINDS = ("sqlite", "mariadb", "postgresql")
ENV = "DFFMPEG_TEST_DATABASES"

# Server, admin URL (connects to an existing database) and URL template per backend.
SERVERS = {
    "mariadb": (
        3306,
        "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
        "mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4",
    ),
    "postgresql": (
        5432,
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        "postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
    ),
}


def selected(option: str | None = None) -> list[str]:
    raw = option or os.environ.get(ENV) or "sqlite"
    kinds = [k.strip() for k in raw.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown database kinds {unknown}; known: {', '.join(KINDS)}")
    return kinds


def available(kind: str) -> bool:
    return kind == "sqlite" or port_open("127.0.0.1", SERVERS[kind][0])


def require_database(kind: str) -> None:
    require(available(kind), f"{kind} on 127.0.0.1")


@contextmanager
def fresh_database(kind: str, workdir: Path) -> Iterator[str]:
    """An empty database of ``kind``; yields its SQLAlchemy URL, drops it afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'coordinator.db'}"
        return
    require_database(kind)
    _port, admin_url, template = SERVERS[kind]
    name = f"dffmpeg_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        try:
            yield template.format(name=name)
        finally:
            drop = f"DROP DATABASE IF EXISTS {name}"
            with admin.connect() as conn:
                if kind == "postgresql":
                    drop += " WITH (FORCE)"  # coordinator processes may still be connected
                else:
                    # A connection left in a transaction would block the drop for ever;
                    # fail the test's teardown instead, naming the leak.
                    conn.execute(text("SET SESSION lock_wait_timeout = 20"))
                conn.execute(text(drop))
    finally:
        admin.dispose()
