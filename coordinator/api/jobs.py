"""Jobs: submit, watch, feed stdin, cancel (clients); accept, stream output, finish (workers)."""

from __future__ import annotations

import base64
import binascii
import re
import threading
import uuid
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError

from coordinator import (
    arguments,
    capabilities,
    held,
    joblist,
    jobs,
    lifecycle,
    progress,
    quotas,
    retries,
    scheduler,
    streams,
)
from coordinator.api.parse import (
    INT_MAX,
    INT_MIN,
    MAX_PAGE_OFFSET,
    MAX_WAIT_SECONDS,
    field,
    frames_body,
    int_arg,
    int_field,
    json_body,
    notifier,
    parse_frames,
    recent_output,
    str_list,
    str_map,
    wait_arg,
)
from coordinator.auth import requires
from coordinator.db import core, db, now_utc
from coordinator.errors import BadRequest, NotFound, WrongState
from coordinator.models import InputChunk, Job, JobEvent, OutputChunk
from coordinator.observe import instruments
from dffmpeg.paths import variables_used
from dffmpeg.wire import (
    CONTENT_TYPE_FRAMES,
    Frame,
    FrameKind,
    JobState,
    Role,
    encode_frames,
    status_frame,
)

bp = Blueprint("jobs", __name__, url_prefix="/jobs")

MAX_ARGS = 4096
MAX_ARG_BYTES = 64 * 1024
MAX_CLIENT_PATHS = 64
MAX_CLIENT_PATHS_BYTES = 64 * 1024
# Ten years: long enough for "wait for a worker", short enough for every date type.
MAX_QUEUE_TIMEOUT = 10 * 365 * 86400
MODES = ("active", "background")
# stdin the caller already had when it submitted, sent with the submission (at most
# this much): the worker writes it into the process's stdin as the process starts.
MAX_SUBMIT_STDIN = 64 * 1024
_INPUT_FRAMES = select(func.count()).where(InputChunk.job_id == bindparam("job_id"))
_PENDING_OF = select(func.count()).where(
    Job.requester == bindparam("requester"), Job.state == JobState.PENDING.value
)


def _config() -> Any:
    return current_app.config["DFFMPEG"]


def _client_lease() -> timedelta:
    return timedelta(seconds=_config().client_lease_seconds)


def visible_job(job_id: str) -> Job:
    """The job (named by its id or a unique prefix) if the caller may see it; 404
    otherwise, never revealing that it exists."""
    return jobs.find(job_id, g.user)


# The output, input, accept and finish routes run several times for every job: they
# read these few columns as a plain row instead of loading the whole job (arguments,
# environment, capabilities needed) as an ORM object.
_JOB_REF = select(
    Job.id,
    Job.requester,
    Job.worker_id,
    Job.state,
    Job.progress,
    Job.binary,
    Job.created_at,
    Job.started_at,
    Job.attempt,
).where(Job.id == bindparam("job_id"))
_FINAL = select(Job.state, Job.exit_code, Job.failure, Job.reason).where(
    Job.id == bindparam("job_id")
)
# With the final status's columns: they are written with the terminal state, so once
# the state read is terminal they are final too, and the read needs no second look.
_READ_STATE = select(
    Job.state,
    Job.attempt,
    Job.retries_left,
    Job.output_seen,
    Job.exit_code,
    Job.failure,
    Job.reason,
    Job.client_lease_expires_at,
).where(Job.id == bindparam("job_id"))
# The requester was handed output of this run: it may never run again (coordinator/
# retries.py). Conditional on the run read, so a requeue in between is noticed.
_OUTPUT_SEEN = (
    update(Job.__table__)
    .where(
        Job.__table__.c.id == bindparam("b_job"),
        Job.__table__.c.attempt == bindparam("b_attempt"),
    )
    .values(output_seen=True)
)
_RENEW_CLIENT = (
    update(Job.__table__)
    .where(Job.__table__.c.id == bindparam("job_id"))
    .values(
        client_lease_expires_at=bindparam(
            "until", type_=Job.__table__.c.client_lease_expires_at.type
        )
    )
)


def visible_ref(job_id: str) -> Row[Any]:
    """``visible_job`` as a plain row of the columns in ``_JOB_REF`` (``id`` is the
    full id, also when ``job_id`` was a prefix)."""
    full = jobs.resolve_id(job_id, g.user)
    job = core(_JOB_REF, {"job_id": full}).first()
    if job is not None and jobs.may_see(g.user, job.requester, job.worker_id):
        return job
    raise NotFound(f"no job {job_id}")


def held_job(job_id: str) -> Row[Any]:
    """The job (the columns in ``_JOB_REF``) if the calling worker holds it; 409 if it
    holds it no longer."""
    full = jobs.resolve_id(job_id, g.user)
    job = core(_JOB_REF, {"job_id": full}).first()
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.worker_id != g.user.client_id:
        raise WrongState("this worker does not hold the job", state=job.state)
    return job


def final_status(job_id: str, row: Any = None) -> dict[str, Any]:
    """The status frame's fields; ``row`` (with them) saves reading the job again."""
    if row is None:
        row = core(_FINAL, {"job_id": job_id}).one()
    return {
        "state": row.state,
        "exit_code": row.exit_code,
        "failure": row.failure,
        "reason": row.reason,
    }


# What an idempotency key looks like (client/submit.py makes 32 hex digits).
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_RETRIES_ON_LOSS = 10
_BY_KEY = select(Job).where(
    Job.requester == bindparam("requester"), Job.idempotency_key == bindparam("key")
)


def _submitted(job: Job, status: int) -> ResponseReturnValue:
    # The frames of a submit sent again are the first one's (the same stdin, stored once).
    stored = db.session.execute(_INPUT_FRAMES, {"job_id": job.id}).scalar_one()
    reply = {"job": job.to_dict(), "outage_grace_seconds": _grace(), "stdin_frames": stored}
    return jsonify(reply), status


def _grace() -> float:
    return float(_config().outage_grace_seconds)


@bp.post("")
@requires(Role.CLIENT, Role.ADMIN)
def submit() -> ResponseReturnValue:
    """Queue a job. With ``idempotency_key`` a submit sent again (its answer was lost)
    answers 200 with the job the first one made, whatever the rest of its body."""
    data = json_body()
    key = field(data, "idempotency_key", (str, type(None)), None)
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise BadRequest("field 'idempotency_key' must be 8 to 64 letters, digits, '-' or '_'")
        earlier = db.session.execute(
            _BY_KEY, {"requester": g.user.client_id, "key": key}
        ).scalar_one_or_none()
        if earlier is not None:
            return _submitted(earlier, 200)
    limits = g.user.limits
    binary = field(data, "binary", str)
    allowed = _config().allowed_binaries
    if binary not in allowed:
        raise BadRequest(f"binary {binary!r} is not allowed (allowed: {', '.join(allowed)})")
    args = str_list(data, "args")
    if len(args) > MAX_ARGS or any(len(a.encode()) > MAX_ARG_BYTES for a in args):
        raise BadRequest("too many or too long arguments")
    quotas.check(limits, "max_args_bytes", quotas.size_of(args))
    cwd = field(data, "cwd", (str, type(None)), None)
    quotas.check(limits, "max_cwd_bytes", quotas.size_of(cwd))
    env = str_map(data, "env", "strings to strings")
    quotas.check(limits, "max_env_bytes", quotas.size_of(env))
    mode = field(data, "mode", str, "active")
    if mode not in MODES:
        raise BadRequest(f"field 'mode' must be one of {', '.join(MODES)}")
    priority = int_field(data, "priority", 0)
    # Refused, not lowered: a caller asking for more than it may have must know.
    quotas.check(limits, "max_priority", priority)
    client_paths = str_map(data, "client_paths", "variable names to paths")
    if (
        len(client_paths) > MAX_CLIENT_PATHS
        or quotas.size_of(client_paths) > MAX_CLIENT_PATHS_BYTES
    ):
        raise BadRequest(f"field 'client_paths' is too large (at most {MAX_CLIENT_PATHS} roots)")
    queue_timeout = field(data, "queue_timeout", (int, float, type(None)), None)
    if isinstance(queue_timeout, bool) or (
        queue_timeout is not None and not 0 < queue_timeout <= MAX_QUEUE_TIMEOUT
    ):
        raise BadRequest(
            f"field 'queue_timeout' must be a positive number of seconds, "
            f"at most {MAX_QUEUE_TIMEOUT}"
        )
    wait_for_worker = field(data, "wait_for_worker", bool, False)
    required_labels = str_list(data, "required_labels", [])
    preferred_labels = str_list(data, "preferred_labels", [])
    retries = int_field(data, "retry_on_worker_loss", 0, 0, MAX_RETRIES_ON_LOSS)
    quotas.check(limits, "max_label_bytes", quotas.size_of(required_labels + preferred_labels))
    wait_output = field(data, "wait_output", (int, float, type(None)), None)
    if isinstance(wait_output, bool) or (
        wait_output is not None and not 0 <= wait_output <= MAX_WAIT_SECONDS
    ):
        # A held read as long as a long-poll's (the caller holds its own input and
        # signals while it waits: client/submit.py).
        raise BadRequest(f"field 'wait_output' must be from 0 to {MAX_WAIT_SECONDS} seconds")
    early_stdin = _submitted_stdin(data)
    quotas.check(limits, "max_stdin_bytes", len(early_stdin[0]))
    pending = core(_PENDING_OF, {"requester": g.user.client_id}).scalar_one()
    if pending >= limits["max_pending"]:
        db.session.commit()
        raise quotas.LimitExceeded("max_pending", limits["max_pending"], int(pending) + 1)
    now = now_utc()
    input_name, output_name = arguments.media_names(binary, args)
    job_id = uuid.uuid4().hex
    job = Job(
        id=job_id,
        input_name=input_name,
        output_name=output_name,
        requester=g.user.client_id,
        binary=binary,
        args=args,
        cwd=cwd,
        env=env,
        path_variables=sorted(variables_used([*args, cwd or ""])),
        client_paths=client_paths,
        mode=mode,
        priority=priority,
        needs=capabilities.derive_needs(args),
        required_labels=required_labels,
        preferred_labels=preferred_labels,
        queue_deadline=now + timedelta(seconds=queue_timeout) if queue_timeout else None,
        wait_for_worker=wait_for_worker,
        state=JobState.PENDING.value,
        created_at=now,
        updated_at=now,
        client_lease_expires_at=now + _client_lease() if mode == "active" else None,
        idempotency_key=key,
        retries_left=retries,
        attempt=1,
        output_seen=False,
        stdin_bytes=len(early_stdin[0]),
    )
    # Checked before the insert commits: the job's values are still in memory then,
    # where afterwards reading them would reload the row.
    lacking = None if wait_for_worker else scheduler.unmet_by_all(job)
    reply = job.to_dict()
    early_frames = _stdin_frames(*early_stdin)
    # The first read of the output (``wait_output``) listens from before the job exists:
    # whatever its worker does later wakes it, so it needs no check before a wake-up.
    with notifier().listening(_output_keys(job_id)) as listening:
        try:
            _store(job, early_frames)
        except IntegrityError:
            # The same key, sent again while the first submit was still on its way in.
            db.session.rollback()
            earlier = db.session.execute(
                _BY_KEY, {"requester": g.user.client_id, "key": key}
            ).scalar_one_or_none()
            if key is None or earlier is None:
                raise
            return _submitted(earlier, 200)
        instruments().job_submitted(binary)
        if lacking is not None:
            # No online worker could ever take it: fail at once, naming what is missing.
            lifecycle.transition(
                job.id,
                [JobState.PENDING],
                JobState.FAILED,
                capabilities.describe_missing(lacking),
                failure="no_capable_worker",
            )
            failed = db.session.get(Job, job_id)
            assert failed is not None
            reply = failed.to_dict()
        notifier().notify("jobs")
        # stdin_frames: the input frames stored with the job; a client sends its own after
        # them (a coordinator without this field stored none: the client sends them all).
        stored = len(early_frames)
        answer = {"job": reply, "outage_grace_seconds": _grace(), "stdin_frames": stored}
        if wait_output is not None:
            # The caller's first read of the output, in this request: a short job's whole
            # output and end then come with its submission (the lease was set just now).
            frames = _read_held(job_id, 0, True, float(wait_output), listening)
            answer["output"] = base64.b64encode(encode_frames(frames)).decode()
    return jsonify(answer), 201


_ADD_JOB = insert(Job.__table__)
_ADD_INPUT = insert(InputChunk.__table__)


def _store(job: Job, frames: list[Frame]) -> None:
    """A new job, its stdin frames and its history row, in one transaction: a submit
    sent again finds all or none. As rows, not the object: the ORM's flush of a new
    job costs several times its insert."""
    core(_ADD_JOB, _columns_set(job))
    for frame in frames:
        row = {"job_id": job.id, "seq": frame.seq, "kind": int(frame.kind), "data": frame.data}
        core(_ADD_INPUT, row)
    lifecycle.record_event(job.id, JobState.PENDING, f"submitted by {job.requester}")
    db.session.commit()


def _columns_set(job: Job) -> dict[str, Any]:
    """The columns a new job's constructor set, for a Core insert (the others get their
    column defaults, as a flush would give them)."""
    state: Any = sa_inspect(job)
    return {
        attr.columns[0].key: state.dict[attr.key]
        for attr in state.mapper.column_attrs
        if attr.key in state.dict
    }


def _submitted_stdin(data: dict[str, Any]) -> tuple[bytes, bool]:
    """``stdin`` (base64, what the caller's stdin held at once) and ``stdin_eof`` (it
    ended there) of a submission."""
    encoded = field(data, "stdin", (str, type(None)), None)
    eof = field(data, "stdin_eof", bool, False)
    if encoded is None:
        return b"", eof  # nothing, or an empty stdin (/dev/null): its EOF alone
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("field 'stdin' must be base64") from None
    if not raw or len(raw) > MAX_SUBMIT_STDIN:
        raise BadRequest(f"field 'stdin' must hold 1 to {MAX_SUBMIT_STDIN} bytes")
    return raw, eof


def _stdin_frames(raw: bytes, eof: bool) -> list[Frame]:
    """The input frames a submission's stdin stands for: its bytes, then its EOF."""
    frames = [Frame(FrameKind.STDIN, 1, raw)] if raw else []
    if eof:
        frames.append(Frame(FrameKind.STDIN_EOF, len(frames) + 1, b""))
    return frames


MAX_PAGE = 500


@bp.get("")
@requires(Role.CLIENT, Role.ADMIN)
def list_jobs() -> ResponseReturnValue:
    """One page of jobs, newest first, with the total that matches the filters.

    Filters (coordinator/joblist.py): ``state``, ``binary``, ``worker``, ``requester``
    (admins; a client only ever sees its own jobs), each comma-separated and each with
    a ``not_`` form; ``failed`` (true/false); ``search``/``not_search`` words. Paging:
    ``limit`` (1-500) and ``offset``. A page costs two queries, the page and a count;
    filters on state/requester/worker are served by indexes.
    """
    conditions = joblist.conditions(request.args, g.user.role == Role.ADMIN, g.user.client_id)
    limit = min(max(int_arg("limit", 100, INT_MIN, INT_MAX), 1), MAX_PAGE)
    offset = int_arg("offset", 0, 0, MAX_PAGE_OFFSET)
    page = (
        db.select(Job)
        .where(*conditions)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit)
        .offset(offset)
    )
    jobs = [j.to_dict() for j in db.session.execute(page).scalars()]
    total = db.session.execute(db.select(func.count(Job.id)).where(*conditions)).scalar_one()
    return jsonify({"jobs": jobs, "total": int(total), "offset": offset, "limit": limit})


@bp.get("/<job_id>/stderr")
@requires(Role.CLIENT, Role.ADMIN)
def stderr_tail(job_id: str) -> ResponseReturnValue:
    """The last ``kb`` KiB (default 16, at most 1024) of the job's stderr, as text.

    Read newest chunk first and stopped once enough is read, so the cost does not grow
    with the length of the job's output.
    """
    job_id = visible_ref(job_id).id
    budget = min(max(int_arg("kb", 16, INT_MIN, INT_MAX), 1), 1024) * 1024
    stmt = (
        db.select(OutputChunk.data)
        .where(OutputChunk.job_id == job_id, OutputChunk.kind == int(FrameKind.STDERR))
        .order_by(OutputChunk.seq.desc())
        .execution_options(yield_per=16)
    )
    parts: list[bytes] = []
    size = 0
    truncated = False
    with db.session.execute(stmt) as result:  # closes PostgreSQL's server-side cursor
        for (data,) in result:
            parts.append(bytes(data))
            size += len(data)
            if size >= budget:
                truncated = True
                break
    db.session.commit()
    tail = b"".join(reversed(parts))[-budget:]
    return jsonify(
        {
            "job_id": job_id,
            "stderr": tail.decode("utf-8", errors="replace"),
            "bytes": len(tail),
            "truncated": truncated or size > budget,
        }
    )


@bp.get("/<job_id>")
def show(job_id: str) -> ResponseReturnValue:
    job = visible_job(job_id)
    events = db.session.execute(
        db.select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    ).scalars()
    return jsonify({"job": {**job.to_dict(), "events": [e.to_dict() for e in events]}})


@bp.post("/<job_id>/cancel")
@requires(Role.CLIENT, Role.ADMIN)
def cancel(job_id: str) -> ResponseReturnValue:
    return jsonify({"job": jobs.cancel(visible_job(job_id), g.user.client_id)})


def _frames_response(frames: list[Any]) -> Response:
    return Response(encode_frames(frames), mimetype=CONTENT_TYPE_FRAMES)


@bp.get("/<job_id>/output")
@requires(Role.CLIENT, Role.ADMIN)
def read_output(job_id: str) -> ResponseReturnValue:
    """Frames after ``after``; once the job is over and all was read, its final status."""
    job = visible_ref(job_id)
    is_requester = job.requester == g.user.client_id
    return _frames_response(_read_held(job.id, int_arg("after", 0), is_requester, wait_arg()))


def _output_keys(job_id: str) -> list[str]:
    return [f"output:{job_id}", f"job:{job_id}"]


def _read_held(
    job_id: str,
    after: int,
    is_requester: bool,
    wait: float,
    listening: threading.Event | None = None,
) -> list[Any]:
    """What ``GET .../output`` answers: the frames after ``after`` (and the final
    status, once all was read of a job that is over), waiting up to ``wait`` seconds
    for some. The requester's read renews the job's client lease. ``listening``: the
    waiter the submission registered (``Notifier.listening``)."""
    lease = _client_lease()

    def check() -> list[Any] | None:
        # The state is read before the frames: a worker's output commits before its
        # finish, so frames read after a final state was seen are complete. The other
        # order loses output on MariaDB/PostgreSQL, where each statement of a
        # READ COMMITTED transaction sees a later moment than the one before.
        row = core(_READ_STATE, {"job_id": job_id}).one()
        if is_requester:
            # Reading is the client's heartbeat: a monitored job (one with a client
            # lease) lives while it is watched. Renewed once a third of the lease went
            # by since the last renewal (the stored expiry says when), not on every
            # read or wake-up: each renewal is a write, and a stream's reader reads
            # several times a second.
            now = now_utc()
            until = row.client_lease_expires_at
            if until is not None and until - now < lease - lease / 3:
                core(_RENEW_CLIENT, {"job_id": job_id, "until": now + lease})
        state = JobState(row.state)
        # A batch this process stored just now is handed over from memory; the read
        # that may carry the final status reads everything from the database.
        recent = None
        if not state.terminal:
            recent = recent_output().after(job_id, row.attempt, after, streams.READ_BUDGET)
        if recent is None:
            frames = streams.read_output(job_id, after)
        else:
            frames = recent
            db.session.commit()  # the lease's renewal, if any; and the read ends
        if frames and is_requester and row.retries_left > 0 and not row.output_seen:
            # A job that may run again once its worker is lost: first record that this
            # run's output reached the requester (then it never runs again).
            marked = db.session.execute(
                _OUTPUT_SEEN, {"b_job": job_id, "b_attempt": row.attempt}
            ).rowcount  # type: ignore[attr-defined]
            db.session.commit()
            if not marked:
                return None  # queued again meanwhile: these frames were the lost run's
        if state.terminal and streams.complete(frames):
            # Everything was read and nothing more can come: the final status rides
            # along, so a short job's client needs no second request to learn it.
            final = status_frame(final_status(job_id, row))
            db.session.commit()
            return [*frames, final]
        return frames or None

    with held.long_poll(wait) as held_wait:
        frames = notifier().wait_for(_output_keys(job_id), check, held_wait, listening)
    return frames or []


@bp.post("/<job_id>/input")
@requires(Role.CLIENT, Role.ADMIN)
def write_input(job_id: str) -> ResponseReturnValue:
    job = visible_ref(job_id)
    job_id = job.id
    if JobState(job.state).terminal:
        raise WrongState(f"job is already {job.state}", state=job.state)
    frames = frames_body()
    limits = g.user.limits

    def admit(new: list[Frame], stored: int) -> None:
        # Checked before anything of the request is stored: all of it or none.
        size = sum(len(f.data) for f in new if f.kind == FrameKind.STDIN)
        quotas.check(limits, "max_stdin_bytes", stored + size)

    added = streams.append_input(job_id, frames, admit)
    notifier().notify(f"input:{job_id}")
    return jsonify({"added": added})


@bp.post("/<job_id>/accept")
@requires(Role.WORKER)
def accept(job_id: str) -> ResponseReturnValue:
    """Take up an assigned job. The worker's own agent does not send this: its next
    poll says which jobs it took up (``accepted``), and its first output or finish
    does too (``_take_up``); a worker may still ask for it alone."""
    accepted = jobs.accept(held_job(job_id).id, g.user.client_id)
    if not accepted.ours:
        raise WrongState("job cannot be accepted", state=accepted.state)
    return jsonify({"state": accepted.state})


def _take_up(job: Row[Any]) -> Row[Any]:
    """``job`` (held by the calling worker) as its output or finish finds it: a job
    still ``assigned`` was taken up by the worker, which says so with its next poll;
    when this request comes first, it is the accept."""
    if job.state != JobState.ASSIGNED.value:
        return job
    jobs.accept(job.id, g.user.client_id)
    return held_job(job.id)


@bp.post("/<job_id>/output")
@requires(Role.WORKER)
def write_output(job_id: str) -> ResponseReturnValue:
    job = _take_up(held_job(job_id))
    job_id = job.id
    if job.state not in jobs.RUN_STATES:
        raise WrongState(f"job is {job.state}", state=job.state)
    frames = frames_body()
    added = _append_output(job, frames)
    if added:
        # A retry may re-send frames stored before: the new ones are the last.
        recent_output().stored(job_id, job.attempt, frames[len(frames) - added :])
    notifier().notify(f"output:{job_id}")
    return jsonify({"added": added})


def _append_output(job: Row[Any], frames: list[Frame]) -> int:
    previous = job.progress
    added = streams.append_output(job.id, frames)
    if added:
        if frames[0].seq == 1 and added == len(frames):
            # Nothing was stored before (a retry re-sends the same frames and adds none):
            # the job's first output.
            instruments().first_output_seen(job.binary, job.created_at, now_utc())
        _record_progress(job.id, previous, frames)
    return added


def _store_final_output(job: Row[Any], output: str) -> None:
    """Append a finish's ``output`` as ``POST .../output`` would (a retry adds nothing:
    its frames are stored already), if the job may still take output."""
    try:
        raw = base64.b64decode(output, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("field 'output' must be base64 of encoded frames") from None
    frames = parse_frames(raw)
    if frames and job.state in jobs.RUN_STATES:
        _append_output(job, frames)


def _record_progress(job_id: str, previous: dict[str, Any] | None, frames: list[Frame]) -> None:
    """Keep the latest ffmpeg progress of this append on the job (one small UPDATE).

    The worker is the only writer of a job's output, and so of its progress: reading
    ``previous`` before the append cannot lose a concurrent update.
    """
    stderr = b"".join(f.data for f in frames if f.kind == FrameKind.STDERR)
    latest = progress.parse(stderr, previous) if stderr else None
    if latest is None or latest == previous:
        return
    db.session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(progress=latest)
        .execution_options(synchronize_session=False)
    )
    db.session.commit()


@bp.get("/<job_id>/input")
@requires(Role.WORKER)
def read_input(job_id: str) -> ResponseReturnValue:
    job_id = held_job(job_id).id
    after = int_arg("after", 0)

    def check() -> list[Any] | None:
        frames = streams.read_input(job_id, after)
        if frames:
            return frames
        now = core(jobs.HOLDER, {"job_id": job_id}).one()
        over = JobState(now.state).terminal or now.worker_id != g.user.client_id
        result = [status_frame(final_status(job_id))] if over else None
        db.session.commit()
        return result

    with held.long_poll(wait_arg()) as wait:
        frames = notifier().wait_for([f"input:{job_id}", f"job:{job_id}"], check, wait)
    return _frames_response(frames or [])


@bp.post("/<job_id>/finish")
@requires(Role.WORKER)
def finish(job_id: str) -> ResponseReturnValue:
    """The process ended (``exit_code``) or could not start (``error``).

    ``aborted`` (with ``exit_code``) says the worker itself stopped the job, e.g. a
    shutdown that could not wait for it: the job fails as lost, not as completed.
    ``output`` (base64 of encoded frames) is the job's last output, stored before the
    end: a short job's only output and its end then cost one request, and the caller's
    read wakes once for both.
    """
    job = _take_up(held_job(job_id))
    job_id = job.id
    data = json_body()
    output = field(data, "output", (str, type(None)), None)
    if output is not None:
        _store_final_output(job, output)
    error = field(data, "error", (str, type(None)), None)
    exit_code = field(data, "exit_code", (int, type(None)), None)
    if exit_code is not None and not INT_MIN <= exit_code <= INT_MAX:
        raise BadRequest(f"field 'exit_code' must be an integer from {INT_MIN} to {INT_MAX}")
    aborted = field(data, "aborted", (str, type(None)), None)
    if error is None and exit_code is None:
        raise BadRequest("one of 'exit_code' or 'error' is required")
    worker_id = g.user.client_id
    if aborted is not None:
        done = bool(
            retries.worker_lost(job_id, worker_id, f"worker lost ({aborted[:200]})", exit_code)
        )
    elif error is not None:
        done = lifecycle.transition(
            job_id,
            [JobState.RUNNING, JobState.CANCELING],
            JobState.FAILED,
            error[:1000],
            held_by=worker_id,
            failure="start_failed",
        )
    else:
        # The common case first: a canceled job costs the extra attempt, not every job.
        done = lifecycle.transition(
            job_id,
            [JobState.RUNNING],
            JobState.COMPLETED,
            f"exited with {exit_code}",
            held_by=worker_id,
            known=job,
            exit_code=exit_code,
        ) or lifecycle.transition(
            job_id,
            [JobState.CANCELING],
            JobState.CANCELED,
            None,
            held_by=worker_id,
            exit_code=exit_code,
            failure="canceled",
        )
    if not done:
        recorded = core(_RECORDED, {"job_id": job_id}).one()
        db.session.commit()
        if recorded.worker_id == worker_id and _same_end(recorded, error, exit_code, aborted):
            # A finish sent again (the answer to the first was lost): already recorded.
            return jsonify({"ok": True})
        raise WrongState("job cannot be finished", state=recorded.state)
    # Only this worker gained a free slot: waking every worker's poll would make each
    # of them run a claim that cannot change anything. Its own poll listens for a free
    # slot only while it is full (``slot:``); one with room already waits for new jobs.
    recent_output().forget(job_id)  # its last reads go to the database
    notifier().notify(f"output:{job_id}", f"slot:{worker_id}")
    return jsonify({"ok": True})


_RECORDED = select(Job.state, Job.worker_id, Job.exit_code, Job.failure).where(
    Job.id == bindparam("job_id")
)


def _same_end(recorded: Any, error: str | None, exit_code: int | None, aborted: str | None) -> bool:
    """Whether the job already ended as this finish would have ended it."""
    state = recorded.state
    if aborted is not None:
        return (state, recorded.failure, recorded.exit_code) == (
            JobState.FAILED.value,
            "worker_lost",
            exit_code,
        )
    if error is not None:
        return (state, recorded.failure) == (JobState.FAILED.value, "start_failed")
    return recorded.exit_code == exit_code and (state, recorded.failure) in (
        (JobState.COMPLETED.value, None),
        (JobState.CANCELED.value, "canceled"),
    )
