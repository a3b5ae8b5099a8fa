"""Transports: negotiation, the reachability handshake and the NDJSON stream."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from coordinator import held
from coordinator.api.parse import json_body, str_list
from coordinator.db import db
from coordinator.errors import ApiError, BadRequest, NotFound
from coordinator.models import Job
from coordinator.observe import instruments
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
    chosen = choose(mine, offered)
    wanted = choose(current_app.config["DFFMPEG"].transports, offered)
    if chosen != wanted:
        # A broker both sides want is down on this coordinator: the party makes do with
        # something worse (at worst HTTP long-poll) until it negotiates again.
        instruments().fell_back(wanted, "coordinator_unavailable")
    return jsonify({"transport": chosen, "coordinator": mine})


# What a party reports when it leaves a transport for HTTP long-poll (see
# dffmpeg.transport.session): its handshake got no token back, the transport's
# connection broke, or a periodic handshake found it connected but not delivering.
PARTY_FALLBACK_REASONS = ("handshake_failed", "down", "not_delivering")


@bp.post("/fallback")
def fallback() -> ResponseReturnValue:
    """A party tells us it fell back to HTTP long-poll (counted, nothing else)."""
    data = json_body()
    name, reason = data.get("transport"), data.get("reason")
    configured = current_app.config["DFFMPEG"].transports
    if name not in configured or name == "http" or reason not in PARTY_FALLBACK_REASONS:
        raise BadRequest(
            "fields 'transport' (a transport of this coordinator other than http) and "
            f"'reason' ({', '.join(PARTY_FALLBACK_REASONS)}) are required"
        )
    instruments().fell_back(str(name), str(reason))
    return jsonify({"counted": True})


@bp.post("/ping")
def ping() -> ResponseReturnValue:
    """Send ``token`` to the caller over ``transport``: the reachability handshake."""
    data = json_body()
    name = data.get("transport")
    token = data.get("token")
    if not isinstance(name, str) or not isinstance(token, str) or len(token) > 64:
        raise BadRequest("fields 'transport' and 'token' (at most 64 chars) are required")
    fanout = _fanout()
    if fanout is None or name not in fanout.publishers:
        # Not a transport this coordinator pushes over: a question it cannot answer.
        raise BadRequest(f"transport {name!r} is not one this coordinator can ping over")
    address = to(g.user.client_id, "ping")
    sealed = signing.seal(g.answer_key, address, message(key="ping", token=token))
    if not fanout.send(name, address, sealed):
        if name in current_app.config["DFFMPEG"].transports and name != "http":
            instruments().fell_back(name, "coordinator_unavailable")
        raise Unavailable(f"transport {name} is not available on this coordinator now")
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
        raise NotFound("the stream transport is not enabled on this coordinator")
    keys = [k for k in request.args.get("keys", "").split(",") if k]
    if not keys or len(keys) > MAX_STREAM_KEYS:
        raise BadRequest(f"give 1 to {MAX_STREAM_KEYS} comma-separated keys")
    addresses = _addresses(keys)
    release = held.hold_stream()  # 429 past the caller's or the process's bound
    sub = hub.subscribe(addresses)
    draining = current_app.extensions["dffmpeg.draining"]
    # Streams end after a while (the party reconnects at once): a connection nobody
    # closes cannot keep a thread forever, and the bounds are re-applied on reconnect.
    ends = time.monotonic() + current_app.config["DFFMPEG"].stream_max_seconds
    counters = instruments()

    def lines() -> Iterator[bytes]:
        counters.wait_started("stream")
        try:
            yield _line({"hello": True})
            last = time.monotonic()
            while not draining.is_set() and time.monotonic() < ends:
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
            release()
            counters.wait_ended("stream", False)

    headers = {
        "Cache-Control": "no-cache, no-store",
        "X-Accel-Buffering": "no",  # nginx: pass each line on at once
    }
    response = Response(lines(), mimetype="application/x-ndjson", headers=headers)
    # Also when the generator never started (the client left before the first line).
    response.call_on_close(release)
    response.call_on_close(lambda: hub.unsubscribe(sub))
    return response


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"
