"""Coordinator CPU per ``GET /metrics`` with 100 workers and 10,000 jobs, per database.

The database is filled directly (workers of every state, jobs of every state and both
binaries, a quarter of the workers running jobs); then a real coordinator runs
(``dffmpeg-coordinator --workers 2``, so the scrape merges the multiprocess files of
both processes) and is scraped one request after another. The figure is the CPU time
of the coordinator's processes (master and workers, from /proc) during the scrapes,
minus what the same processes spend in as long a window without scrapes (the wake-up
poll runs all the time; the janitor is set not to sweep), divided by the number of
scrapes. Target: under 50 ms.

    .venv/bin/python -m bench.metrics_scrape [--databases sqlite,mariadb,postgresql]
        [--workers 100] [--jobs 10000] [--scrapes 200]

Not run by the test suite. Needs the database servers on 127.0.0.1 for those kinds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.transport_idle import cpu_seconds
from tests import databases
from tests.helpers import BIN, free_port, health, process_env, running, wait_until, write_yaml

STATES = [  # share of the jobs in each state
    ("completed", 0.80),
    ("failed", 0.08),
    ("canceled", 0.05),
    ("pending", 0.04),
    ("running", 0.02),
    ("assigned", 0.01),
]
CAPS = {"encoders": ["libx264", "aac"], "decoders": ["h264", "aac"], "filters": ["scale"]}


def fill(url: str, workers: int, jobs: int) -> None:
    """Workers and jobs straight into the database, in a few bulk inserts."""
    from sqlalchemy import insert

    from coordinator import create_app
    from coordinator.db import db, now_utc
    from coordinator.models import Job, Worker

    app = create_app({"database_url": url}, start_janitor=False, start_transports=False)
    now = now_utc()
    with app.app_context():
        worker_rows = []
        for i in range(workers):
            state = "online" if i % 10 < 8 else ("draining" if i % 10 == 8 else "offline")
            worker_rows.append(
                {
                    "worker_id": f"worker-{i:03d}",
                    "state": state,
                    "slots": 4,
                    "labels": ["gpu"] if i % 4 == 0 else [],
                    "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "ffmpeg 5.1"}},
                    "capabilities": {"ffmpeg": CAPS, "ffprobe": CAPS},
                    "path_variables": ["Media"],
                    "version": "0.1.0",
                    "hostname": f"host{i}",
                    "registered_at": now,
                    "last_seen_at": now,
                    "lease_expires_at": now + timedelta(seconds=60),
                    "drained": i % 17 == 0,
                    "sandboxed": i % 3 != 0,
                }
            )
        db.session.execute(insert(Worker.__table__), worker_rows)
        job_rows: list[dict[str, Any]] = []
        for state, share in STATES:
            for n in range(int(jobs * share)):
                active = state in ("running", "assigned")
                created = now - timedelta(seconds=60 + n)
                job_rows.append(
                    {
                        "id": uuid.uuid4().hex,
                        "requester": f"client{n % 5}",
                        "binary": "ffprobe" if n % 3 == 0 else "ffmpeg",
                        "args": ["-i", "$Media/film.mkv", "-f", "null", "-"],
                        "cwd": None,
                        "env": {},
                        "path_variables": ["Media"],
                        "client_paths": {"Media": "/mnt/media"},
                        "mode": "active",
                        "priority": 0,
                        "needs": {},
                        "required_labels": [],
                        "preferred_labels": [],
                        "wait_for_worker": False,
                        "state": state,
                        "worker_id": f"worker-{n % (workers // 4):03d}" if active else None,
                        "exit_code": 0 if state == "completed" else None,
                        "failure": "worker_lost" if state == "failed" else None,
                        "created_at": created,
                        "updated_at": created,
                        "started_at": created if state != "pending" else None,
                        "finished_at": created
                        if state in ("completed", "failed", "canceled")
                        else None,
                    }
                )
        for start in range(0, len(job_rows), 1000):
            db.session.execute(insert(Job.__table__), job_rows[start : start + 1000])
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


def scrape(url: str) -> tuple[float, int, float]:
    """Wall time, size, and the time the scrape says it spent on the cluster gauges."""
    started = time.perf_counter()
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        body = reply.read()
    wall = time.perf_counter() - started
    gauges = next(
        float(line.split()[-1])
        for line in body.decode().splitlines()
        if line.startswith("dffmpeg_cluster_metrics_seconds ")
    )
    return wall, len(body), gauges


def measure(kind: str, workers: int, jobs: int, scrapes: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"dffmpeg-bench-{kind}-") as tmp:
        root = Path(tmp)
        with databases.fresh_database(kind, root) as url:
            fill(url, workers, jobs)
            port = free_port()
            config = write_yaml(
                root / "coordinator.yaml",
                {"host": "127.0.0.1", "port": port, "database_url": url, "janitor_seconds": 3600},
            )
            base = f"http://127.0.0.1:{port}"
            command = [str(BIN / "dffmpeg-coordinator"), "--config", str(config), "--workers", "2"]
            with running(command, root / "coordinator.log", env=process_env()) as proc:
                wait_until(lambda: health(base) == 200, timeout=60)
                for _ in range(20):  # warm-up: both processes, pools, statement caches
                    scrape(base)
                cpu_before, started = cpu_seconds(proc.pid), time.monotonic()
                walls = [scrape(base) for _ in range(scrapes)]
                window = time.monotonic() - started
                busy = cpu_seconds(proc.pid) - cpu_before
                cpu_idle_start = cpu_seconds(proc.pid)
                time.sleep(window)
                idle = cpu_seconds(proc.pid) - cpu_idle_start
    net = max(busy - idle, 0.0) / scrapes
    times = sorted(w for w, _, _ in walls)
    gauges = statistics.median(g for _, _, g in walls)
    print(
        f"{kind:10s} {workers} workers, {jobs} jobs: CPU {net * 1000:.1f} ms per scrape "
        f"({busy * 1000 / scrapes:.1f} ms with the {idle * 1000 / scrapes:.1f} ms idle share); "
        f"wall median {statistics.median(times) * 1000:.1f} ms, "
        f"p95 {times[int(len(times) * 0.95) - 1] * 1000:.1f} ms (cluster gauges: median "
        f"{gauges * 1000:.1f} ms); {walls[-1][1] // 1024} KiB; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,mariadb,postgresql")
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    for kind in databases.selected(args.databases):
        measure(kind, args.workers, args.jobs, args.scrapes)


if __name__ == "__main__":
    main()
