"""Job ids by unique prefix through the API, on every database: found, ambiguous, not
found, too short (each its own error code), and only among the jobs the caller may see."""

from __future__ import annotations

import uuid

from flask import Flask

from coordinator.db import db
from coordinator.models import Job
from tests.conftest import Identities

JOB = {"binary": "ffprobe", "args": ["-version"], "wait_for_worker": True}


def job_with_id(app: Flask, job_id: str, requester: str) -> str:
    """A pending job with an id chosen by the test (ids that share a prefix)."""
    with app.app_context():
        db.session.add(Job(id=job_id, requester=requester, binary="ffprobe", args=["-version"]))
        db.session.commit()
    return job_id


def hex_id(prefix: str) -> str:
    return (prefix + uuid.uuid4().hex)[:32]


def test_a_unique_prefix_names_the_job_on_every_route(api: Identities) -> None:
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    for prefix in (job_id[:6], job_id[:12], job_id.upper()[:12], job_id):
        reply = api.client.get(f"/api/v1/jobs/{prefix}")
        assert reply.status_code == 200, reply.get_json()
        assert reply.get_json()["job"]["job_id"] == job_id
    tail = api.client.get(f"/api/v1/jobs/{job_id[:8]}/stderr")
    assert tail.status_code == 200
    assert tail.get_json()["job_id"] == job_id
    output = api.client.get(f"/api/v1/jobs/{job_id[:8]}/output?wait=0")
    assert output.status_code == 200
    canceled = api.client.post(f"/api/v1/jobs/{job_id[:7]}/cancel")
    assert canceled.status_code == 200
    assert canceled.get_json()["job"]["job_id"] == job_id
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["job"]["state"] == "canceled"


def test_not_found_ambiguous_too_short_and_wrong_state_differ(app: Flask, api: Identities) -> None:
    first = job_with_id(app, hex_id("0ee55e8392bc"), "alice")
    second = job_with_id(app, hex_id("0ee55e91a0c2"), "alice")

    ambiguous = api.client.get("/api/v1/jobs/0ee55e")
    assert ambiguous.status_code == 400
    body = ambiguous.get_json()
    assert body["error"] == "ambiguous_id"
    assert sorted(body["matches"]) == sorted([first, second])
    assert "0ee55e8392bc" in body["message"] and "0ee55e91a0c2" in body["message"]
    # One more character settles it.
    assert api.client.get("/api/v1/jobs/0ee55e8").get_json()["job"]["job_id"] == first

    missing = api.client.get("/api/v1/jobs/0ee55f")
    assert (missing.status_code, missing.get_json()["error"]) == (404, "not_found")
    assert missing.get_json()["message"] == "no job 0ee55f"
    not_hex = api.client.get("/api/v1/jobs/zzzzzzzz")
    assert (not_hex.status_code, not_hex.get_json()["error"]) == (404, "not_found")

    short = api.client.get("/api/v1/jobs/0ee55")
    assert (short.status_code, short.get_json()["error"]) == (400, "id_too_short")
    assert "at least 6" in short.get_json()["message"]

    assert api.client.post(f"/api/v1/jobs/{first[:8]}/cancel").status_code == 200
    # Canceling again is idempotent; canceling a finished job is the wrong state.
    again = api.client.post(f"/api/v1/jobs/{first[:8]}/cancel")
    assert (again.status_code, again.get_json()["job"]["state"]) == (200, "canceled")
    with app.app_context():
        db.session.get(Job, second).state = "completed"  # type: ignore[union-attr]
        db.session.commit()
    done = api.client.post(f"/api/v1/jobs/{second[:8]}/cancel")
    assert (done.status_code, done.get_json()["error"]) == (409, "wrong_state")
    assert done.get_json()["state"] == "completed"
    assert len({ambiguous.get_json()["message"], missing.get_json()["message"]}) == 2


def test_a_prefix_only_matches_jobs_the_caller_may_see(app: Flask, api: Identities) -> None:
    mine = job_with_id(app, hex_id("abc123aa"), "alice")
    theirs = job_with_id(app, hex_id("abc123bb"), "bob")
    # Bob's job neither makes Alice's prefix ambiguous nor can she find it by its own.
    assert api.client.get("/api/v1/jobs/abc123").get_json()["job"]["job_id"] == mine
    hidden = api.client.get(f"/api/v1/jobs/{theirs[:10]}")
    assert (hidden.status_code, hidden.get_json()["error"]) == (404, "not_found")
    assert api.client.get(f"/api/v1/jobs/{theirs}").status_code == 404
    assert api.client.post(f"/api/v1/jobs/{theirs[:10]}/cancel").status_code == 404
    # An admin sees both, so for an admin the same prefix is ambiguous.
    assert api.admin.get("/api/v1/jobs/abc123").get_json()["error"] == "ambiguous_id"
    assert api.admin.get("/api/v1/jobs/abc123b").get_json()["job"]["job_id"] == theirs
