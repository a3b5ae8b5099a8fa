"""Negotiation rule, the negotiation and stream endpoints, naming, and lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from dffmpeg import signing
from dffmpeg.transport import TransportError, choose, create_transport
from dffmpeg.transport.base import ALL, JOBS, Endpoint, Signals, addresses_for, key_of, to
from tests.conftest import Identities, signed_identities
from tests.helpers import free_port, process_env


@pytest.mark.parametrize(
    ("coordinator", "party", "expected"),
    [
        # The coordinator's order counts: equal combined rank, the coordinator's first wins.
        (["rabbitmq", "mqtt", "http"], ["mqtt", "rabbitmq", "http"], "rabbitmq"),
        (["mqtt", "rabbitmq", "http"], ["rabbitmq", "mqtt", "http"], "mqtt"),
        # ...but not alone: a party's strong preference beats a weak coordinator one.
        (["stream", "http", "mqtt"], ["mqtt", "http"], "http"),
        (["rabbitmq", "stream", "mqtt"], ["mqtt", "stream"], "stream"),
        # Only shared transports; http when nothing else is shared.
        (["mqtt"], ["rabbitmq"], "http"),
        (["http"], ["mqtt", "http"], "http"),
        (["mqtt", "http"], ["bogus", "mqtt"], "mqtt"),
    ],
)
def test_choose(coordinator: list[str], party: list[str], expected: str) -> None:
    assert choose(coordinator, party) == expected


def test_addresses_confine_each_identity_to_its_own_subtree() -> None:
    assert addresses_for("w1", "worker", "worker") == [("to", "w1", "worker"), JOBS]
    assert addresses_for("c1", "client", "worker") == []
    assert addresses_for("c1", "client", "output:J") == [("to", "c1", "output", "J")]
    # Separators and wildcards in an identity cannot reach another subtree.
    assert to("a/b.c+#*") == ("to", "a~2Fb~2Ec~2B~23~2A")
    assert key_of(("to", "w1", "input", "J"), "w1") == "input:J"
    assert key_of(("to", "w2", "input", "J"), "w1") is None
    assert key_of(ALL, "w1") == "*"


def test_signals_do_not_lose_a_wakeup_that_comes_during_the_read() -> None:
    signals = Signals()
    signals.arm("k")
    signals.fire("k")  # arrives while the party is reading
    assert signals.wait("k", 0)
    assert not signals.wait("k", 0.01)
    signals.fire_all()  # a reconnect: every armed key must re-read
    assert signals.wait("k", 0)


def test_bad_broker_settings_are_reported() -> None:
    with pytest.raises(TransportError, match="mqtt url"):
        create_transport("mqtt", Endpoint("w1", "worker", brokers=_brokers(mqtt="http://x")))
    with pytest.raises(TransportError, match="unknown transport"):
        create_transport("carrier-pigeon", Endpoint("w1", "worker"))


def _brokers(mqtt: str | None = None) -> Any:
    from dffmpeg.config import BrokerSettings

    return BrokerSettings(mqtt_url=mqtt)


@pytest.fixture
def stream_app(database_url: str) -> Iterator[Flask]:
    """Stream and a broker whose URL leads nowhere (so its publisher stays unhealthy)."""
    from coordinator import create_app

    dead = f"mqtt://127.0.0.1:{free_port()}"
    application = create_app(
        {
            "database_url": database_url,
            "transports": ["mqtt", "stream", "http"],
            "mqtt": {"url": dead},
        },
        start_janitor=False,
    )
    application.config["TESTING"] = True
    yield application
    application.extensions["dffmpeg.fanout"].close()
    from coordinator.db import db

    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def stream_api(stream_app: Flask) -> Identities:
    return signed_identities(stream_app)


def test_negotiation_skips_a_broker_the_coordinator_cannot_reach(stream_api: Identities) -> None:
    reply = stream_api.worker.post(
        "/api/v1/transport/negotiate", json_body={"offered": ["mqtt", "stream", "http"]}
    )
    assert reply.status_code == 200
    assert reply.get_json() == {"transport": "stream", "coordinator": ["stream", "http"]}
    reply = stream_api.worker.post("/api/v1/transport/negotiate", json_body={"offered": ["mqtt"]})
    assert reply.get_json()["transport"] == "http"
    ping = stream_api.worker.post(
        "/api/v1/transport/ping", json_body={"transport": "mqtt", "token": "t"}
    )
    assert ping.status_code == 503


def test_stream_refuses_other_identities_jobs(stream_api: Identities) -> None:
    job = stream_api.client.post(
        "/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-version"]}
    ).get_json()["job"]["job_id"]
    reply = stream_api.other_client.get(f"/api/v1/transport/stream?keys=output:{job}")
    assert reply.status_code == 404
    reply = stream_api.client.get("/api/v1/transport/stream?keys=bogus")
    assert reply.status_code == 400


def test_stream_sends_hello_then_notifications_with_anti_buffering_headers(
    stream_api: Identities, stream_app: Flask
) -> None:
    job = stream_api.client.post(
        "/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-version"]}
    ).get_json()["job"]["job_id"]
    reply = stream_api.client.get(f"/api/v1/transport/stream?keys=output:{job}")
    assert reply.status_code == 200
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert reply.mimetype == "application/x-ndjson"
    lines = iter(reply.response)
    assert json.loads(next(lines)) == {"hello": True}
    stream_app.extensions["dffmpeg.notifier"].notify(f"job:{job}")
    event = json.loads(next(lines))
    address = ["to", "alice", "output", job]
    assert event["address"] == address
    # Sealed for alice: opens with her key only.
    key = stream_api.keys["alice"]
    opened = signing.unseal(key, tuple(address), event["data"].encode())
    assert opened is not None and json.loads(opened)["key"] == f"output:{job}"
    assert signing.unseal(stream_api.keys["bob"], tuple(address), event["data"].encode()) is None
    reply.close()


def test_http_only_drop_in_never_loads_transport_code() -> None:
    code = (
        "import sys, client.proxy, client.submit, client.job\n"
        "names = ('dffmpeg.transport', 'paho', 'pika')\n"
        "print(sorted(m for m in sys.modules if m.startswith(names)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env=process_env(), timeout=60
    )
    assert out.stdout.strip() == b"[]"


def test_transport_trouble_stays_off_the_drop_ins_stderr() -> None:
    """A broker that cannot be reached costs a fallback, never a line on stderr."""
    port = free_port()
    code = (
        "from dffmpeg.config import BrokerSettings\n"
        "from dffmpeg.transport.base import Endpoint\n"
        "from dffmpeg.transport.session import Downlink\n"
        f"brokers = BrokerSettings(mqtt_url='mqtt://127.0.0.1:{port}')\n"
        "endpoint = Endpoint('c1', 'client', brokers=brokers)\n"
        "call = lambda method, path, body: {'transport': 'mqtt'}\n"
        "downlink = Downlink(endpoint, ['mqtt', 'http'], call, connect_seconds=0.5)\n"
        "print(downlink.open())\n"
        "downlink.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=process_env(), timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.strip() == b"http"
    assert out.stderr == b""
