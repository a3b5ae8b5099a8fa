"""What ``dffmpeg-client doctor`` needs: who am I, who serves me, and round trips."""

from __future__ import annotations

import time

from flask import Blueprint, current_app, g, jsonify
from flask.typing import ResponseReturnValue

from coordinator import doctor
from coordinator.api.parse import json_body, notifier
from coordinator.auth import requires
from dffmpeg.wire import Role

bp = Blueprint("doctor", __name__, url_prefix="/doctor")


@bp.get("/identity")
def identity() -> ResponseReturnValue:
    """Any role: the identity the signature proved, and the coordinator's clock."""
    return jsonify(
        {
            "client_id": g.user.client_id,
            "role": g.user.role,
            "now": time.time(),
            "auth_window_seconds": current_app.config["DFFMPEG"].auth_window_seconds,
        }
    )


@bp.get("/workers")
@requires(Role.CLIENT, Role.ADMIN)
def workers() -> ResponseReturnValue:
    return jsonify({"workers": doctor.online_workers()})


@bp.post("/probe")
@requires(Role.CLIENT, Role.ADMIN)
def probe() -> ResponseReturnValue:
    job = doctor.submit_probe(g.user.client_id, json_body())
    notifier().notify("jobs")
    return jsonify({"job": job}), 201
