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


def test_purge_removes_old_finished_jobs_in_batches_and_keeps_the_rest(app: Flask) -> None:
    from coordinator.models import InputChunk, Job, JobEvent, Nonce, OutputChunk

    old = [_job("completed", timedelta(days=2)) for _ in range(retention.BATCH * 2 + 50)]
    recent = [_job("failed", timedelta(hours=1))]
    live = [_job("running", None), _job("pending", None)]
    now = now_utc()
    with app.app_context():
        db.session.execute(insert(Job), old + recent + live)
        for job in old + recent + live:
            for seq in (1, 2):
                db.session.add(OutputChunk(job_id=job["id"], seq=seq, kind=1, data=b"x" * 100))
            db.session.add(InputChunk(job_id=job["id"], seq=1, kind=3, data=b"q"))
            db.session.add(JobEvent(job_id=job["id"], to_state=job["state"]))
        db.session.add(Nonce(client_id="alice", nonce="expired", expires_at=now - timedelta(1)))
        db.session.add(Nonce(client_id="alice", nonce="valid", expires_at=now + timedelta(1)))
        db.session.commit()

        purged = retention.purge(timedelta(days=1))

        assert purged == len(old)
        kept = len(recent) + len(live)
        assert _counts() == {
            "jobs": kept,
            "output_chunks": 2 * kept,
            "input_chunks": kept,
            "job_events": kept,
            "nonces": 1,
        }
        remaining = set(db.session.scalars(db.select(Job.id)))
        assert remaining == {j["id"] for j in recent + live}
        assert retention.purge(timedelta(days=1)) == 0


def test_janitor_sweep_uses_the_configured_retention(database_url: str) -> None:
    from coordinator import create_app
    from coordinator.models import Job

    app = create_app({"database_url": database_url, "retention_seconds": 60}, start_janitor=False)
    with app.app_context():
        db.session.execute(
            insert(Job),
            [_job("completed", timedelta(seconds=120)), _job("completed", timedelta(seconds=10))],
        )
        db.session.commit()
        app.extensions["dffmpeg.janitor"].sweep()
        assert _counts()["jobs"] == 1
        db.session.remove()
        db.engine.dispose()
