"""Naming and canceling jobs: shared by the API (``coordinator.api.jobs``) and ``dffmpeg-admin``.

A job id is 32 hexadecimal digits; people see the first 12. Anywhere a job id is
taken, a unique prefix of at least ``MIN_PREFIX`` characters names the job too. A
prefix is looked up among the jobs the caller may see only, so that "ambiguous" never
reveals another client's job.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from flask import current_app
from sqlalchemy import ColumnElement, bindparam, or_, select

from coordinator import lifecycle
from coordinator.auth import Caller
from coordinator.db import core, db, now_utc
from coordinator.errors import AmbiguousId, IdTooShort, NotFound, WrongState
from coordinator.models import Job
from dffmpeg.wire import JobState, Role

ID_LENGTH = 32
MIN_PREFIX = 6
SHOWN = 12  # how many characters of an id people see
_HEX = frozenset("0123456789abcdef")
_MATCHES_SHOWN = 5


def visible_to(caller: Caller | None) -> ColumnElement[bool] | None:
    """The condition on jobs ``caller`` may see (None: all of them)."""
    if caller is None or caller.role == Role.ADMIN:
        return None
    mine = Job.requester == caller.client_id
    if caller.role == Role.WORKER:
        return or_(mine, Job.worker_id == caller.client_id)
    return mine


def resolve_id(text: str, caller: Caller | None = None) -> str:
    """The full id of the job ``text`` names: the id itself, or a unique prefix.

    A full-length id is returned as it is, without a query: the routes a running job
    calls many times a second pay nothing for prefixes. Raises ``IdTooShort``,
    ``NotFound`` or ``AmbiguousId``, each with its own message and error code.
    """
    ident = text.strip().lower()
    if len(ident) == ID_LENGTH:
        return ident
    if len(ident) < MIN_PREFIX:
        raise IdTooShort(
            f"job id {text!r} is too short: give at least {MIN_PREFIX} characters",
            min_length=MIN_PREFIX,
        )
    if len(ident) > ID_LENGTH or not set(ident) <= _HEX:
        raise NotFound(f"no job {text}")
    # Every id starting with the prefix lies in this range, whatever the collation
    # (all ids are equally long and of the same 16 characters), so the primary key's
    # index answers it on every database; LIKE would scan on some.
    rest = ID_LENGTH - len(ident)
    stmt = (
        select(Job.id)
        .where(Job.id.between(ident + "0" * rest, ident + "f" * rest))
        .order_by(Job.id)
        .limit(_MATCHES_SHOWN + 1)
    )
    condition = visible_to(caller)
    if condition is not None:
        stmt = stmt.where(condition)
    matches = [str(m) for m in db.session.execute(stmt).scalars()]
    if not matches:
        raise NotFound(f"no job {text}")
    if len(matches) > 1:
        count = f"more than {_MATCHES_SHOWN}" if len(matches) > _MATCHES_SHOWN else len(matches)
        shown = ", ".join(m[:SHOWN] for m in matches[:_MATCHES_SHOWN])
        raise AmbiguousId(
            f"job id {text} is ambiguous: it matches {count} jobs ({shown}); give more characters",
            matches=matches[:_MATCHES_SHOWN],
        )
    return matches[0]


def find(text: str, caller: Caller | None = None) -> Job:
    """The job ``text`` names, if ``caller`` may see it (404 otherwise, never revealing
    that it exists)."""
    job_id = resolve_id(text, caller)
    job = db.session.get(Job, job_id)
    if job is None or not may_see(caller, job.requester, job.worker_id):
        raise NotFound(f"no job {text}")
    return job


def may_see(caller: Caller | None, requester: str, worker_id: str | None) -> bool:
    if caller is None or caller.role == Role.ADMIN or requester == caller.client_id:
        return True
    return caller.role == Role.WORKER and worker_id == caller.client_id


# What a worker that accepted a job may find it in when it accepts again: still its own.
RUN_STATES = (JobState.RUNNING.value, JobState.CANCELING.value)
# Who holds a job, and in which state.
HOLDER = select(Job.state, Job.worker_id).where(Job.id == bindparam("job_id"))


class Accepted(NamedTuple):
    ours: bool  # the job is the worker's to run (running or canceling, held by it)
    state: str | None  # its state now (None: no such job)
    stop: bool  # the worker must stop the job's process, if it runs one


def accept(job_id: str, worker_id: str) -> Accepted:
    """The worker takes up a job it was assigned: ``assigned`` -> ``running``.

    An accept sent again (its answer lost, or the job already accepted by another of
    the worker's requests) finds the job running or canceling and held by the worker:
    that is still the worker's. A job canceled, lost or given to another worker since it
    was assigned is not, and its process must stop; one the worker already finished is
    not either, but there is nothing left to stop.
    """
    if lifecycle.transition(
        job_id,
        [JobState.ASSIGNED],
        JobState.RUNNING,
        "accepted",
        held_by=worker_id,
        started_at=now_utc(),
    ):
        return Accepted(True, JobState.RUNNING.value, False)
    now = core(HOLDER, {"job_id": job_id}).first()
    db.session.commit()
    if now is None:
        return Accepted(False, None, True)
    held = now.worker_id == worker_id
    if held and now.state in RUN_STATES:
        return Accepted(True, now.state, False)
    # Completed or failed by this worker's own finish, which overtook the accept. A
    # canceled job may have been canceled while assigned: told to stop, a worker whose
    # process is over does nothing.
    finished = held and JobState(now.state).terminal and now.state != JobState.CANCELED.value
    return Accepted(False, now.state, not finished)


def cancel(job: Job, by: str) -> dict[str, Any]:
    """Cancel ``job``: pending and assigned jobs at once, running ones by their worker
    (``canceling`` until it confirms). Idempotent: canceling a canceling or canceled job
    again is no error (a cancel sent again because its answer was lost must not fail);
    a job that completed or failed is ``WrongState``. Returns the job as the API shows
    it."""
    reason = f"canceled by {by}"
    worker_id = job.worker_id
    if not (
        lifecycle.transition(
            job.id,
            [JobState.PENDING, JobState.ASSIGNED],
            JobState.CANCELED,
            reason,
            failure="canceled",
        )
        or lifecycle.transition(job.id, [JobState.RUNNING], JobState.CANCELING, reason)
    ):
        db.session.refresh(job)
        if job.state not in (JobState.CANCELING.value, JobState.CANCELED.value):
            raise WrongState(f"job is already {job.state}", state=job.state)
    if worker_id:
        current_app.extensions["dffmpeg.notifier"].notify(f"worker:{worker_id}")
    db.session.refresh(job)
    result: dict[str, Any] = job.to_dict()
    return result
