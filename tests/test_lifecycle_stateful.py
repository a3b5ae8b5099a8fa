"""Random sequences of everything that can happen to jobs, against the real app.

Hypothesis drives submit / poll (assign) / accept / finish / cancel / heartbeat /
drain / janitor sweeps / accept timeouts / clients going away / workers dying and
coming back, through the signed HTTP API of a real coordinator app on a fresh SQLite
file per example. After every step it checks, from the database itself:

- no job ever ran twice (at most one transition into ``running``);
- a terminal job never changes again;
- every recorded transition is allowed and continues from the previous state;
- no worker holds more active jobs than its slots;
- accept and finish succeed exactly when the worker holds the job in the right state
  (a late or foreign one gets 409 and changes nothing).

At the end every worker dies and the janitor runs: every job is then terminal or back
in the queue.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from dffmpeg.wire import JobState
from tests.helpers import SignedClient

WORKERS = ("w1", "w2")
CLIENTS = ("alice", "bob")
ACTIVE = {"assigned", "running", "canceling"}
TERMINAL = {s.value for s in JobState if s.terminal}
CAPS = {
    "encoders": ["libx264", "aac"],
    "decoders": ["h264"],
    "filters": [],
    "hwaccels": [],
    "formats": [],
}
JOB_ARGS_PLAIN = ["-i", "in.mp4", "out.mkv"]
RARELY = st.sampled_from([True, False, False])
JOB_ARGS = st.sampled_from(
    [
        ["-i", "in.mp4", "out.mkv"],
        ["-i", "in.mp4", "-c:v", "libx264", "out.mkv"],
        ["-i", "in.mp4", "-c:v", "libx265", "out.mkv"],  # no worker has it
    ]
)


class JobLifecycle(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        from coordinator import create_app, users

        self._tmp = tempfile.TemporaryDirectory()
        url = f"sqlite:///{Path(self._tmp.name) / 'db.sqlite'}"
        self.app = create_app({"database_url": url}, start_janitor=False)
        flask_client = self.app.test_client()
        self.signed: dict[str, SignedClient] = {}
        with self.app.app_context():
            for client_id, role in (
                *((c, "client") for c in CLIENTS),
                *((w, "worker") for w in WORKERS),
            ):
                key = users.add_user(client_id, role)["hmac_key"]
                self.signed[client_id] = SignedClient(flask_client, client_id, key)
        self.slots: dict[str, int] = {}
        self.terminal: dict[str, tuple[Any, ...]] = {}
        for worker in WORKERS:  # both start online; rules kill and re-register them
            self.register(worker, 2)

    def teardown(self) -> None:
        for worker in WORKERS:
            self._expire_worker(worker)
        self._sweep()
        for job in self._rows().values():
            assert job["state"] in TERMINAL | {"pending"}, job
        self._check()
        from coordinator.db import db

        with self.app.app_context():
            db.engine.dispose()
        self._tmp.cleanup()

    # -- helpers -----------------------------------------------------------------------

    def _rows(self) -> dict[str, dict[str, Any]]:
        from coordinator.db import db
        from coordinator.models import Job, JobEvent

        with self.app.app_context():
            jobs = {j.id: j.to_dict() for j in db.session.execute(db.select(Job)).scalars()}
            for job in jobs.values():
                job["events"] = []
            events = db.session.execute(db.select(JobEvent).order_by(JobEvent.id)).scalars()
            for event in events:
                jobs[event.job_id]["events"].append((event.from_state, event.to_state))
        return jobs

    def _job(self, job_id: str) -> dict[str, Any]:
        return self._rows()[job_id]

    def _sweep(self) -> None:
        with self.app.app_context():
            self.app.extensions["dffmpeg.janitor"].sweep()

    def _expire_worker(self, worker: str) -> None:
        from coordinator.db import db, now_utc
        from coordinator.models import Worker

        with self.app.app_context():
            row = db.session.get(Worker, worker)
            if row is not None:
                row.lease_expires_at = now_utc()
                db.session.commit()
        time.sleep(0.002)

    # -- rules ---------------------------------------------------------------------------

    @rule(target=jobs, client=st.sampled_from(CLIENTS), count=st.integers(1, 4))
    def submit_several(self, client: str, count: int) -> Any:
        return multiple(
            *(self.submit(client, JOB_ARGS_PLAIN, 0, True, "background") for _ in range(count))
        )

    @rule(
        target=jobs,
        client=st.sampled_from(CLIENTS),
        args=JOB_ARGS,
        priority=st.integers(0, 2),
        wait=st.sampled_from([True, True, True, False]),
        mode=st.sampled_from(["active", "background"]),
    )
    def submit(self, client: str, args: list[str], priority: int, wait: bool, mode: str) -> str:
        body = {
            "binary": "ffmpeg",
            "args": args,
            "priority": priority,
            "wait_for_worker": wait,
            "mode": mode,
        }
        reply = self.signed[client].post("/api/v1/jobs", json_body=body)
        assert reply.status_code == 201
        job: dict[str, Any] = reply.get_json()["job"]
        assert job["state"] in ("pending", "failed")
        if job["state"] == "failed":
            assert job["failure"] == "no_capable_worker"
        return str(job["job_id"])

    @rule(worker=st.sampled_from(WORKERS), slots=st.integers(1, 3))
    def register(self, worker: str, slots: int) -> None:
        body = {
            "slots": slots,
            "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "capabilities": CAPS}},
        }
        assert self.signed[worker].post("/api/v1/workers/register", json_body=body).status_code
        self.slots[worker] = slots

    @rule(worker=st.sampled_from(WORKERS))
    def poll(self, worker: str) -> None:
        reply = self.signed[worker].get("/api/v1/workers/poll?wait=0")
        if worker not in self.slots:
            assert reply.status_code == 409
            return
        if reply.status_code == 409:  # expired or deregistered: it must register again
            return
        assert reply.status_code == 200
        for assignment in reply.get_json()["jobs"]:
            job = self._job(assignment["job_id"])
            assert job["state"] == "assigned" and job["worker_id"] == worker

    @rule(worker=st.sampled_from(WORKERS), finish=st.booleans())
    def poll_and_run(self, worker: str, finish: bool) -> None:
        """The usual path of a live worker: take what it is given, accept, maybe finish."""
        reply = self.signed[worker].get("/api/v1/workers/poll?wait=0")
        if reply.status_code == 409:
            return
        for assignment in reply.get_json()["jobs"]:
            self.accept(worker, assignment["job_id"])
            if finish:
                self.finish(worker, assignment["job_id"], 0)

    @rule(worker=st.sampled_from(WORKERS), job_id=jobs)
    def accept(self, worker: str, job_id: str) -> None:
        before = self._job(job_id)
        reply = self.signed[worker].post(f"/api/v1/jobs/{job_id}/accept")
        holds = before["worker_id"] == worker
        moves = before["state"] == "assigned" and holds
        # An accept sent again by the worker that runs the job is answered, not refused.
        replay = before["state"] in ("running", "canceling") and holds
        assert (reply.status_code == 200) == (moves or replay), (before, reply.get_json())
        if not moves:
            assert self._job(job_id)["events"] == before["events"]

    @rule(worker=st.sampled_from(WORKERS), job_id=jobs, code=st.sampled_from([0, 1, 137]))
    def finish(self, worker: str, job_id: str, code: int) -> None:
        before = self._job(job_id)
        reply = self.signed[worker].post(
            f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": code}
        )
        holds = before["worker_id"] == worker
        # A finish that comes before the accept (a job of a few milliseconds, whose
        # accept rides on the worker's next poll) is the accept too.
        should = before["state"] in ("assigned", "running", "canceling") and holds
        # A finish sent again (its answer was lost) by that worker: answered, no change.
        replay = holds and (before["state"], before["exit_code"]) in (
            ("completed", code),
            ("canceled", code),
        )
        assert (reply.status_code == 200) == (should or replay), (before, reply.get_json())
        after = self._job(job_id)
        if should:
            expected = "canceled" if before["state"] == "canceling" else "completed"
            assert after["state"] == expected and after["exit_code"] == code
        else:
            assert after["events"] == before["events"]

    @rule(job_id=jobs)
    def cancel(self, job_id: str) -> None:
        before = self._job(job_id)
        owner = self.signed[before["requester"]]
        reply = owner.post(f"/api/v1/jobs/{job_id}/cancel")
        after = self._job(job_id)
        if before["state"] == "canceled":  # idempotent: a cancel sent again changes nothing
            assert reply.status_code == 200
            assert after["events"] == before["events"]
        elif before["state"] in TERMINAL:
            assert reply.status_code == 409
        else:
            assert reply.status_code == 200
            expected = "canceling" if before["state"] in ("running", "canceling") else "canceled"
            assert after["state"] == expected

    @rule(job_id=jobs)
    def other_client_cannot_touch(self, job_id: str) -> None:
        before = self._job(job_id)
        other = next(c for c in CLIENTS if c != before["requester"])
        assert self.signed[other].post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
        assert self._job(job_id)["events"] == before["events"]

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        self.signed[worker].post("/api/v1/workers/heartbeat")

    # Rare events get a ``really`` flag so that they do not dominate the sequences.
    @rule(worker=st.sampled_from(WORKERS), really=RARELY)
    def drain(self, worker: str, really: bool) -> None:
        if really:
            self.signed[worker].post("/api/v1/workers/drain")

    @rule()
    def janitor(self) -> None:
        self._sweep()

    @rule(worker=st.sampled_from(WORKERS), really=RARELY)
    def worker_dies(self, worker: str, really: bool) -> None:
        if not really:
            return
        self._expire_worker(worker)
        self._sweep()
        for job in self._rows().values():
            if job["worker_id"] == worker:
                assert job["state"] not in ACTIVE or job["state"] == "pending"

    @rule()
    def assignments_time_out(self) -> None:
        self.app.config["DFFMPEG"].assign_timeout_seconds = 0
        time.sleep(0.002)
        try:
            self._sweep()
        finally:
            self.app.config["DFFMPEG"].assign_timeout_seconds = 30
        assert not any(j["state"] in ("assigned", "canceling") for j in self._rows().values())

    @rule(job_id=jobs, really=RARELY)
    def client_goes_away(self, job_id: str, really: bool) -> None:
        if not really:
            return
        from coordinator.db import db, now_utc
        from coordinator.models import Job

        with self.app.app_context():
            row = db.session.get(Job, job_id)
            assert row is not None
            if row.mode == "active":
                row.client_lease_expires_at = now_utc()
                db.session.commit()
        time.sleep(0.002)
        self._sweep()

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self._check()

    def _check(self) -> None:
        from coordinator.lifecycle import ALLOWED

        rows = self._rows()
        held: dict[str, int] = {}
        for job_id, job in rows.items():
            events = job["events"]
            assert events[0] == (None, "pending")
            for (_, prev_to), (frm, to) in itertools.pairwise(events):
                assert frm == prev_to, events
                assert JobState(to) in ALLOWED[JobState(frm)], events
            assert events[-1][1] == job["state"]
            assert [to for _, to in events].count("running") <= 1, events
            if job["state"] in ACTIVE:
                assert job["worker_id"] is not None
                held[job["worker_id"]] = held.get(job["worker_id"], 0) + 1
            snapshot = (job["state"], job["exit_code"], job["failure"], len(events))
            if job_id in self.terminal:
                assert self.terminal[job_id] == snapshot, (self.terminal[job_id], snapshot)
            elif job["state"] in TERMINAL:
                self.terminal[job_id] = snapshot
        for worker, count in held.items():
            assert count <= self.slots[worker], (worker, count, self.slots)


# Passing takes ~15 s; a failure's shrinking needs longer to report a minimal example.
@pytest.mark.timeout(300)
def test_job_lifecycle_state_machine() -> None:
    run_state_machine_as_test(
        JobLifecycle,
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
