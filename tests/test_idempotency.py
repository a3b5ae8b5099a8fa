"""Every request of the API is safe to send again (docs/api.md, "Retries"), and a job
whose worker was lost may run again when its client allows it (``retry_on_worker_loss``).

Against the real app on every database: a submit with an idempotency key, accept, output
by seq, finish, input and cancel, each sent twice as a party does when the answer to the
first was lost; and the rules for running a lost job again.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, decode_frames, encode_frames
from tests.conftest import Identities
from tests.helpers import SignedClient
from tests.test_scheduling import poll, register, show, sweep, worker_client
from tests.test_serving import expire_lease

BODY = {"binary": "ffmpeg", "args": ["-i", "in.mp4", "out.mkv"], "mode": "background"}


def post(client: SignedClient, path: str, **kwargs: Any) -> Any:
    return client.post(path, **kwargs)


def frames(*items: tuple[FrameKind, int, bytes]) -> bytes:
    return encode_frames([Frame(kind, seq, data) for kind, seq, data in items])


def read_output(client: SignedClient, job_id: str, after: int = 0) -> list[Frame]:
    reply = client.get(f"/api/v1/jobs/{job_id}/output?after={after}&wait=0")
    assert reply.status_code == 200
    return list(decode_frames(reply.get_data()))


def test_a_submit_sent_again_finds_its_job(api: Identities) -> None:
    body = {**BODY, "idempotency_key": "a1b2c3d4e5f60718"}
    first = api.client.post("/api/v1/jobs", json_body=body)
    again = api.client.post("/api/v1/jobs", json_body=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["job"]["job_id"] == again.get_json()["job"]["job_id"]
    assert first.get_json()["outage_grace_seconds"] == 300
    # The same key from another client is another submission; a new key a new job.
    other = api.other_client.post("/api/v1/jobs", json_body=body)
    assert other.status_code == 201
    fresh = api.client.post("/api/v1/jobs", json_body={**body, "idempotency_key": "x" * 16})
    ids = {r.get_json()["job"]["job_id"] for r in (first, other, fresh)}
    assert len(ids) == 3
    listed = api.client.get("/api/v1/jobs").get_json()
    assert listed["total"] == 2
    # Keys that are not keys are refused.
    for bad in ("short", "x" * 65, "spaces here!", 12345678):
        reply = api.client.post("/api/v1/jobs", json_body={**BODY, "idempotency_key": bad})
        assert reply.status_code == 400, bad


def test_worker_requests_sent_again_change_nothing_twice(app: Flask, api: Identities) -> None:
    register(api.worker)
    job_id = api.client.post("/api/v1/jobs", json_body=BODY).get_json()["job"]["job_id"]
    assert poll(api.worker) == [job_id]
    for _ in range(2):  # accept, and accept again
        reply = api.worker.post(f"/api/v1/jobs/{job_id}/accept")
        assert reply.status_code == 200 and reply.get_json()["state"] == "running"
    out = frames((FrameKind.STDOUT, 1, b"one"), (FrameKind.STDERR, 2, b"two"))
    path = f"/api/v1/jobs/{job_id}/output"
    added = [
        api.worker.post(path, data=out, content_type=CONTENT_TYPE_FRAMES).get_json()["added"]
        for _ in range(2)
    ]
    assert added == [2, 0]
    stdin = frames((FrameKind.STDIN, 1, b"q"), (FrameKind.STDIN_EOF, 2, b""))
    ipath = f"/api/v1/jobs/{job_id}/input"
    added = [
        api.client.post(ipath, data=stdin, content_type=CONTENT_TYPE_FRAMES).get_json()["added"]
        for _ in range(2)
    ]
    assert added == [2, 0]
    for _ in range(2):  # finish, and finish again
        reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 3})
        assert reply.status_code == 200
    # A finish that says something else is a conflict, not a silent success.
    other = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert other.status_code == 409
    job = show(api.client, job_id)
    assert (job["state"], job["exit_code"]) == ("completed", 3)
    assert [e["to"] for e in job["events"]] == ["pending", "assigned", "running", "completed"]
    got = read_output(api.client, job_id)
    assert [(f.kind, f.data) for f in got[:2]] == [
        (FrameKind.STDOUT, b"one"),
        (FrameKind.STDERR, b"two"),
    ]
    # A worker that does not hold the job cannot "replay" anything on it.
    other = worker_client(app, api, "w2")
    assert other.post(f"/api/v1/jobs/{job_id}/accept").status_code == 409
    reply = other.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 3})
    assert reply.status_code == 409


def test_a_cancel_sent_again_is_answered_like_the_first(api: Identities) -> None:
    register(api.worker)
    job_id = api.client.post("/api/v1/jobs", json_body=BODY).get_json()["job"]["job_id"]
    poll(api.worker)
    api.worker.post(f"/api/v1/jobs/{job_id}/accept")
    states = [
        api.client.post(f"/api/v1/jobs/{job_id}/cancel").get_json()["job"]["state"]
        for _ in range(2)
    ]
    assert states == ["canceling", "canceling"]
    for _ in range(2):  # the worker confirms, twice
        reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 143})
        assert reply.status_code == 200
    again = api.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert (again.status_code, again.get_json()["job"]["state"]) == (200, "canceled")
    events = [e["to"] for e in show(api.client, job_id)["events"]]
    assert events == ["pending", "assigned", "running", "canceling", "canceled"]


def lose_worker_mid_job(app: Flask, api: Identities, body: dict[str, Any]) -> str:
    """Submit, start on w1, then w1 goes silent and the janitor declares it lost."""
    register(api.worker)
    job_id = api.client.post("/api/v1/jobs", json_body=body).get_json()["job"]["job_id"]
    assert poll(api.worker) == [job_id]
    assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    return job_id


def declare_lost(app: Flask) -> None:
    expire_lease(app, "w1")
    sweep(app)


def test_a_lost_job_runs_again_when_allowed_and_clean(app: Flask, api: Identities) -> None:
    job_id = lose_worker_mid_job(app, api, {**BODY, "retry_on_worker_loss": 1})
    # Its output so far was stored but never read by the client.
    out = frames((FrameKind.STDERR, 1, b"first run"))
    api.worker.post(f"/api/v1/jobs/{job_id}/output", data=out, content_type=CONTENT_TYPE_FRAMES)
    declare_lost(app)
    job = show(api.client, job_id)
    assert (job["state"], job["attempt"], job["worker_id"]) == ("pending", 2, None)
    assert "queued again (attempt 2, 0 more allowed)" in job["events"][-1]["reason"]
    # The lost run's output is gone: the second run starts at seq 1 again.
    assert read_output(api.client, job_id) == []
    register(api.worker)  # back (a restarted worker registers anew)
    assert poll(api.worker) == [job_id]
    api.worker.post(f"/api/v1/jobs/{job_id}/accept")
    out = frames((FrameKind.STDERR, 1, b"second run"))
    api.worker.post(f"/api/v1/jobs/{job_id}/output", data=out, content_type=CONTENT_TYPE_FRAMES)
    assert [f.data for f in read_output(api.client, job_id)] == [b"second run"]
    # Lost again: no retries left, so it fails as lost.
    declare_lost(app)
    job = show(api.client, job_id)
    assert (job["state"], job["failure"], job["attempt"]) == ("failed", "worker_lost", 2)


def test_a_lost_job_whose_output_was_read_never_runs_again(app: Flask, api: Identities) -> None:
    job_id = lose_worker_mid_job(app, api, {**BODY, "retry_on_worker_loss": 3})
    out = frames((FrameKind.STDOUT, 1, b"seen"))
    api.worker.post(f"/api/v1/jobs/{job_id}/output", data=out, content_type=CONTENT_TYPE_FRAMES)
    assert [f.data for f in read_output(api.client, job_id)] == [b"seen"]
    declare_lost(app)
    job = show(api.client, job_id)
    assert (job["state"], job["failure"], job["attempt"]) == ("failed", "worker_lost", 1)


def test_a_lost_job_that_consumed_stdin_never_runs_again(app: Flask, api: Identities) -> None:
    job_id = lose_worker_mid_job(app, api, {**BODY, "retry_on_worker_loss": 3})
    stdin = frames((FrameKind.STDIN, 1, b"data"))
    reply = api.client.post(
        f"/api/v1/jobs/{job_id}/input", data=stdin, content_type=CONTENT_TYPE_FRAMES
    )
    assert reply.status_code == 200
    declare_lost(app)
    assert show(api.client, job_id)["state"] == "failed"


def test_a_lost_job_is_not_run_again_unless_asked(app: Flask, api: Identities) -> None:
    job_id = lose_worker_mid_job(app, api, BODY)
    declare_lost(app)
    job = show(api.client, job_id)
    assert (job["state"], job["failure"]) == ("failed", "worker_lost")


def test_a_worker_that_restarts_mid_job_gives_it_back(app: Flask, api: Identities) -> None:
    job_id = lose_worker_mid_job(app, api, {**BODY, "retry_on_worker_loss": 2})
    register(api.worker)  # registering again: whatever it ran is gone
    job = show(api.client, job_id)
    assert (job["state"], job["attempt"]) == ("pending", 2)
    assert job["events"][-1]["reason"].startswith("worker lost (it restarted) before any")


def test_registration_tells_the_worker_the_outage_grace(database_url: str) -> None:
    from coordinator import create_app
    from coordinator.db import db
    from tests.conftest import signed_identities

    app = create_app({"database_url": database_url, "outage_grace_seconds": 42})
    try:
        api = signed_identities(app)
        worker = {"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}}
        reply = api.worker.post("/api/v1/workers/register", json_body=worker)
        assert reply.get_json()["outage_grace_seconds"] == 42
    finally:
        app.extensions["dffmpeg.services"].stop()
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_submit_carries_an_empty_stdin_as_the_first_input_frame(api: Identities) -> None:
    """``stdin_eof`` (the caller's stdin is /dev/null): the EOF is stored with the job as
    input frame 1, counted in the answer, also to the submit sent again; the client's
    input numbering goes on from 2, and frame 1 sent anyway is stored nothing twice."""
    register(api.worker)
    body = {**BODY, "idempotency_key": "e0f1e0f1e0f1e0f1", "stdin_eof": True}
    first = api.client.post("/api/v1/jobs", json_body=body)
    assert first.status_code == 201 and first.get_json()["stdin_frames"] == 1
    job_id = first.get_json()["job"]["job_id"]
    again = api.client.post("/api/v1/jobs", json_body=body)
    assert again.status_code == 200 and again.get_json()["stdin_frames"] == 1
    assert poll(api.worker) == [job_id]
    assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    reply = api.worker.get(f"/api/v1/jobs/{job_id}/input?after=0&wait=0")
    assert [(f.kind, f.seq) for f in decode_frames(reply.get_data())] == [(FrameKind.STDIN_EOF, 1)]
    ipath = f"/api/v1/jobs/{job_id}/input"
    more = frames((FrameKind.STDIN_EOF, 1, b""), (FrameKind.SIGNAL, 2, b"15"))
    reply = api.client.post(ipath, data=more, content_type=CONTENT_TYPE_FRAMES)
    assert reply.get_json()["added"] == 1
    # Without the field nothing is stored for the input, and the answer says so.
    plain = api.client.post("/api/v1/jobs", json_body=BODY).get_json()
    assert plain["stdin_frames"] == 0


def test_a_finish_carries_the_last_output_once(app: Flask, api: Identities) -> None:
    """The worker's last batch rides with its finish: stored after what came before, in
    order, before the end; the finish sent again stores nothing twice."""
    import base64

    register(api.worker)
    job_id = api.client.post("/api/v1/jobs", json_body=BODY).get_json()["job"]["job_id"]
    assert poll(api.worker) == [job_id]
    api.worker.post(f"/api/v1/jobs/{job_id}/accept")
    early = frames((FrameKind.STDERR, 1, b"banner\r"))
    path = f"/api/v1/jobs/{job_id}/output"
    api.worker.post(path, data=early, content_type=CONTENT_TYPE_FRAMES)
    last = frames((FrameKind.STDOUT, 2, b'{"streams": []}\n'), (FrameKind.STDERR, 3, b"end\n"))
    body = {"exit_code": 0, "output": base64.b64encode(last).decode()}
    for _ in range(2):
        reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body=body)
        assert reply.status_code == 200 and reply.get_json() == {"ok": True}
    got = read_output(api.client, job_id)
    assert [(f.kind, f.seq, f.data) for f in got[:3]] == [
        (FrameKind.STDERR, 1, b"banner\r"),
        (FrameKind.STDOUT, 2, b'{"streams": []}\n'),
        (FrameKind.STDERR, 3, b"end\n"),
    ]
    assert got[3].kind == FrameKind.STATUS and len(got) == 4
    assert show(api.client, job_id)["state"] == "completed"
    # Output that is not frames, or not base64, is refused before anything changes.
    other = api.client.post("/api/v1/jobs", json_body=BODY).get_json()["job"]["job_id"]
    assert poll(api.worker) == [other]
    api.worker.post(f"/api/v1/jobs/{other}/accept")
    for bad in ("not base64!", base64.b64encode(b"\x01garbage").decode()):
        reply = api.worker.post(
            f"/api/v1/jobs/{other}/finish", json_body={"exit_code": 0, "output": bad}
        )
        assert reply.status_code == 400
    assert show(api.client, other)["state"] == "running"
