"""Fast probes: the captured output of ``BINARY -version`` and friends.

Workers capture these at registration (``binaries[name]["probes"][OPTION]``); the
drop-in asks here instead of queueing a job, so a media server's start-up checks never
wait behind long transcodes. The answer comes from the online worker that sorts first
by id among those trusted for probes that may run the caller's jobs
(coordinator/grants.py), so repeated calls see the same bytes while the pool does not
change, and a worker shows a client nothing the jobs it runs for it could not.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from coordinator.auth import requires
from coordinator.db import db
from coordinator.errors import NotFound
from coordinator.models import Worker
from dffmpeg.wire import Role

bp = Blueprint("probes", __name__, url_prefix="/probes")

OPTIONS = frozenset({"-version", "-encoders", "-decoders", "-filters", "-hwaccels", "-formats"})


@bp.get("/<binary>/<option>")
@requires(Role.CLIENT, Role.ADMIN)
def show(binary: str, option: str) -> ResponseReturnValue:
    if option not in OPTIONS:
        raise NotFound(f"no probe {option}")
    stmt = (
        db.select(Worker)
        .where(Worker.state == "online", Worker.probe_trusted.is_(True))
        .order_by(Worker.worker_id)
    )
    caller = g.user.client_id
    for worker in db.session.execute(stmt).scalars():
        if worker.allowed_clients is not None and caller not in worker.allowed_clients:
            continue
        entry = (worker.binaries or {}).get(binary)
        probe = entry.get("probes", {}).get(option) if isinstance(entry, dict) else None
        if isinstance(probe, dict) and {"stdout", "stderr", "exit_code"} <= probe.keys():
            db.session.commit()
            return jsonify(
                {
                    "stdout": probe["stdout"],
                    "stderr": probe["stderr"],
                    "exit_code": probe["exit_code"],
                    "worker_id": worker.worker_id,
                }
            )
    db.session.commit()
    raise NotFound(f"no online worker trusted for probes reported {binary} {option}")
