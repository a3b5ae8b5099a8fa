"""A summary of the whole cluster (admin only): what ``status --all`` and the console show."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import case, func

from coordinator import dropin_reports, samples, scheduler
from coordinator.auth import requires
from coordinator.db import db, now_utc
from coordinator.models import Job, User, Worker
from dffmpeg import __version__
from dffmpeg.wire import Role

bp = Blueprint("cluster", __name__, url_prefix="/cluster")


@bp.get("")
@requires(Role.ADMIN)
def summary() -> ResponseReturnValue:
    """Counts only, each answered from an index or the per-minute samples (no job rows
    are read), so a console may ask every couple of seconds. ``slots.total`` is the
    slots of online workers, drained ones included (their running jobs count in
    ``used``); ``accepting_workers`` is how many of them take new jobs. ``series``:
    jobs finished and the queue, per minute over the last hour; ``last_day``: jobs
    finished and failed (coordinator/samples.py); ``dropin_last_day`` is what the
    drop-ins reported of the last 24 hours: local fallbacks and cluster exit codes."""
    jobs = dict(db.session.execute(db.select(Job.state, func.count()).group_by(Job.state)).all())
    workers = dict(
        db.session.execute(db.select(Worker.state, func.count()).group_by(Worker.state)).all()
    )
    online = Worker.state == "online"
    slots = db.session.execute(
        db.select(
            func.coalesce(func.sum(Worker.slots), 0),
            # CASE rather than FILTER (...): MariaDB has no aggregate FILTER clause.
            func.coalesce(func.sum(case((Worker.drained.is_(False), 1), else_=0)), 0),
        ).where(online)
    ).one()
    users = dict(db.session.execute(db.select(User.role, func.count()).group_by(User.role)).all())
    used = sum(scheduler.slots_used().values())
    reported = dropin_reports.last_day()
    recent = samples.recent()
    db.session.commit()
    return jsonify(
        {
            **recent,
            "jobs_by_state": {str(k): int(v) for k, v in jobs.items()},
            "workers_by_state": {str(k): int(v) for k, v in workers.items()},
            "users_by_role": {str(k): int(v) for k, v in users.items()},
            "slots": {"total": int(slots[0]), "used": used, "accepting_workers": int(slots[1])},
            "dropin_last_day": reported,
            "coordinator_version": __version__,
            "now": now_utc().isoformat(),
        }
    )
