"""Cross-instance wake-up latency, and the idle cost of the wake-up poll, per database.

Two coordinator instances (each with two gunicorn processes) share one database and no
broker. A worker long-polls instance B; a client submits a job to instance A; the
latency is the time from the start of the submit request to the worker's poll
returning with that job. The worker then accepts and finishes the job through A, waits
a random moment and polls again.

Idle cost: CPU seconds used by the coordinator processes over a quiet period (one
worker long-polling, nothing submitted), which is mostly the wake-up thread's poll.

    .venv/bin/python -m bench.db_wakeup --databases sqlite,mariadb,postgresql

Not run by the test suite.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from client.api import Api
from tests import databases
from tests.multicluster import BINARY, multi_cluster

PROCESSES = int(os.environ.get("DFFMPEG_BENCH_PROCESSES", "2"))


def _worker_identity(database_url: str) -> str:
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        key = str(users.add_user("bench-worker", "worker")["hmac_key"])
        db.session.remove()
        db.engine.dispose()
    return key


def cpu_seconds(marker: str, kind: str = "coordinator") -> float:
    """CPU time of every ``kind`` process whose command line mentions ``marker``."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker not in cmdline or kind not in cmdline:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return total


def measure(kind: str, samples: int, idle_seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix=f"dffmpeg-wake-{kind}-") as tmp:
        root = Path(tmp)
        with databases.fresh_database(kind, root) as url:
            key = _worker_identity(url)
            with multi_cluster(root, url, instances=2, processes=PROCESSES, workers=0) as cluster:
                worker_a = Api(cluster.urls[0], "bench-worker", key)
                worker_b = Api(cluster.urls[1], "bench-worker", key)
                client = cluster.api("c0", 0)
                register = {"slots": 1, "binaries": {BINARY: "/bin/true"}}
                worker_b.call("POST", "/workers/register", json_body=register)
                pairs = [_one(client, worker_a, worker_b) for _ in range(samples)]
                latencies = [p[0] for p in pairs]
                submits = sorted(p[1] for p in pairs)
                idle = _idle_cost(root, worker_b, idle_seconds)
    latencies.sort()
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)]
    print(
        f"{kind:10s} cross-instance wake-up over {samples} jobs: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms (of which the submit request itself: median "
        f"{statistics.median(submits) * 1000:.0f} ms); idle: {idle * 100:.1f}% of one core "
        f"for 4 coordinator processes; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def _one(client: Api, worker_a: Api, worker_b: Api) -> tuple[float, float]:
    """(submit start -> worker's poll returns, the submit request's own duration)"""
    got: dict[str, Any] = {}

    def poll() -> None:
        got["reply"] = worker_b.call("GET", "/workers/poll", params={"wait": 20}, timeout=40)
        got["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(random.uniform(0.15, 0.35))  # the poll is waiting by now
    started = time.monotonic()
    job = client.call("POST", "/jobs", json_body={"binary": BINARY, "args": ["x", "0"]}, timeout=30)
    submitted = time.monotonic() - started
    poller.join()
    job_id = job["job"]["job_id"]
    assert [j["job_id"] for j in got["reply"]["jobs"]] == [job_id], got
    worker_a.call("POST", f"/jobs/{job_id}/accept")
    worker_a.call("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": 0})
    return float(got["at"] - started), submitted


def _idle_cost(root: Path, worker: Api, seconds: float) -> float:
    stop = threading.Event()

    def keep_polling() -> None:
        while not stop.is_set():
            worker.call("GET", "/workers/poll", params={"wait": 5}, timeout=30)

    poller = threading.Thread(target=keep_polling)
    poller.start()
    time.sleep(1.0)
    before = cpu_seconds(str(root))
    time.sleep(seconds)
    used = cpu_seconds(str(root)) - before
    stop.set()
    poller.join()
    return used / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,mariadb,postgresql")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    for kind in databases.selected(args.databases):
        measure(kind, args.samples, args.idle_seconds)


if __name__ == "__main__":
    main()
