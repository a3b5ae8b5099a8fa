"""The REST API under /api/v1: one blueprint per resource, all behind signatures."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g

from coordinator.api import cluster, jobs, probes, transport, users, workers
from coordinator.auth import authenticate, install_nonce_tracking, settle_nonce, sign_answer


def register(app: Flask) -> None:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")

    install_nonce_tracking()

    @api.before_request
    def _authenticate() -> None:
        g.user = authenticate()

    # after_request functions run in reverse order: the answer is signed last, on the
    # body as sent.
    @api.after_request
    def _sign_answer(response: Response) -> Response:
        return sign_answer(response)

    @api.after_request
    def _settle_nonce(response: Response) -> Response:
        return settle_nonce(response)

    api.register_blueprint(workers.bp)
    api.register_blueprint(jobs.bp)
    api.register_blueprint(users.bp)
    api.register_blueprint(cluster.bp)
    api.register_blueprint(probes.bp)
    api.register_blueprint(transport.bp)
    app.register_blueprint(api)
