"""Database faults: what kind each error is, what the coordinator says about it, and when
it is over.

A request that fails because the database cannot be used right now (the server is
restarting or unreachable, its disk is full, its volume read-only, SQLite locked past
its busy timeout) changed nothing: its transaction rolled back. Every request of the
API is idempotent for its sender, so such a failure is answered ``503
database_unavailable`` with ``Retry-After``, and the party sends it again with back-off
(``dffmpeg.backoff``) for as long as the coordinator's ``outage_grace_seconds`` allow.
Any other error is a fault of ours and stays a 500.

``StorageMonitor`` (one per app) is told of each such failure. It logs it (once per
``LOG_SECONDS`` and kind, naming the database volume for SQLite), tells the
``ServingMonitor`` that this instance could not serve (so that no lease is judged until
parties had a whole lease to renew after the fault, ``coordinator.serving``), and keeps
the fault until a later write proves the database writable again: the janitor writes
the impairment out at its next sweep, and that write is the proof.

``volume_problem`` looks at a SQLite database's directory itself (read-only mount, no
space left), which is how ``/health/ready`` can say so before any write has failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from coordinator.db import now_utc

log = logging.getLogger(__name__)

LOG_SECONDS = 30.0
# A SQLite volume with less free space than this is "full": the write-ahead log and
# the database itself grow by pages, and a few hundred KiB are gone in a moment.
MIN_FREE_BYTES = 256 * 1024

UNREACHABLE = "unreachable"
DISK_FULL = "disk_full"
READ_ONLY = "read_only"
BUSY = "busy"
IO_ERROR = "io_error"

# SQLite's primary result codes (the low byte of ``sqlite_errorcode``).
_SQLITE = {5: BUSY, 6: BUSY, 8: READ_ONLY, 10: IO_ERROR, 13: DISK_FULL, 14: UNREACHABLE}
# MariaDB/MySQL error numbers (pymysql puts them first in ``args``).
_MYSQL = {
    1021: DISK_FULL,  # disk full
    1114: DISK_FULL,  # the table is full
    1290: READ_ONLY,  # --read-only
    1836: READ_ONLY,  # read-only mode
    1053: UNREACHABLE,  # server shutdown in progress
    1040: BUSY,  # too many connections
    1205: BUSY,  # lock wait timeout
    1213: BUSY,  # deadlock
    2003: UNREACHABLE,
    2006: UNREACHABLE,
    2013: UNREACHABLE,
    2014: UNREACHABLE,
    0: UNREACHABLE,  # pymysql's "(0, '')": the connection was closed under it
}


@dataclass(frozen=True)
class Fault:
    kind: str
    detail: str


def classify(error: BaseException) -> Fault | None:
    """The storage fault ``error`` is, or None when it is not one (a bug of ours, an
    integrity error a view should have handled)."""
    if isinstance(error, sa_exc.TimeoutError):
        return Fault(BUSY, "every database connection of this process is in use")
    if isinstance(error, sa_exc.DisconnectionError | sa_exc.PendingRollbackError):
        return Fault(UNREACHABLE, "the database connection was lost")
    if not isinstance(error, sa_exc.DBAPIError) or isinstance(error, sa_exc.IntegrityError):
        return None
    orig = error.orig
    detail = first_line(orig)
    kind = _kind_of(orig)
    if kind is not None:
        return Fault(kind, detail)
    if error.connection_invalidated or isinstance(
        error, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return Fault(UNREACHABLE, detail)
    return None


def _kind_of(orig: BaseException | None) -> str | None:
    if orig is None:
        return None
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return _SQLITE.get(code & 0xFF)
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state:
        if state == "53100":
            return DISK_FULL
        if state == "25006":
            return READ_ONLY
        if state in ("40001", "40P01", "55P03", "53300"):
            return BUSY
        if state.startswith(("08", "57P", "53")):
            return UNREACHABLE
        return None
    if type(orig).__module__.startswith("pymysql"):
        number = orig.args[0] if orig.args else None
        if isinstance(number, int):
            return _MYSQL.get(number)
    return None


def first_line(orig: BaseException | None) -> str:
    """An error's first line, at most 200 characters (its type's name when it has none)."""
    text = str(orig or "").strip().splitlines()
    return text[0][:200] if text else type(orig).__name__


def sqlite_file(database_url: str) -> Path | None:
    """The SQLite database file of ``database_url``; None for other databases."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).expanduser().absolute()


def volume_problem(database_url: str) -> Fault | None:
    """A read-only or full volume under a SQLite database, seen from the file system."""
    path = sqlite_file(database_url)
    if path is None:
        return None
    directory = path.parent
    try:
        stat = os.statvfs(directory)
    except OSError as error:
        return Fault(UNREACHABLE, f"cannot look at {directory}: {error.strerror or error}")
    if stat.f_flag & os.ST_RDONLY or not os.access(directory, os.W_OK):
        return Fault(READ_ONLY, f"{directory} is read-only")
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        return Fault(DISK_FULL, f"{directory} has {free // 1024} KiB left")
    return None


def on_read_only_volume(database_url: str) -> bool:
    """Whether an existing SQLite database lies on a volume mounted read-only.

    A coordinator starting then does not refuse (as it does for a directory it may not
    write for lack of permission, which is a set-up mistake): a volume remounted
    read-only after an error is a fault that ends, and the coordinator serves 503,
    naming it, until the volume is writable again, then carries on by itself.
    """
    path = sqlite_file(database_url)
    if path is None or not path.exists():
        return False
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def describe(fault: Fault, database_url: str) -> str:
    """What a party and the log are told: the kind in words, naming the volume of a
    SQLite database (the operator's next step is on that volume)."""
    path = sqlite_file(database_url)
    where = f"the database volume {path.parent} (holding {path.name})" if path else "the database"
    if fault.kind == DISK_FULL:
        return f"{where} is full: free some space there"
    if fault.kind == READ_ONLY:
        return f"{where} is read-only: make it writable"
    if fault.kind == IO_ERROR:
        return f"{where} cannot be written ({fault.detail})"
    if fault.kind == BUSY:
        return f"{where} is busy ({fault.detail})"
    return f"{where} is unreachable ({fault.detail})"


class Impairments(Protocol):
    """Who is told that this instance cannot serve (``coordinator.serving.ServingMonitor``)."""

    def impaired(self, reason: str) -> None: ...


class StorageMonitor:
    """The latest database fault of this process, until a write proves it over."""

    def __init__(self, database_url: str, serving: Impairments) -> None:
        self.database_url = database_url
        self.serving = serving
        self._lock = threading.Lock()
        self._fault: tuple[datetime, Fault] | None = None
        self._logged: dict[str, float] = {}

    def failed(self, fault: Fault) -> str:
        """A request or sweep failed for ``fault``; returns the message for the party."""
        message = describe(fault, self.database_url)
        now = time.monotonic()
        with self._lock:
            self._fault = (now_utc(), fault)
            due = now - self._logged.get(fault.kind, -LOG_SECONDS) >= LOG_SECONDS
            if due:
                self._logged[fault.kind] = now
        # Noted after the fault's time: the write of this impairment proves it over.
        self.serving.impaired(f"database {fault.kind}")
        if due:
            shown = message if fault.detail in message else f"{message} ({fault.detail})"
            log.error("database unavailable: %s; requests are answered 503 until it is back", shown)
        return message

    def wrote(self, noted_at: datetime) -> None:
        """A write noted at ``noted_at`` (or later) committed: faults before it are over."""
        with self._lock:
            if self._fault is None or self._fault[0] > noted_at:
                return
            self._fault = None
            self._logged.clear()
        log.warning("the database is writable again")

    def current(self) -> Fault | None:
        """The fault not yet proven over, if any."""
        with self._lock:
            return self._fault[1] if self._fault else None


# While a checkpoint waits for readers to move on, it waits at most this long (ms):
# the janitor tries again at its next maintenance rather than holding up a sweep.
CHECKPOINT_BUSY_MS = 1000


def checkpoint(engine: Engine) -> tuple[int, int, int] | None:
    """On SQLite, copy the write-ahead log into the database and truncate it to zero
    bytes (``PRAGMA wal_checkpoint(TRUNCATE)``): returns SQLite's (busy, log pages,
    pages checkpointed); None on other databases.

    SQLite's own automatic checkpoints never shrink the log, and cannot even reuse it
    while readers keep it busy, so a coordinator that runs for weeks under steady load
    would let it grow until the volume is full. ``journal_size_limit`` (see
    coordinator/schema.py) caps what a completed automatic checkpoint leaves; this
    truncation, every few minutes, gives the space back.
    """
    if engine.dialect.name != "sqlite":
        return None
    conn = engine.raw_connection()
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = cursor.fetchone()
        finally:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
            cursor.close()
    finally:
        conn.close()
    if row is None:
        return None
    busy, frames, done = (int(v) for v in row)
    if busy:
        log.debug("write-ahead log not truncated now (%s pages in use); next time", frames)
    return busy, frames, done


# The busy timeout every SQLite connection has (coordinator/schema.py sets it).
SQLITE_BUSY_MS = 30000
