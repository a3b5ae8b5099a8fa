"""How the console behaves on a big cluster: 100 workers, 10,000 jobs.

Seeds a SQLite database, serves it with the real coordinator app (threaded WSGI server
in this process, so a SQLAlchemy event listener can count the SQL it runs), opens the
real console headless against it and reports:

- the time from starting the console to a screen full of jobs;
- the SQL one refresh costs the coordinator, statement by statement, with the plan
  SQLite chose for each statement that reads the jobs table.

Run: ``.venv/bin/python bench/console_load.py [--workers 100] [--jobs 10000]``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from flask import has_request_context, request
from sqlalchemy import event, insert
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from client.api import Api  # noqa: E402
from console.app import ConsoleApp  # noqa: E402
from console.model import JobFilter  # noqa: E402
from console.source import ClusterSource  # noqa: E402
from coordinator import create_app, users  # noqa: E402
from coordinator.db import db, now_utc  # noqa: E402
from coordinator.models import Job, Worker  # noqa: E402

# Filters an operator types; each is a refresh whose jobs page is filtered on the server.
FILTERS = {
    "requester": "user:jellyfin",
    "common state": "state:completed",
    "rare state": "state:running,pending",
    "worker": "worker:node001",
}
STATES = ["completed"] * 80 + ["failed"] * 8 + ["canceled"] * 4 + ["pending"] * 4 + ["running"] * 4


def seed(app: Any, n_workers: int, n_jobs: int) -> str:
    rng = random.Random(7)
    now = now_utc()
    with app.app_context():
        key = users.add_user("ops", "admin")["hmac_key"]
        workers = [
            {
                "worker_id": f"node{i:03d}",
                "state": "online" if i % 10 else "offline",
                "slots": 4,
                "labels": ["gpu"] if i % 3 == 0 else ["cpu"],
                "binaries": {"ffmpeg": {"version": "ffmpeg version 5.1.8"}, "ffprobe": {}},
                "path_variables": ["Media", "Cache"],
                "version": "0.1.0",
                "hostname": f"node{i:03d}.lan",
                "registered_at": now,
                "last_seen_at": now,
                "lease_expires_at": now + timedelta(hours=1),
                "drained": False,
            }
            for i in range(n_workers)
        ]
        db.session.execute(insert(Worker), workers)
        jobs = []
        for i in range(n_jobs):
            state = rng.choice(STATES)
            created = now - timedelta(seconds=(n_jobs - i) * 30)
            worker = None if state == "pending" else f"node{rng.randrange(n_workers):03d}"
            jobs.append(
                {
                    "id": uuid.uuid4().hex,
                    "requester": rng.choice(["jellyfin", "sonarr", "radarr"]),
                    "binary": "ffmpeg",
                    "args": ["-i", f"$Media/film{i}.mkv", "-c:v", "libx264", "-f", "mp4", "-"],
                    "cwd": None,
                    "env": {},
                    "path_variables": ["Media"],
                    "client_paths": {},
                    "mode": "active",
                    "priority": 0,
                    "state": state,
                    "worker_id": worker,
                    "exit_code": 0 if state == "completed" else None,
                    "created_at": created,
                    "updated_at": created,
                    "progress": {"time": 12.0, "speed": 2.5} if state == "running" else None,
                }
            )
        for start in range(0, len(jobs), 2000):
            db.session.execute(insert(Job), jobs[start : start + 2000])
        db.session.commit()
    return key


class QueryLog:
    """Every SQL statement the coordinator runs, recorded by an engine event."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        path = request.path if has_request_context() else "-"
        with self.lock:
            self.statements.append((path, " ".join(statement.split())))

    def take(self) -> list[tuple[str, str]]:
        with self.lock:
            taken, self.statements = self.statements, []
        return taken


async def open_console(api: Api) -> tuple[float, ConsoleApp]:
    """Seconds from creating the app to 200 job rows in the table.

    Also prints how long Textual itself took to start (the first frame, before any
    data), which the coordinator's size cannot influence.
    """
    started = time.perf_counter()
    app = ConsoleApp(api, refresh_seconds=0)
    async with app.run_test(size=(140, 50)) as pilot:
        ready = time.perf_counter() - started
        while app.main.snapshot is None:
            await pilot.pause(0.01)
        await pilot.pause()
        opened = time.perf_counter() - started
        rows = app.main.query_one("#jobs-table").row_count  # type: ignore[attr-defined]
        assert rows == 200, rows
    print(f"    (empty screen after {ready:.2f} s, 200 rows after {opened:.2f} s)")
    return opened, app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url_db = f"sqlite:///{tmp}/bench.db"
        app = create_app({"database_url": url_db}, start_janitor=False)
        t0 = time.perf_counter()
        key = seed(app, args.workers, args.jobs)
        print(
            f"seeded {args.workers} workers, {args.jobs} jobs in {time.perf_counter() - t0:.1f} s"
        )
        log = QueryLog()
        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", log)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        api = Api(f"http://127.0.0.1:{server.server_port}", "ops", key, timeout=30)
        try:
            log.take()
            asyncio.run(open_console(api))
            report(engine, log.take())
        finally:
            server.shutdown()
            api.close()
        with app.app_context():
            db.engine.dispose()
        time_with_real_coordinator(Path(tmp), url_db, key)


def time_with_real_coordinator(tmp: Path, url_db: str, key: str) -> None:
    """Open times against ``dffmpeg-coordinator`` in its own process, as deployed."""
    port = free_port()
    config = tmp / "coordinator.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "database_url": url_db}))
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "coordinator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        wait_health(url)
        api = Api(url, "ops", key, timeout=30)
        source = ClusterSource(api)
        fetches = []
        for _ in range(5):
            t0 = time.perf_counter()
            source.snapshot()
            fetches.append(time.perf_counter() - t0)
        print(f"one refresh (4 requests) against the coordinator process: {_fmt(fetches)} s")
        for name, job_filter in FILTERS.items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                source.snapshot(JobFilter.parse(job_filter))
                times.append(time.perf_counter() - t0)
            print(f"  refresh filtered by {name} ({job_filter}): {_fmt(times)} s")
        api.close()
        print(f"load average before the console runs: {os.getloadavg()[0]:.1f}")
        times = [asyncio.run(open_console(api))[0] for _ in range(3)]
        print(f"console start to 200 job rows on screen: {_fmt(times)} s")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_health(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("coordinator did not start")


def report(engine: Any, statements: list[tuple[str, str]]) -> None:
    """The statements of one console start (= one refresh), by request, with plans.

    Measured in this process, where the listener can see the coordinator's engine.
    """
    paths = list(dict.fromkeys(path for path, _ in statements))
    print(f"one refresh = {len(paths)} HTTP requests, {len(statements)} SQL statements:")
    for path in paths:
        print(f"  {path}")
        for p, sql in statements:
            if p == path:
                print(f"    {sql[:140]}")
    jobs_reads = [sql for _, sql in statements if " jobs" in sql and sql.startswith("SELECT")]
    print(f"statements reading the jobs table: {len(jobs_reads)}")
    with engine.connect() as conn:
        for sql in jobs_reads:
            nulls = tuple(None for _ in range(sql.count("?")))
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, nulls).all()
            print(f"  {sql[:60]}...{sql[-60:]}")
            for row in plan:
                print(f"      plan: {row[-1]}")


if __name__ == "__main__":
    main()
