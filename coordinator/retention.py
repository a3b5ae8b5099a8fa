"""Retention: what a finished job leaves in the database is removed after a while.

Two periods, counted from the job's end:

* ``retention_seconds`` (default one day): its output and input chunks — what costs
  space — are deleted; the job stays visible with its state, exit code and history.
* ``job_retention_seconds`` (default 30 days): the job row and its state history go,
  and so do the drop-ins' reports of fallbacks and cluster failures (coordinator/
  dropin_reports.py) whose last run is that old.

Expired nonces go at once. The database therefore holds the live jobs, a day of output
and a month of job records, however long the coordinator runs.

Deletes go in batches of ``BATCH`` jobs, each its own short transaction, so a backlog
never holds locks for long. Chunk purging walks the jobs by (finished_at, id) from
where the previous sweep of this process stopped, so jobs whose chunks are gone are not
read again on every sweep; a new process starts from the beginning once. Every step is
idempotent: several coordinator processes may purge at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_

from coordinator import dropin_reports
from coordinator.db import db, now_utc
from coordinator.models import InputChunk, Job, JobEvent, Nonce, OutputChunk

BATCH = 200


@dataclass
class Cursor:
    """Where this process's chunk purge stopped: the last (finished_at, id) done."""

    finished_at: datetime | None = None
    job_id: str = ""


def purge(
    output_retention: timedelta,
    job_retention: timedelta,
    cursor: Cursor | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Purge what is past its retention; return (jobs whose chunks went, jobs deleted)."""
    now = now or now_utc()
    db.session.execute(delete(Nonce).where(Nonce.expires_at < now))
    db.session.commit()
    chunks = _purge_chunks(now - output_retention, cursor or Cursor())
    jobs = _purge_jobs(now - job_retention)
    dropin_reports.purge(now - job_retention)
    return chunks, jobs


def _purge_chunks(cutoff: datetime, cursor: Cursor) -> int:
    purged = 0
    while True:
        stmt = db.select(Job.id, Job.finished_at).where(Job.finished_at < cutoff)
        if cursor.finished_at is not None:
            stmt = stmt.where(
                or_(
                    Job.finished_at > cursor.finished_at,
                    and_(Job.finished_at == cursor.finished_at, Job.id > cursor.job_id),
                )
            )
        rows = list(db.session.execute(stmt.order_by(Job.finished_at, Job.id).limit(BATCH)))
        if not rows:
            db.session.commit()
            return purged
        ids = [row[0] for row in rows]
        for model in (OutputChunk, InputChunk):
            db.session.execute(delete(model).where(model.job_id.in_(ids)))
        db.session.commit()
        cursor.finished_at, cursor.job_id = rows[-1][1], rows[-1][0]
        purged += len(ids)
        if len(ids) < BATCH:
            return purged


def _purge_jobs(cutoff: datetime) -> int:
    purged = 0
    while True:
        ids = list(
            db.session.execute(
                db.select(Job.id).where(Job.finished_at < cutoff).limit(BATCH)
            ).scalars()
        )
        if not ids:
            db.session.commit()
            return purged
        # The job row goes last: a batch interrupted half-way is found again.
        for model in (OutputChunk, InputChunk, JobEvent):
            db.session.execute(delete(model).where(model.job_id.in_(ids)))
        db.session.execute(delete(Job).where(Job.id.in_(ids)))
        db.session.commit()
        purged += len(ids)
        if len(ids) < BATCH:
            return purged
