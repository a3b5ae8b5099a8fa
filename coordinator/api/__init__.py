"""The REST API under /api/v1: one blueprint per resource, all behind signatures."""

from __future__ import annotations

from flask import Blueprint, Flask, g

from coordinator.api import cluster, jobs, probes, transport, users, workers
from coordinator.auth import authenticate


def register(app: Flask) -> None:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")

    @api.before_request
    def _authenticate() -> None:
        g.user = authenticate()

    api.register_blueprint(workers.bp)
    api.register_blueprint(jobs.bp)
    api.register_blueprint(users.bp)
    api.register_blueprint(cluster.bp)
    api.register_blueprint(probes.bp)
    api.register_blueprint(transport.bp)
    app.register_blueprint(api)
