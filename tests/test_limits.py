"""Limits per identity, range checks and header checks: a clear 4xx, nothing stored.

Each limit has a test that goes one past it and checks the answer names the limit and
that nothing of the request was stored; the inputs that used to give a 500 each get a
4xx now; an admin sets limits through the API and through ``dffmpeg-admin``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from dffmpeg import signing
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames
from tests.conftest import Identities
from tests.helpers import SignedClient, admin, write_yaml

JOB: dict[str, Any] = {"binary": "ffprobe", "args": ["-version"], "wait_for_worker": True}
MiB = 1024 * 1024


def jobs_of(app: Flask, requester: str) -> int:
    from coordinator.db import db
    from coordinator.models import Job

    with app.app_context():
        count = db.session.execute(
            select(func.count()).select_from(Job).where(Job.requester == requester)
        ).scalar_one()
        db.session.remove()
    return int(count)


def set_quota(api: Identities, client_id: str, **values: Any) -> dict[str, Any]:
    reply = api.admin.open("PUT", f"/api/v1/users/{client_id}/quota", json_body=values)
    assert reply.status_code == 200, reply.get_json()
    result: dict[str, Any] = reply.get_json()
    return result


def refused(reply: Any, status: int, limit: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.get_json()
    body: dict[str, Any] = reply.get_json()
    assert body["error"] == "limit_exceeded"
    assert body["limit"] == limit
    assert limit in body["message"]
    return body


# -- sizes of a submit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "field", "value"),
    [
        ("max_cwd_bytes", "cwd", "/" + "c" * 5000),
        ("max_env_bytes", "env", {f"V{i}": "x" * 1000 for i in range(80)}),
        ("max_label_bytes", "required_labels", ["l" * 3000, "m" * 2000]),
        ("max_args_bytes", "args", ["-i", *["a" * 60000] * 20]),
    ],
)
def test_submit_sizes_past_the_default_limit(
    app: Flask, api: Identities, limit: str, field: str, value: Any
) -> None:
    body = refused(api.client.post("/api/v1/jobs", json_body={**JOB, field: value}), 413, limit)
    assert body["requested"] > body["allowed"]
    assert jobs_of(app, "alice") == 0
    # Raised for this identity by an admin, the same job is taken.
    set_quota(api, "alice", **{limit: 2 * MiB})
    assert api.client.post("/api/v1/jobs", json_body={**JOB, field: value}).status_code == 201
    # The other client still has the default.
    refused(api.other_client.post("/api/v1/jobs", json_body={**JOB, field: value}), 413, limit)


def test_pending_jobs_past_the_limit(app: Flask, api: Identities) -> None:
    set_quota(api, "alice", max_pending=3)
    for _ in range(3):
        assert api.client.post("/api/v1/jobs", json_body=JOB).status_code == 201
    body = refused(api.client.post("/api/v1/jobs", json_body=JOB), 429, "max_pending")
    assert body["allowed"] == 3
    assert jobs_of(app, "alice") == 3
    # Another identity's queue is its own.
    assert api.other_client.post("/api/v1/jobs", json_body=JOB).status_code == 201
    # A job that leaves "pending" frees its place.
    first = api.client.get("/api/v1/jobs").get_json()["jobs"][0]["job_id"]
    assert api.client.post(f"/api/v1/jobs/{first}/cancel").status_code == 200
    assert api.client.post("/api/v1/jobs", json_body=JOB).status_code == 201


def test_priority_above_the_callers_maximum_is_refused(app: Flask, api: Identities) -> None:
    assert api.client.post("/api/v1/jobs", json_body={**JOB, "priority": 100}).status_code == 201
    body = refused(
        api.client.post("/api/v1/jobs", json_body={**JOB, "priority": 2147483647}),
        403,
        "max_priority",
    )
    assert body["allowed"] == 100
    set_quota(api, "alice", max_priority=0)
    refused(api.client.post("/api/v1/jobs", json_body={**JOB, "priority": 1}), 403, "max_priority")
    assert jobs_of(app, "alice") == 1


def test_priority_beyond_the_column_is_a_400(app: Flask, api: Identities) -> None:
    set_quota(api, "alice", max_priority=2**53)
    for value in (2**31, 2**63, -(2**31) - 1):
        reply = api.client.post("/api/v1/jobs", json_body={**JOB, "priority": value})
        assert reply.status_code == 400, value
    assert jobs_of(app, "alice") == 0


# -- stdin and registrations ---------------------------------------------------------------


def stdin_frames(first_seq: int, count: int, size: int) -> bytes:
    return encode_frames([Frame(FrameKind.STDIN, first_seq + i, b"s" * size) for i in range(count)])


def test_stored_stdin_past_the_limit(app: Flask, api: Identities) -> None:
    from coordinator.db import db
    from coordinator.models import InputChunk, Job

    set_quota(api, "alice", max_stdin_bytes=3 * MiB)
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    path = f"/api/v1/jobs/{job_id}/input"
    reply = api.client.post(path, data=stdin_frames(1, 2, MiB), content_type=CONTENT_TYPE_FRAMES)
    assert reply.status_code == 200
    # Two more MiB would make four: refused whole, nothing of it stored.
    reply = api.client.post(path, data=stdin_frames(3, 2, MiB), content_type=CONTENT_TYPE_FRAMES)
    body = refused(reply, 413, "max_stdin_bytes")
    assert body["requested"] == 4 * MiB
    with app.app_context():
        stored = db.session.execute(
            select(func.count()).where(InputChunk.job_id == job_id)
        ).scalar_one()
        assert stored == 2
        assert db.session.get(Job, job_id).stdin_bytes == 2 * MiB
        db.session.remove()
    # A retry of frames already stored is not counted again; EOF and signals cost nothing.
    frames = [
        Frame(FrameKind.STDIN, 2, b"s" * MiB),
        Frame(FrameKind.STDIN, 3, b"s" * MiB),
        Frame(FrameKind.SIGNAL, 4, b"2"),
        Frame(FrameKind.STDIN_EOF, 5, b""),
    ]
    reply = api.client.post(path, data=encode_frames(frames), content_type=CONTENT_TYPE_FRAMES)
    assert reply.status_code == 200 and reply.get_json() == {"added": 3}


def test_stdin_sent_with_a_submit(app: Flask, api: Identities) -> None:
    """The stdin a caller had already goes with its submit: stored as input frames 1
    (and 2, the EOF) of the job, counted against ``max_stdin_bytes``; a bad field is a
    400 and makes no job."""
    import base64

    from coordinator import streams

    body = {**JOB, "stdin": base64.b64encode(b"?").decode(), "stdin_eof": True}
    reply = api.client.post("/api/v1/jobs", json_body=body).get_json()
    job_id = reply["job"]["job_id"]
    assert reply["stdin_frames"] == 2
    with app.app_context():
        frames = streams.read_input(job_id, 0)
        db_remove(app)
    assert frames == [Frame(FrameKind.STDIN, 1, b"?"), Frame(FrameKind.STDIN_EOF, 2, b"")]
    # The client's own frames follow them.
    path = f"/api/v1/jobs/{job_id}/input"
    reply = api.client.post(path, data=stdin_frames(3, 1, 5), content_type=CONTENT_TYPE_FRAMES)
    assert reply.status_code == 200 and reply.get_json() == {"added": 1}
    made = jobs_of(app, "alice")
    for bad in (
        {"stdin": "not base64!"},
        {"stdin": ""},
        {"stdin": base64.b64encode(b"x" * (64 * 1024 + 1)).decode()},
        {"stdin_eof": "yes"},
        {"stdin": 7},
    ):
        reply = api.client.post("/api/v1/jobs", json_body={**JOB, **bad})
        assert reply.status_code == 400, (bad, reply.get_json())
    assert jobs_of(app, "alice") == made
    # An empty stdin: its EOF alone, frame 1.
    reply = api.client.post("/api/v1/jobs", json_body={**JOB, "stdin_eof": True}).get_json()
    assert reply["stdin_frames"] == 1
    with app.app_context():
        frames = streams.read_input(reply["job"]["job_id"], 0)
        db_remove(app)
    assert frames == [Frame(FrameKind.STDIN_EOF, 1, b"")]
    before = jobs_of(app, "alice")
    set_quota(api, "alice", max_stdin_bytes=1024)
    big = {**JOB, "stdin": base64.b64encode(b"x" * 2048).decode()}
    refused(api.client.post("/api/v1/jobs", json_body=big), 413, "max_stdin_bytes")
    assert jobs_of(app, "alice") == before


def db_remove(app: Flask) -> None:
    from coordinator.db import db

    db.session.remove()


def registration(probe_bytes: int, labels: list[str] | None = None) -> dict[str, Any]:
    probe = {"stdout": "A" * probe_bytes, "stderr": "", "exit_code": 0}
    return {
        "slots": 1,
        "labels": labels or [],
        "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe", "probes": {"-version": probe}}},
    }


def test_worker_registration_past_the_limits(app: Flask, api: Identities) -> None:
    from coordinator.db import db
    from coordinator.models import Worker

    reply = api.worker.post("/api/v1/workers/register", json_body=registration(5 * MiB))
    refused(reply, 413, "max_registration_bytes")
    reply = api.worker.post("/api/v1/workers/register", json_body=registration(1000, ["x" * 5000]))
    refused(reply, 413, "max_label_bytes")
    with app.app_context():
        assert db.session.get(Worker, "w1") is None
        db.session.remove()
    reply = api.worker.post("/api/v1/workers/register", json_body=registration(MiB))
    assert reply.status_code == 200


# -- admin API and CLI ---------------------------------------------------------------------


def test_admin_api_shows_sets_and_clears_limits(api: Identities) -> None:
    reply = api.admin.get("/api/v1/users/alice/quota")
    assert reply.status_code == 200
    shown = reply.get_json()
    assert shown["overrides"] == {}
    assert shown["quota"]["max_pending"] == 200
    changed = set_quota(api, "alice", max_pending=5, max_priority=10)
    assert changed["overrides"] == {"max_pending": 5, "max_priority": 10}
    assert changed["quota"]["max_pending"] == 5
    cleared = set_quota(api, "alice", max_pending=None)
    assert cleared["overrides"] == {"max_priority": 10}
    assert cleared["quota"]["max_pending"] == 200
    for bad in ({"max_nothing": 1}, {"max_pending": "5"}, {"max_pending": -1}):
        reply = api.admin.open("PUT", "/api/v1/users/alice/quota", json_body=bad)
        assert reply.status_code == 400, bad
    assert api.client.get("/api/v1/users/alice/quota").status_code == 403
    assert api.admin.get("/api/v1/users/nobody/quota").status_code == 404


def test_admin_cli_user_quota(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"database_url": f"sqlite:///{tmp_path / 'c.db'}", "default_quotas": {"max_pending": 50}},
    )
    admin(config, "user", "add", "jelly", "--role", "client")
    shown = admin(config, "user", "quota", "jelly")
    assert shown["quota"]["max_pending"] == 50  # the configured default
    assert shown["overrides"] == {}
    changed = admin(
        config, "user", "quota", "jelly", "--max-pending", "7", "--max-stdin-bytes", "1024"
    )
    assert changed["overrides"] == {"max_pending": 7, "max_stdin_bytes": 1024}
    cleared = admin(config, "user", "quota", "jelly", "--max-pending", "default")
    assert cleared["overrides"] == {"max_stdin_bytes": 1024}
    assert cleared["quota"]["max_pending"] == 50


# -- fairness with high priorities ---------------------------------------------------------


def test_fairness_holds_when_one_client_asks_for_high_priorities(
    app: Flask, api: Identities
) -> None:
    """alice queues six jobs at the highest priority she may ask for, then bob one at 0:
    bob's job is served second, not seventh."""
    worker = {"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}}
    assert api.worker.post("/api/v1/workers/register", json_body=worker).status_code == 200
    mine = [
        api.client.post("/api/v1/jobs", json_body={**JOB, "priority": 100}).get_json()["job"]
        for _ in range(6)
    ]
    bobs = api.other_client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]
    served = []
    for _ in range(3):
        work = api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
        assert len(work) == 1
        job_id = work[0]["job_id"]
        served.append(job_id)
        assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
        finish = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
        assert finish.status_code == 200
    assert served[0] == mine[0]["job_id"]
    assert served[1] == bobs["job_id"]
    assert served[2] == mine[1]["job_id"]


# -- inputs that used to give a 500 ----------------------------------------------------------


def test_non_ascii_signature_header_is_a_401(app: Flask, api: Identities) -> None:
    body = json.dumps(JOB).encode()
    headers = signing.sign_headers("alice", api.keys["alice"], "POST", "/api/v1/jobs", body)
    for name in (signing.HEADER_SIGNATURE, signing.HEADER_CLIENT, signing.HEADER_NONCE):
        bad = {**headers, name: headers[name][:-1] + "\u00e9"}
        reply = app.test_client().post(
            "/api/v1/jobs", data=body, headers=bad, content_type="application/json"
        )
        assert reply.status_code == 401, name
        assert reply.get_json() == {"error": "unauthorized", "message": "authentication failed"}
    assert jobs_of(app, "alice") == 0


def test_unknown_identity_is_refused_without_reading_the_body(app: Flask) -> None:
    """The body is never read: a stream that fails when read proves it."""

    class Exploding:
        def read(self, *_args: Any) -> bytes:
            raise AssertionError("the body was read")

    path = "/api/v1/jobs"
    headers = signing.sign_headers("nobody", "k" * 43, "POST", path, b"{}")
    environ = {"wsgi.input": Exploding(), "CONTENT_LENGTH": "2", "CONTENT_TYPE": "application/json"}
    reply = app.test_client().post(path, headers=headers, environ_overrides=environ)
    assert reply.status_code == 401
    stale = signing.sign_headers("alice", "k" * 43, "POST", path, b"{}", now=1_000_000)
    reply = app.test_client().post(path, headers=stale, environ_overrides=environ)
    assert reply.status_code == 401


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_numbers_out_of_range_are_4xx(app: Flask, api: Identities) -> None:
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    for path in (
        f"/api/v1/jobs/{job_id}/output?after={2**64}",
        f"/api/v1/jobs/{job_id}/output?after=-1",
        f"/api/v1/jobs?offset={2**64}",
        f"/api/v1/jobs/{job_id}/output?wait=nan",
        f"/api/v1/jobs/{job_id}/output?wait=inf",
        "/api/v1/jobs?requester=%00",
    ):
        assert api.client.get(path).status_code == 400, path
    assert api.client.get("/api/v1/jobs/%00x").status_code == 404
    for timeout in ("NaN", "Infinity", "-Infinity", "1e300", "1e400"):
        raw = json.dumps(JOB)[:-1] + f', "queue_timeout": {timeout}}}'
        reply = api.client.post("/api/v1/jobs", data=raw.encode(), content_type="application/json")
        assert reply.status_code == 400, timeout
    for body in (
        {**JOB, "cwd": "/a\x00b"},
        {**JOB, "args": ["\ud800"]},
        {**JOB, "env": {"A": 1}},
        {"binary": "ffprobe", "args": nested(40)},
    ):
        raw = json.dumps(body).encode()
        reply = api.client.post("/api/v1/jobs", data=raw, content_type="application/json")
        assert reply.status_code == 400, body
    deep = b"[" * 100000 + b"]" * 100000
    assert (
        api.client.post("/api/v1/jobs", data=deep, content_type="application/json").status_code
        == 400
    )
    assert jobs_of(app, "alice") == 1


def test_exit_code_and_frames_out_of_range_are_4xx(app: Flask, api: Identities) -> None:
    worker = {"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}}
    assert api.worker.post("/api/v1/workers/register", json_body=worker).status_code == 200
    job_id = api.client.post("/api/v1/jobs", json_body=JOB).get_json()["job"]["job_id"]
    assert api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
    assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 2**70})
    assert reply.status_code == 400
    big_seq = encode_frames([Frame(FrameKind.STDOUT, 2**63, b"x")])
    reply = api.worker.post(
        f"/api/v1/jobs/{job_id}/output", data=big_seq, content_type=CONTENT_TYPE_FRAMES
    )
    assert reply.status_code == 400
    bad_signal = encode_frames([Frame(FrameKind.SIGNAL, 1, b"KILL")])
    reply = api.client.post(
        f"/api/v1/jobs/{job_id}/input", data=bad_signal, content_type=CONTENT_TYPE_FRAMES
    )
    assert reply.status_code == 400
    reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert reply.status_code == 200
    assert api.client.get(f"/api/v1/jobs/{job_id}").get_json()["job"]["exit_code"] == 0


def test_malformed_registrations_are_400(api: Identities) -> None:
    for binaries in (
        {"ffprobe": {"capabilities": {"encoders": 5}}},
        {"ffprobe": {"capabilities": {"encoders": [{"a": 1}]}}},
        {"ffprobe": {"probes": ["-version"]}},
        {"ffprobe": {"probes": {"-version": {"stdout": 1}}}},
        {},
    ):
        reply = api.worker.post(
            "/api/v1/workers/register", json_body={"slots": 1, "binaries": binaries}
        )
        assert reply.status_code == 400, binaries
    for slots in (0, 2**31, 2**63):
        reply = api.worker.post(
            "/api/v1/workers/register",
            json_body={"slots": slots, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}},
        )
        assert reply.status_code == 400, slots


def test_a_signed_client_sees_limits_in_its_own_requests(api: Identities) -> None:
    """The limits come with the identity: no extra lookup, yet a change applies at once."""
    set_quota(api, "bob", max_cwd_bytes=10)
    other: SignedClient = api.other_client
    refused(
        other.post("/api/v1/jobs", json_body={**JOB, "cwd": "/" + "x" * 20}), 413, "max_cwd_bytes"
    )
    set_quota(api, "bob", max_cwd_bytes=None)
    assert other.post("/api/v1/jobs", json_body={**JOB, "cwd": "/" + "x" * 20}).status_code == 201
