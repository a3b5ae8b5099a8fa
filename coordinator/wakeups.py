"""Wake-ups between coordinator processes and instances, through the database.

Several coordinator processes (gunicorn workers, instances behind a load balancer) share
one database but not memory: a job submitted to one must wake the worker long-polling
another at once, not on the next periodic re-check. Without a broker the database
carries it, in a way that works the same on SQLite, MariaDB and PostgreSQL:

* the ``wakeups`` table holds a fixed number of counters (``BUCKETS`` rows, made by the
  migrations); a key such as ``worker:w1`` maps to one row by a stable hash;
* ``notify`` (after the writer committed) queues the key's bucket; this module's thread
  bumps the queued counters in one short transaction;
* the same thread reads the counters' sum every ``interval`` seconds; when it moved it
  reads all counters and wakes the local waiters whose keys map to one that moved.

The table never grows, the idle poll reads one number, and
two keys sharing a bucket only cause a harmless extra check. Because a waiter registers
before its first check and the counters are read continuously, a bump that lands after
a check is always seen by a later read.

Processes on one host also ring each other's doorbell after a bump (coordinator/doorbell.py):
the receiver polls at once instead of on its next turn.

On PostgreSQL the bump also sends a notification (LISTEN/NOTIFY, coordinator/pg_listen.py)
that wakes the other processes' waiters at once; while the listener is connected the
poll runs only every ``SAFETY_INTERVAL`` seconds, for what a notification missed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
import zlib
from collections import Counter
from typing import Any

from sqlalchemy import (
    BigInteger,
    Engine,
    Integer,
    bindparam,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from coordinator import pg_listen, storage
from coordinator.db import Base
from coordinator.doorbell import Doorbell, directory_for
from coordinator.notify import Notifier
from coordinator.pg_listen import PostgresListener

log = logging.getLogger(__name__)

BUCKETS = 256
# Between 20 and 50 ms a wake-up is prompt; the poll's idle cost halves at the top end.
DEFAULT_INTERVAL = 0.04
# The poll's interval while PostgreSQL's notifications wake the waiters: it only
# catches a bump made while the listener was reconnecting.
SAFETY_INTERVAL = 1.0
# A failing database is reported at most this often, not on every poll.
ERROR_LOG_SECONDS = 60.0


class WakeupCounter(Base):
    """One wake-up counter; keys share the ``BUCKETS`` rows by hash."""

    __tablename__ = "wakeups"

    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


# One counter per execution (executed many times, in order), ascending: two processes
# bumping the same counters take the row locks in the same order and cannot deadlock.
_BUMP_ONE = (
    update(WakeupCounter)
    # The 1 written into the text: the driver is given the bucket alone.
    .values(version=WakeupCounter.version + literal_column("1"))
    .where(WakeupCounter.bucket == bindparam("b_bucket"))
)


# Built once: the idle poll runs 25 times a second in every process with a waiter.
_SUM = select(func.sum(WakeupCounter.version))
_ALL = select(WakeupCounter.bucket, WakeupCounter.version)


def bucket_of(key: str) -> int:
    """A hash that every process agrees on (Python's ``hash`` differs per process)."""
    return zlib.crc32(key.encode()) % BUCKETS


class DatabaseWakeups:
    """Publishes this process's notifications and delivers everyone else's."""

    def __init__(
        self, engine: Engine, notifier: Notifier, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.engine = engine
        self.notifier = notifier
        self.interval = interval
        self._pending: set[int] = set()
        self._pending_lock = threading.Lock()
        # Kicks (new bumps queued, stop) reach the thread as datagrams on a socket pair,
        # so that it waits for them and for other processes' rings in one ``select``.
        self._kick_r: socket.socket | None = None
        self._kick_w: socket.socket | None = None
        self._waiting: selectors.BaseSelector | None = None
        self._stop = threading.Event()
        self._seen: dict[int, int] | None = None
        self._total = 0
        # Bumps this process made since the last read: its own waiters were woken
        # directly already, so a counter that moved only by these wakes nobody.
        self._own: Counter[int] = Counter()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        # The poll's own connection, kept out of the pool and used through the driver:
        # checking one out, running a statement through SQLAlchemy and returning it cost
        # about ten times the read itself, 25 times a second in every waiting process.
        self._conn: Any = None
        self._sum_sql = str(_SUM.compile(dialect=engine.dialect))
        self._all_sql = str(_ALL.compile(dialect=engine.dialect))
        # The bumps go through the same connection and the driver too: a flush follows
        # most requests that change something (two a trivial job), and a pool checkout
        # and a transaction through SQLAlchemy cost several times the update.
        self._bump_sql = str(_BUMP_ONE.compile(dialect=engine.dialect))
        self._notify_sql = str(pg_listen.NOTIFY.compile(dialect=engine.dialect))
        self._positional = engine.dialect.positional
        # Tells this process's notifications from the others' (PostgreSQL only).
        self._token = os.urandom(8).hex()
        self.listener = (
            PostgresListener(engine, self._token, self._wake_buckets)
            if engine.dialect.name == "postgresql"
            else None
        )
        directory = directory_for(engine.url)
        self.doorbell = Doorbell(directory) if directory is not None else None
        notifier.subscribe(self.publish)

    def start(self) -> None:
        self._kick_r, self._kick_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._kick_r.setblocking(False)
        self._kick_w.setblocking(False)
        if self.doorbell is not None and not self.doorbell.open():
            self.doorbell = None
        self._waiting = selectors.DefaultSelector()
        self._waiting.register(self._kick_r, selectors.EVENT_READ)
        if self.doorbell is not None:
            self._waiting.register(self.doorbell.fileno(), selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="wakeups", daemon=True)
        self._thread.start()
        if self.listener is not None:
            self.listener.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick()
        if self.listener is not None:
            self.listener.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._drop_connection()
        if self.doorbell is not None:
            self.doorbell.close()
        if self._waiting is not None:
            self._waiting.close()
        for sock in (self._kick_r, self._kick_w):
            if sock is not None:
                sock.close()

    def _wake_buckets(self, buckets: set[int] | None) -> None:
        """Wake the local waiters whose keys map to ``buckets`` (None: every waiter):
        another process bumped them (the poll saw it, or the listener heard it)."""
        waiting = self.notifier.waiting_keys()
        keys = [k for k in waiting if buckets is None or bucket_of(k) in buckets]
        if keys:
            self.notifier.wake(*keys)

    def _listening(self) -> bool:
        """Whether PostgreSQL's notifications are carrying the wake-ups now."""
        return self.listener is not None and self.listener.listening

    def _interval(self) -> float:
        return max(self.interval, SAFETY_INTERVAL) if self._listening() else self.interval

    def publish(self, keys: tuple[str, ...]) -> None:
        """Notifier listener: queue the keys' counters for the next bump (never blocks)."""
        with self._pending_lock:
            self._pending.update(bucket_of(key) for key in keys)
        self._kick()

    def _kick(self) -> None:
        with contextlib.suppress(OSError):  # full: a kick is queued already; closed: stopped
            if self._kick_w is not None:
                self._kick_w.send(b"k")

    def _wait(self, timeout: float) -> None:
        """Until a kick, another process's ring or ``timeout``; then every queued one
        is read (the round that follows answers them all)."""
        kicks, waiting = self._kick_r, self._waiting
        assert kicks is not None and waiting is not None
        if not waiting.select(timeout):
            return
        with contextlib.suppress(OSError):
            while kicks.recv(64):
                pass
        if self.doorbell is not None:
            self.doorbell.drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wait(self._interval())
            if self._stop.is_set():
                break
            try:
                self.flush()
                if self.notifier.waiting_keys():
                    # Nobody to wake, nothing to read. A baseline left stale meanwhile
                    # costs at most one extra check for the next waiter, never a miss.
                    self.poll()
            except SQLAlchemyError as exc:
                self._report(exc)
                self._stop.wait(min(1.0, self.interval * 10))
            except self.engine.dialect.loaded_dbapi.Error as exc:  # the poll's own connection
                self._drop_connection()
                self._report(exc)
                self._stop.wait(min(1.0, self.interval * 10))

    def _report(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_SECONDS:
            self._last_error_log = now
            if isinstance(exc, SQLAlchemyError) or type(exc).__module__.split(".")[0] in (
                "sqlite3",
                "pymysql",
                "psycopg",
            ):
                # The database is away (restarting, unreachable, full): one line is enough,
                # the storage monitor says the rest.
                first = storage.first_line(exc)
                log.warning(
                    "cross-process wake-ups failed (%s); waiters fall back to re-checks", first
                )
            else:
                log.exception("cross-process wake-ups failed; waiters fall back to re-checks")

    def flush(self) -> None:
        """Bump every queued counter in one transaction."""
        with self._pending_lock:
            buckets, self._pending = sorted(self._pending), set()
        if not buckets:
            return
        try:
            self._bump(buckets)
            self._own.update(buckets)
        except Exception:
            with self._pending_lock:
                self._pending.update(buckets)  # try again on the next round
            raise
        if self.doorbell is not None and not self._listening():
            # Committed: a process rung now reads the bumps. (PostgreSQL's notification,
            # sent with the commit, wakes them already.)
            self.doorbell.ring()

    def _connection(self) -> Any:
        """The thread's own driver connection, opened when first needed."""
        if self._conn is None:
            self._conn = self.engine.raw_connection()
        return self._conn

    def _bump(self, buckets: list[int]) -> None:
        conn = self._connection()
        cursor = conn.cursor()
        try:
            if self._positional:
                cursor.executemany(self._bump_sql, [(bucket,) for bucket in buckets])
            else:
                cursor.executemany(self._bump_sql, [{"b_bucket": bucket} for bucket in buckets])
            if self.listener is not None:
                # Delivered when this transaction commits, after the bumps.
                channel, payload = pg_listen.CHANNEL, pg_listen.payload(self._token, buckets)
                named = {"channel": channel, "payload": payload}
                cursor.execute(self._notify_sql, (channel, payload) if self._positional else named)
            conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):  # a lost connection is dropped by _run
                conn.rollback()
            raise
        finally:
            cursor.close()

    def _read(self, sql: str) -> list[Any]:
        """Rows of a parameterless statement, in a transaction ended at once (a snapshot
        left open would hide later bumps on MariaDB and PostgreSQL)."""
        conn = self._connection()
        cursor = conn.cursor()
        try:
            cursor.execute(sql)
            rows = list(cursor.fetchall())
        finally:
            cursor.close()
            conn.rollback()
        return rows

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # broken or shutting down: never back into the pool
            except Exception:  # a dead connection may fail to close too
                log.debug("closing the wake-up poll's connection failed", exc_info=True)

    def poll(self) -> None:
        """Wake local waiters whose keys map to a counter that moved since the last poll.

        Counters only grow, so their sum moves exactly when one of them did: the idle
        poll reads one number, and all rows are read only after a change.
        """
        total = int(self._read(self._sum_sql)[0][0] or 0)
        if self._seen is not None:
            own_total = sum(self._own.values())
            if total == self._total + own_total:
                # Only this process's own bumps (committed before this read, by this
                # thread) moved the sum: nobody else bumped, its waiters were woken
                # directly, and the baseline moves by those bumps without reading the
                # rows. This is the common case of a lone coordinator process.
                for bucket, count in self._own.items():
                    self._seen[bucket] = self._seen.get(bucket, 0) + count
                self._total = total
                self._own = Counter()
                return
        rows = self._read(self._all_sql)
        # The sum read first may be older than the rows: remember the rows' own sum.
        current = {int(bucket): int(version) for bucket, version in rows}
        self._total = sum(current.values())
        previous, self._seen = self._seen, current
        own, self._own = self._own, Counter()
        if previous is None:
            # No baseline yet: whatever the first waiters missed, they check once more.
            self._wake_buckets(None)
            return
        self._wake_buckets({b for b, v in current.items() if v - previous.get(b, 0) > own[b]})
