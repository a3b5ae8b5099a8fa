"""JSON errors for every failure the API can report."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException


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


def _body(status: int, code: str, message: str, **details: Any) -> ResponseReturnValue:
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
        app.logger.exception("unhandled error")
        return _body(500, "internal_error", "internal error")
