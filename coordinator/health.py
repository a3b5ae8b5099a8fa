"""Unauthenticated health for load balancers: liveness and readiness.

``/health`` is liveness: 200 while the process serves requests, 503 while it drains.
It also carries the coordinator's clock and signing window, so ``dffmpeg-client doctor``
can measure a clock skew before it signs anything. ``/health/ready`` is readiness: 200
only while the database answers at the schema this coordinator needs, can be written
(a SQLite volume that is read-only or full, or a write that failed for such a reason
and has not been followed by one that went through: coordinator/storage.py), and the
process is not draining; 503 otherwise, with the reason.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from coordinator import schema, storage
from coordinator.db import db

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


def _draining() -> bool:
    return bool(current_app.extensions["dffmpeg.draining"].is_set())


@bp.get("/health")
def health() -> ResponseReturnValue:
    clock = {
        "now": time.time(),
        "auth_window_seconds": current_app.config["DFFMPEG"].auth_window_seconds,
    }
    if _draining():
        return jsonify({"status": "draining", **clock}), 503
    return jsonify({"status": "ok", **clock})


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    if _draining():
        return jsonify({"status": "draining", "reason": "the coordinator is shutting down"}), 503
    settings = current_app.config["DFFMPEG"]
    # The volume first: on a read-only one even reading may fail, and then the reason
    # is the volume, not an unreachable database.
    fault = storage.volume_problem(settings.database_url)
    if fault is not None:
        return _storage_fault(fault)
    head = schema.head_revision()
    try:
        current = schema.stamped_revision(db.engine)
    except SQLAlchemyError as exc:
        # The details (host, port, driver message) go to the log, not to an
        # unauthenticated caller.
        log.warning("readiness: database unreachable: %s", exc)
        reason = f"database unreachable ({type(exc).__name__})"
        return jsonify({"status": "unavailable", "reason": reason}), 503
    if current != head:
        reason = f"database schema is at revision {current}, this coordinator needs {head}"
        return jsonify({"status": "unavailable", "reason": reason}), 503
    monitor: storage.StorageMonitor = current_app.extensions["dffmpeg.storage"]
    fault = monitor.current()
    if fault is not None and fault.kind != storage.BUSY:  # contention passes by itself
        return _storage_fault(fault)
    return jsonify({"status": "ready", "schema": current})


def _storage_fault(fault: storage.Fault) -> ResponseReturnValue:
    reason = storage.describe(fault, current_app.config["DFFMPEG"].database_url)
    return jsonify({"status": "unavailable", "reason": reason, "kind": fault.kind}), 503
