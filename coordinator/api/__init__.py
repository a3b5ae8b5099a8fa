"""The REST API under /api/v1: one blueprint per resource, all behind signatures."""

from __future__ import annotations

import re

from flask import Blueprint, Flask, Response, g, request

from coordinator import held
from coordinator.api import cluster, doctor, jobs, probes, reports, transport, users, workers
from coordinator.api.parse import check_text
from coordinator.auth import authenticate, install_nonce_tracking, settle_nonce, sign_answer
from coordinator.errors import NotFound

# What ids in a URL are made of (job ids, identities, workers, binaries, options).
_ID = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def check_url() -> None:
    """Ids in the path are well-formed (else 404) and query values storable text (else
    400): nothing malformed reaches a query, where PostgreSQL refuses NUL, for one."""
    for value in (request.view_args or {}).values():
        if isinstance(value, str) and not _ID.fullmatch(value):
            raise NotFound("no such resource")
    for key, value in request.args.items(multi=True):
        check_text(key, "query arguments")
        check_text(value, "query arguments")


def register(app: Flask) -> None:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")

    install_nonce_tracking()

    @api.before_request
    def _authenticate() -> None:
        check_url()
        g.user = authenticate()

    # after_request functions run in reverse order: the answer is signed last, on the
    # body as sent.
    @api.after_request
    def _sign_answer(response: Response) -> Response:
        return sign_answer(response)

    @api.after_request
    def _settle_nonce(response: Response) -> Response:
        return held.mark_refused(settle_nonce(response))

    api.register_blueprint(workers.bp)
    api.register_blueprint(jobs.bp)
    api.register_blueprint(users.bp)
    api.register_blueprint(cluster.bp)
    api.register_blueprint(probes.bp)
    api.register_blueprint(transport.bp)
    api.register_blueprint(reports.bp)
    api.register_blueprint(doctor.bp)
    app.register_blueprint(api)
