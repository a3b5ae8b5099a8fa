"""No double assignment: many workers claim concurrently through two instances.

Eight workers poll at the same time, alternating between two coordinator instances
(two apps with their own engines on one database), until 60 pending jobs are gone.
Each job must be handed to exactly one worker, and the database must agree on which.
"""

from __future__ import annotations

import threading
from collections import Counter

from flask import Flask

from tests.helpers import SignedClient

WORKERS = 8
JOBS = 60
SLOTS = 10  # 8 workers x 10 slots: room for every job, but not for one worker alone


def test_concurrent_claims_through_two_instances_assign_each_job_once(
    two_instances: tuple[Flask, Flask],
) -> None:
    from coordinator import users
    from coordinator.db import db
    from coordinator.models import Job

    first, second = two_instances
    apps = (first, second)
    with first.app_context():
        client_key = users.add_user("alice", "client")["hmac_key"]
        worker_keys = {
            f"w{i}": users.add_user(f"w{i}", "worker")["hmac_key"] for i in range(WORKERS)
        }
    client = SignedClient(first.test_client(), "alice", client_key)
    register = {"slots": SLOTS, "binaries": {"ffprobe": "/usr/bin/ffprobe"}}
    for i, (worker_id, key) in enumerate(worker_keys.items()):
        worker = SignedClient(apps[i % 2].test_client(), worker_id, key)
        assert worker.post("/api/v1/workers/register", json_body=register).status_code == 200
    job_ids = set()
    for i in range(JOBS):
        reply = client.post("/api/v1/jobs", json_body={"binary": "ffprobe", "args": [str(i)]})
        job_ids.add(reply.get_json()["job"]["job_id"])

    claims: dict[str, set[str]] = {w: set() for w in worker_keys}
    start = threading.Barrier(WORKERS)

    def claim(n: int, worker_id: str) -> None:
        polls = [SignedClient(app.test_client(), worker_id, worker_keys[worker_id]) for app in apps]
        start.wait()
        for round_no in range(8):
            reply = polls[(n + round_no) % 2].get("/api/v1/workers/poll?wait=0")
            claims[worker_id].update(j["job_id"] for j in reply.get_json()["jobs"])

    threads = [threading.Thread(target=claim, args=(n, w)) for n, w in enumerate(worker_keys)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)

    handed_out = Counter(job for jobs in claims.values() for job in jobs)
    assert [job for job, n in handed_out.items() if n > 1] == []
    assert set(handed_out) == job_ids
    with first.app_context():
        holders = {row[0]: row[1] for row in db.session.execute(db.select(Job.id, Job.worker_id))}
    assert holders == {job: w for w, jobs in claims.items() for job in jobs}
    assert sum(1 for jobs in claims.values() if jobs) > 1  # the claims really competed
