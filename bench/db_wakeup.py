"""Cross-instance wake-up latency, and the idle cost of the wake-up poll, per database.

Two coordinator instances (each with two gunicorn processes) share one database. A
worker waits for work on instance B; a client submits a job to instance A; the latency
is the time from the start of the submit request to the worker's read on B returning
with that job. The worker then accepts and finishes the job through A, waits a random
moment and waits for work again.

``--transport`` says how the worker waits. ``http`` (no broker): it long-polls B, and
the wake-up travels A -> database -> B's wake-up thread -> the poll. ``mqtt`` or
``rabbitmq``: both instances publish to that broker (a mosquitto of the benchmark's
own; the local RabbitMQ with an exchange of its own), and the worker does what
``worker.agent`` does: the real ``Downlink`` negotiated with B, a read of
``/workers/poll`` with wait=0, then a sleep on the downlink until a notification, then
the next read. Such a worker never waits inside B, so B's database wake-up has no one to
wake: the only way the job reaches it within the sample is A's publish through the
broker. Each sample records when that notification arrived.

Idle cost: CPU seconds used by the coordinator processes over a quiet period (the worker
waiting as above, nothing submitted); with ``http`` it is mostly the wake-up thread's poll.

    .venv/bin/python -m bench.db_wakeup --databases sqlite,mariadb,postgresql
    .venv/bin/python -m bench.db_wakeup --transport mqtt --samples 60

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.transport_common import broker
from client.api import Api
from client.downlink import open_downlink
from dffmpeg.config import WorkerConfig
from tests import databases
from tests.multicluster import BINARY, multi_cluster

PROCESSES = int(os.environ.get("DFFMPEG_BENCH_PROCESSES", "2"))
TRANSPORTS = ["http", "mqtt", "rabbitmq"]
WORKER = "bench-worker"


def _worker_identity(database_url: str) -> str:
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        key = str(users.add_user(WORKER, "worker")["hmac_key"])
        db.session.remove()
        db.engine.dispose()
    return key


@dataclass
class Read:
    reply: dict[str, Any]
    at: float  # when the read that returned it ended
    notified: list[float] = field(default_factory=list)  # broker notifications meanwhile


class WorkerSide:
    """The benchmark's worker on one instance: HTTP long-poll, or the agent's broker loop."""

    def __init__(self, url: str, key: str, transport: str, blocks: dict[str, Any]) -> None:
        config = WorkerConfig.from_dict(
            {
                "client_id": WORKER,
                "hmac_key": key,
                "coordinator_url": url,
                "transports": [transport, "http"],
                "binaries": {BINARY: "/bin/true"},
                "slots": 1,
                **blocks,
            }
        )
        self.api = Api.from_config(config)
        # Like WorkerAgent.start: the transport (with its handshake) before registering.
        self.downlink = open_downlink(self.api, config, "worker")
        if self.downlink is not None:
            if self.downlink.name != transport:
                raise RuntimeError(f"{transport} failed its handshake with {url}")
            self.downlink.watch("worker")
        register = {"slots": 1, "binaries": {BINARY: "/bin/true"}}
        self.api.call("POST", "/workers/register", json_body=register)

    def read(self, wait: float) -> Read:
        """Wait up to ``wait`` seconds for work, the way WorkerAgent._poll_loop does."""
        downlink = self.downlink
        if downlink is None:
            reply = self.api.call("GET", "/workers/poll", params={"wait": wait}, timeout=wait + 30)
            return Read(reply, time.monotonic())
        notified: list[float] = []
        deadline = time.monotonic() + wait
        while True:
            if downlink.long_poll:
                raise RuntimeError(f"{downlink.transport.name} fell back to HTTP long-poll")
            downlink.arm("worker")
            reply = self.api.call("GET", "/workers/poll", params={"wait": 0}, timeout=30)
            remaining = deadline - time.monotonic()
            if reply["jobs"] or remaining <= 0:
                return Read(reply, time.monotonic(), notified)
            if downlink.wait("worker", remaining):
                notified.append(time.monotonic())

    def close(self) -> None:
        if self.downlink is not None:
            self.downlink.close()
        self.api.close()


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


@dataclass
class Sample:
    latency: float  # submit start -> the worker's read on B returns with the job
    submit: float  # the submit request alone
    notified: float | None  # submit start -> first broker notification (None: none came)


def measure(kind: str, transport: str, samples: int, idle_seconds: float) -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"dffmpeg-wake-{kind}-") as tmp:
        root = Path(tmp)
        with (
            databases.fresh_database(kind, root) as url,
            broker(transport, root) as blocks,
        ):
            key = _worker_identity(url)
            extra = {"transports": [transport, "http"], **blocks} if blocks else {}
            with multi_cluster(
                root, url, instances=2, processes=PROCESSES, workers=0, coordinator_extra=extra
            ) as cluster:
                worker_a = Api(cluster.urls[0], WORKER, key)
                worker_b = WorkerSide(cluster.urls[1], key, transport, blocks)
                client = cluster.api("c0", 0)
                try:
                    runs = [_one(client, worker_a, worker_b) for _ in range(samples)]
                    idle = _idle_cost(root, worker_b, idle_seconds)
                finally:
                    worker_b.close()
    latencies = sorted(s.latency for s in runs)
    notes = [s.notified for s in runs if s.notified is not None]
    path = "database (long-poll)"
    if transport != "http":
        path = f"{transport} notification in {len(notes)} of {samples} samples"
        if notes:
            path += f", arriving after median {statistics.median(notes) * 1000:.0f} ms"
    print(
        f"{kind:10s} {transport:8s} cross-instance wake-up over {samples} jobs: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {_p95(latencies) * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms (of which the submit request itself: median "
        f"{statistics.median(s.submit for s in runs) * 1000:.0f} ms); woken by: {path}; "
        f"idle: {idle * 100:.1f}% of one core for 4 coordinator processes; "
        f"load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        flush=True,
    )


def _p95(ordered: list[float]) -> float:
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


def _one(client: Api, worker_a: Api, worker_b: WorkerSide) -> Sample:
    got: list[Read] = []
    poller = threading.Thread(target=lambda: got.append(worker_b.read(20.0)))
    poller.start()
    time.sleep(random.uniform(0.15, 0.35))  # the worker is waiting by now
    started = time.monotonic()
    job = client.call("POST", "/jobs", json_body={"binary": BINARY, "args": ["x", "0"]}, timeout=30)
    submitted = time.monotonic() - started
    poller.join()
    job_id = job["job"]["job_id"]
    read = got[0]
    assert [j["job_id"] for j in read.reply["jobs"]] == [job_id], read
    worker_a.call("POST", f"/jobs/{job_id}/accept")
    worker_a.call("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": 0})
    # Notifications left over from the previous job (its finish) arrive before ``started``.
    fresh = [t - started for t in read.notified if t >= started]
    return Sample(read.at - started, submitted, fresh[0] if fresh else None)


def _idle_cost(root: Path, worker: WorkerSide, seconds: float) -> float:
    stop = threading.Event()

    def keep_waiting() -> None:
        while not stop.is_set():
            worker.read(5.0)

    poller = threading.Thread(target=keep_waiting)
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
    parser.add_argument("--transport", choices=TRANSPORTS, default="http")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    for kind in databases.selected(args.databases):
        measure(kind, args.transport, args.samples, args.idle_seconds)


if __name__ == "__main__":
    main()
