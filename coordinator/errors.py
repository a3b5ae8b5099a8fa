"""JSON errors for every failure the API can report.

A failure of the database itself (``coordinator.storage``) is a 503
``database_unavailable`` with ``Retry-After``: the request changed nothing and may be
sent again. Anything else unexpected is a 500 and logged with its traceback.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from coordinator import storage


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        # One body for every failure: a caller learns nothing about which part was wrong
        # or whether the identity exists.
        super().__init__("authentication failed")


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class WrongState(Conflict):
    """The job exists but its state does not allow this (details carry ``state``)."""

    code = "wrong_state"


class AmbiguousId(ApiError):
    """A job id prefix matches several jobs (details carry ``matches``)."""

    status = 400
    code = "ambiguous_id"


class IdTooShort(ApiError):
    """A job id prefix too short to look up."""

    status = 400
    code = "id_too_short"


DATABASE_UNAVAILABLE = "database_unavailable"
RETRY_AFTER_SECONDS = 1


def _body(status: int, code: str, message: str, **details: Any) -> tuple[Response, int]:
    return jsonify({"error": code, "message": message, **details}), status


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> ResponseReturnValue:
        return _body(exc.status, exc.code, exc.message, **exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> ResponseReturnValue:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return _body(status, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> ResponseReturnValue:
        fault = storage.classify(exc)
        if fault is not None:
            # The database cannot be used right now: nothing of the request was kept
            # (its transaction rolled back), and the party sends it again.
            monitor: storage.StorageMonitor = app.extensions["dffmpeg.storage"]
            message = monitor.failed(fault)
            body, status = _body(
                503, DATABASE_UNAVAILABLE, f"database unavailable: {message}", kind=fault.kind
            )
            return body, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}
        app.logger.exception("unhandled error")
        return _body(500, "internal_error", "internal error")
