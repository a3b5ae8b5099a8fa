"""Leases are judged only after parties had a whole lease since the coordinator could
serve them (coordinator/serving.py), and client addresses come through trusted proxies
only (coordinator/addresses.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import update

from coordinator.addresses import client_address
from coordinator.db import db, now_utc
from coordinator.models import ServingState, Worker
from tests.conftest import instances, signed_identities

WORKER = {"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}}


def expire_lease(app: Flask, worker_id: str, lease_seconds: float = 15) -> None:
    """Make the worker's lease (of ``lease_seconds``) run out a second ago."""
    now = now_utc()
    with app.app_context():
        db.session.execute(
            update(Worker)
            .where(Worker.worker_id == worker_id)
            .values(
                last_seen_at=now - timedelta(seconds=lease_seconds + 1),
                lease_expires_at=now - timedelta(seconds=1),
            )
        )
        db.session.commit()


def state_of(app: Flask, worker_id: str) -> str:
    with app.app_context():
        worker = db.session.get(Worker, worker_id)
        assert worker is not None
        state = worker.state
        db.session.remove()
    return state


def sweep(app: Flask) -> None:
    with app.app_context():
        app.extensions["dffmpeg.janitor"].sweep()
        db.session.remove()


def test_no_worker_is_declared_lost_right_after_any_instance_could_not_serve(
    database_url: str,
) -> None:
    for first, second in instances(database_url):
        api = signed_identities(first)
        assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
        # The first instance could not serve; its janitor writes that down.
        first.extensions["dffmpeg.serving"].impaired("every request thread busy")
        sweep(first)
        # The worker's lease ran out meanwhile: the second instance's janitor (which
        # noted nothing itself) sees the first one's impairment and waits.
        expire_lease(first, "w1")
        sweep(second)
        assert state_of(second, "w1") == "online"
        # Once a whole lease has passed since the impairment, the lease counts again.
        with second.app_context():
            db.session.execute(
                update(ServingState).values(impaired_at=now_utc() - timedelta(seconds=20))
            )
            db.session.commit()
        sweep(second)
        assert state_of(second, "w1") == "offline"


def test_a_lease_that_runs_out_without_impairment_is_judged_at_once(app: Flask) -> None:
    api = signed_identities(app)
    assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
    expire_lease(app, "w1")
    sweep(app)
    assert state_of(app, "w1") == "offline"


def test_a_lease_is_judged_once_a_whole_lease_passed_since_the_impairment() -> None:

    from coordinator import serving

    now = now_utc()
    assert serving.may_judge(timedelta(seconds=15), None, now)
    assert not serving.may_judge(timedelta(seconds=15), now - timedelta(seconds=14), now)
    assert serving.may_judge(timedelta(seconds=15), now - timedelta(seconds=15), now)


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.5", "203.0.113.9", [], "10.0.0.5"),  # no proxies trusted: the peer
        ("10.0.0.5", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
        ("192.0.2.1", "203.0.113.9", ["10.0.0.0/8"], "192.0.2.1"),  # peer not trusted
        # A client's own forged entry stays to the left of what the proxy appended.
        ("10.0.0.5", "1.2.3.4, 203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9, 10.0.0.7", ["10.0.0.0/8"], "203.0.113.9"),
        ("10.0.0.5", "garbage, 10.0.0.7", ["10.0.0.0/8"], "10.0.0.7"),
        ("10.0.0.5", "", ["10.0.0.0/8"], "10.0.0.5"),
        ("::ffff:10.0.0.5", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
    ],
)
def test_client_address(peer: str, forwarded: str, trusted: list[str], expected: str) -> None:
    environ = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": forwarded}
    assert client_address(environ, trusted) == expected


def test_allowed_networks_see_through_trusted_proxies_only(database_url: str) -> None:
    from coordinator import create_app

    settings = {"database_url": database_url, "trusted_proxies": ["127.0.0.0/8"]}
    app = create_app(settings, start_janitor=False)
    try:
        api = signed_identities(app)
        reply = api.admin.open(
            "PUT",
            "/api/v1/users/alice/networks",
            json_body={"allowed_networks": ["203.0.113.0/24"]},
        )
        assert reply.status_code == 200
        inside = {"X-Forwarded-For": "203.0.113.9"}
        outside = {"X-Forwarded-For": "198.51.100.1"}
        # The test client's peer is 127.0.0.1: a trusted proxy, so its header counts.
        assert api.client.get("/api/v1/jobs", headers=inside).status_code == 200
        assert api.client.get("/api/v1/jobs", headers=outside).status_code == 403
        assert api.client.get("/api/v1/jobs").status_code == 403
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_forwarded_for_from_an_untrusted_peer_is_ignored(app: Flask) -> None:
    api = signed_identities(app)
    reply = api.admin.open(
        "PUT", "/api/v1/users/alice/networks", json_body={"allowed_networks": ["203.0.113.0/24"]}
    )
    assert reply.status_code == 200
    # No trusted proxies: a client writing the header itself gains nothing.
    assert (
        api.client.get("/api/v1/jobs", headers={"X-Forwarded-For": "203.0.113.9"}).status_code
        == 403
    )
