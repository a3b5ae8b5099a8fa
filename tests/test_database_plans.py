"""The hot queries use indexes on every database: their real statements are EXPLAINed.

Claiming (worker poll), output/input delivery, job lists and the janitor's sweep run
through the API while a listener EXPLAINs every SELECT/UPDATE/DELETE they send. A full
scan of a table that grows with use (jobs, chunks, events, nonces) fails the test.
PostgreSQL is told to avoid sequential scans wherever an index could serve, so a small
test table cannot hide a missing index; MariaDB gets a few hundred rows and fresh
statistics for the same reason.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import event, func, insert

from coordinator.db import db, now_utc
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames
from tests.conftest import Identities

GROWING = ("jobs", "output_chunks", "input_chunks", "job_events", "nonces")
FINISHED = 3000


def _full_scans(dialect: str, rows: list[tuple[Any, ...]]) -> list[str]:
    found = []
    for row in rows:
        if dialect == "sqlite":
            match = re.fullmatch(r"SCAN (\w+)", str(row[-1]))
            if match and match.group(1) in GROWING:
                found.append(str(row[-1]))
        elif dialect == "postgresql":
            match = re.search(r"Seq Scan on (\w+)", str(row[0]))
            if match and match.group(1) in GROWING:
                found.append(str(row[0]))
        else:  # mysql/mariadb: (id, select_type, table, type, possible_keys, key, ...)
            if row[2] in GROWING and row[3] == "ALL":
                found.append(f"{row[2]}: full scan ({row[-1]})")
    return found


class PlanRecorder:
    def __init__(self) -> None:
        self.scans: dict[str, list[str]] = {}
        self.explained = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb not in ("SELECT", "UPDATE", "DELETE") or "alembic_version" in statement:
            return
        dialect = conn.dialect.name
        prefix = "EXPLAIN QUERY PLAN " if dialect == "sqlite" else "EXPLAIN "
        explain = conn.connection.dbapi_connection.cursor()
        try:
            if dialect == "postgresql":
                explain.execute("SET enable_seqscan = off")
            explain.execute(prefix + statement, parameters)
            rows = [tuple(r) for r in explain.fetchall()]
        finally:
            explain.close()
        self.explained += 1
        scans = _full_scans(dialect, rows)
        if scans:
            self.scans[" ".join(statement.split())] = scans


def _seed_history(app: Flask, finished: int, pending: int) -> None:
    """A realistic table: mostly finished jobs of several requesters, a few pending.

    Big enough that MariaDB's optimizer prefers an index over sorting the whole table.
    """
    from coordinator.models import Job, JobEvent

    now = now_utc()
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for i in range(finished + pending):
        done = i < finished
        job_id = uuid.uuid4().hex
        events.append({"job_id": job_id, "at": now, "from_state": None, "to_state": "pending"})
        if done:
            events.append(
                {"job_id": job_id, "at": now, "from_state": "running", "to_state": "completed"}
            )
        jobs.append(
            {
                "id": job_id,
                "requester": ("alice", "bob", "carol", "dave")[i % 4],
                "binary": "ffprobe",
                "args": ["-version"],
                "env": {},
                "path_variables": [],
                "client_paths": {},
                "mode": "active",
                "priority": 0,
                "state": "completed" if done else "pending",
                "exit_code": 0 if done else None,
                "created_at": now - timedelta(seconds=finished + pending - i),
                "updated_at": now,
                # A few are past the retention, as the janitor would find them.
                "finished_at": (now - timedelta(days=2 if i < 5 else 0)) if done else None,
            }
        )
    with app.app_context():
        db.session.execute(insert(Job), jobs)
        db.session.execute(insert(JobEvent), events)
        db.session.commit()


def test_hot_queries_use_indexes(app: Flask, api: Identities) -> None:
    worker = {"slots": 2, "binaries": {"ffprobe": "/usr/bin/ffprobe"}}
    assert api.worker.post("/api/v1/workers/register", json_body=worker).status_code == 200
    _seed_history(app, finished=FINISHED, pending=10)
    with app.app_context():
        if db.engine.dialect.name == "mysql":
            with db.engine.connect() as conn:
                for name in GROWING:
                    conn.exec_driver_sql(f"ANALYZE TABLE {name}").fetchall()
        recorder = PlanRecorder()
        event.listen(db.engine, "before_cursor_execute", recorder)
    try:
        _exercise(app, api)
    finally:
        with app.app_context():
            event.remove(db.engine, "before_cursor_execute", recorder)
    assert recorder.explained > 20
    assert recorder.scans == {}, "\n".join(
        f"{sql}\n  -> {how}" for sql, how in recorder.scans.items()
    )


def _exercise(app: Flask, api: Identities) -> None:
    poll = api.worker.get("/api/v1/workers/poll?wait=0").get_json()
    job_id = poll["jobs"][0]["job_id"]
    assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    frames = [Frame(FrameKind.STDOUT, 1, b"out"), Frame(FrameKind.STDERR, 2, b"err")]
    reply = api.worker.post(
        f"/api/v1/jobs/{job_id}/output",
        data=encode_frames(frames),
        content_type=CONTENT_TYPE_FRAMES,
    )
    assert reply.status_code == 200, reply.get_data()
    stdin = encode_frames([Frame(FrameKind.STDIN, 1, b"q")])
    # The admin stands in for the requester (the claimed job may be anyone's).
    reply = api.admin.post(
        f"/api/v1/jobs/{job_id}/input", data=stdin, content_type=CONTENT_TYPE_FRAMES
    )
    assert reply.status_code == 200, reply.get_data()
    assert api.worker.get(f"/api/v1/jobs/{job_id}/input?after=0&wait=0").status_code == 200
    assert api.admin.get(f"/api/v1/jobs/{job_id}/output?after=0&wait=0").status_code == 200
    reply = api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert reply.status_code == 200, reply.get_data()
    assert api.client.get("/api/v1/jobs").status_code == 200
    assert api.admin.get("/api/v1/jobs?state=pending").status_code == 200
    assert api.admin.get("/api/v1/jobs?limit=20").status_code == 200
    assert api.admin.get(f"/api/v1/jobs/{job_id}").status_code == 200
    with app.app_context():
        app.extensions["dffmpeg.janitor"].sweep()  # default retentions: nothing that old
        from coordinator import retention
        from coordinator.models import Job

        # A purge as the janitor's, with 5 jobs past a one-day job retention.
        assert retention.purge(timedelta(hours=1), timedelta(days=1)) == (5, 5)
        assert db.session.scalar(db.select(func.count()).select_from(Job)) == FINISHED + 10 - 5
