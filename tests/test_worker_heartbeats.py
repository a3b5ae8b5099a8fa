"""A worker heartbeats often while it holds a job and rarely while idle.

A real coordinator process with a 3 s lease and a 9 s idle lease, and a real
``WorkerAgent`` whose binary is a shell script that sleeps. The agent's heartbeat
requests are counted while it is idle and while it runs a job; the janitor runs every
half second, so a worker that heartbeat too rarely would be seen going offline.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.api import Api
from dffmpeg.config import WorkerConfig
from tests.helpers import admin, free_port, health, process_env, running, wait_until, write_yaml
from worker.agent import WorkerAgent

SCRIPT = """#!/bin/sh
case "$1" in -*) echo "sleepjob 1"; exit 0;; esac  # the worker's capability probes
sleep "$1"
"""


class CountingApi(Api):
    """The agent's real API client, noting when each heartbeat was sent."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.heartbeats: list[float] = []
        self._lock = threading.Lock()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path == "/workers/heartbeat":
            with self._lock:
                self.heartbeats.append(time.monotonic())
        return super().request(method, path, **kwargs)

    def count(self, since: float, until: float) -> int:
        with self._lock:
            return sum(1 for t in self.heartbeats if since <= t < until)


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp_path / 'c.db'}",
            "allowed_binaries": ["sleepjob"],
            "worker_lease_seconds": 3,
            "worker_idle_lease_seconds": 9,
            "janitor_seconds": 0.5,
        },
    )
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "coordinator.serve", "--config", str(config)]
    with running(cmd, tmp_path / "coordinator.log", env=process_env()):
        wait_until(lambda: health(url) == 200, timeout=20)
        yield config, url


def worker_state(config: Path) -> str:
    rows: Any = admin(config, "worker", "list")
    return str(rows[0]["state"])


def test_heartbeats_follow_the_lease_of_what_the_worker_holds(
    tmp_path: Path, coordinator: tuple[Path, str]
) -> None:
    config, url = coordinator
    worker_key = admin(config, "user", "add", "w", "--role", "worker")["hmac_key"]
    client_key = admin(config, "user", "add", "c", "--role", "client")["hmac_key"]
    script = tmp_path / "sleepjob.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    worker_config = WorkerConfig.from_dict(
        {
            "client_id": "w",
            "hmac_key": worker_key,
            "coordinator_url": url,
            "binaries": {"sleepjob": str(script)},
            "slots": 1,
            "heartbeat_seconds": 0.5,
            # In this process: the sandbox would move the test run into its namespace.
            "sandbox": False,
        }
    )
    api = CountingApi(url, "w", worker_key)
    agent = WorkerAgent(worker_config, api)
    client = Api(url, "c", client_key)
    agent.start()
    try:
        # Idle: a third of the 9 s idle lease; long-polling, whose polls renew the lease
        # too, half of it (a heartbeat covers only a gap between polls).
        assert agent.idle_heartbeat_seconds == pytest.approx(3.0)
        assert agent.heartbeat_interval() == pytest.approx(4.5)
        start = time.monotonic()
        time.sleep(7.0)
        idle = api.count(start, time.monotonic())
        assert 1 <= idle <= 2, api.heartbeats
        assert worker_state(config) == "online"
        # Busy: every 0.5 s while the job runs, so the 3 s lease holds.
        body = {"binary": "sleepjob", "args": ["4"]}
        job = client.call("POST", "/jobs", json_body=body)["job"]["job_id"]
        wait_until(lambda: agent.running_jobs() == [job], timeout=10)
        start = time.monotonic()
        time.sleep(2.5)
        busy = api.count(start, time.monotonic())
        assert busy >= 4, api.heartbeats
        assert worker_state(config) == "online"

        def finished() -> bool:
            return client.call("GET", f"/jobs/{job}")["job"]["state"] == "completed"

        wait_until(finished, timeout=10)
        assert worker_state(config) == "online"
    finally:
        agent.stop()
        agent.join(timeout=5)
        api.close()
        client.close()
