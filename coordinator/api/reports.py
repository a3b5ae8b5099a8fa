"""Drop-in reports: fallbacks and cluster failures a client's drop-ins recorded."""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue

from coordinator import dropin_reports
from coordinator.api.parse import json_body
from coordinator.auth import requires
from dffmpeg.wire import Role

bp = Blueprint("reports", __name__, url_prefix="/reports")


@bp.post("/dropin")
@requires(Role.CLIENT, Role.ADMIN)
def dropin() -> ResponseReturnValue:
    batch, entries = dropin_reports.parse(json_body())
    new = dropin_reports.store(g.user.client_id, batch, entries)
    return jsonify({"stored": new, "duplicate": not new})
