"""Scheduling against the real app: slots, priority, fairness, labels, capabilities,
queue timeout, accept timeout and the janitor's clean-ups."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from tests.conftest import Identities
from tests.helpers import SignedClient

CAPS = {
    "encoders": ["aac", "libx264"],
    "decoders": ["h264", "aac"],
    "filters": ["scale", "null"],
    "hwaccels": [],
    "formats": ["mp4", "matroska", "null", "lavfi"],
}


def worker_client(app: Flask, api: Identities, worker_id: str) -> SignedClient:
    """A signed client for another worker identity (created on first use)."""
    from coordinator import users

    if worker_id == "w1":
        return api.worker
    with app.app_context():
        key = users.add_user(worker_id, "worker")["hmac_key"]
    return SignedClient(api.worker.flask, worker_id, key)


def register(
    worker: SignedClient,
    slots: int = 1,
    labels: list[str] | None = None,
    caps: dict[str, list[str]] | None = None,
    paths: list[str] | None = None,
) -> None:
    body = {
        "slots": slots,
        "labels": labels or [],
        "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "capabilities": caps or CAPS}},
        "path_variables": paths or [],
    }
    reply = worker.post("/api/v1/workers/register", json_body=body)
    assert reply.status_code == 200, reply.get_json()


def submit(client: SignedClient, args: list[str] | None = None, **extra: Any) -> str:
    body = {"binary": "ffmpeg", "args": args or ["-i", "in.mp4", "out.mkv"], **extra}
    reply = client.post("/api/v1/jobs", json_body=body)
    assert reply.status_code == 201, reply.get_json()
    job_id: str = reply.get_json()["job"]["job_id"]
    return job_id


def poll(worker: SignedClient) -> list[str]:
    reply = worker.get("/api/v1/workers/poll?wait=0")
    assert reply.status_code == 200, reply.get_json()
    return [j["job_id"] for j in reply.get_json()["jobs"]]


def show(client: SignedClient, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").get_json()["job"]
    return job


def run_to_end(worker: SignedClient, job_id: str, exit_code: int = 0) -> None:
    assert worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    reply = worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": exit_code})
    assert reply.status_code == 200


def time_out_assignments(app: Flask) -> None:
    """A janitor sweep that finds every assignment older than its time-out (then the
    time-out is back at 30 s)."""
    app.config["DFFMPEG"].assign_timeout_seconds = 0
    time.sleep(0.01)
    sweep(app)
    app.config["DFFMPEG"].assign_timeout_seconds = 30


def sweep(app: Flask) -> None:
    with app.app_context():
        app.extensions["dffmpeg.janitor"].sweep()


def test_slots_limit_what_a_worker_holds(app: Flask, api: Identities) -> None:
    register(api.worker, slots=2)
    jobs = [submit(api.client) for _ in range(5)]
    first = poll(api.worker)
    assert len(first) == 2
    assert poll(api.worker) == first  # still the same two, nothing more
    run_to_end(api.worker, first[0])
    second = poll(api.worker)
    assert len(second) == 2 and first[1] in second
    states = [show(api.client, j)["state"] for j in jobs]
    assert states.count("pending") == 2


def test_higher_priority_is_assigned_first(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1)
    low = submit(api.client, priority=0)
    high = submit(api.client, priority=10)
    assert poll(api.worker) == [high]
    run_to_end(api.worker, high)
    assert poll(api.worker) == [low]


def test_requesters_take_turns_within_a_priority(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1)
    alice = [submit(api.client) for _ in range(4)]
    bob = submit(api.other_client)
    order = []
    for _ in range(5):
        (job_id,) = poll(api.worker)
        order.append(job_id)
        run_to_end(api.worker, job_id)
    # Alice was first in line; Bob's single job comes right after her first one.
    assert order[:2] == [alice[0], bob]
    assert order[2:] == alice[1:]


def test_required_labels_are_hard(app: Flask, api: Identities) -> None:
    plain = worker_client(app, api, "w1")
    gpu = worker_client(app, api, "w2")
    register(plain, slots=2)
    register(gpu, slots=2, labels=["gpu"])
    job = submit(api.client, required_labels=["gpu"])
    assert poll(plain) == []
    assert poll(gpu) == [job]


def test_required_label_nobody_has_fails_fast_unless_waiting(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1, labels=["cpu"])
    failed = show(api.client, submit(api.client, required_labels=["gpu"]))
    assert failed["state"] == "failed"
    assert failed["failure"] == "no_capable_worker"
    assert "label gpu" in failed["reason"] and "w1" in failed["reason"]
    waiting = show(api.client, submit(api.client, required_labels=["gpu"], wait_for_worker=True))
    assert waiting["state"] == "pending"


def test_preferred_labels_are_soft(app: Flask, api: Identities) -> None:
    plain = worker_client(app, api, "w1")
    fast = worker_client(app, api, "w2")
    register(plain, slots=1)
    register(fast, slots=1, labels=["fast"])
    first = submit(api.client, preferred_labels=["fast"])
    # The plain worker asks first but leaves the job to the free worker it prefers.
    assert poll(plain) == []
    assert poll(fast) == [first]
    # With the preferred worker full, the plain one takes the next such job.
    second = submit(api.client, preferred_labels=["fast"])
    assert poll(plain) == [second]


def test_capabilities_route_and_fail_fast_naming_what_is_missing(
    app: Flask, api: Identities
) -> None:
    narrow = worker_client(app, api, "w1")
    wide = worker_client(app, api, "w2")
    register(narrow, slots=4)
    register(wide, slots=4, caps={**CAPS, "encoders": [*CAPS["encoders"], "libx265"]})
    hevc = submit(api.client, ["-i", "in.mp4", "-c:v", "libx265", "out.mkv"])
    h264 = submit(api.client, ["-i", "in.mp4", "-c:v", "libx264", "out.mkv"])
    assert poll(narrow) == [h264]
    assert poll(wide) == [hevc]
    nvenc = show(
        api.client,
        submit(api.client, ["-hwaccel", "cuda", "-i", "in.mp4", "-c:v", "h264_nvenc", "o.mkv"]),
    )
    assert nvenc["state"] == "failed" and nvenc["failure"] == "no_capable_worker"
    assert "encoder h264_nvenc" in nvenc["reason"] and "hwaccel cuda" in nvenc["reason"]
    assert nvenc["needs"] == {"encoders": ["h264_nvenc"], "hwaccels": ["cuda"]}


def test_no_worker_online_fails_fast(app: Flask, api: Identities) -> None:
    job = show(api.client, submit(api.client))
    assert job["state"] == "failed" and job["reason"] == "no worker is online"


def test_queue_timeout_fails_with_a_clear_reason(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1)
    busy = submit(api.client)
    assert poll(api.worker) == [busy]
    queued = submit(api.client, queue_timeout=0.2)
    forever = submit(api.client)
    time.sleep(0.3)
    sweep(app)
    job = show(api.client, queued)
    assert job["state"] == "failed" and job["failure"] == "queue_timeout"
    assert "queue timeout" in job["reason"]
    # Without a queue timeout a job waits as long as it takes.
    assert show(api.client, forever)["state"] == "pending"


def test_unaccepted_assignment_goes_back_and_late_accept_is_refused(
    app: Flask, api: Identities
) -> None:
    slow = worker_client(app, api, "w1")
    other = worker_client(app, api, "w2")
    register(slow, slots=1)
    job = submit(api.client)
    assert poll(slow) == [job]
    time_out_assignments(app)
    assert show(api.client, job)["state"] == "pending"
    register(other, slots=1)
    assert poll(other) == [job]
    late = slow.post(f"/api/v1/jobs/{job}/accept")
    assert late.status_code == 409
    after = show(api.client, job)
    assert after["state"] == "assigned" and after["worker_id"] == "w2"
    history = [(e["from"], e["to"]) for e in after["events"]]
    assert history == [
        (None, "pending"),
        ("pending", "assigned"),
        ("assigned", "pending"),
        ("pending", "assigned"),
    ]


def expire_worker(app: Flask, worker_id: str) -> None:
    """The worker's lease ran out (what silence past the lease looks like)."""
    from coordinator.db import db, now_utc
    from coordinator.models import Worker

    with app.app_context():
        worker = db.session.get(Worker, worker_id)
        assert worker is not None
        worker.lease_expires_at = now_utc()
        db.session.commit()
    time.sleep(0.01)


def test_lost_worker_fails_running_job_and_closes_cancels(app: Flask, api: Identities) -> None:
    register(api.worker, slots=3)
    running, canceling, assigned = (submit(api.client) for _ in range(3))
    assert sorted(poll(api.worker)) == sorted([running, canceling, assigned])
    for job in (running, canceling):
        assert api.worker.post(f"/api/v1/jobs/{job}/accept").status_code == 200
    assert api.client.post(f"/api/v1/jobs/{canceling}/cancel").get_json()["job"]["state"] == (
        "canceling"
    )
    expire_worker(app, "w1")
    sweep(app)
    lost = show(api.client, running)
    assert (lost["state"], lost["failure"]) == ("failed", "worker_lost")
    assert lost["reason"] == "worker lost"
    assert show(api.client, canceling)["state"] == "canceled"
    assert show(api.client, assigned)["state"] == "pending"
    # The worker comes back: its heartbeat is refused until it registers again.
    assert api.worker.post("/api/v1/workers/heartbeat").status_code == 409
    register(api.worker, slots=3)
    assert poll(api.worker) == [assigned]
    # A late finish for the lost job changes nothing.
    late = api.worker.post(f"/api/v1/jobs/{running}/finish", json_body={"exit_code": 0})
    assert late.status_code == 409
    assert show(api.client, running)["state"] == "failed"


def lease_left(app: Flask, worker_id: str, age: float = 2.0) -> float:
    """Seconds left on the worker's lease; first ages its last renewal by ``age`` s so
    that the next request renews it (renewals closer than a second are skipped)."""
    from datetime import timedelta

    from coordinator.db import db, now_utc
    from coordinator.models import Worker

    with app.app_context():
        worker = db.session.get(Worker, worker_id)
        assert worker is not None
        left = (worker.lease_expires_at - now_utc()).total_seconds()
        worker.last_seen_at = now_utc() - timedelta(seconds=age)
        db.session.commit()
    return left


def test_idle_workers_get_the_idle_lease_and_busy_ones_the_short_lease(
    app: Flask, api: Identities
) -> None:
    config = app.config["DFFMPEG"]
    assert (config.worker_lease_seconds, config.worker_idle_lease_seconds) == (15, 60)
    answer = api.worker.post(
        "/api/v1/workers/register", json_body={"slots": 1, "binaries": {"ffmpeg": {}}}
    ).get_json()
    assert (answer["lease_seconds"], answer["idle_lease_seconds"]) == (15, 60)
    assert 58 < lease_left(app, "w1") <= 60  # registered: holds nothing yet
    api.worker.post("/api/v1/workers/heartbeat")
    assert 58 < lease_left(app, "w1") <= 60  # idle: the heartbeat grants the idle lease
    api.worker.post("/api/v1/workers/paths", json_body={"path_variables": []})
    assert 58 < lease_left(app, "w1") <= 60  # so does any other renewal
    job = submit(api.client)
    assert poll(api.worker) == [job]
    # The claim cut the lease back at once, though the poll renewed it as idle first.
    assert 14 < lease_left(app, "w1") <= 15
    assert api.worker.post(f"/api/v1/jobs/{job}/accept").status_code == 200
    api.worker.post("/api/v1/workers/heartbeat")
    assert 14 < lease_left(app, "w1") <= 15  # holding a job: the short lease
    finish = api.worker.post(f"/api/v1/jobs/{job}/finish", json_body={"exit_code": 0})
    assert finish.status_code == 200
    api.worker.post("/api/v1/workers/heartbeat")
    assert 58 < lease_left(app, "w1") <= 60  # idle again


def test_idle_lease_is_never_shorter_than_the_lease() -> None:
    from dffmpeg.config import ConfigError, CoordinatorConfig

    assert CoordinatorConfig.from_dict({"worker_lease_seconds": 5}).worker_idle_lease_seconds == 20
    with pytest.raises(ConfigError, match="worker_idle_lease_seconds"):
        CoordinatorConfig.from_dict({"worker_lease_seconds": 30, "worker_idle_lease_seconds": 20})


def test_abandoned_monitored_job_is_canceled(app: Flask, api: Identities) -> None:
    register(api.worker, slots=1)
    job = submit(api.client)
    background = submit(api.client, mode="background")
    app.config["DFFMPEG"].client_lease_seconds = 0
    from coordinator.db import db, now_utc
    from coordinator.models import Job

    with app.app_context():
        db.session.get(Job, job).client_lease_expires_at = now_utc()
        db.session.commit()
    time.sleep(0.01)
    sweep(app)
    canceled = show(api.client, job)
    assert canceled["state"] == "canceled" and canceled["reason"] == "client went away"
    assert show(api.client, background)["state"] == "pending"


def test_reading_output_renews_the_client_lease_once_a_third_of_it_went_by(
    app: Flask, api: Identities
) -> None:
    """A stream's reader reads many times a second; each renewal is a write, so a read
    renews only when a third of the lease went by since the last one (and a job with
    no client lease, not monitored, gets none)."""
    from datetime import timedelta

    from coordinator.db import db, now_utc
    from coordinator.models import Job

    register(api.worker, slots=2)
    job = submit(api.client)
    background = submit(api.client, mode="background")
    lease = timedelta(seconds=app.config["DFFMPEG"].client_lease_seconds)

    def expiry(job_id: str, set_to: Any = None) -> Any:
        with app.app_context():
            row = db.session.get(Job, job_id)
            if set_to is not None:
                row.client_lease_expires_at = set_to
            found = row.client_lease_expires_at
            db.session.commit()
            return found

    def read(job_id: str) -> None:
        assert api.client.get(f"/api/v1/jobs/{job_id}/output?after=0&wait=0").status_code == 200

    # Renewed a moment ago (two thirds of the lease still ahead): the read leaves it.
    recent = expiry(job, now_utc() + lease - lease / 6)
    read(job)
    assert expiry(job) == recent
    # More than a third went by: the read renews it to a whole lease from now.
    expiry(job, now_utc() + lease / 2)
    before = now_utc()
    read(job)
    assert before + lease <= expiry(job) <= now_utc() + lease
    assert expiry(background) is None
    read(background)
    assert expiry(background) is None


def test_drain_stops_assignments_and_paths_update_stops_routing(
    app: Flask, api: Identities
) -> None:
    register(api.worker, slots=2, paths=["Media"])
    media_job = submit(api.client, ["-i", "$Media/in.mp4", "out.mkv"], wait_for_worker=True)
    reply = api.worker.post("/api/v1/workers/paths", json_body={"path_variables": []})
    assert reply.status_code == 200
    assert poll(api.worker) == []
    unrunnable = show(api.client, submit(api.client, ["-i", "$Media/in.mp4", "out.mkv"]))
    assert unrunnable["state"] == "failed" and "path $Media" in unrunnable["reason"]
    api.worker.post("/api/v1/workers/paths", json_body={"path_variables": ["Media"]})
    assert api.worker.post("/api/v1/workers/drain").get_json()["state"] == "draining"
    assert poll(api.worker) == []
    assert show(api.client, media_job)["state"] == "pending"
    # A heartbeat keeps the drain; registering again (a restart) ends it.
    api.worker.post("/api/v1/workers/heartbeat")
    assert poll(api.worker) == []
    register(api.worker, slots=2, paths=["Media"])
    assert poll(api.worker) == [media_job]


def test_finished_output_is_purged_after_retention(app: Flask, api: Identities) -> None:
    from dffmpeg.wire import Frame, FrameKind, encode_frames

    register(api.worker, slots=1)
    job = submit(api.client)
    poll(api.worker)
    api.worker.post(f"/api/v1/jobs/{job}/accept")
    body = encode_frames([Frame(FrameKind.STDERR, 1, b"log line\n")])
    api.worker.post(
        f"/api/v1/jobs/{job}/output", data=body, content_type="application/x-dffmpeg-frames"
    )
    api.worker.post(f"/api/v1/jobs/{job}/finish", json_body={"exit_code": 0})
    sweep(app)
    assert api.client.get(f"/api/v1/jobs/{job}/output?after=0").get_data().count(b"log line") == 1
    app.config["DFFMPEG"].retention_seconds = 0
    time.sleep(0.01)
    sweep(app)
    assert b"log line" not in api.client.get(f"/api/v1/jobs/{job}/output?after=0").get_data()
    assert show(api.client, job)["state"] == "completed"  # the job row itself stays


def test_two_coordinators_never_double_assign_or_double_fail(
    app: Flask, api: Identities, database_url: str
) -> None:
    """Two app instances on one database (as two coordinator processes would be) claim
    and sweep at the same time: every job is assigned once and failed once."""
    import threading

    from coordinator import create_app

    second = create_app({"database_url": database_url}, start_janitor=False)
    w2 = worker_client(app, api, "w2")
    other_w1 = SignedClient(second.test_client(), "w1", api.keys["w1"])
    other_w2 = SignedClient(second.test_client(), "w2", w2.key)
    register(api.worker, slots=30)
    register(w2, slots=30)
    jobs = [submit(api.client) for _ in range(24)]
    barrier = threading.Barrier(4)
    claimed: list[list[str]] = []

    def claim(worker: SignedClient) -> None:
        barrier.wait()
        claimed.append(poll(worker))

    threads = [
        threading.Thread(target=claim, args=(w,)) for w in (api.worker, w2, other_w1, other_w2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    flat = [j for batch in claimed for j in batch]
    assert sorted(set(flat)) == sorted(jobs)
    for job in jobs:
        api.worker.post(f"/api/v1/jobs/{job}/accept")
        w2.post(f"/api/v1/jobs/{job}/accept")
    expire_worker(app, "w1")
    expire_worker(app, "w2")
    sweepers = [
        threading.Thread(target=sweep, args=(instance,)) for instance in (app, second, app, second)
    ]
    for thread in sweepers:
        thread.start()
    for thread in sweepers:
        thread.join(30)
    for job in jobs:
        detail = show(api.client, job)
        assert detail["state"] == "failed" and detail["failure"] == "worker_lost"
        assert [e["to"] for e in detail["events"]] == ["pending", "assigned", "running", "failed"]
    from coordinator.db import db

    with second.app_context():
        db.engine.dispose()


def test_a_worker_registering_again_is_matched_by_its_new_capabilities(
    api: Identities,
) -> None:
    """Claims reuse the parsed capabilities of a worker (coordinator/scheduler.py), keyed
    by their stored text: a registration with other binaries is seen at once."""
    register(api.worker)
    job_id = submit(
        api.client, ["-i", "in.mp4", "-c:v", "libx265", "out.mkv"], wait_for_worker=True
    )
    assert poll(api.worker) == []  # no libx265 here
    register(api.worker, caps={**CAPS, "encoders": [*CAPS["encoders"], "libx265"]})
    assert poll(api.worker) == [job_id]
    # And back: a worker that lost the encoder is not given such a job any more.
    register(api.worker, caps=CAPS)
    assert poll(api.worker) == []
    submit(api.client, ["-i", "in.mp4", "-c:v", "libx265", "b.mkv"], wait_for_worker=True)
    assert poll(api.worker) == []


def test_a_full_workers_held_poll_ends_when_its_job_finishes(database_url: str) -> None:
    """A full worker's poll waits for a free slot (``slot:ID``, notified by its
    finishes) and ends empty once there is one, so the next poll claims again."""
    import threading

    from coordinator import create_app
    from coordinator.db import db
    from tests.conftest import signed_identities
    from tests.helpers import wait_until

    # No periodic re-check within the test: only the finish's wake-up can end the wait.
    app = create_app({"database_url": database_url, "recheck_seconds": 120}, start_janitor=False)
    try:
        api = signed_identities(app)
        register(api.worker, slots=1)
        job_id = submit(api.client)
        assert poll(api.worker) == [job_id]
        assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
        answers: list[Any] = []
        held = threading.Thread(
            target=lambda: answers.append(api.worker.get("/api/v1/workers/poll?wait=30"))
        )
        held.start()
        notifier = app.extensions["dffmpeg.notifier"]
        wait_until(lambda: "slot:w1" in notifier.waiting_keys())  # it waits as a full one
        finish = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
        assert finish.status_code == 200
        held.join(timeout=25)  # well before the poll's own 30 s
        assert not held.is_alive()
        assert answers[0].get_json() == {"jobs": [], "cancel": []}
    finally:
        with app.app_context():
            db.engine.dispose()
