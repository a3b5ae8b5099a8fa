"""Transports: negotiation, the reachability handshake and the NDJSON stream."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from coordinator.api.parse import json_body, str_list
from coordinator.db import db
from coordinator.errors import ApiError, BadRequest, NotFound
from coordinator.models import Job
from coordinator.publish import Fanout, LocalHub
from dffmpeg import signing
from dffmpeg.transport import choose
from dffmpeg.transport.base import Address, addresses_for, message, to
from dffmpeg.wire import Role

bp = Blueprint("transport", __name__, url_prefix="/transport")

# A stream line at least this often, so a proxy or the party notices a dead connection.
KEEPALIVE_SECONDS = 10.0
MAX_STREAM_KEYS = 16


class Unavailable(ApiError):
    status = 503
    code = "transport_unavailable"


def _fanout() -> Fanout | None:
    fanout: Fanout | None = current_app.extensions.get("dffmpeg.fanout")
    return fanout


def usable() -> list[str]:
    """The coordinator's transports, in its order, minus brokers it cannot reach now."""
    fanout = _fanout()
    publishers = fanout.publishers if fanout is not None else {}
    return [
        name
        for name in current_app.config["DFFMPEG"].transports
        if name == "http" or (name in publishers and publishers[name].healthy())
    ]


@bp.post("/negotiate")
def negotiate() -> ResponseReturnValue:
    """Pick the transport for the caller: see ``dffmpeg.transport.choose`` for the rule."""
    offered = str_list(json_body(), "offered")
    mine = usable()
    return jsonify({"transport": choose(mine, offered), "coordinator": mine})


@bp.post("/ping")
def ping() -> ResponseReturnValue:
    """Send ``token`` to the caller over ``transport``: the reachability handshake."""
    data = json_body()
    name = data.get("transport")
    token = data.get("token")
    if not isinstance(name, str) or not isinstance(token, str) or len(token) > 64:
        raise BadRequest("fields 'transport' and 'token' (at most 64 chars) are required")
    fanout = _fanout()
    address = to(g.user.client_id, "ping")
    sealed = signing.seal(g.answer_key, address, message(key="ping", token=token))
    if fanout is None or not fanout.send(name, address, sealed):
        raise Unavailable(f"transport {name} is not available on this coordinator")
    return jsonify({"sent": True})


def _addresses(keys: list[str]) -> list[Address]:
    """What the caller may hear for ``keys``; 404 for a job that is not theirs."""
    user = g.user
    out: list[Address] = []
    for key in keys:
        kind, _, job_id = key.partition(":")
        if kind in ("output", "input"):
            job = db.session.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id}")
            owner = job.requester if kind == "output" else job.worker_id
            if owner is None or (owner != user.client_id and user.role != Role.ADMIN):
                raise NotFound(f"no job {job_id}")
            out.append(to(owner, kind, job_id))
        elif kind in ("worker", "ping"):
            out += addresses_for(user.client_id, user.role, kind)
        else:
            raise BadRequest(f"unknown stream key {key!r}")
    db.session.commit()
    return out


@bp.get("/stream")
def stream() -> ResponseReturnValue:
    """NDJSON: a ``hello`` line, then one line per notification, keep-alives between."""
    fanout = _fanout()
    hub = fanout.publishers.get("stream") if fanout is not None else None
    if not isinstance(hub, LocalHub):
        raise Unavailable("the stream transport is not enabled on this coordinator")
    keys = [k for k in request.args.get("keys", "").split(",") if k]
    if not keys or len(keys) > MAX_STREAM_KEYS:
        raise BadRequest(f"give 1 to {MAX_STREAM_KEYS} comma-separated keys")
    sub = hub.subscribe(_addresses(keys))
    draining = current_app.extensions["dffmpeg.draining"]

    def lines() -> Iterator[bytes]:
        try:
            yield _line({"hello": True})
            last = time.monotonic()
            while not draining.is_set():
                try:
                    address, payload = sub.inbox.get(timeout=1.0)
                except queue.Empty:  # a chance to notice draining
                    if time.monotonic() - last >= KEEPALIVE_SECONDS:
                        last = time.monotonic()
                        yield b"{}\n"
                    continue
                last = time.monotonic()
                # The message as published (sealed for its recipient), verbatim.
                yield _line({"address": list(address), "data": payload.decode()})
        finally:
            hub.unsubscribe(sub)

    headers = {
        "Cache-Control": "no-cache, no-store",
        "X-Accel-Buffering": "no",  # nginx: pass each line on at once
    }
    return Response(lines(), mimetype="application/x-ndjson", headers=headers)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"
