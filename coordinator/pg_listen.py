"""PostgreSQL's LISTEN/NOTIFY as the fast path of the database wake-ups.

The counters of coordinator/wakeups.py stay the record: every bump still lands in the
``wakeups`` table, and the poll still reads it. On PostgreSQL the bump's transaction
also sends a notification naming the bumped buckets, which the database delivers when
that transaction commits (so after the change it announces, like the counters). Each
coordinator process listens on a connection of its own and wakes its waiters as a
notification arrives, instead of at its next poll: a wake-up across instances then
takes about a millisecond instead of half the poll interval on average. While the
listener is connected the poll only catches what a notification could not bring (a
bump made while the listener reconnected), so it runs far less often.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text

from coordinator import storage

log = logging.getLogger(__name__)

CHANNEL = "dffmpeg_wakeups"
# The notification's statement, run in the bump's own transaction.
NOTIFY = text("SELECT pg_notify(:channel, :payload)")
# How long one wait for notifications lasts: how soon a stop is noticed.
WAIT_SECONDS = 1.0
# After the listening connection failed, the next attempt waits this long.
RETRY_SECONDS = 1.0
# A database that stays away is reported at most this often, not on every attempt.
LOG_SECONDS = 60.0


def payload(token: str, buckets: list[int]) -> str:
    """What a notification carries: the sending process's token and the buckets."""
    return " ".join([token, *map(str, buckets)])


def parse(text_: str, own_token: str) -> set[int] | None:
    """The buckets of another process's notification; None for our own or a garbled one."""
    token, *rest = text_.split(" ")
    if token == own_token:
        return None
    try:
        return {int(part) for part in rest}
    except ValueError:
        return None


class PostgresListener:
    """``LISTEN`` on a connection of its own; ``heard(buckets)`` for each notification
    another process sent, and ``heard(None)`` once each time listening (re)starts: what
    was sent while nobody listened can only be caught by a check."""

    def __init__(
        self, engine: Engine, token: str, heard: Callable[[set[int] | None], None]
    ) -> None:
        self.engine = engine
        self.token = token
        self.heard = heard
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=WAIT_SECONDS + 5)
        self._close()

    def _run(self) -> None:
        logged = -LOG_SECONDS
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database went away: the poll carries on
                now = time.monotonic()
                if not self._stop.is_set() and now - logged >= LOG_SECONDS:
                    logged = now
                    log.warning(
                        "listening for wake-ups failed (%s); polling meanwhile",
                        storage.first_line(exc),
                    )
            self._listening.clear()
            self._close()
            self._stop.wait(RETRY_SECONDS)

    def _listen(self) -> None:
        # Out of the pool for good: it stays in LISTEN, in autocommit, for its life.
        fairy = self.engine.raw_connection()
        driver: Any = fairy.driver_connection  # a psycopg Connection
        fairy.detach()
        self._conn = driver
        driver.autocommit = True
        driver.execute(f"LISTEN {CHANNEL}")
        self._listening.set()
        self.heard(None)
        while not self._stop.is_set():
            for note in driver.notifies(timeout=WAIT_SECONDS):
                buckets = parse(note.payload, self.token)
                if buckets:
                    self.heard(buckets)

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead connection may fail to close too
                log.debug("closing the listening connection failed", exc_info=True)
