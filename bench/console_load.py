"""How the console behaves on a big cluster: 100 workers, 10,000 jobs.

Seeds a SQLite database as real workers would leave it (each with this machine's real
probe report: raw outputs of hundreds of KB, capability lists, hardware checks, a load
sample; a day of per-minute samples), serves it with the real coordinator app (threaded
WSGI server in this process, so a SQLAlchemy event listener can count the SQL it runs),
opens the real console headless against it and reports:

- the time from starting the console to a screen full of jobs (target: under 1 s);
- one refresh: its four requests against ``dffmpeg-coordinator`` in its own process,
  and the console putting the answer on screen (target: under 100 ms together);
- the SQL one refresh costs the coordinator, statement by statement, with the plan
  SQLite chose for each statement that reads the jobs table.

Run: ``.venv/bin/python bench/console_load.py [--workers 100] [--jobs 10000]``.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
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
from console.filters import JobFilter  # noqa: E402
from console.messages import SnapshotReady  # noqa: E402
from console.source import ClusterSource  # noqa: E402
from coordinator import create_app, users  # noqa: E402
from coordinator.db import db, now_utc  # noqa: E402
from coordinator.models import ClusterSample, Job, Worker, WorkerReport  # noqa: E402
from coordinator.workerinfo import registration_info  # noqa: E402
from worker.capabilities import probe_binaries  # noqa: E402

GPU = {
    "vendor": "nvidia",
    "index": 0,
    "name": "NVIDIA GeForce GTX 1660 SUPER",
    "utilization": 38,
    "encoder": 61,
    "encoder_sessions": 2,
}

# Filters an operator types; each is a refresh whose jobs page is filtered on the server.
FILTERS = {
    "requester": "user:jellyfin",
    "common state": "state:completed",
    "rare state": "state:running,pending",
    "worker": "worker:node001",
    "active view": "is:active",
    "failed view": "is:failed",
    "no ffprobe": "-bin:ffprobe",
    "file name search": "film9999",
}
STATES = ["completed"] * 80 + ["failed"] * 8 + ["canceled"] * 4 + ["pending"] * 4 + ["running"] * 4


def seed(app: Any, n_workers: int, n_jobs: int) -> str:
    rng = random.Random(7)
    now = now_utc()
    # What a real worker on this machine registers: the probe report with raw outputs.
    report = probe_binaries({"ffmpeg": "ffmpeg", "ffprobe": "ffprobe"})
    registration = {
        "mounts": {"Media": "/mnt/media", "Cache": "/var/cache/jellyfin"},
        "os": "Linux 6.1.0 x86_64",
    }
    size = len(json.dumps(report))
    print(f"probe report of one worker: {size / 1024:.0f} KiB (stored, not listed)")
    with app.app_context():
        key = users.add_user("ops", "admin")["hmac_key"]
        info = {
            **registration_info(registration, report),
            "configured": {"slots": 4, "labels": ["cpu"]},
        }
        capabilities = {name: entry["capabilities"] for name, entry in report.items()}
        workers = [
            {
                "worker_id": f"node{i:03d}",
                "state": "online" if i % 10 else "offline",
                "slots": 4,
                "labels": ["gpu"] if i % 3 == 0 else ["cpu"],
                "capabilities": capabilities,
                "info": info,
                "load": {
                    "cpu_percent": rng.uniform(0, 100),
                    "memory_percent": rng.uniform(10, 90),
                    "cpus": 8,
                    "load_1m": 2.0,
                    "at": now.isoformat(),
                    **({"gpus": [GPU]} if i % 3 == 0 else {}),
                },
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
        reports = [{"worker_id": w["worker_id"], "binaries": report} for w in workers]
        db.session.execute(insert(WorkerReport), reports)
        minute = now.replace(second=0, microsecond=0)
        db.session.execute(
            insert(ClusterSample),
            [
                {
                    "minute": minute - timedelta(minutes=m),
                    "pending": rng.randrange(20),
                    "running": rng.randrange(100),
                    "finished": rng.randrange(40),
                    "failed": rng.randrange(3),
                }
                for m in range(1, 1441)
            ],
        )
        jobs = []
        for i in range(n_jobs):
            state = rng.choice(STATES)
            created = now - timedelta(seconds=(n_jobs - i) * 30)
            worker = None if state == "pending" else f"node{rng.randrange(n_workers):03d}"
            finished = state in ("completed", "failed", "canceled")
            jobs.append(
                {
                    "id": uuid.uuid4().hex,
                    "requester": rng.choice(["jellyfin", "sonarr", "radarr"]),
                    "binary": "ffmpeg",
                    "args": ["-i", f"$Media/film{i}.mkv", "-c:v", "libx264", "-f", "mp4", "-"],
                    "input_name": f"$Media/film{i}.mkv",
                    "output_name": "-",
                    "started_at": None if state == "pending" else created,
                    "finished_at": created + timedelta(seconds=20) if finished else None,
                    "cwd": None,
                    "env": {},
                    "path_variables": ["Media"],
                    "client_paths": {},
                    "mode": "active",
                    "priority": 0,
                    "state": state,
                    "worker_id": worker,
                    "exit_code": (rng.choice([0] * 9 + [1]) if state == "completed" else None),
                    "created_at": created,
                    "updated_at": created,
                    "progress": {
                        "time": 12.0,
                        "duration": 120.0,
                        "percent": 10.0,
                        "speed": rng.choice([0.8, 2.5]),
                        "fps": 60.0,
                        "frame": 300,
                    }
                    if state == "running"
                    else None,
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process and its children (gunicorn's workers) used
    so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            total += cpu_seconds(int(child))
    return total


async def open_console(api: Api) -> tuple[float, list[float], float, list[float]]:
    """Seconds from creating the app to 200 job rows in the table, and the times the
    console took to put a fresh snapshot on screen (tables, header), five times.

    Also prints how long Textual itself took to start (the first frame, before any
    data), which the coordinator's size cannot influence.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    app = ConsoleApp(api, refresh_seconds=0)
    renders, render_cpu = [], []
    async with app.run_test(size=(140, 50)) as pilot:
        ready = time.perf_counter() - started
        while app.main.snapshot is None:
            await pilot.pause(0.01)
        await pilot.pause()
        opened = time.perf_counter() - started
        opened_cpu = time.process_time() - cpu_started
        rows = app.main.query_one("#jobs-table").row_count  # type: ignore[attr-defined]
        assert rows == 200, rows
        for _ in range(5):
            # A refresh's answer: every job's progress and every worker's load changed.
            snap = app.source.snapshot(page=200)
            for job in snap.jobs:
                job["progress"] = {**(job.get("progress") or {}), "time": rng_time()}
            t0, c0 = time.perf_counter(), time.process_time()
            app.main.on_snapshot_ready(SnapshotReady(snap))
            await pilot.pause()
            renders.append(time.perf_counter() - t0)
            render_cpu.append(time.process_time() - c0)
    print(f"    (empty screen after {ready:.2f} s, 200 rows after {opened:.2f} s)")
    return opened, renders, opened_cpu, render_cpu


_TIMES = iter(range(1, 1_000_000))


def rng_time() -> float:
    return float(next(_TIMES))


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
            asyncio.run(open_console(api))
            log.take()
            ClusterSource(api).snapshot()  # exactly one refresh, as the console makes it
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
        fetches, cpu = [], []
        for _ in range(10):
            t0, c0 = time.perf_counter(), cpu_seconds(proc.pid)
            source.snapshot()
            fetches.append(time.perf_counter() - t0)
            cpu.append(cpu_seconds(proc.pid) - c0)
        print(f"one refresh (4 requests) against the coordinator process: {_fmt(fetches)} s")
        print(f"  coordinator CPU per refresh: {_fmt(cpu)} s (median {statistics.median(cpu):.3f})")
        sizes = [
            len(json.dumps(source.snapshot().workers)),
            len(json.dumps(source.snapshot().jobs)),
        ]
        print(
            f"  answer sizes: workers {sizes[0] / 1024:.0f} KiB, 200 jobs {sizes[1] / 1024:.0f} KiB"
        )
        for name, job_filter in FILTERS.items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                source.snapshot(JobFilter.parse(job_filter))
                times.append(time.perf_counter() - t0)
            print(f"  refresh filtered by {name} ({job_filter}): {_fmt(times)} s")
        api.close()
        print(f"load average before the console runs: {os.getloadavg()[0]:.1f}")
        runs = [asyncio.run(open_console(api)) for _ in range(3)]
        print(f"console start to 200 job rows on screen: {_fmt([r[0] for r in runs])} s")
        print(f"  console CPU for that start: {_fmt([r[2] for r in runs])} s")
        renders = [t for r in runs for t in r[1]]
        render_cpu = [t for r in runs for t in r[3]]
        print(f"a refresh's answer put on screen (200 jobs, 100 workers): {_fmt(renders)} s")
        print(
            f"  console CPU for it: {_fmt(render_cpu)} s"
            f" (median {statistics.median(render_cpu):.3f})"
        )
        print(f"load average after: {os.getloadavg()[0]:.1f}")
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
    """The statements of one refresh, by request, with plans.

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
