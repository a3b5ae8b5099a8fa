"""A real coordinator process with workers added per test, for lifecycle tests.

Each test gives its workers a label of its own and its jobs require that label, so
tests sharing one coordinator never take each other's jobs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import Api
from tests.helpers import admin, free_port, health, process_env, running, wait_until, write_yaml

TERMINAL = {"completed", "failed", "canceled"}


@dataclass
class Coordinator:
    root: Path
    url: str
    config: Path
    admin_api: Api
    apis: list[Api] = field(default_factory=list)

    def close(self) -> None:
        for api in [self.admin_api, *self.apis]:
            api.close()

    def user(self, client_id: str, role: str) -> str:
        key: str = admin(self.config, "user", "add", client_id, "--role", role)["hmac_key"]
        return key

    def client(self, client_id: str, **extra: Any) -> tuple[Api, Path]:
        """A client identity: its API and a client config (``extra`` adds keys)."""
        key = self.user(client_id, "client")
        config = write_yaml(
            self.root / f"{client_id}.yaml",
            {"client_id": client_id, "hmac_key": key, "coordinator_url": self.url, **extra},
        )
        api = Api(self.url, client_id, key)
        self.apis.append(api)
        return api, config

    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.admin_api.call("GET", f"/jobs/{job_id}")["job"]
        return job

    def worker_row(self, worker_id: str) -> dict[str, Any]:
        row: dict[str, Any] = self.admin_api.call("GET", f"/workers/{worker_id}")["worker"]
        return row

    def wait_job(self, job_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["state"] in states else None

        result: dict[str, Any] = wait_until(reached, timeout=timeout, interval=0.1)
        return result

    @contextmanager
    def worker(
        self, worker_id: str, labels: list[str], **extra: Any
    ) -> Iterator[subprocess.Popen[bytes]]:
        """A worker process, online before the block starts; stopped after it."""
        key = self.user(worker_id, "worker")
        settings = {
            "client_id": worker_id,
            "hmac_key": key,
            "coordinator_url": self.url,
            "binaries": {"ffmpeg": shutil.which("ffmpeg"), "ffprobe": shutil.which("ffprobe")},
            "slots": 2,
            "labels": labels,
            "heartbeat_seconds": 1,
            **extra,
        }
        config = write_yaml(self.root / f"{worker_id}.yaml", settings)
        with running(
            [sys.executable, "-m", "worker.cli", "--config", str(config)],
            self.root / f"{worker_id}.log",
            env=process_env(),
        ) as proc:
            wait_until(lambda: self._online(worker_id), timeout=60, interval=0.2)
            yield proc

    def _online(self, worker_id: str) -> bool:
        workers = self.admin_api.call("GET", "/workers")["workers"]
        return any(w["worker_id"] == worker_id and w["state"] == "online" for w in workers)


@contextmanager
def coordinator(root: Path, **extra: Any) -> Iterator[Coordinator]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_yaml(
        root / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{root / 'coordinator.db'}",
            "janitor_seconds": 0.5,
            **extra,
        },
    )
    admin_key = admin(config, "user", "add", "root", "--role", "admin")["hmac_key"]
    with running(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        root / "coordinator.log",
        env=process_env(),
    ):
        wait_until(lambda: health(url) == 200, timeout=30)
        coord = Coordinator(root, url, config, Api(url, "root", admin_key))
        try:
            yield coord
        finally:
            coord.close()


def submit(api: Api, args: list[str], **extra: Any) -> str:
    body = {"binary": "ffmpeg", "args": args, "mode": "background", **extra}
    job_id: str = api.call("POST", "/jobs", json_body=body)["job"]["job_id"]
    return job_id


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            pids.append(int(entry))
    return pids


def kill_all(pids: list[int]) -> None:
    """Clean-up after a failed test: nothing may outlive it."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_gone(marker: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes_with(marker):
            return True
        time.sleep(0.1)
    return False
