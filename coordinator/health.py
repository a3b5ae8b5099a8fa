"""Unauthenticated liveness for load balancers."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> ResponseReturnValue:
    if current_app.extensions["dffmpeg.draining"].is_set():
        return jsonify({"status": "draining"}), 503
    return jsonify({"status": "ok"})
