"""Pooled connections to a server database survive the server dropping them.

The pool does not ping on every checkout (a round trip per commit of every request);
it pings a connection that sat unused for ``IDLE_PING_SECONDS``, and replaces one that
does not answer. SQLite has no server and is never pinged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from coordinator import schema
from tests import databases

SERVER_KINDS = ("mariadb", "postgresql")


@pytest.fixture(params=SERVER_KINDS)
def server_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    kind = str(request.param)
    with databases.fresh_database(kind, tmp_path) as url:
        engine = create_engine(url, **schema.engine_options(url))
        schema.install_engine_events(engine)
        yield url, engine
        engine.dispose()


def _backend(engine: Engine) -> int:
    query = (
        "SELECT pg_backend_pid()"
        if engine.dialect.name == "postgresql"
        else "SELECT CONNECTION_ID()"
    )
    with engine.connect() as conn:
        return int(conn.execute(text(query)).scalar_one())


def _kill(url: str, backend: int) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        else:
            conn.execute(text(f"KILL {backend}"))
    admin.dispose()


def test_a_dropped_idle_connection_is_replaced(
    server_engine: tuple[str, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, engine = server_engine
    backend = _backend(engine)
    _kill(url, backend)
    # Every connection now counts as idle: the checkout pings the dead one, the pool
    # replaces it, and the statement runs on a fresh connection instead of failing.
    monkeypatch.setattr(schema, "IDLE_PING_SECONDS", 0.0)
    assert _backend(engine) != backend


def test_a_busy_connection_is_not_pinged(server_engine: tuple[str, Engine]) -> None:
    _url, engine = server_engine
    _backend(engine)
    pings = 0
    original = engine.dialect.do_ping

    def counting(dbapi_connection: object) -> bool:
        nonlocal pings
        pings += 1
        return bool(original(dbapi_connection))

    engine.dialect.do_ping = counting  # type: ignore[method-assign]
    try:
        for _ in range(20):
            _backend(engine)
    finally:
        engine.dialect.do_ping = original  # type: ignore[method-assign]
    assert pings == 0
