"""Whether the coordinator itself could serve everyone: leases are judged only after it could.

A lease says "this party is gone if it has not been heard from by then". That holds only
while the coordinator was able to hear it: when its request threads were all busy, or it
refused connections, a worker's heartbeats may have failed through no fault of the
worker's, and declaring it lost would fail *another* client's running job.

So every coordinator instance records, in the database where every instance's janitor
sees it, the last moment it was *impaired* (``ServingState``, one row per instance). A
janitor then treats a lease that ran out as expired only once the party has had a whole
lease of its length to renew since the latest impairment of any instance: a lease of L
seconds that expired is honoured only when ``now >= impaired_at + L``.

Who reports: the request loop (``coordinator.httpserver``) calls ``impaired(reason)``
when a complete request waited more than a second for a thread, when connections had to
be refused, or when request bodies could not be buffered. ``impaired`` only notes the
time in memory (it runs on the loop's thread and must not block); the janitor's thread
writes it out at the start of every sweep (``flush``), before it judges any lease.

The same rule serves every other reason a party could not reach the coordinator:

* **its start**: a coordinator that starts may follow an outage of any length, during
  which every lease ran out unrenewable; the janitor notes an impairment when it
  starts, so the first lease judged is one the parties had the whole of to renew
  against the running coordinator (``Janitor.start``);
* **a database fault**: every request or sweep that fails because the database cannot
  be used notes one (``coordinator.storage``), so leases are judged only a whole lease
  after the database was last seen failing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from coordinator.db import db, now_utc
from coordinator.models import ServingState

log = logging.getLogger(__name__)
LOG_SECONDS = 30.0

_LATEST = select(func.max(ServingState.impaired_at))


def instance_name() -> str:
    """This process's row key: host, pid and a random part (pids are reused)."""
    host = socket.gethostname()[:32]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ServingMonitor:
    """Notes when this instance could not serve, and tells the janitor when anyone could not."""

    def __init__(self, instance: str | None = None) -> None:
        self.instance = instance or instance_name()
        self._lock = threading.Lock()
        self._noted: tuple[datetime, str] | None = None  # not yet written out
        self._last: datetime | None = None  # the latest of this instance, written or not
        self._logged: dict[str, float] = {}  # reason -> when last logged (janitor thread)

    def impaired(self, reason: str) -> None:
        """This instance cannot serve everyone right now. Cheap; never blocks on I/O."""
        now = now_utc()
        with self._lock:
            self._noted = (now, reason[:64])
            self._last = now

    def flush(self) -> datetime | None:
        """Write the latest noted impairment to this instance's row (janitor thread).

        Returns when the impairment written was noted (None: nothing to write): the
        write itself shows the database took a write at that moment or later.
        """
        with self._lock:
            noted, self._noted = self._noted, None
        if noted is None:
            return None
        at, reason = noted
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_SECONDS) >= LOG_SECONDS:
            # Once per reason and half minute: a fault lasting minutes is noted every sweep.
            self._logged[reason] = now
            log.warning("this coordinator could not serve every request: %s", reason)
        try:
            result = db.session.execute(
                update(ServingState)
                .where(ServingState.instance == self.instance)
                .values(impaired_at=at, reason=reason)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                # Only this instance writes its row: no concurrent insert to lose to.
                db.session.add(ServingState(instance=self.instance, impaired_at=at, reason=reason))
            db.session.commit()
        except Exception:
            db.session.rollback()
            with self._lock:  # try again with the next sweep
                if self._noted is None:
                    self._noted = noted
            raise
        return at

    def latest(self) -> datetime | None:
        """The last time any instance (this one included, written or not) was impaired."""
        stored = db.session.execute(_LATEST).scalar_one_or_none()
        db.session.commit()
        with self._lock:
            mine = self._last
        candidates = [t for t in (stored, mine) if t is not None]
        return max(candidates) if candidates else None


def may_judge(lease: timedelta, impaired_at: datetime | None, now: datetime) -> bool:
    """Whether a lease of length ``lease`` that ran out may be taken as expired ``now``:
    its party had a whole lease to renew since the latest impairment."""
    return impaired_at is None or now >= impaired_at + lease


def forget_old(keep: timedelta) -> None:
    """Drop rows of instances impaired longer ago than any lease (retention)."""
    db.session.execute(
        ServingState.__table__.delete().where(ServingState.impaired_at < now_utc() - keep)
    )
    db.session.commit()
