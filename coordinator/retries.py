"""A running job whose worker was lost: failed, or queued again if its requester allows.

A client's ``retry_on_worker_loss: N`` (sent with each submit) lets a job whose worker
was lost run again elsewhere, at most N times, but only while running it again cannot
be told apart from a first run: none of its output was handed to the requester
(``output_seen``), none of the requester's stdin was consumed (``stdin_bytes``), and the
requester sent it no signal. Each run is an ``attempt``; the move back to ``pending`` is
in the job's history like any other.

The move is one compare-and-set that also removes the lost run's output, in one
transaction: a reader either sees the old run (and its own flag-setting update, which
names the attempt it read, then makes this compare-and-set fail) or none of it.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import and_, bindparam, delete, exists, insert, select, update

from coordinator import lifecycle
from coordinator.db import db, now_utc
from coordinator.models import InputChunk, Job, JobEvent, OutputChunk
from dffmpeg.wire import FrameKind, JobState

_JOBS = Job.__table__.c
_INPUT = InputChunk.__table__.c
_SIGNALED = exists().where(_INPUT.job_id == _JOBS.id, _INPUT.kind == int(FrameKind.SIGNAL))
_ATTEMPT = select(_JOBS.attempt, _JOBS.retries_left).where(_JOBS.id == bindparam("job_id"))


def worker_lost(job_id: str, worker_id: str, reason: str, exit_code: int | None = None) -> str:
    """The worker holding ``job_id`` is gone (``reason``): queue the job again if that
    is allowed and clean, else fail it as lost. Returns the state it ended in (or ""
    when the job was no longer running on that worker)."""
    if requeue(job_id, worker_id, reason):
        return JobState.PENDING.value
    extra: dict[str, Any] = {} if exit_code is None else {"exit_code": exit_code}
    done = lifecycle.transition(
        job_id,
        [JobState.RUNNING, JobState.CANCELING],
        JobState.FAILED,
        reason,
        held_by=worker_id,
        failure="worker_lost",
        **extra,
    )
    return JobState.FAILED.value if done else ""


def requeue(job_id: str, worker_id: str, reason: str) -> bool:
    """Move the running job back to ``pending`` if it may run again; commit."""
    now = now_utc()
    before = db.session.execute(_ATTEMPT, {"job_id": job_id}).first()
    if before is None or before.retries_left <= 0:
        db.session.commit()
        return False
    result = db.session.execute(
        update(Job.__table__)
        .where(
            and_(
                _JOBS.id == job_id,
                _JOBS.state == JobState.RUNNING.value,
                _JOBS.worker_id == worker_id,
                _JOBS.attempt == before.attempt,
                _JOBS.retries_left > 0,
                _JOBS.output_seen.is_(False),
                _JOBS.stdin_bytes == 0,
                ~_SIGNALED,
            )
        )
        .values(
            state=JobState.PENDING.value,
            worker_id=None,
            retries_left=_JOBS.retries_left - 1,
            attempt=_JOBS.attempt + 1,
            progress=None,
            updated_at=now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        db.session.rollback()
        return False
    db.session.execute(delete(OutputChunk).where(OutputChunk.job_id == job_id))
    left = before.retries_left - 1
    db.session.execute(
        insert(JobEvent.__table__),
        {
            "job_id": job_id,
            "at": now,
            "from_state": JobState.RUNNING.value,
            "to_state": JobState.PENDING.value,
            "reason": (
                f"{reason} before any output reached the client; queued again "
                f"(attempt {before.attempt + 1}, {left} more allowed)"
            ),
        },
    )
    db.session.commit()
    current_app.extensions["dffmpeg.notifier"].notify("jobs")
    return True
