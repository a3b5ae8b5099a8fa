"""A summary of the whole cluster (admin only)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func

from coordinator.auth import requires
from coordinator.db import db
from coordinator.models import Job, Worker
from dffmpeg.wire import Role

bp = Blueprint("cluster", __name__, url_prefix="/cluster")


@bp.get("")
@requires(Role.ADMIN)
def summary() -> ResponseReturnValue:
    jobs = dict(db.session.execute(db.select(Job.state, func.count()).group_by(Job.state)).all())
    workers = dict(
        db.session.execute(db.select(Worker.state, func.count()).group_by(Worker.state)).all()
    )
    return jsonify({"jobs_by_state": jobs, "workers_by_state": workers})
