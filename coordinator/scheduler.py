"""Matching pending jobs to a worker that asks for work.

Workers pull: each long-poll of a worker claims as many pending jobs as it has free
slots. A claim is a compare-and-set from ``pending`` to ``assigned``, so two coordinator
processes serving two workers can never hand the same job out twice.

Order: requesters take turns (the requester with the fewest jobs already active goes
first, each of its jobs counting one turn more), so one client that submits a hundred
jobs cannot starve another that submits one, whatever priorities it asks for. A
requester's own jobs go in priority order (higher first), then oldest first. Between
requesters at the same turn, the one served longest ago goes first, then the job of
higher priority. (Each identity's ``max_priority`` bounds what it may ask for.)

A job goes only to a worker that has its binary, the path variables it uses, its
required labels and the capabilities its arguments need. A job that *prefers* labels
skips a worker without them while another online worker that has them could take it
now. A job pinned to a worker (the round trips
of ``dffmpeg-client doctor``) goes to that worker only.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from sqlalchemy import Text, bindparam, cast, func, select
from sqlalchemy.orm import aliased

from coordinator import capabilities, lifecycle
from coordinator.db import core, db
from coordinator.models import Job, Worker
from dffmpeg.wire import JobState

ACTIVE_STATES = [JobState.ASSIGNED.value, JobState.RUNNING.value, JobState.CANCELING.value]
# How many pending jobs of each requester one claim looks at beyond the free slots;
# jobs this worker cannot run are skipped.
LOOKAHEAD = 32
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


class Wanted(Protocol):
    """What matching reads of a job: a ``Job`` or a row of its candidate columns."""

    binary: str
    path_variables: list[str]
    required_labels: list[str]
    preferred_labels: list[str]
    needs: dict[str, Any] | None
    pinned_worker: str | None
    requester: str


Caps = Mapping[str, Mapping[str, frozenset[str]] | None]


def _offered_caps(stored: Mapping[str, Any] | None) -> Caps:
    return {
        name: capabilities.offered({"capabilities": info} if info else None)
        for name, info in (stored or {}).items()
    }


@functools.lru_cache(maxsize=128)
def _caps_of_text(text: str | None) -> Caps:
    """A worker's stored capabilities, parsed once per distinct text: decoding tens of
    KB of names and building their sets cost more than the rest of a claim. Keyed by
    the text itself, so a worker that registers again with other binaries is parsed
    anew, and nothing can go stale. The sets are frozen: every offer shares them."""
    return MappingProxyType(_offered_caps(json.loads(text) if text else None))


@dataclass
class Offer:
    """What one worker offers, with capabilities as sets for fast matching."""

    worker_id: str
    labels: set[str]
    path_variables: set[str]
    caps: Caps
    free: int
    # Whose jobs the worker may run (its grant); None: anybody's.
    clients: frozenset[str] | None = None

    @classmethod
    def of(cls, worker: Worker, free: int) -> Offer:
        return cls._made(worker, _offered_caps(worker.capabilities), free)

    @classmethod
    def of_row(cls, row: Any, free: int) -> Offer:
        """From a row of ``OFFER_COLUMNS``."""
        return cls._made(row, _caps_of_text(row.capabilities_text), free)

    @classmethod
    def _made(cls, worker: Any, caps: Caps, free: int) -> Offer:
        allowed = worker.allowed_clients
        clients = frozenset(allowed) if allowed is not None else None
        return cls(
            worker.worker_id, set(worker.labels), set(worker.path_variables), caps, free, clients
        )

    def lacks(self, job: Wanted) -> list[str]:
        """What this worker lacks to run ``job`` (empty when it can run it)."""
        if job.pinned_worker and job.pinned_worker != self.worker_id:
            return [f"it is pinned to worker {job.pinned_worker}"]
        if self.clients is not None and job.requester not in self.clients:
            return [f"a grant to run {job.requester}'s jobs"]
        if job.binary not in self.caps:
            return [f"binary {job.binary}"]
        lacking = [f"path ${v}" for v in job.path_variables if v not in self.path_variables]
        lacking += [f"label {lb}" for lb in job.required_labels if lb not in self.labels]
        lacking += capabilities.missing_capabilities(job.needs or {}, self.caps[job.binary])
        return lacking


def can_run(worker: Worker, job: Job) -> bool:
    return not Offer.of(worker, 0).lacks(job)


# What a claim reads of a worker: its offer, with the capabilities as their stored text
# (see ``_caps_of_text``), and no other column of the row (info, load, overrides).
OFFER_COLUMNS = (
    Worker.worker_id,
    Worker.state,
    Worker.drained,
    Worker.slots,
    Worker.labels,
    Worker.path_variables,
    Worker.allowed_clients,
    cast(Worker.capabilities, Text).label("capabilities_text"),
)
_OFFER_OF = select(*OFFER_COLUMNS).where(Worker.worker_id == bindparam("worker_id"))


# Built once, like the other statements that run on every poll: building a statement
# and its cache key costs about as much as running it.
_ANY_PENDING = select(Job.id).where(Job.state == JobState.PENDING.value).limit(1)
_ACTIVE_COUNT = select(func.count()).where(
    Job.worker_id == bindparam("worker_id"), Job.state.in_(ACTIVE_STATES)
)
_ONLINE = select(*OFFER_COLUMNS).where(Worker.state == "online")
_SLOTS_OF = select(Worker.slots, Worker.state, Worker.drained).where(
    Worker.worker_id == bindparam("worker_id")
)


def any_pending() -> bool:
    """Whether any job waits. Callers probe this before ``claim``: most wake-ups find
    the queue empty (another worker took the job), and one indexed probe is much
    cheaper than the counting and ordering queries of a claim."""
    return core(_ANY_PENDING).first() is not None


def free_slots(worker_id: str, row: Any = None) -> int:
    """Jobs the worker could take now: 0 when it is full, drained, draining or offline.

    ``row`` (with ``slots``, ``state`` and ``drained``) saves reading the worker again
    when the caller just did.
    """
    if row is None:
        row = core(_SLOTS_OF, {"worker_id": worker_id}).first()
    if row is None or row.state != "online" or row.drained:
        return 0
    return int(row.slots) - active_count(worker_id)


def active_count(worker_id: str) -> int:
    return int(core(_ACTIVE_COUNT, {"worker_id": worker_id}).scalar_one())


def slots_used() -> dict[str, int]:
    """Active jobs per worker, from one grouped query over the (worker_id, state) index."""
    stmt = (
        db.select(Job.worker_id, func.count())
        .where(Job.worker_id.is_not(None), Job.state.in_(ACTIVE_STATES))
        .group_by(Job.worker_id)
    )
    return {str(w): int(n) for w, n in db.session.execute(stmt)}


def online_offers() -> list[Offer]:
    """Every online worker with its free slots."""
    busy = dict(
        db.session.execute(
            db.select(Job.worker_id, func.count())
            .where(Job.state.in_(ACTIVE_STATES), Job.worker_id.is_not(None))
            .group_by(Job.worker_id)
        ).all()
    )
    workers = core(_ONLINE)
    return [Offer.of_row(w, w.slots - int(busy.get(w.worker_id, 0))) for w in workers]


def unmet_by_all(job: Job) -> list[tuple[str, list[str]]] | None:
    """None if some online worker can run ``job``; else what each online worker lacks."""
    lacking = []
    workers = core(_ONLINE)
    for offer in (Offer.of_row(w, 0) for w in workers):  # what they can run, not how busy
        missing = offer.lacks(job)
        if not missing:
            return None
        lacking.append((offer.worker_id, missing))
    return lacking


_CANDIDATE_COLUMNS = (
    Job.id,
    Job.requester,
    Job.priority,
    Job.created_at,
    Job.binary,
    Job.path_variables,
    Job.required_labels,
    Job.preferred_labels,
    Job.needs,
    Job.pinned_worker,
)


def _fair_order_statements() -> tuple[Any, Any, Any]:
    """The three statements of ``fair_order``, built once: building and caching a
    statement with a correlated subquery costs more than running it."""
    live = (
        select(Job.requester, Job.state, func.count())
        .where(Job.state.in_([JobState.PENDING.value, *ACTIVE_STATES]))
        .group_by(Job.requester, Job.state)
    )
    # Ties between requesters go to the one served longest ago: per requester one
    # lookup in ix_jobs_requester_started (a correlated max()), where a grouped query
    # would read every job the requester ever ran.
    waiting = select(Job.requester).where(Job.state == JobState.PENDING.value).distinct().subquery()
    history = aliased(Job)
    started = (
        select(func.max(history.started_at))
        .where(history.requester == waiting.c.requester)
        .scalar_subquery()
    )
    last_served = select(waiting.c.requester, started)
    # Each requester's first ``free + LOOKAHEAD`` pending jobs in its own order, as
    # plain rows of the columns ordering and matching need: whole ORM objects
    # (arguments, environment) cost several times more to load than the claim itself.
    # One indexed, limited read per requester: a queue of thousands costs no more.
    candidates = (
        select(*_CANDIDATE_COLUMNS)
        .where(Job.state == JobState.PENDING.value, Job.requester == bindparam("requester"))
        .order_by(Job.priority.desc(), Job.created_at)
        .limit(bindparam("limit"))
    )
    return live, last_served, candidates


_LIVE, _LAST_SERVED, _CANDIDATES = _fair_order_statements()


def fair_order(free: int) -> list[Any]:
    """Pending jobs in the order they should be served (see the module docstring).

    Two statements plus one per requester with pending jobs, one fewer when a single
    requester waits (a claim runs on many worker wake-ups, and on a server database
    each statement is a round trip).
    """
    active: dict[str, int] = defaultdict(int)
    waiting: set[str] = set()
    for requester, state, count in core(_LIVE):
        if state != JobState.PENDING.value:
            active[requester] += int(count)
        else:
            waiting.add(str(requester))
    # Who was served longest ago only orders requesters among themselves: with one
    # requester waiting (a media server's library scan) there is nothing to order.
    last_served: dict[str, datetime | None]
    if len(waiting) == 1:
        last_served = dict.fromkeys(waiting)
    else:
        last_served = {str(r): t for r, t in core(_LAST_SERVED)}
    candidates: list[Any] = []  # rows; typed loosely, their columns vary by query
    for requester in last_served:
        candidates += core(_CANDIDATES, {"requester": requester, "limit": free + LOOKAHEAD}).all()
    turn: dict[str, int] = defaultdict(int)
    keyed: list[tuple[int, datetime, int, datetime, Any]] = []
    for job in candidates:  # each requester's jobs arrive in its own order
        keyed.append(
            (
                int(active.get(job.requester, 0)) + turn[job.requester],
                last_served.get(job.requester) or NEVER,
                -job.priority,
                job.created_at,
                job,
            )
        )
        turn[job.requester] += 1
    keyed.sort(key=lambda k: k[:4])
    return [k[4] for k in keyed]


def _preferred_elsewhere(job: Wanted, offer: Offer, others: list[Offer]) -> bool:
    """The job prefers labels this worker lacks and another free worker has them."""
    wanted = set(job.preferred_labels or ())
    if not wanted or wanted <= offer.labels:
        return False
    return any(
        o.worker_id != offer.worker_id and o.free > 0 and wanted <= o.labels and not o.lacks(job)
        for o in others
    )


def offer_row(worker_id: str) -> Any:
    """The worker's row of ``OFFER_COLUMNS`` (its state among them), or None."""
    return core(_OFFER_OF, {"worker_id": worker_id}).first()


def claim(
    worker_id: str, also: tuple[Any, dict[str, Any]] | None = None, row: Any = None
) -> list[str]:
    """Assign pending jobs to the worker up to its free slots; return their ids.

    ``also`` (a statement and its parameters) commits with the first job claimed;
    ``row`` (from ``offer_row``) saves reading the worker again.
    """
    worker = row if row is not None else offer_row(worker_id)
    if worker is None or worker.state != "online" or worker.drained:
        return []
    free = worker.slots - active_count(worker_id)
    if free <= 0:
        db.session.commit()
        return []
    offer = Offer.of_row(worker, free)
    candidates = fair_order(free)
    others: list[Offer] | None = None
    db.session.commit()
    claimed: list[str] = []
    for job in candidates:
        if free <= 0:
            break
        if offer.lacks(job):
            continue
        if job.preferred_labels:
            others = others if others is not None else online_offers()
            db.session.commit()
            if _preferred_elsewhere(job, offer, others):
                continue
        if lifecycle.transition(
            job.id,
            [JobState.PENDING],
            JobState.ASSIGNED,
            reason=f"assigned to {offer.worker_id}",
            also=None if claimed else also,
            worker_id=offer.worker_id,  # not the row: the commit above expired it
        ):
            claimed.append(job.id)
            free -= 1
    return claimed
