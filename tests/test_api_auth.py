"""Bad input gets a clear JSON error and changes nothing."""

from __future__ import annotations

import json
import time

from flask import Flask

from dffmpeg import signing
from tests.conftest import Identities

# Queued even with no worker online (otherwise it would fail at once as unrunnable).
JOB = {"binary": "ffprobe", "args": ["-version"], "wait_for_worker": True}
UNIFORM_401 = {"error": "unauthorized", "message": "authentication failed"}


def job_count(api: Identities) -> int:
    reply = api.admin.get("/api/v1/jobs")
    assert reply.status_code == 200
    return len(reply.get_json()["jobs"])


def test_health_needs_no_auth(app: Flask) -> None:
    reply = app.test_client().get("/health")
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["status"] == "ok"
    # The clock and window doctor compares with, before it signs anything.
    assert abs(body["now"] - time.time()) < 5
    assert body["auth_window_seconds"] == 30


def test_signed_submit_works(api: Identities) -> None:
    reply = api.client.post("/api/v1/jobs", json_body=JOB)
    assert reply.status_code == 201
    assert reply.get_json()["job"]["state"] == "pending"


def test_unsigned_request_is_refused(app: Flask, api: Identities) -> None:
    reply = app.test_client().post("/api/v1/jobs", json=JOB)
    assert reply.status_code == 401
    assert reply.get_json() == UNIFORM_401
    assert job_count(api) == 0


def test_unknown_identity_and_bad_signature_look_the_same(app: Flask, api: Identities) -> None:
    body = json.dumps(JOB).encode()
    bodies = []
    for client_id, key in (("nobody", "x" * 43), ("alice", "wrong-key")):
        headers = signing.sign_headers(client_id, key, "POST", "/api/v1/jobs", body)
        reply = app.test_client().post(
            "/api/v1/jobs", data=body, headers=headers, content_type="application/json"
        )
        assert reply.status_code == 401
        bodies.append(reply.get_data())
    assert bodies[0] == bodies[1]
    assert job_count(api) == 0


def test_stale_timestamp_is_refused(app: Flask, api: Identities) -> None:
    body = json.dumps(JOB).encode()
    headers = signing.sign_headers(
        "alice", api.keys["alice"], "POST", "/api/v1/jobs", body, now=time.time() - 120
    )
    reply = app.test_client().post(
        "/api/v1/jobs", data=body, headers=headers, content_type="application/json"
    )
    assert reply.status_code == 401
    assert reply.get_json() == UNIFORM_401
    assert job_count(api) == 0


def test_replayed_request_is_refused(app: Flask, api: Identities) -> None:
    body = json.dumps(JOB).encode()
    headers = signing.sign_headers("alice", api.keys["alice"], "POST", "/api/v1/jobs", body)
    client = app.test_client()
    first = client.post("/api/v1/jobs", data=body, headers=headers, content_type="application/json")
    again = client.post("/api/v1/jobs", data=body, headers=headers, content_type="application/json")
    assert first.status_code == 201
    assert again.status_code == 401
    assert job_count(api) == 1


def _twice(app: Flask, who: str, key: str, method: str, path: str, body: bytes = b"") -> list[int]:
    """Status codes of one signed request sent twice, byte for byte."""
    headers = signing.sign_headers(who, key, method, path, body)
    client = app.test_client()
    ctype = "application/json" if body else None
    return [
        client.open(path, method=method, data=body, headers=headers, content_type=ctype).status_code
        for _ in range(2)
    ]


def test_replays_of_reads_and_of_failed_requests_are_refused(app: Flask, api: Identities) -> None:
    """The nonce is stored with the view's own commit, or on its own when the view only
    read, failed, or rolled back: no path lets the same request through twice."""
    worker = {"slots": 1, "binaries": {"ffprobe": "/usr/bin/ffprobe"}}
    assert api.worker.post("/api/v1/workers/register", json_body=worker).status_code == 200
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    alice, w1 = api.keys["alice"], api.keys["w1"]
    # A read that commits nothing.
    assert _twice(app, "alice", alice, "GET", f"/api/v1/jobs/{job_id}") == [200, 401]
    # A long-poll read, which commits inside its check.
    path = f"/api/v1/jobs/{job_id}/output?after=0&wait=0"
    assert _twice(app, "alice", alice, "GET", path) == [200, 401]
    # A view that fails before writing anything.
    assert _twice(app, "alice", alice, "POST", "/api/v1/jobs", b"[1]") == [400, 401]
    # A worker's poll claims the job (a write), then the client cancels it.
    assert _twice(app, "w1", w1, "GET", "/api/v1/workers/poll?wait=0") == [200, 401]
    assert _twice(app, "alice", alice, "POST", f"/api/v1/jobs/{job_id}/cancel") == [200, 401]
    # The worker's late accept loses its compare-and-set and rolls back.
    assert _twice(app, "w1", w1, "POST", f"/api/v1/jobs/{job_id}/accept") == [409, 401]


def test_query_string_is_signed(app: Flask, api: Identities) -> None:
    headers = signing.sign_headers(
        "root", api.keys["root"], "GET", "/api/v1/jobs?state=pending", b""
    )
    reply = app.test_client().get("/api/v1/jobs?state=running", headers=headers)
    assert reply.status_code == 401


def test_roles_are_enforced(api: Identities) -> None:
    # A worker cannot submit, a client cannot list workers or users, nor act as a worker.
    assert api.worker.post("/api/v1/jobs", json_body=JOB).status_code == 403
    assert api.client.get("/api/v1/workers").status_code == 403
    assert api.client.get("/api/v1/users").status_code == 403
    reply = api.client.post("/api/v1/workers/register", json_body={"slots": 1, "binaries": {}})
    assert reply.status_code == 403
    assert reply.get_json()["error"] == "forbidden"
    assert job_count(api) == 0


def test_malformed_json_and_fields(api: Identities) -> None:
    reply = api.client.post("/api/v1/jobs", data=b"{not json", content_type="application/json")
    assert reply.status_code == 400
    assert reply.get_json()["error"] == "bad_request"
    for body in (
        {"binary": "ffprobe"},
        {"binary": "ffprobe", "args": "x"},
        {"binary": "ffprobe", "args": [1]},
        {"binary": 3, "args": []},
        {"binary": "ffprobe", "args": [], "mode": "weird"},
        [1, 2],
    ):
        reply = api.client.post("/api/v1/jobs", json_body=body)
        assert reply.status_code == 400, body
        assert "message" in reply.get_json()
    assert job_count(api) == 0


def test_binary_not_allowed(api: Identities) -> None:
    reply = api.client.post("/api/v1/jobs", json_body={"binary": "bash", "args": ["-c", "id"]})
    assert reply.status_code == 400
    assert "not allowed" in reply.get_json()["message"]
    assert job_count(api) == 0


def test_body_too_large(api: Identities) -> None:
    body = b"x" * (17 * 1024 * 1024)
    reply = api.client.post("/api/v1/jobs", data=body, content_type="application/json")
    assert reply.status_code == 413
    assert reply.get_json()["error"] == "request_entity_too_large"


def test_other_clients_jobs_are_invisible(api: Identities) -> None:
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    assert api.other_client.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert api.other_client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    assert api.client.get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_wrong_state_is_a_conflict(api: Identities) -> None:
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    # The worker never held this job: accepting it is refused and changes nothing.
    assert (
        api.worker.post(
            "/api/v1/workers/register",
            json_body={"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}},
        ).status_code
        == 200
    )
    reply = api.worker.post(f"/api/v1/jobs/{job_id}/accept")
    assert reply.status_code == 409
    assert api.client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    # A cancel sent again (its answer was lost) is answered like the first and changes
    # nothing: cancel is idempotent.
    again = api.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200
    assert again.get_json()["job"]["state"] == "canceled"
    job = api.client.get(f"/api/v1/jobs/{job_id}").get_json()["job"]
    assert job["state"] == "canceled"
    assert [e["to"] for e in job["events"]] == ["pending", "canceled"]
    # Finishing a job that is over is a conflict naming its state.
    w = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert w.status_code == 409
    assert (w.get_json()["error"], w.get_json()["state"]) == ("wrong_state", "canceled")


def test_unknown_route_is_json_404(api: Identities) -> None:
    reply = api.client.get("/api/v1/nothing")
    assert reply.status_code == 404
    assert reply.get_json()["error"] == "not_found"
