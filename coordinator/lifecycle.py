"""The job state machine. Every transition is a compare-and-set on the current state.

A late accept, status or finish from a worker that no longer holds the job matches no
row and changes nothing; the caller turns that into 409.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, insert, select, update

from coordinator.db import core, db, now_utc
from coordinator.models import Job, JobEvent
from coordinator.observe import instruments
from dffmpeg.wire import JobState

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.ASSIGNED, JobState.CANCELED, JobState.FAILED}),
    JobState.ASSIGNED: frozenset(
        {JobState.RUNNING, JobState.PENDING, JobState.CANCELED, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELING}),
    JobState.CANCELING: frozenset({JobState.CANCELED, JobState.FAILED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELED: frozenset(),
}


_JOBS = Job.__table__
# The state being left, plus what the job timings need (coordinator/instruments.py).
_STATE_OF = select(_JOBS.c.state, _JOBS.c.binary, _JOBS.c.created_at, _JOBS.c.started_at).where(
    _JOBS.c.id == bindparam("job_id")
)
_ADD_EVENT = insert(JobEvent.__table__)


@functools.lru_cache(maxsize=256)
def _update_for(sources: tuple[str, ...], keys: tuple[str, ...], held: bool, since: bool) -> Any:
    """The compare-and-set UPDATE for one shape of transition, built once.

    Plain table statements (no ORM), and built once per shape: every job passes here
    several times, and building the statement cost more than running it.
    """
    stmt = update(_JOBS).where(_JOBS.c.id == bindparam("b_id"), _JOBS.c.state.in_(sources))
    if held:
        stmt = stmt.where(_JOBS.c.worker_id == bindparam("b_held"))
    if since:
        stmt = stmt.where(_JOBS.c.updated_at < bindparam("b_since", type_=_JOBS.c.updated_at.type))
    return stmt.values({key: bindparam(f"v_{key}", type_=_JOBS.c[key].type) for key in keys})


def transition(
    job_id: str,
    from_states: Iterable[JobState],
    to_state: JobState,
    reason: str | None = None,
    held_by: str | None = None,
    unchanged_since: datetime | None = None,
    also: tuple[Any, dict[str, Any]] | None = None,
    known: Any = None,
    **values: Any,
) -> bool:
    """Move ``job_id`` to ``to_state`` if it is in one of ``from_states``; commit.

    With ``held_by`` the job must also be held by that worker; with ``unchanged_since``
    its last transition must be older than that (a time-out must not act on a job that
    moved on, e.g. was assigned again, after it was selected). ``also``, a statement and
    its parameters, runs in the same transaction, kept only when the move succeeds (one
    commit where two would follow each other). ``known``: the job's ``binary``,
    ``created_at`` and ``started_at`` as the caller read them in this request; with one
    state to leave, the compare-and-set says which it was, so nothing is read again.
    Returns False (and changes nothing) when the job is not in such a state.
    """
    sources = [s for s in from_states if to_state in ALLOWED[s]]
    if not sources:
        raise ValueError(f"no allowed transition to {to_state} from {list(from_states)}")
    now = now_utc()
    if to_state.terminal:
        values.setdefault("finished_at", now)
    if reason is not None:
        values.setdefault("reason", reason)
    values.update(state=to_state.value, updated_at=now)
    stmt = _update_for(
        tuple(s.value for s in sources),
        tuple(sorted(values)),
        held_by is not None,
        unchanged_since is not None,
    )
    params = {f"v_{key}": value for key, value in values.items()}
    params.update(b_id=job_id, b_held=held_by, b_since=unchanged_since)
    if also is not None:
        # First: a worker's row before a job's, the order in which a lease renewal
        # (which looks at the worker's jobs) takes them too.
        core(*also)
    # Read the state being left in the same transaction, for the history row and the
    # job timings (a move to running or to an end). A move from one possible state to
    # another that times nothing (a claim: pending -> assigned) knows it without a read.
    timed = to_state.terminal or to_state == JobState.RUNNING
    previous: Any = None
    if len(sources) == 1 and known is not None:
        previous = known
    elif timed or len(sources) != 1:
        previous = core(_STATE_OF, {"job_id": job_id}).first()
        if previous is None:
            db.session.rollback()
            return False
    result = core(stmt, params)
    if result.rowcount != 1:
        db.session.rollback()
        return False
    core(
        _ADD_EVENT,
        {
            "job_id": job_id,
            "at": now,
            "from_state": sources[0].value if len(sources) == 1 else previous.state,
            "to_state": to_state.value,
            "reason": reason,
        },
    )
    db.session.commit()
    # Counted once per job and move: only the process whose compare-and-set won is here.
    if timed:
        instruments().job_moved(previous, to_state, values, now)
    if to_state.terminal or to_state == JobState.CANCELING:
        # Who waits on a job's key (its client's output read, its worker's input read)
        # acts only on these; waking them for "assigned" or "running" would make each
        # run a check, and over a broker a request, that cannot change anything.
        current_app.extensions["dffmpeg.notifier"].notify(f"job:{job_id}")
    return True


def record_event(job_id: str, to_state: JobState, reason: str | None) -> None:
    """History row for a job's creation (the one state not reached by a transition)."""
    row = {"job_id": job_id, "at": now_utc(), "from_state": None, "to_state": to_state.value}
    core(_ADD_EVENT, {**row, "reason": reason})
