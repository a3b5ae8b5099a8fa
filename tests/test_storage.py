"""Database faults (coordinator/storage.py): which errors are faults a party waits out,
what they are called, and when the coordinator takes one to be over."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pymysql
import pytest
from psycopg import errors as pg_errors
from sqlalchemy import exc

from coordinator import storage
from coordinator.db import now_utc


def wrapped(orig: BaseException, kind: type[exc.DBAPIError] = exc.OperationalError) -> Exception:
    return kind("SELECT 1", {}, orig)


def sqlite_error(code: int, text: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (wrapped(sqlite_error(13, "database or disk is full")), storage.DISK_FULL),
        (wrapped(sqlite_error(8, "attempt to write a readonly database")), storage.READ_ONLY),
        (wrapped(sqlite_error(5 | (1 << 8), "database is locked")), storage.BUSY),
        (wrapped(sqlite_error(10, "disk I/O error")), storage.IO_ERROR),
        (wrapped(pg_errors.DiskFull("could not extend file")), storage.DISK_FULL),
        (wrapped(pg_errors.AdminShutdown("terminating connection")), storage.UNREACHABLE),
        (
            wrapped(pg_errors.ReadOnlySqlTransaction("read-only"), exc.InternalError),
            storage.READ_ONLY,
        ),
        (wrapped(pg_errors.DeadlockDetected("deadlock"), exc.DBAPIError), storage.BUSY),
        (wrapped(pymysql.err.OperationalError(2013, "Lost connection")), storage.UNREACHABLE),
        (wrapped(pymysql.err.OperationalError(1114, "The table is full")), storage.DISK_FULL),
        (wrapped(pymysql.err.InterfaceError(0, "")), storage.UNREACHABLE),
        (exc.TimeoutError("QueuePool limit"), storage.BUSY),
    ],
)
def test_database_faults_are_recognised(error: Exception, kind: str) -> None:
    fault = storage.classify(error)
    assert fault is not None and fault.kind == kind


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug of ours"),
        wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), exc.IntegrityError),
        wrapped(pg_errors.SyntaxError("syntax error"), exc.ProgrammingError),
        exc.ArgumentError("bad statement"),
    ],
)
def test_everything_else_stays_an_error(error: Exception) -> None:
    assert storage.classify(error) is None


def test_messages_name_the_volume_of_a_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    full = storage.describe(storage.Fault(storage.DISK_FULL, "x"), url)
    assert full == f"the database volume {tmp_path} (holding c.db) is full: free some space there"
    server = storage.describe(
        storage.Fault(storage.UNREACHABLE, "Connection refused"), "postgresql://db/x"
    )
    assert server == "the database is unreachable (Connection refused)"
    assert storage.volume_problem(url) is None  # a normal directory with room
    assert storage.volume_problem("postgresql://db/x") is None


class Impairments:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def impaired(self, reason: str) -> None:
        self.reasons.append(reason)


def test_a_fault_lasts_until_a_later_write_went_through() -> None:
    serving = Impairments()
    monitor = storage.StorageMonitor("postgresql://db/x", serving)
    message = monitor.failed(storage.Fault(storage.UNREACHABLE, "gone"))
    assert message == "the database is unreachable (gone)"
    assert serving.reasons == ["database unreachable"]  # no lease judged for a while
    assert monitor.current() is not None
    monitor.wrote(now_utc() - timedelta(seconds=5))  # a write from before the fault
    assert monitor.current() is not None
    monitor.wrote(now_utc())
    assert monitor.current() is None
