"""Retention: what a finished job leaves in the database is removed after a while.

Output and input chunks, state history and finally the job row itself are deleted once
the job finished more than ``retention_seconds`` ago; expired nonces go at once. The
database therefore holds the live jobs plus about one retention period of history,
however long the coordinator runs.

Deletes go in batches of ``BATCH`` jobs, each its own short transaction, so a large
backlog never holds locks for long; the job row goes last, so a batch interrupted
half-way is picked up again by the next sweep. Every step is idempotent: several
coordinator processes may purge at the same time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete

from coordinator.db import db, now_utc
from coordinator.models import InputChunk, Job, JobEvent, Nonce, OutputChunk

BATCH = 200


def purge(retention: timedelta, now: datetime | None = None) -> int:
    """Delete expired nonces and finished jobs older than ``retention``; count the jobs."""
    now = now or now_utc()
    db.session.execute(delete(Nonce).where(Nonce.expires_at < now))
    db.session.commit()
    cutoff = now - retention
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
        for model in (OutputChunk, InputChunk, JobEvent):
            db.session.execute(delete(model).where(model.job_id.in_(ids)))
        db.session.execute(delete(Job).where(Job.id.in_(ids)))
        db.session.commit()
        purged += len(ids)
        if len(ids) < BATCH:
            return purged
