"""Workers: register, heartbeat, poll for work, deregister; listing for admins."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import JSON, Row, bindparam, case, select, update
from sqlalchemy.orm import defer

from coordinator import (
    held,
    jobs,
    lifecycle,
    quotas,
    retries,
    scheduler,
    streams,
    users,
    workerinfo,
    workers,
)
from coordinator.api.parse import (
    field,
    int_field,
    job_ids_arg,
    json_body,
    notifier,
    str_list,
    wait_arg,
)
from coordinator.api.peer import caller_gone
from coordinator.auth import requires
from coordinator.body import request_body
from coordinator.db import core, db, now_utc
from coordinator.errors import BadRequest, Conflict
from coordinator.models import Job, Worker
from dffmpeg.wire import FrameKind, JobState, Role

bp = Blueprint("workers", __name__, url_prefix="/workers")


def _lease() -> timedelta:
    return timedelta(seconds=current_app.config["DFFMPEG"].worker_lease_seconds)


def _idle_lease() -> timedelta:
    return timedelta(seconds=current_app.config["DFFMPEG"].worker_idle_lease_seconds)


def current_worker() -> Worker:
    """The calling worker's row; 409 when it must register (again) first.

    A worker the janitor declared offline has lost its jobs; answering 409 makes it
    register anew instead of heartbeating a row nobody assigns work to.
    """
    worker = db.session.get(Worker, g.user.client_id)
    if worker is None or worker.state == "offline":
        raise Conflict("worker is not registered")
    return worker


MAX_SLOTS = 4096
MAX_BINARIES = 16
MAX_PATH_VARIABLES = 256
MAX_NAME_BYTES = 255


def _binaries(value: Any) -> dict[str, dict[str, Any]]:
    """A registration's ``binaries``, checked to the shape the scheduler and the fast
    probes read (``worker/capabilities.py`` makes it); 400 on anything else."""
    if not isinstance(value, dict) or not value or len(value) > MAX_BINARIES:
        raise BadRequest(f"binaries must name 1 to {MAX_BINARIES} binaries")
    for name, info in value.items():
        if not name or len(name) > 32:
            raise BadRequest("binary names are 1 to 32 characters")
        if not isinstance(info, dict):
            continue  # a bare path (an older worker): offered, not probed
        caps = info.get("capabilities")
        if caps is not None and not (
            isinstance(caps, dict)
            and all(
                isinstance(names, list) and all(isinstance(n, str) for n in names)
                for names in caps.values()
            )
        ):
            raise BadRequest(f"binaries.{name}.capabilities must map kinds to lists of names")
        probes = info.get("probes")
        if probes is not None and not (
            isinstance(probes, dict)
            and all(
                isinstance(p, dict)
                and isinstance(p.get("stdout"), str)
                and isinstance(p.get("stderr"), str)
                and isinstance(p.get("exit_code"), int)
                and not isinstance(p.get("exit_code"), bool)
                for p in probes.values()
            )
        ):
            raise BadRequest(f"binaries.{name}.probes must map options to captured outputs")
    return value


def _capabilities(binaries: dict[str, Any]) -> dict[str, Any]:
    """The names the scheduler matches against, per binary (None: not probed)."""
    result: dict[str, Any] = {}
    for name, info in binaries.items():
        caps = info.get("capabilities") if isinstance(info, dict) else None
        result[name] = caps if isinstance(caps, dict) else None
    return result


def _path_variables(data: dict[str, Any], default: list[str] | None = None) -> list[str]:
    names = str_list(data, "path_variables", default)
    if len(names) > MAX_PATH_VARIABLES or any(len(n) > 64 for n in names):
        raise BadRequest(f"at most {MAX_PATH_VARIABLES} path variables of 64 characters")
    return names


def touch(worker: Worker) -> None:
    """Renew the lease of a worker loaded as a row (see ``renew_lease`` for the lengths)."""
    now = now_utc()
    holds = scheduler.active_count(worker.worker_id) > 0
    worker.last_seen_at = now
    worker.lease_expires_at = now + (_lease() if holds else _idle_lease())
    db.session.commit()


RENEW_AFTER = timedelta(seconds=1)
# Built once (see renew_lease).
_WORKERS = Worker.__table__.c
_JOBS = Job.__table__.c
_WORKER_STATE = select(
    _WORKERS.state, _WORKERS.last_seen_at, _WORKERS.slots, _WORKERS.drained
).where(_WORKERS.worker_id == bindparam("worker_id"))
# A worker holding a job gets the short lease: a client waits on that job, and a lost
# worker must be noticed within worker_lease_seconds. One holding none gets the idle
# lease. Decided in the statement itself, so a claim committed meanwhile is seen.
_HOLDS_JOB = (
    select(_JOBS.id)
    .where(_JOBS.worker_id == _WORKERS.worker_id, _JOBS.state.in_(scheduler.ACTIVE_STATES))
    .exists()
)
_RENEW_LEASE = (
    update(Worker.__table__)
    .where(_WORKERS.worker_id == bindparam("id"), _WORKERS.state != "offline")
    .values(
        last_seen_at=bindparam("seen", type_=_WORKERS.last_seen_at.type),
        lease_expires_at=case(
            (_HOLDS_JOB, bindparam("until", type_=_WORKERS.lease_expires_at.type)),
            else_=bindparam("idle_until", type_=_WORKERS.lease_expires_at.type),
        ),
    )
)
# A heartbeat renews the lease and stores the load sample that came with it.
_RENEW_WITH_LOAD = _RENEW_LEASE.values(load=bindparam("load", type_=JSON()))
_STORE_LOAD = (
    update(Worker.__table__)
    .where(_WORKERS.worker_id == bindparam("id"), _WORKERS.state != "offline")
    .values(load=bindparam("load", type_=JSON()))
)
# After a claim: the short lease from now on, never a longer one than the worker had.
_SHORTEN_LEASE = (
    update(Worker.__table__)
    .where(
        _WORKERS.worker_id == bindparam("id"),
        _WORKERS.lease_expires_at > bindparam("until", type_=_WORKERS.lease_expires_at.type),
    )
    .values(lease_expires_at=bindparam("until"))
)


def renew_lease(
    worker_id: str, load: dict[str, Any] | None = None, always: bool = False
) -> Row[Any]:
    """Extend the calling worker's lease; its row (state, slots, drained), or 409 when it
    must register. ``load``: a heartbeat's load sample, stored with the renewal.

    Runs for every heartbeat and every poll of every worker, so it is two plain
    statements rather than a loaded, flushed and expired ORM object. The update's
    condition keeps a worker the janitor declared offline offline (see
    ``current_worker``). A poll within ``RENEW_AFTER`` of the last renewal writes
    nothing; a heartbeat (``always``) always renews: the one a worker sends after its
    last job ended is what turns its short lease into the idle one, and skipping it
    would leave the short lease to run out while the worker waits the idle interval.
    """
    row = core(_WORKER_STATE, {"worker_id": worker_id}).first()
    if row is None or row.state == "offline":
        raise Conflict("worker is not registered")
    now = now_utc()
    if not always and row.last_seen_at is not None and now - row.last_seen_at < RENEW_AFTER:
        # A busy worker polls many times a second: one write per second is plenty for
        # a lease of several seconds.
        if load is not None:
            core(_STORE_LOAD, {"id": worker_id, "load": load})
        db.session.commit()
        return row
    values = {
        "id": worker_id,
        "seen": now,
        "until": now + _lease(),
        "idle_until": now + _idle_lease(),
    }
    if load is not None:
        values["load"] = load
    result = core(_RENEW_WITH_LOAD if load is not None else _RENEW_LEASE, values)
    db.session.commit()
    if result.rowcount == 0:  # declared offline meanwhile
        raise Conflict("worker is not registered")
    return row


def shorten_lease(worker_id: str) -> tuple[Any, dict[str, Any]]:
    """What a claim commits with the job it takes: from now on the worker must be heard
    from within the short lease (a held poll claims for a worker that may have died
    since it was sent)."""
    return _SHORTEN_LEASE, {"id": worker_id, "until": now_utc() + _lease()}


@bp.post("/register")
@requires(Role.WORKER)
def register() -> ResponseReturnValue:
    limits = g.user.limits
    # The probe outputs ride in the registration and every console refresh may show
    # them: their size is the identity's to bound.
    quotas.check(limits, "max_registration_bytes", len(request_body()))
    data = json_body()
    slots = int_field(data, "slots", ..., 1, MAX_SLOTS)
    binaries = _binaries(field(data, "binaries", dict))
    labels = str_list(data, "labels", [])
    quotas.check(limits, "max_label_bytes", quotas.size_of(labels))
    path_variables = _path_variables(data, [])
    now = now_utc()
    worker_id = g.user.client_id
    grant = users.get_grant(worker_id)  # read before the new row joins the session
    worker = db.session.get(Worker, worker_id)
    if worker is None:
        worker = Worker(worker_id=worker_id, registered_at=now)
        db.session.add(worker)
    worker.state = "online"
    # Believed only as far as an admin granted (coordinator/grants.py); an admin's live
    # change of slots or labels outlives the worker's restart.
    granted_slots, granted_labels = grant.cut(worker_id, slots, labels)
    worker.slots, worker.labels = workerinfo.effective(
        granted_slots, granted_labels, worker.overrides
    )
    worker.allowed_clients = grant.clients
    worker.probe_trusted = grant.trust_probes
    worker.binaries = binaries
    worker.capabilities = _capabilities(binaries)
    worker.info = {
        **workerinfo.registration_info(data, binaries),
        "configured": {"slots": slots, "labels": labels},
    }
    worker.load = workerinfo.clean_load(data.get("load"), now) if data.get("load") else None
    worker.path_variables = path_variables
    worker.version = str(field(data, "version", str, ""))[:32]
    worker.hostname = str(field(data, "hostname", str, ""))[:255]
    worker.sandboxed = bool(field(data, "sandboxed", bool, False))
    worker.last_seen_at = now
    # Whatever it held is settled just below: it starts out holding nothing.
    worker.lease_expires_at = now + _idle_lease()
    db.session.commit()
    _forget_previous_life(worker_id)
    # No "jobs" wake-up for every other worker: pending jobs this worker can run are
    # claimed by its own first poll, which follows the registration.
    notifier().notify(f"worker:{worker_id}")
    return jsonify(
        {
            "worker": worker.to_dict(),
            "lease_seconds": _lease().total_seconds(),
            "idle_lease_seconds": _idle_lease().total_seconds(),
            # How long the worker keeps its jobs and their output while it cannot reach
            # us (or we cannot reach the database): docs/operations.md.
            "outage_grace_seconds": current_app.config["DFFMPEG"].outage_grace_seconds,
        }
    )


def _forget_previous_life(worker_id: str) -> None:
    """A worker that registers again has restarted: what it held before is gone."""
    stmt = db.select(Job.id, Job.state).where(
        Job.worker_id == worker_id, Job.state.in_(scheduler.ACTIVE_STATES)
    )
    held = list(db.session.execute(stmt))
    db.session.commit()
    for job_id, state in held:
        if state == JobState.ASSIGNED.value:
            lifecycle.transition(
                job_id,
                [JobState.ASSIGNED],
                JobState.PENDING,
                "worker restarted before starting",
                held_by=worker_id,
                worker_id=None,
            )
        else:
            retries.worker_lost(job_id, worker_id, "worker lost (it restarted)")


@bp.post("/heartbeat")
@requires(Role.WORKER)
def heartbeat() -> ResponseReturnValue:
    """Renew the lease (always: see ``renew_lease``); a ``load`` sample in the body is
    kept for operators."""
    raw = json_body().get("load")
    load = workerinfo.clean_load(raw, now_utc()) if raw is not None else None
    return jsonify({"state": renew_lease(g.user.client_id, load, always=True).state})


@bp.post("/paths")
@requires(Role.WORKER)
def update_paths() -> ResponseReturnValue:
    """The worker's mounts changed: offer only the path variables present now."""
    worker = current_worker()
    worker.path_variables = _path_variables(json_body())
    touch(worker)
    # Only this worker's offer changed: its own poll looks at the queue again.
    notifier().notify(f"worker:{worker.worker_id}")
    return jsonify({"worker": worker.to_dict()})


@bp.post("/drain")
@requires(Role.WORKER)
def drain_self() -> ResponseReturnValue:
    """Take no new jobs; the worker finishes what it runs, then deregisters."""
    worker = current_worker()
    worker.state = "draining"
    touch(worker)
    return jsonify({"state": worker.state})


@bp.post("/deregister")
@requires(Role.WORKER)
def deregister() -> ResponseReturnValue:
    worker = current_worker()
    worker.state = "offline"
    db.session.commit()
    # Its own poll, still held, ends now (409) instead of at its deadline.
    notifier().notify(f"worker:{worker.worker_id}")
    return jsonify({"state": worker.state})


# Columns, not Job objects: read on every check of every poll, and an ORM load of the
# row (and its expiry at the commit) costs several times the read.
_NEWS_FOR = select(
    Job.id, Job.state, Job.binary, Job.args, Job.cwd, Job.env, Job.client_paths, Job.stdin_bytes
).where(
    Job.worker_id == bindparam("worker_id"),
    Job.state.in_([JobState.ASSIGNED.value, JobState.CANCELING.value]),
)


def _assignment(row: Any) -> dict[str, Any]:
    """What a worker needs to run the job, from the poll's columns."""
    return {
        "job_id": row.id,
        "binary": row.binary,
        "args": row.args,
        "cwd": row.cwd,
        "env": row.env,
        "client_paths": row.client_paths,
    }


def _work_for(worker_id: str, online: Any = None) -> dict[str, Any] | None:
    """``online``: the worker's row as the poll's lease renewal read it just now (the
    first check of a poll), which spares reading its state again without a claim."""
    # No lease extension here: this runs again and again while a poll waits, also
    # after the worker behind the connection died (kill -9); only a request that
    # arrives proves the worker is alive.
    db.session.expire_all()
    # With jobs waiting, the worker's offer is read for the claim, and its state comes
    # with it; without, only the state: one read of the worker's row either way.
    pending = scheduler.any_pending()
    if pending:
        me = scheduler.offer_row(worker_id)
    else:
        me = online or core(_WORKER_STATE, {"worker_id": worker_id}).first()
    if me is None or me.state == "offline":  # deregistered or expired meanwhile
        db.session.commit()
        raise Conflict("worker is not registered")
    if pending:
        scheduler.claim(worker_id, also=shorten_lease(worker_id), row=me)
    # An idle worker's poll is re-checked again and again: without pending jobs the
    # check is this indexed query plus the two above, no capabilities read.
    jobs = core(_NEWS_FOR, {"worker_id": worker_id}).all()
    assigned = [_assignment(j) for j in jobs if j.state == JobState.ASSIGNED.value]
    with_stdin = [j.id for j in jobs if j.state == JobState.ASSIGNED.value and j.stdin_bytes]
    cancel = [j.id for j in jobs if j.state == JobState.CANCELING.value]
    db.session.commit()
    for assignment in assigned:
        if assignment["job_id"] in with_stdin:
            assignment.update(_stored_input(assignment["job_id"]))
    if assigned or cancel:
        return {"jobs": assigned, "cancel": cancel}
    return None


def _stored_input(job_id: str) -> dict[str, Any]:
    """The stdin stored for a job before its worker took it (often all of it, sent with
    the submission), for the worker to write as the process starts: a short job that
    reads a key and ends (Jellyfin's ``?`` check) would be over before an input
    long-poll opened. ``input_after``: the input stream continues after this seq."""
    frames = []
    for frame in streams.read_input(job_id, 0):
        if frame.kind == FrameKind.SIGNAL:
            break  # delivered by the input long-poll, in its order
        frames.append(frame)
    data = b"".join(f.data for f in frames if f.kind == FrameKind.STDIN)
    return {
        "stdin": base64.b64encode(data).decode(),
        "stdin_eof": any(f.kind == FrameKind.STDIN_EOF for f in frames),
        "input_after": frames[-1].seq if frames else 0,
    }


@bp.get("/poll")
@requires(Role.WORKER)
def poll() -> ResponseReturnValue:
    """Long-poll for work: jobs assigned to this worker and jobs it must cancel.

    ``accepted`` lists the jobs of earlier answers the worker took up (the accept of
    each, as ``POST /jobs/ID/accept`` would do it): the poll a worker sends after a
    claim anyway carries them, which spares a request per job. A listed job that is no
    longer the worker's (canceled, lost or given to another worker while assigned) is in
    this answer's ``cancel``, and the answer comes at once.
    """
    worker_id = g.user.client_id
    accepted = job_ids_arg("accepted")
    me = renew_lease(worker_id)
    refused = [job_id for job_id in accepted if jobs.accept(job_id, worker_id).stop]
    # A worker that cannot take a job (all slots busy, drained) does not wake for every
    # submission: only its own keys, which its cancels and resume (``worker:``) and its
    # finishes (``slot:``) notify. Once a slot is free the poll ends empty, and the next
    # one listens for new jobs again; a poll with room does not wake for a finish.
    full = scheduler.free_slots(worker_id, me) <= 0
    own = f"worker:{worker_id}"
    keys = [own, f"slot:{worker_id}"] if full else ["jobs", own]

    first = [me]

    def check() -> dict[str, Any] | None:
        if caller_gone():
            return {"jobs": [], "cancel": []}  # nobody to hand a job to: claim nothing
        result = _work_for(worker_id, first.pop() if first else None)  # commits
        if result is None and full:
            if scheduler.free_slots(worker_id) > 0:
                result = {"jobs": [], "cancel": []}
            db.session.commit()
        return result

    with held.long_poll(0.0 if refused else wait_arg()) as wait:
        result = notifier().wait_for(keys, check, wait)
    reply = result or {"jobs": [], "cancel": []}
    if refused:
        reply = {**reply, "cancel": [*reply["cancel"], *refused]}
    if "held_refused" in g:
        # Answered at once (coordinator/held.py): poll again after this many seconds.
        reply = {**reply, "retry_after": held.RETRY_AFTER_SECONDS}
    return jsonify(reply)


@bp.get("")
@requires(Role.ADMIN)
def list_workers() -> ResponseReturnValue:
    # Not the scheduler's capability lists (tens of KB a worker): a listing shows none.
    stmt = db.select(Worker).options(defer(Worker.capabilities)).order_by(Worker.worker_id)
    workers = db.session.execute(stmt).scalars()
    used = scheduler.slots_used()
    return jsonify({"workers": [admin_view(w, used.get(w.worker_id, 0)) for w in workers]})


def admin_view(worker: Worker, slots_used: int) -> dict[str, Any]:
    """What an operator sees of a worker: the listing plus slots in use, binary versions
    and paths, mounts and operating system. A few hundred bytes: the probe report (raw
    outputs, hundreds of KB) is only in the details (``GET /workers/ID``)."""
    info = worker.info or {}
    # Workers registered before workers.info existed: versions from the probe report.
    binaries = None if info else worker.binaries
    return {
        **worker.to_dict(),
        "slots_used": slots_used,
        "binary_versions": workerinfo.versions(info, binaries),
        "mounts": info.get("mounts", {}),
        "os": info.get("os"),
        "configured": info.get("configured", {}),
    }


@bp.get("/<worker_id>")
@requires(Role.ADMIN)
def show_worker(worker_id: str) -> ResponseReturnValue:
    """Everything about one worker: the listing, what each binary can do (the names the
    scheduler matches, hardware only where its check passed), each hardware check's
    outcome, and the full probe report."""
    worker = workers.find(worker_id)
    view = admin_view(worker, scheduler.active_count(worker_id))
    report = worker.binaries
    return jsonify(
        {
            "worker": {
                **view,
                "binaries": report,
                "capabilities": worker.capabilities,
                "hardware": workerinfo.hardware_checks(report),
            }
        }
    )


@bp.patch("/<worker_id>")
@requires(Role.ADMIN)
def change(worker_id: str) -> ResponseReturnValue:
    """Change a worker's slots and/or labels while it runs (``null``: back to its own
    config). Kept across its restarts; jobs it runs are not touched."""
    worker = workers.find(worker_id)
    worker.overrides = workerinfo.parse_overrides(json_body(), worker.overrides)
    configured = (worker.info or {}).get("configured") or {}
    worker.slots, worker.labels = workerinfo.effective(
        int(configured.get("slots", worker.slots)),
        list(configured.get("labels", worker.labels)),
        worker.overrides,
    )
    db.session.commit()
    # More slots or new labels: its poll looks at the queue again (also a full one).
    notifier().notify(f"worker:{worker_id}")
    return jsonify({"worker": admin_view(worker, scheduler.active_count(worker_id))})


@bp.post("/<worker_id>/drain")
@requires(Role.ADMIN)
def drain(worker_id: str) -> ResponseReturnValue:
    """Give the worker no new jobs; the ones it runs finish normally."""
    worker = workers.drain(worker_id)
    return jsonify({"worker": admin_view(worker, scheduler.active_count(worker_id))})


@bp.post("/<worker_id>/resume")
@requires(Role.ADMIN)
def resume(worker_id: str) -> ResponseReturnValue:
    worker = workers.resume(worker_id)
    return jsonify({"worker": admin_view(worker, scheduler.active_count(worker_id))})


@bp.delete("/<worker_id>")
@requires(Role.ADMIN)
def remove(worker_id: str) -> ResponseReturnValue:
    """Forget a worker that is gone for good (409 while it holds jobs)."""
    workers.remove(worker_id)
    return jsonify({"removed": worker_id})
