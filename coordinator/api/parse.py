"""Parsing request bodies and arguments into plain values, with 400 on anything else."""

from __future__ import annotations

from typing import Any

from flask import current_app, request

from coordinator.errors import BadRequest
from coordinator.notify import Notifier
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameError, decode_frames

MAX_WAIT_SECONDS = 30.0


def json_body() -> dict[str, Any]:
    data = request.get_json(silent=True, force=True) if request.get_data(cache=True) else {}
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def field(
    data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...
) -> Any:
    if name not in data:
        if default is ...:
            raise BadRequest(f"field {name!r} is required")
        return default
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"field {name!r} has the wrong type")
    return value


def str_list(data: dict[str, Any], name: str, default: list[str] | None = None) -> list[str]:
    value = field(data, name, list, default if default is not None else ...)
    if not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {name!r} must be a list of strings")
    return list(value)


def frames_body() -> list[Frame]:
    if request.mimetype != CONTENT_TYPE_FRAMES:
        raise BadRequest(f"body must be {CONTENT_TYPE_FRAMES}")
    try:
        return list(decode_frames(request.get_data(cache=True)))
    except FrameError as exc:
        raise BadRequest(str(exc)) from None


def int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"query argument {name!r} must be an integer") from None


def wait_arg() -> float:
    raw = request.args.get("wait", "0")
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest("query argument 'wait' must be a number of seconds") from None
    return min(max(value, 0.0), MAX_WAIT_SECONDS)


def notifier() -> Notifier:
    result: Notifier = current_app.extensions["dffmpeg.notifier"]
    return result
