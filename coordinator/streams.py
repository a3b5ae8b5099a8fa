"""Job output (worker -> client) and input (client -> worker) as ordered frames.

Each stream has exactly one writer, which numbers its frames 1, 2, 3, ... and sends them
in order, waiting for each request to be acknowledged. A reader asks for frames after the
last seq it has; because a seq is only written after the one before it committed, the
reader can never skip a frame that commits late. A retried request re-sends frames the
coordinator already has; those are ignored, so retries are safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator.db import core, db, streamed
from coordinator.errors import BadRequest, Conflict
from coordinator.models import InputChunk, Job, OutputChunk
from dffmpeg.wire import Frame, FrameKind

OUTPUT_KINDS = frozenset({FrameKind.STDOUT, FrameKind.STDERR})
INPUT_KINDS = frozenset({FrameKind.STDIN, FrameKind.STDIN_EOF, FrameKind.SIGNAL})
# One read returns at most about this many bytes, so a fast producer cannot make a
# response (and the reader's memory) grow without bound.
READ_BUDGET = 4 * 1024 * 1024
# Rows fetched from the database at a time while reading a stream.
READ_BATCH = 64

Model = type[OutputChunk] | type[InputChunk]
Admit = Callable[[list[Frame], int], None]

_JOBS = Job.__table__.c
_STDIN_BYTES = select(_JOBS.stdin_bytes).where(_JOBS.id == bindparam("job_id"))
_ADD_STDIN_BYTES = (
    update(Job.__table__)
    .where(_JOBS.id == bindparam("job_id"))
    .values(stdin_bytes=_JOBS.stdin_bytes + bindparam("size"))
)


def _statements(model: Model) -> tuple[Any, Any, Any]:
    """The last-seq, read and insert statements of one stream table, built once."""
    last = select(func.max(model.seq)).where(model.job_id == bindparam("job_id"))
    read = (
        select(model.seq, model.kind, model.data)
        .where(model.job_id == bindparam("job_id"), model.seq > bindparam("after"))
        .order_by(model.seq)
    )
    return last, read, insert(model.__table__)


_STATEMENTS = {OutputChunk: _statements(OutputChunk), InputChunk: _statements(InputChunk)}


def _append(
    model: Model,
    job_id: str,
    frames: list[Frame],
    kinds: frozenset[FrameKind],
    admit: Admit | None = None,
) -> int:
    last = core(_STATEMENTS[model][0], {"job_id": job_id}).scalar_one()
    last = int(last or 0)
    new: list[Frame] = []
    for frame in frames:
        if frame.kind not in kinds:
            raise BadRequest(f"frame kind {frame.kind.name} is not allowed here")
        if frame.seq <= last:
            continue  # already stored by an earlier attempt of this request
        if frame.seq != last + 1:
            raise Conflict(f"frame seq {frame.seq} does not follow {last}", expected=last + 1)
        new.append(frame)
        last = frame.seq
    if admit is not None and new:
        stored = core(_STDIN_BYTES, {"job_id": job_id}).scalar_one_or_none()
        try:
            admit(new, int(stored or 0))
        except Exception:
            db.session.rollback()
            raise
        size = sum(len(f.data) for f in new if f.kind == FrameKind.STDIN)
        if size:
            core(_ADD_STDIN_BYTES, {"job_id": job_id, "size": size})
    try:
        if new:
            # Rows, not objects: a batch of output is tens of frames, and the ORM's flush
            # of each costs more than its insert.
            rows = [
                {"job_id": job_id, "seq": f.seq, "kind": int(f.kind), "data": f.data} for f in new
            ]
            core(_STATEMENTS[model][2], rows)
        db.session.commit()
    except IntegrityError:
        # A retry raced the original request, which stored the same frames first.
        db.session.rollback()
        return 0
    return len(new)


def _read(model: Model, job_id: str, after: int) -> list[Frame]:
    stmt = _STATEMENTS[model][1]
    frames: list[Frame] = []
    size = 0
    # A batch at a time, and closed when the loop stops early (on the server databases
    # the read is a server-side cursor).
    with streamed(stmt, {"job_id": job_id, "after": after}, READ_BATCH) as rows:
        for seq, kind, data in rows:
            frames.append(Frame(FrameKind(kind), int(seq), bytes(data)))
            size += len(data)
            if size >= READ_BUDGET:
                break
    db.session.commit()
    return frames


def complete(frames: list[Frame]) -> bool:
    """Whether a read returned every frame there was (it stops at ``READ_BUDGET``)."""
    return sum(len(f.data) for f in frames) < READ_BUDGET


def append_output(job_id: str, frames: list[Frame]) -> int:
    return _append(OutputChunk, job_id, frames, OUTPUT_KINDS)


def read_output(job_id: str, after: int) -> list[Frame]:
    return _read(OutputChunk, job_id, after)


def append_input(job_id: str, frames: list[Frame], admit: Admit | None = None) -> int:
    """Store a client's input frames. ``admit(new_frames, stdin_bytes_stored)`` may
    refuse them (raise) before anything is stored; the job's ``stdin_bytes`` grows by
    what is stored."""
    return _append(InputChunk, job_id, frames, INPUT_KINDS, admit)


def read_input(job_id: str, after: int) -> list[Frame]:
    return _read(InputChunk, job_id, after)
