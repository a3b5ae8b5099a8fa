"""Retention: everything of jobs finished past the retention goes; live data stays."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import func, insert

from coordinator import retention
from coordinator.db import db, now_utc


def _job(state: str, finished_ago: timedelta | None) -> dict[str, Any]:
    now = now_utc()
    return {
        "id": uuid.uuid4().hex,
        "requester": "alice",
        "binary": "ffprobe",
        "args": [],
        "env": {},
        "path_variables": [],
        "client_paths": {},
        "mode": "active",
        "priority": 0,
        "state": state,
        "created_at": now - timedelta(days=3),
        "updated_at": now,
        "finished_at": now - finished_ago if finished_ago is not None else None,
    }


def _counts() -> dict[str, int]:
    from coordinator.models import InputChunk, Job, JobEvent, Nonce, OutputChunk

    return {
        m.__tablename__: int(db.session.scalar(db.select(func.count()).select_from(m)) or 0)
        for m in (Job, OutputChunk, InputChunk, JobEvent, Nonce)
    }


def test_purge_removes_old_output_then_old_jobs_in_batches_and_keeps_the_rest(
    app: Flask,
) -> None:
    from coordinator.models import InputChunk, Job, JobEvent, Nonce, OutputChunk

    # Past the job retention (40 days), past the output retention only (2 days), recent.
    ancient = [_job("completed", timedelta(days=40)) for _ in range(retention.BATCH + 10)]
    old = [_job("completed", timedelta(days=2)) for _ in range(retention.BATCH * 2 + 50)]
    recent = [_job("failed", timedelta(hours=1))]
    live = [_job("running", None), _job("pending", None)]
    now = now_utc()
    with app.app_context():
        db.session.execute(insert(Job), ancient + old + recent + live)
        for job in ancient + old + recent + live:
            for seq in (1, 2):
                db.session.add(OutputChunk(job_id=job["id"], seq=seq, kind=1, data=b"x" * 100))
            db.session.add(InputChunk(job_id=job["id"], seq=1, kind=3, data=b"q"))
            db.session.add(JobEvent(job_id=job["id"], to_state=job["state"]))
        db.session.add(Nonce(client_id="alice", nonce="expired", expires_at=now - timedelta(1)))
        db.session.add(Nonce(client_id="alice", nonce="valid", expires_at=now + timedelta(1)))
        db.session.commit()

        cursor = retention.Cursor()
        chunks, jobs = retention.purge(timedelta(days=1), timedelta(days=30), cursor)

        assert (chunks, jobs) == (len(ancient) + len(old), len(ancient))
        with_output = len(recent) + len(live)
        kept = len(old) + with_output
        assert _counts() == {
            "jobs": kept,
            "output_chunks": 2 * with_output,
            "input_chunks": with_output,
            "job_events": kept,
            "nonces": 1,
        }
        remaining = set(db.session.scalars(db.select(Job.id)))
        assert remaining == {j["id"] for j in old + recent + live}
        # The next sweep of this process does not walk the purged jobs again.
        assert retention.purge(timedelta(days=1), timedelta(days=30), cursor) == (0, 0)


def test_janitor_sweep_uses_the_configured_retention(database_url: str) -> None:
    from coordinator import create_app
    from coordinator.models import Job, OutputChunk

    settings = {"database_url": database_url, "retention_seconds": 60}
    settings["job_retention_seconds"] = 600
    app = create_app(settings, start_janitor=False)
    with app.app_context():
        jobs = [_job("completed", timedelta(seconds=s)) for s in (1200, 120, 10)]
        db.session.execute(insert(Job), jobs)
        for job in jobs:
            db.session.add(OutputChunk(job_id=job["id"], seq=1, kind=1, data=b"x"))
        db.session.commit()
        app.extensions["dffmpeg.janitor"].sweep()
        assert _counts()["jobs"] == 2
        assert set(db.session.scalars(db.select(OutputChunk.job_id))) == {jobs[2]["id"]}
        db.session.remove()
        db.engine.dispose()
