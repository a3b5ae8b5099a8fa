"""Output delivery stays lossless and ordered with concurrent writers on two instances.

Several jobs' workers append output frames at the same time, alternating between two
coordinator instances (two apps with their own engines on one database), while each
job's reader long-polls the other instance with its cursor. Every reader must receive
every frame exactly once, in order — the cursor is the writer's own ``seq``, never an
auto-increment id, so rows committing out of order cannot make a reader skip one.
Retried batches are ignored and a gap is refused.
"""

from __future__ import annotations

import threading

from flask import Flask

from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, decode_frames, encode_frames
from tests.helpers import SignedClient

JOBS = 6
FRAMES = 60


def _frame_data(job: int, seq: int) -> bytes:
    return f"job{job}-frame{seq}\r".encode() * (seq % 4 + 1)


def _post(worker: SignedClient, job_id: str, frames: list[Frame]) -> int:
    reply = worker.post(
        f"/api/v1/jobs/{job_id}/output",
        data=encode_frames(frames),
        content_type=CONTENT_TYPE_FRAMES,
    )
    return int(reply.status_code)


def test_concurrent_output_through_two_instances_is_lossless_and_ordered(
    two_instances: tuple[Flask, Flask],
) -> None:
    from coordinator import users

    first, second = two_instances
    with first.app_context():
        client_key = users.add_user("alice", "client")["hmac_key"]
        worker_key = users.add_user("w1", "worker")["hmac_key"]
    clients = [SignedClient(a.test_client(), "alice", client_key) for a in (first, second)]
    workers = [SignedClient(a.test_client(), "w1", worker_key) for a in (first, second)]
    register = {"slots": JOBS, "binaries": {"ffprobe": "/usr/bin/ffprobe"}}
    assert workers[0].post("/api/v1/workers/register", json_body=register).status_code == 200
    job_ids = []
    for i in range(JOBS):
        reply = clients[i % 2].post(
            "/api/v1/jobs", json_body={"binary": "ffprobe", "args": [str(i)]}
        )
        job_ids.append(reply.get_json()["job"]["job_id"])
    claimed = workers[1].get("/api/v1/workers/poll?wait=5").get_json()["jobs"]
    assert sorted(j["job_id"] for j in claimed) == sorted(job_ids)
    for job_id in job_ids:
        assert workers[0].post(f"/api/v1/jobs/{job_id}/accept").status_code == 200

    received: dict[int, list[Frame]] = {i: [] for i in range(JOBS)}
    errors: list[str] = []

    def write(i: int) -> None:
        seq = 0
        batch_no = 0
        while seq < FRAMES:
            size = batch_no % 3 + 1
            batch = [
                Frame(FrameKind.STDOUT if s % 2 else FrameKind.STDERR, s, _frame_data(i, s))
                for s in range(seq + 1, min(seq + size, FRAMES) + 1)
            ]
            worker = workers[batch_no % 2]
            if _post(worker, job_ids[i], batch) != 200:
                errors.append(f"job {i}: batch at {seq} refused")
                return
            if batch_no % 5 == 0 and _post(workers[(batch_no + 1) % 2], job_ids[i], batch) != 200:
                errors.append(f"job {i}: retried batch at {seq} refused")  # a retry is fine
            seq = batch[-1].seq
            batch_no += 1

    def read(i: int) -> None:
        after = 0
        reader = clients[(i + 1) % 2]
        while after < FRAMES:
            reply = reader.get(f"/api/v1/jobs/{job_ids[i]}/output?after={after}&wait=5")
            for frame in decode_frames(reply.get_data()):
                if frame.kind == FrameKind.STATUS:
                    errors.append(f"job {i}: ended early")
                    return
                if frame.seq != after + 1:
                    errors.append(f"job {i}: got {frame.seq} after {after}")
                    return
                received[i].append(frame)
                after = frame.seq

    threads = [threading.Thread(target=read, args=(i,)) for i in range(JOBS)]
    threads += [threading.Thread(target=write, args=(i,)) for i in range(JOBS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert errors == []
    for i in range(JOBS):
        assert [f.seq for f in received[i]] == list(range(1, FRAMES + 1))
        assert [f.data for f in received[i]] == [_frame_data(i, s) for s in range(1, FRAMES + 1)]

    # A gap is refused and changes nothing.
    gap = [Frame(FrameKind.STDOUT, FRAMES + 2, b"skipped one")]
    assert _post(workers[0], job_ids[0], gap) == 409
    after_gap = clients[1].get(f"/api/v1/jobs/{job_ids[0]}/output?after={FRAMES}&wait=0")
    assert list(decode_frames(after_gap.get_data())) == []
