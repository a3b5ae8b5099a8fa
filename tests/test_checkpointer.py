"""The SQLite checkpointer: the write-ahead log reaches the database file off the
request threads, once commits pause (coordinator/checkpointer.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, LargeBinary, MetaData, Table, create_engine

from coordinator import checkpointer as checkpointer_module
from coordinator.checkpointer import Checkpointer
from coordinator.schema import install_engine_events

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
ROWS = Table(
    "rows", MetaData(), Column("id", Integer, primary_key=True), Column("data", LargeBinary)
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    install_engine_events(engine)
    ROWS.metadata.create_all(engine)
    yield engine
    engine.dispose()


def write(engine: Engine, count: int, first: int = 0) -> None:
    """``count`` commits of 1 MiB each, as a stream's output requests make them."""
    for i in range(first, first + count):
        with engine.begin() as conn:
            conn.execute(ROWS.insert(), {"id": i, "data": os.urandom(MiB)})


def database_bytes(engine: Engine) -> int:
    assert engine.url.database is not None
    return Path(engine.url.database).stat().st_size


def test_commits_leave_the_log_alone_until_the_backstop(engine: Engine) -> None:
    # No checkpointer: 8 MiB of commits stay in the log (SQLite's default, 1000 pages,
    # would have copied them into the database file on a committing thread).
    write(engine, 8)
    assert database_bytes(engine) < MiB


def test_the_checkpointer_copies_the_log_once_commits_pause(engine: Engine) -> None:
    service = Checkpointer(engine)
    service.start()
    try:
        started = time.monotonic()
        write(engine, 8)
        deadline = time.monotonic() + 10
        while service.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.checkpoints >= 1
        assert database_bytes(engine) >= 8 * MiB
        # Not before the commits paused, unless they went on past the longest delay.
        assert time.monotonic() - started >= checkpointer_module.QUIET_SECONDS
        # Nothing written since: it sleeps, and checkpoints nothing more.
        done = service.checkpoints
        time.sleep(3 * checkpointer_module.QUIET_SECONDS)
        assert service.checkpoints == done
    finally:
        service.stop()


def test_commits_that_never_pause_are_checkpointed_on_the_way(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpointer_module, "MAX_DELAY_SECONDS", 0.3)
    service = Checkpointer(engine)
    service.start()
    try:
        deadline = time.monotonic() + 2
        i = 0
        while time.monotonic() < deadline and service.checkpoints == 0:
            write(engine, 1, first=i)  # never a pause of QUIET_SECONDS
            i += 1
            time.sleep(checkpointer_module.QUIET_SECONDS / 4)
        assert service.checkpoints >= 1
    finally:
        service.stop()
    # Stopped: commits no longer wake it.
    done = service.checkpoints
    write(engine, 1, first=10_000)
    time.sleep(3 * checkpointer_module.QUIET_SECONDS)
    assert service.checkpoints == done


def test_a_served_sqlite_coordinator_runs_it(tmp_path: Path) -> None:
    from coordinator import create_app

    app = create_app({"database_url": f"sqlite:///{tmp_path / 'c.db'}"}, start_transports=False)
    services = app.extensions["dffmpeg.services"]
    try:
        assert "SQLite checkpointer" in services.names
        assert isinstance(app.extensions["dffmpeg.checkpointer"], Checkpointer)
    finally:
        services.stop()
