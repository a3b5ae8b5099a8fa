"""What ``dffmpeg-client doctor`` asks the coordinator (routes in coordinator/api/doctor.py).

Two things no other route gives a client: which online workers would serve its path
variables, with their binary versions and a fingerprint of their capabilities; and a
*round trip* job pinned to one worker. A round trip is one of two fixed commands built
here, never the caller's own arguments, so pinning cannot be used to aim arbitrary work
at a chosen worker:

* ``write``: ffmpeg writes a small ffmetadata text file holding the token at
  ``$Variable/NAME`` on the worker; the client then looks for it under its own root.
* ``read``: the client wrote such a file under its root; ffmpeg on the worker reads
  ``$Variable/NAME`` and prints it to stdout, where the client looks for the token.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy.orm import selectinload

from coordinator import lifecycle
from coordinator.db import db, now_utc
from coordinator.errors import BadRequest, Conflict
from coordinator.models import Job, Worker
from coordinator.observe import instruments
from dffmpeg.wire import JobState

NAME = re.compile(r"^\.dffmpeg-doctor-[0-9a-f]{16}\.txt$")
TOKEN = re.compile(r"^[0-9a-f]{16,64}$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DIRECTIONS = ("write", "read")
# A round trip waits at most this long for its worker to have a free slot.
QUEUE_TIMEOUT_SECONDS = 30
PRIORITY = 100  # ahead of transcodes, like the drop-in's information calls


def version_line(entry: Any) -> str:
    """``ffmpeg version 5.1.6-0+deb12u1`` from the registration's first ``-version`` line."""
    if not isinstance(entry, dict):
        return ""
    text = str(entry.get("version") or "")
    return text.split(" Copyright", 1)[0].strip()


def fingerprint(capabilities: Any) -> str:
    """A short digest of what a binary can do (encoders, decoders, filters, ...)."""
    if not isinstance(capabilities, dict):
        return ""
    canonical = json.dumps(
        {k: sorted(v) for k, v in capabilities.items() if isinstance(v, list)}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def online_workers() -> list[dict[str, Any]]:
    """Online workers as the doctor needs them: variables offered, versions, fingerprints."""
    stmt = (
        db.select(Worker)
        .where(Worker.state == "online")
        .order_by(Worker.worker_id)
        .options(selectinload(Worker.report))
    )
    result = []
    for worker in db.session.execute(stmt).scalars():
        binaries = {}
        for name, caps in (worker.capabilities or {}).items():
            binaries[name] = {
                "version": version_line((worker.binaries or {}).get(name)),
                "capabilities": fingerprint(caps),
            }
        result.append(
            {
                "worker_id": worker.worker_id,
                "drained": bool(worker.drained),
                "path_variables": list(worker.path_variables or []),
                "binaries": binaries,
            }
        )
    db.session.commit()
    return result


def probe_args(direction: str, variable: str, name: str, token: str) -> list[str]:
    target = f"${variable}/{name}"
    quiet = ["-hide_banner", "-nostdin", "-v", "error"]
    if direction == "write":
        return [
            *quiet,
            "-f", "lavfi", "-i", "anullsrc=d=0.01",
            "-map_metadata", "-1", "-metadata", f"dffmpeg_token={token}",
            "-f", "ffmetadata", "-n", target,
        ]  # fmt: skip
    return [*quiet, "-f", "ffmetadata", "-i", target, "-f", "ffmetadata", "-"]


def submit_probe(requester: str, data: dict[str, Any]) -> dict[str, Any]:
    """Queue one round trip pinned to ``worker_id``; the caller follows it like any job."""
    worker_id, variable = data.get("worker_id"), data.get("variable")
    direction, name, token = data.get("direction"), data.get("name"), data.get("token")
    if direction not in DIRECTIONS:
        raise BadRequest("field 'direction' must be write or read")
    if not isinstance(variable, str) or not VARIABLE.match(variable):
        raise BadRequest("field 'variable' must be a path variable name")
    if not isinstance(name, str) or not NAME.match(name):
        raise BadRequest("field 'name' must look like .dffmpeg-doctor-<16 hex>.txt")
    if not isinstance(token, str) or not TOKEN.match(token):
        raise BadRequest("field 'token' must be 16-64 hex digits")
    if not isinstance(worker_id, str):
        raise BadRequest("field 'worker_id' is required")
    worker = db.session.get(Worker, worker_id)
    if worker is None or worker.state != "online":
        raise Conflict(f"worker {worker_id} is not online")
    if variable not in (worker.path_variables or []):
        raise Conflict(f"worker {worker_id} does not offer ${variable}")
    if "ffmpeg" not in (worker.capabilities or {}):
        raise Conflict(f"worker {worker_id} has no ffmpeg")
    now = now_utc()
    job = Job(
        id=uuid.uuid4().hex,
        requester=requester,
        binary="ffmpeg",
        args=probe_args(str(direction), variable, name, token),
        cwd=None,
        env={},
        path_variables=[variable],
        client_paths={},
        mode="active",
        priority=PRIORITY,
        needs={},
        required_labels=[],
        preferred_labels=[],
        queue_deadline=now + timedelta(seconds=QUEUE_TIMEOUT_SECONDS),
        wait_for_worker=False,
        pinned_worker=worker_id,
        state=JobState.PENDING.value,
        created_at=now,
        updated_at=now,
        client_lease_expires_at=now + timedelta(seconds=_client_lease()),
    )
    reply = job.to_dict()
    db.session.add(job)
    lifecycle.record_event(job.id, JobState.PENDING, f"doctor round trip by {requester}")
    db.session.commit()
    instruments().job_submitted("ffmpeg")
    return reply


def _client_lease() -> int:
    return int(current_app.config["DFFMPEG"].client_lease_seconds)
