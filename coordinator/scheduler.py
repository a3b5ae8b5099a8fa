"""Matching pending jobs to a worker that asks for work.

Workers pull: each long-poll of a worker claims as many pending jobs as it has free
slots. A claim is a compare-and-set from ``pending`` to ``assigned``, so two coordinator
processes serving two workers can never hand the same job out twice.
"""

from __future__ import annotations

from sqlalchemy import func

from coordinator import lifecycle
from coordinator.db import db
from coordinator.models import Job, Worker
from dffmpeg.wire import JobState

ACTIVE_STATES = [JobState.ASSIGNED.value, JobState.RUNNING.value, JobState.CANCELING.value]
# How many pending jobs one claim looks at; jobs this worker cannot run are skipped.
CANDIDATES = 64


def can_run(worker: Worker, job: Job) -> bool:
    if job.binary not in worker.binaries:
        return False
    return set(job.path_variables) <= set(worker.path_variables)


def active_count(worker_id: str) -> int:
    stmt = db.select(func.count()).where(Job.worker_id == worker_id, Job.state.in_(ACTIVE_STATES))
    return int(db.session.execute(stmt).scalar_one())


def slots_used() -> dict[str, int]:
    """Active jobs per worker, from one grouped query over the (worker_id, state) index."""
    stmt = (
        db.select(Job.worker_id, func.count())
        .where(Job.worker_id.is_not(None), Job.state.in_(ACTIVE_STATES))
        .group_by(Job.worker_id)
    )
    return {str(w): int(n) for w, n in db.session.execute(stmt)}


def claim(worker: Worker) -> list[str]:
    """Assign pending jobs to ``worker`` up to its free slots; return their ids."""
    if worker.state != "online" or worker.drained:
        return []
    free = worker.slots - active_count(worker.worker_id)
    if free <= 0:
        return []
    stmt = (
        db.select(Job)
        .where(Job.state == JobState.PENDING.value)
        .order_by(Job.priority.desc(), Job.created_at)
        .limit(CANDIDATES)
    )
    candidates = list(db.session.execute(stmt).scalars())
    db.session.commit()
    claimed: list[str] = []
    for job in candidates:
        if free <= 0:
            break
        if not can_run(worker, job):
            continue
        if lifecycle.transition(
            job.id,
            [JobState.PENDING],
            JobState.ASSIGNED,
            reason=f"assigned to {worker.worker_id}",
            worker_id=worker.worker_id,
        ):
            claimed.append(job.id)
            free -= 1
    return claimed
