"""What drop-ins report later: runs that fell back to the local binary or exited with a
cluster code (client/incidents.py records them on the client's machine).

A report is a batch of groups, each ``count`` runs of one kind, exit code and binary
within one hour. A batch is stored once: sending it again (its answer was lost) finds
its rows and counts nothing. The last day's totals feed ``GET /cluster``, the console
and ``dffmpeg-client status --all``; the counters of ``GET /metrics`` grow by what each
new batch adds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.exc import IntegrityError

from coordinator.db import db, now_utc
from coordinator.errors import BadRequest
from coordinator.models import DropinReport
from coordinator.observe import instruments
from dffmpeg.exitcodes import ExitCode

KINDS = ("local_fallback", "cluster_exit")
MAX_ENTRIES = 500
MAX_COUNT = 1_000_000
BATCH_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
BINARY = re.compile(r"^[A-Za-z0-9_.+-]{1,32}$")
# Times more than this far from the coordinator's clock are not believed (a client's
# clock is within the signing window of ours, or its requests would be refused).
CLOCK_SLACK = timedelta(days=31)

_ROWS = DropinReport.__table__.c
_BATCH_SEEN = select(_ROWS.id).where(
    _ROWS.client_id == bindparam("client_id"), _ROWS.batch == bindparam("batch")
)
_LAST_DAY = (
    select(_ROWS.client_id, _ROWS.kind, _ROWS.code, func.sum(_ROWS.count))
    .where(_ROWS.last_at >= bindparam("since", type_=_ROWS.last_at.type))
    .group_by(_ROWS.client_id, _ROWS.kind, _ROWS.code)
)


@dataclass(frozen=True)
class Entry:
    kind: str
    code: int
    binary: str
    count: int
    first_at: datetime
    last_at: datetime


def _time(value: Any, now: datetime) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest("times must be seconds since the epoch")
    at = datetime.fromtimestamp(float(value), UTC) if abs(value) < 1e11 else None
    if at is None or abs(at - now) > CLOCK_SLACK:
        raise BadRequest("a time lies too far from the coordinator's clock")
    return at


def parse(data: dict[str, Any]) -> tuple[str, list[Entry]]:
    """The batch id and entries of a report body; 400 for anything else."""
    batch = data.get("batch")
    entries = data.get("entries")
    if not isinstance(batch, str) or not BATCH_ID.match(batch):
        raise BadRequest("field 'batch' must be an id of 1-64 letters, digits and _:.-")
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ENTRIES:
        raise BadRequest(f"field 'entries' must be a list of 1 to {MAX_ENTRIES} groups")
    now = now_utc()
    parsed = []
    for item in entries:
        if not isinstance(item, dict):
            raise BadRequest("each entry must be an object")
        kind, code, binary, count = (item.get(k) for k in ("kind", "code", "binary", "count"))
        if kind not in KINDS:
            raise BadRequest(f"entry 'kind' must be one of {', '.join(KINDS)}")
        if not isinstance(code, int) or code not in {int(c) for c in ExitCode}:
            raise BadRequest("entry 'code' must be a cluster exit code (200-207)")
        if not isinstance(binary, str) or not BINARY.match(binary):
            raise BadRequest("entry 'binary' must be a binary name")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_COUNT:
            raise BadRequest(f"entry 'count' must be 1 to {MAX_COUNT}")
        first_at, last_at = _time(item.get("first_at"), now), _time(item.get("last_at"), now)
        if last_at < first_at:
            raise BadRequest("entry 'last_at' is before 'first_at'")
        parsed.append(Entry(str(kind), code, binary, count, first_at, last_at))
    return batch, parsed


def store(client_id: str, batch: str, entries: list[Entry]) -> bool:
    """Store a batch once; True if it was new (and counted), False if seen before."""
    if db.session.execute(_BATCH_SEEN, {"client_id": client_id, "batch": batch}).first():
        db.session.commit()
        return False
    now = now_utc()
    for position, entry in enumerate(entries):
        db.session.add(
            DropinReport(
                client_id=client_id,
                batch=batch,
                position=position,
                kind=entry.kind,
                code=entry.code,
                binary=entry.binary,
                count=entry.count,
                first_at=entry.first_at,
                last_at=entry.last_at,
                received_at=now,
            )
        )
    try:
        db.session.commit()
    except IntegrityError:  # the same batch, sent twice at once: the other one counted
        db.session.rollback()
        return False
    counters = instruments()
    for entry in entries:
        counters.dropin_reported(client_id, entry.kind, entry.code, entry.count)
    return True


def last_day() -> dict[str, Any]:
    """Totals of the last 24 hours, and per client, kind and code."""
    since = now_utc() - timedelta(days=1)
    groups = sorted(
        (
            (int(n), str(c), str(k), int(code))
            for c, k, code, n in db.session.execute(_LAST_DAY, {"since": since})
        ),
        key=lambda r: (-r[0], r[1], r[2], r[3]),
    )
    return {
        "local_fallbacks": sum(n for n, _, kind, _ in groups if kind == "local_fallback"),
        "cluster_exits": sum(n for n, _, kind, _ in groups if kind == "cluster_exit"),
        "by_client": [
            {"client_id": c, "kind": k, "code": code, "count": n} for n, c, k, code in groups
        ],
    }


def purge(cutoff: datetime) -> None:
    """Reports whose last run is older than ``cutoff`` go (the job retention period)."""
    db.session.execute(delete(DropinReport).where(DropinReport.last_at < cutoff))
    db.session.commit()
