"""Several coordinator instances on one database, several workers, many trivial jobs.

Used by the stress test and by the database benchmarks. The job is a tiny shell script
offered by every worker under the binary name ``stressjob`` (allowed on the
coordinators): it records each run in a shared file, so "ran exactly once" is checked
against what really ran, and it prints a known line to stdout and stderr and exits
with the code it is given.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import Api
from dffmpeg.config import default_secret_file
from dffmpeg.wire import FrameKind, decode_frames
from tests.helpers import free_port, health, process_env, running, wait_until, write_yaml

BINARY = "stressjob"
SCRIPT = """#!/bin/sh
case "$1" in -*) echo "stressjob 1"; exit 0;; esac  # the worker's capability probes
echo "$1" >> {runs}
printf 'stdout %s\\n' "$1"
printf 'stderr %s\\n' "$1" >&2
exit "$2"
"""


@dataclass
class MultiCluster:
    root: Path
    database_url: str
    urls: list[str]
    client_keys: dict[str, str]
    runs_file: Path

    def api(self, client_id: str, instance: int) -> Api:
        return Api(self.urls[instance % len(self.urls)], client_id, self.client_keys[client_id])

    def runs(self) -> list[str]:
        if not self.runs_file.exists():
            return []
        return self.runs_file.read_text().split()


def _add_users(database_url: str, workers: int, clients: int) -> tuple[dict[str, str], ...]:
    """Create the schema and the identities in-process (faster than one CLI per user)."""
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        worker_keys = {
            f"w{i}": users.add_user(f"w{i}", "worker")["hmac_key"] for i in range(workers)
        }
        client_keys = {
            f"c{i}": users.add_user(f"c{i}", "client")["hmac_key"] for i in range(clients)
        }
        db.session.remove()
        db.engine.dispose()
    return worker_keys, client_keys


def _online_workers(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT COUNT(*) FROM workers WHERE state = 'online'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


@contextmanager
def multi_cluster(
    root: Path,
    database_url: str,
    *,
    instances: int = 2,
    processes: int = 2,
    workers: int = 4,
    slots: int = 4,
    clients: int = 5,
    coordinator_extra: dict[str, Any] | None = None,
) -> Iterator[MultiCluster]:
    # The job records its runs in a mapped root: jobs run confined and see nothing else.
    (root / "runs").mkdir()
    (root / "bin").mkdir()
    runs_file = root / "runs" / "runs.txt"
    script = root / "bin" / "stressjob.sh"
    script.write_text(SCRIPT.format(runs=runs_file))
    script.chmod(0o755)
    worker_keys, client_keys = _add_users(database_url, workers, clients)
    env = process_env()
    urls: list[str] = []
    with ExitStack() as stack:
        for i in range(instances):
            port = free_port()
            config = write_yaml(
                root / f"coordinator{i}.yaml",
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "database_url": database_url,
                    # The users were made by an app given settings in code: its secret.
                    "secret_key_file": default_secret_file(None, database_url),
                    "allowed_binaries": [BINARY],
                    "gunicorn_workers": processes,
                    "janitor_seconds": 1,
                    "client_lease_seconds": 120,
                    **(coordinator_extra or {}),
                },
            )
            stack.enter_context(
                running(
                    [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
                    root / f"coordinator{i}.log",
                    env=env,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_until(lambda url=url: health(url) == 200, timeout=30)
        for i, (worker_id, key) in enumerate(worker_keys.items()):
            config = write_yaml(
                root / f"{worker_id}.yaml",
                {
                    "client_id": worker_id,
                    "hmac_key": key,
                    "coordinator_url": urls[i % len(urls)],
                    "binaries": {BINARY: str(script)},
                    "paths": {"Runs": str(runs_file.parent)},
                    "slots": slots,
                    "heartbeat_seconds": 1,
                },
            )
            stack.enter_context(
                running(
                    [sys.executable, "-m", "worker.cli", "--config", str(config)],
                    root / f"{worker_id}.log",
                    env=env,
                )
            )
        wait_until(lambda: _online_workers(database_url) == workers, timeout=30)
        yield MultiCluster(root, database_url, urls, client_keys, runs_file)


@dataclass
class JobResult:
    marker: str
    job_id: str = ""
    stdout: bytes = b""
    stderr: bytes = b""
    status: dict[str, Any] = field(default_factory=dict)
    submitted_at: float = 0.0
    done_at: float = 0.0


def follow(api: Api, job_id: str, result: JobResult, wait: float = 10.0) -> None:
    """Read a job's output until its final status, like the drop-in does."""
    after = 0
    while True:
        reply = api.request(
            "GET",
            f"/jobs/{job_id}/output",
            params={"after": after, "wait": wait},
            timeout=wait + 30,
        )
        for frame in decode_frames(reply.body):
            if frame.kind == FrameKind.STATUS:
                result.status = json.loads(frame.data)
                return
            if frame.seq != after + 1:
                raise AssertionError(f"job {job_id}: frame {frame.seq} after {after}")
            after = frame.seq
            if frame.kind == FrameKind.STDOUT:
                result.stdout += frame.data
            else:
                result.stderr += frame.data


def run_jobs(
    cluster: MultiCluster, count: int, threads: int = 25, burst: int = 20
) -> list[JobResult]:
    """Submit ``count`` jobs from all clients at once and follow each to its end.

    Each thread submits a burst of jobs to one instance, then follows them through the
    other instance, so both submission and delivery cross instances.
    """
    results = [JobResult(marker=f"job-{i}") for i in range(count)]
    batches = [results[i : i + burst] for i in range(0, count, burst)]
    clients = sorted(cluster.client_keys)

    def run_batch(number: int) -> None:
        # Api objects of its own: Api.close() closes the connections of every thread
        # using that object, so sharing one would break other batches' requests.
        client_id = clients[number % len(clients)]
        submit_api, follow_api = cluster.api(client_id, number), cluster.api(client_id, number + 1)
        try:
            _run_batch(batches[number], submit_api, follow_api)
        finally:
            submit_api.close()
            follow_api.close()

    def _run_batch(batch: list[JobResult], submit_api: Api, follow_api: Api) -> None:
        for result in batch:
            exit_code = int(result.marker.split("-")[1]) % 7
            result.submitted_at = time.monotonic()
            reply = submit_api.call(
                "POST",
                "/jobs",
                json_body={"binary": BINARY, "args": [result.marker, str(exit_code)]},
                timeout=60,
            )
            result.job_id = reply["job"]["job_id"]
        for result in batch:
            follow(follow_api, result.job_id, result)
            result.done_at = time.monotonic()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(run_batch, n) for n in range(len(batches))]:
            future.result()
    return results
