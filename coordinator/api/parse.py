"""Parsing request bodies and arguments into plain values, with 400 on anything else.

Every value is checked before it can reach the database: strings are valid UTF-8
without NUL (PostgreSQL refuses NUL in text), numbers fit the column they go to (the
integer bounds below hold on SQLite, MariaDB and PostgreSQL alike) and floats are
finite, so no input can make a statement fail with a 500.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import current_app, request

from coordinator.body import request_body
from coordinator.errors import BadRequest
from coordinator.notify import Notifier
from coordinator.recent_output import RecentOutput
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameError, FrameKind, decode_frames

MAX_WAIT_SECONDS = 30.0
# Column bounds: Integer and BigInteger are signed 32 and 64 bits on every database.
INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
BIGINT_MAX = 2**63 - 1
MAX_JSON_DEPTH = 32
# Paging further than this is not a listing any more (and OFFSET has bounds per database).
MAX_PAGE_OFFSET = INT_MAX


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"{name} is not a number this API accepts")


def check_text(value: str, what: str) -> str:
    """``value`` if it can be stored as text everywhere: UTF-8, no NUL."""
    if "\x00" in value:
        raise BadRequest(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} must be valid Unicode text") from None
    return value


def check_json(data: Any) -> None:
    """Every string, number and nesting level of a parsed body is storable (see above)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest("request body is nested too deeply")
        if isinstance(value, str):
            check_text(value, "strings in the body")
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
                raise BadRequest("a number in the body is out of range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BadRequest("numbers in the body must be finite")
        elif isinstance(value, dict):
            for key, item in value.items():
                check_text(key, "keys in the body")
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def json_body() -> dict[str, Any]:
    raw = request_body()
    if not raw:
        return {}
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise BadRequest("request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    check_json(data)
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


def int_field(
    data: dict[str, Any],
    name: str,
    default: Any = ...,
    lo: int = INT_MIN,
    hi: int = INT_MAX,
) -> Any:
    """An integer field within [lo, hi] (by default what an Integer column holds)."""
    value = field(data, name, int, default)
    if value is None or value is default:
        return value
    if isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"field {name!r} must be an integer from {lo} to {hi}")
    return value


def str_list(data: dict[str, Any], name: str, default: list[str] | None = None) -> list[str]:
    value = field(data, name, list, default if default is not None else ...)
    if not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field {name!r} must be a list of strings")
    return list(value)


def str_map(data: dict[str, Any], name: str, what: str) -> dict[str, str]:
    value = field(data, name, dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadRequest(f"field {name!r} must map {what}")
    return dict(value)


def frames_body() -> list[Frame]:
    """The frames of the body; each ``seq`` storable, a signal frame a signal number."""
    if request.mimetype != CONTENT_TYPE_FRAMES:
        raise BadRequest(f"body must be {CONTENT_TYPE_FRAMES}")
    return parse_frames(request_body())


def parse_frames(data: bytes) -> list[Frame]:
    """Encoded frames (a body, or a finish's ``output``), checked as ``frames_body`` says."""
    try:
        frames = list(decode_frames(data))
    except FrameError as exc:
        raise BadRequest(str(exc)) from None
    for frame in frames:
        if not 1 <= frame.seq <= BIGINT_MAX:
            raise BadRequest(f"frame seq must be from 1 to {BIGINT_MAX}")
        if frame.kind == FrameKind.SIGNAL and not (frame.data.isdigit() and len(frame.data) <= 3):
            raise BadRequest("a signal frame carries a signal number in ASCII digits")
    return frames


def int_arg(name: str, default: int, lo: int = 0, hi: int = BIGINT_MAX) -> int:
    """An integer query argument within [lo, hi]."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query argument {name!r} must be an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query argument {name!r} must be from {lo} to {hi}")
    return value


# A job id as the coordinator makes them (uuid4 hex), and how many one argument lists
# (64 ids keep a request line within gunicorn's default limit of 4094 bytes).
_JOB_ID = re.compile(r"[0-9a-f]{32}")
MAX_IDS_ARG = 64


def job_ids_arg(name: str) -> list[str]:
    """A comma-separated list of full job ids (empty when the argument is absent)."""
    raw = request.args.get(name, "")
    ids = [part for part in raw.split(",") if part]
    if len(ids) > MAX_IDS_ARG:
        raise BadRequest(f"query argument {name!r} lists more than {MAX_IDS_ARG} jobs")
    for job_id in ids:
        if not _JOB_ID.fullmatch(job_id):
            raise BadRequest(f"query argument {name!r} must list full job ids")
    return ids


def wait_arg() -> float:
    raw = request.args.get("wait", "0")
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest("query argument 'wait' must be a number of seconds") from None
    if not math.isfinite(value):
        raise BadRequest("query argument 'wait' must be a finite number of seconds")
    return min(max(value, 0.0), MAX_WAIT_SECONDS)


def recent_output() -> RecentOutput:
    result: RecentOutput = current_app.extensions["dffmpeg.recent_output"]
    return result


def notifier() -> Notifier:
    result: Notifier = current_app.extensions["dffmpeg.notifier"]
    return result
