"""The cluster minute by minute: the queue, running jobs, jobs finished and failed.

The janitor writes one ``cluster_samples`` row per minute, just after the minute ends
(the first coordinator process to get there; the others find the row). ``finished`` and
``failed`` count the jobs whose ``finished_at`` falls in the minute, so they are exact
whichever process writes them; ``pending`` and ``running`` are read at that moment.
The current minute is read live, so the newest point of a series is never a minute old.
Minutes no coordinator ran in have no row: the series shows them as gaps (None).

Reading costs the hour's 59 rows, a sum over the day's 1,440, and two counts of the
live minute; no job row is read for it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select
from sqlalchemy.exc import IntegrityError

from coordinator.db import db, now_utc
from coordinator.joblist import failed
from coordinator.models import ClusterSample, Job
from dffmpeg.wire import JobState

MINUTE = timedelta(minutes=1)
SERIES_MINUTES = 60
KEEP = timedelta(days=2)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _ended_between(start: datetime, end: datetime) -> tuple[int, int]:
    """(finished, failed) among the jobs that ended in [start, end): one read of the
    finished_at index range (a failure condition in the WHERE would let the planner
    scan every failed and completed job instead)."""
    failures = func.coalesce(func.sum(case((failed(), 1), else_=0)), 0)
    row = db.session.execute(
        select(func.count(Job.id), failures).where(Job.finished_at >= start, Job.finished_at < end)
    ).one()
    return int(row[0]), int(row[1])


def _count(*states: JobState) -> int:
    stmt = select(func.count(Job.id)).where(Job.state.in_([s.value for s in states]))
    return int(db.session.execute(stmt).scalar_one())


def record(now: datetime | None = None) -> datetime | None:
    """Write the row of the minute that just ended, unless it exists; its minute, or
    None when another process wrote it first."""
    now = now or now_utc()
    minute = minute_of(now) - MINUTE
    if db.session.get(ClusterSample, minute) is not None:
        db.session.commit()
        return None
    finished, failures = _ended_between(minute, minute + MINUTE)
    db.session.add(
        ClusterSample(
            minute=minute,
            pending=_count(JobState.PENDING),
            running=_count(JobState.RUNNING, JobState.CANCELING),
            finished=finished,
            failed=failures,
        )
    )
    try:
        db.session.commit()
    except IntegrityError:  # another coordinator process wrote it meanwhile
        db.session.rollback()
        return None
    db.session.execute(delete(ClusterSample).where(ClusterSample.minute < minute - KEEP))
    db.session.commit()
    return minute


def recent(now: datetime | None = None) -> dict[str, Any]:
    """The last hour as per-minute series (oldest first, the live minute last) and the
    last day's totals (summed by the database: a day is 1,440 rows)."""
    now = now or now_utc()
    current = minute_of(now)
    hour = db.session.execute(
        select(ClusterSample.minute, ClusterSample.pending, ClusterSample.finished).where(
            ClusterSample.minute >= current - MINUTE * (SERIES_MINUTES - 1)
        )
    ).all()
    day = db.session.execute(
        select(
            func.coalesce(func.sum(ClusterSample.finished), 0),
            func.coalesce(func.sum(ClusterSample.failed), 0),
            func.count(),
        ).where(ClusterSample.minute >= current - timedelta(days=1))
    ).one()
    finished_now, failed_now = _ended_between(current, now + MINUTE)
    pending_now = _count(JobState.PENDING)
    db.session.commit()
    by_minute = {row.minute: row for row in hour}
    minutes = [current - MINUTE * back for back in range(SERIES_MINUTES - 1, 0, -1)]
    throughput = [by_minute[m].finished if m in by_minute else None for m in minutes]
    queue = [by_minute[m].pending if m in by_minute else None for m in minutes]
    return {
        "series": {
            "minutes": SERIES_MINUTES,
            "finished": [*throughput, finished_now],
            "pending": [*queue, pending_now],
        },
        "last_day": {
            "finished": int(day[0]) + finished_now,
            "failed": int(day[1]) + failed_now,
            "sampled_minutes": int(day[2]),
        },
    }
