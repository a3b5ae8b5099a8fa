"""A worker accepts its jobs with the poll it sends next (``accepted=``), or with the
job's first output or finish when one of those reaches the coordinator first.

Against the real app on every database: the accept's compare-and-set still decides
(a job canceled, or given to another worker, while it was assigned comes back in the
poll's ``cancel``, at once), an accept sent again changes nothing, and the history of
a job reads as it always did.
"""

from __future__ import annotations

import time

import pytest
from flask import Flask

from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames
from tests.conftest import Identities
from tests.helpers import SignedClient
from tests.test_scheduling import (
    poll,
    register,
    show,
    submit,
    time_out_assignments,
    worker_client,
)


def poll_accepting(worker: SignedClient, job_ids: list[str], wait: float = 0) -> dict:
    reply = worker.get(f"/api/v1/workers/poll?wait={wait}&accepted={','.join(job_ids)}")
    assert reply.status_code == 200, reply.get_json()
    work: dict = reply.get_json()
    return work


def moves(client: SignedClient, job_id: str) -> list[str]:
    return [e["to"] for e in show(client, job_id)["events"]]


@pytest.mark.timeout(30)
def test_the_next_poll_accepts_and_the_job_runs_to_its_end(api: Identities) -> None:
    register(api.worker, slots=2)
    first, second = submit(api.client), submit(api.client)
    assert sorted(poll(api.worker)) == sorted([first, second])
    work = poll_accepting(api.worker, [first, second])
    assert work == {"jobs": [], "cancel": []}  # both running: nothing handed out again
    for job_id in (first, second):
        job = show(api.client, job_id)
        assert job["state"] == "running" and job["started_at"] is not None
    # Sent again (the first answer was lost): nothing changes, nothing to stop.
    assert poll_accepting(api.worker, [first]) == {"jobs": [], "cancel": []}
    reply = api.worker.post(f"/api/v1/jobs/{first}/finish", json_body={"exit_code": 0})
    assert reply.status_code == 200
    # ... and once more after the finish overtook it: the process is over, no cancel.
    assert poll_accepting(api.worker, [first]) == {"jobs": [], "cancel": []}
    assert moves(api.client, first) == ["pending", "assigned", "running", "completed"]


@pytest.mark.timeout(30)
def test_a_job_canceled_while_assigned_comes_back_to_stop_at_once(api: Identities) -> None:
    register(api.worker, slots=1)
    job_id = submit(api.client)
    assert poll(api.worker) == [job_id]
    assert api.client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    started = time.monotonic()
    work = poll_accepting(api.worker, [job_id], wait=20)
    assert time.monotonic() - started < 5  # answered at once, not held
    assert work["cancel"] == [job_id] and work["jobs"] == []
    assert show(api.client, job_id)["state"] == "canceled"
    assert moves(api.client, job_id) == ["pending", "assigned", "canceled"]
    # Its output and finish are refused: the worker's other way to learn it.
    reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert reply.status_code == 409


@pytest.mark.timeout(30)
def test_a_job_given_to_another_worker_meanwhile_is_not_taken_back(
    app: Flask, api: Identities
) -> None:
    slow = worker_client(app, api, "w1")
    other = worker_client(app, api, "w2")
    register(slow, slots=1)
    job_id = submit(api.client)
    assert poll(slow) == [job_id]
    time_out_assignments(app)  # not accepted in time: back in the queue
    register(other, slots=1)
    assert poll(other) == [job_id]
    assert poll_accepting(slow, [job_id])["cancel"] == [job_id]
    after = show(api.client, job_id)
    assert after["state"] == "assigned" and after["worker_id"] == "w2"
    assert poll_accepting(other, [job_id]) == {"jobs": [], "cancel": []}
    assert show(api.client, job_id)["state"] == "running"


@pytest.mark.timeout(30)
def test_a_finish_or_output_that_comes_first_is_the_accept(api: Identities) -> None:
    register(api.worker, slots=2)
    quick, talky = submit(api.client), submit(api.client)
    assert sorted(poll(api.worker)) == sorted([quick, talky])
    reply = api.worker.post(f"/api/v1/jobs/{quick}/finish", json_body={"exit_code": 3})
    assert reply.status_code == 200
    job = show(api.client, quick)
    assert job["state"] == "completed" and job["exit_code"] == 3
    assert moves(api.client, quick) == ["pending", "assigned", "running", "completed"]

    body = encode_frames([Frame(FrameKind.STDERR, 1, b"frame=1\r")])
    reply = api.worker.post(
        f"/api/v1/jobs/{talky}/output", data=body, content_type=CONTENT_TYPE_FRAMES
    )
    assert reply.status_code == 200, reply.get_json()
    assert show(api.client, talky)["state"] == "running"
    # The poll that carries the accept, later, finds it running: still the worker's.
    assert poll_accepting(api.worker, [quick, talky]) == {"jobs": [], "cancel": []}
    assert moves(api.client, talky) == ["pending", "assigned", "running"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad", ["xyz", "0" * 31, ",".join(["0" * 32] * 65)])
def test_accepted_must_list_full_job_ids(api: Identities, bad: str) -> None:
    register(api.worker, slots=1)
    reply = api.worker.get(f"/api/v1/workers/poll?wait=0&accepted={bad}")
    assert reply.status_code == 400
