"""A submission that waits for the job's first output (``wait_output``).

Against the real app on every database: the answer carries what the first read of the
output would have returned (a short job's whole output and its final status), comes as
soon as there is something, and after the wait with nothing when there is not.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from flask import Flask

from dffmpeg.wire import Frame, FrameKind, decode_frames, encode_frames
from tests.conftest import Identities
from tests.helpers import SignedClient
from tests.test_scheduling import poll, register

ARGS = ["-f", "lavfi", "-i", "nullsrc", "-f", "null", "-"]


def submit_waiting(client: SignedClient, wait: Any) -> Any:
    body = {"binary": "ffmpeg", "args": ARGS, "wait_output": wait}
    return client.post("/api/v1/jobs", json_body=body)


@pytest.mark.timeout(30)
def test_a_short_jobs_output_and_end_come_with_its_submission(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1)
    caller = SignedClient(app.test_client(), "alice", api.keys["alice"])
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(submit_waiting(caller, 20)))
    started = time.monotonic()
    thread.start()
    claimed: list[str] = []
    deadline = time.monotonic() + 10
    while not claimed and time.monotonic() < deadline:
        claimed = poll(api.worker)
    assert len(claimed) == 1
    job_id = claimed[0]
    output = encode_frames([Frame(FrameKind.STDERR, 1, b"done\n")])
    body = {"exit_code": 0, "output": base64.b64encode(output).decode()}
    assert api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body=body).status_code == 200
    thread.join(timeout=10)
    assert time.monotonic() - started < 10  # not held for the whole wait
    reply = answers[0]
    assert reply.status_code == 201, reply.get_json()
    data = reply.get_json()
    assert data["job"]["job_id"] == job_id
    frames = list(decode_frames(base64.b64decode(data["output"])))
    assert [(f.kind, f.data) for f in frames[:-1]] == [(FrameKind.STDERR, b"done\n")]
    assert frames[-1].kind == FrameKind.STATUS
    assert json.loads(frames[-1].data)["state"] == "completed"
    # The same read again gives the same: nothing was consumed by the submission.
    again = api.client.get(f"/api/v1/jobs/{job_id}/output?after=0&wait=0")
    assert next(f.data for f in decode_frames(again.data)) == b"done\n"


@pytest.mark.timeout(30)
def test_with_nothing_to_read_the_submission_answers_after_its_wait(api: Identities) -> None:
    register(api.worker, slots=1)  # online, but it never polls: the job stays pending
    started = time.monotonic()
    reply = submit_waiting(api.client, 0.4)
    took = time.monotonic() - started
    assert reply.status_code == 201, reply.get_json()
    data = reply.get_json()
    assert data["job"]["state"] == "pending"
    assert data["output"] == ""  # no frames
    assert 0.35 <= took < 5


@pytest.mark.timeout(30)
def test_without_wait_output_the_answer_has_no_output(api: Identities) -> None:
    register(api.worker, slots=1)
    reply = api.client.post("/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ARGS})
    assert reply.status_code == 201
    assert "output" not in reply.get_json()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", [-1, 31, True, "1"])
def test_wait_output_is_checked(api: Identities, bad: Any) -> None:
    register(api.worker, slots=1)
    reply = submit_waiting(api.client, bad)
    assert reply.status_code == 400
    jobs = api.client.get("/api/v1/jobs").get_json()["jobs"]
    assert jobs == []  # refused before anything was stored


@pytest.mark.timeout(30)
def test_a_job_no_worker_can_run_ends_in_its_submissions_answer(api: Identities) -> None:
    # The submission fails it at once, after its waiter registered: the failure's wake-up
    # brings the final status into the same answer, not after the wait.
    register(api.worker, slots=1)
    started = time.monotonic()
    body = {"binary": "ffmpeg", "args": ["-c:v", "no_such_encoder", "out.mkv"], "wait_output": 20}
    reply = api.client.post("/api/v1/jobs", json_body=body)
    assert reply.status_code == 201, reply.get_json()
    assert time.monotonic() - started < 5
    data = reply.get_json()
    assert data["job"]["state"] == "failed"
    frames = list(decode_frames(base64.b64decode(data["output"])))
    assert [f.kind for f in frames] == [FrameKind.STATUS]
    assert json.loads(frames[0].data)["state"] == "failed"


@pytest.mark.timeout(10)
def test_a_waiter_registered_early_checks_only_once_woken() -> None:
    from coordinator.notify import Notifier

    notifier = Notifier(recheck=5.0)
    checks: list[float] = []

    def check() -> str | None:
        checks.append(time.monotonic())
        return "news" if len(checks) > 0 and woken.is_set() else None

    woken = threading.Event()
    with notifier.listening(["output:j"]) as listening:
        timer = threading.Timer(0.3, lambda: (woken.set(), notifier.notify("output:j")))
        timer.start()
        started = time.monotonic()
        assert notifier.wait_for(["output:j"], check, 3.0, listening) == "news"
        timer.join()
    assert len(checks) == 1 and checks[0] - started >= 0.25  # no check before the wake-up
    assert notifier.waiting_keys() == []
    # A wake-up that came before the wait is not lost; with no time to wait it checks.
    with notifier.listening(["output:k"]) as listening:
        notifier.notify("output:k")
        assert notifier.wait_for(["output:k"], lambda: "early", 3.0, listening) == "early"
    with notifier.listening(["output:l"]) as listening:
        assert notifier.wait_for(["output:l"], lambda: "at once", 0.0, listening) == "at once"
