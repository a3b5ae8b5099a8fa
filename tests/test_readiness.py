"""/health/ready follows the database: 503 while it is stopped, 200 once it is back.

The database is a PostgreSQL server of the test's own (initdb on a free port), so the
test can stop it without touching the shared services. The coordinator is a real
process; /health (liveness) stays 200 throughout, and /metrics keeps answering with
``dffmpeg_database_up 0`` instead of failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.databases import private_postgres
from tests.helpers import (
    BIN,
    children_of,
    free_port,
    health,
    process_env,
    running,
    wait_until,
    write_yaml,
)
from tests.prom import scrape_url


def ready(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def coordinator(database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real coordinator with two gunicorn processes on ``database_url``, and its URL."""
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"host": "127.0.0.1", "port": port, "database_url": database_url},
    )
    command = [str(BIN / "dffmpeg-coordinator"), "--config", str(config), "--workers", "2"]
    with running(command, tmp_path / "coordinator.log", env=process_env()) as proc:
        yield proc, f"http://127.0.0.1:{port}"


@pytest.mark.timeout(180)
def test_ready_follows_the_database(tmp_path: Path) -> None:
    with private_postgres() as database, coordinator(database.url, tmp_path) as (_, url):
        wait_until(lambda: health(url) == 200, timeout=60)
        assert ready(url) == (200, {"status": "ready", "schema": ready(url)[1]["schema"]})
        assert scrape_url(url).value("dffmpeg_database_up") == 1

        database.stop()
        _, body = wait_until(lambda: (r := ready(url))[0] == 503 and r, timeout=30)
        assert body["status"] == "unavailable"
        assert body["reason"].startswith("database unreachable")
        assert str(database.port) not in body["reason"]  # details stay in the log
        assert health(url) == 200  # alive, only not ready
        down = scrape_url(url)
        assert down.value("dffmpeg_database_up") == 0
        assert down.value("dffmpeg_database_errors_total") >= 1

        database.start()
        # Each process notices on its own: one may still answer from a connection
        # that died with the server, once, before the other does.
        wait_until(lambda: all(ready(url)[1]["status"] == "ready" for _ in range(4)), 30)
        # Each gunicorn process sets the gauge when it next reaches the database: the
        # one that answered the readiness check may not be the one that last failed.
        wait_until(lambda: scrape_url(url).value("dffmpeg_database_up") == 1, timeout=30)


@pytest.mark.timeout(180)
def test_a_worker_started_while_the_database_is_away_keeps_the_coordinator_up(
    tmp_path: Path,
) -> None:
    """gunicorn stops the whole server when a worker process fails to boot. A worker
    restarted (here: killed, and started again by gunicorn) while the database is away
    must therefore boot without it: the coordinator stays up, not ready, and becomes
    ready when the database is back."""
    with private_postgres() as database, coordinator(database.url, tmp_path) as (proc, url):
        wait_until(lambda: health(url) == 200 and len(children_of(proc.pid)) == 2, 60)
        wait_until(lambda: ready(url)[0] == 200, timeout=30)
        database.stop()
        wait_until(lambda: ready(url)[0] == 503, timeout=30)
        victim = children_of(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in (kids := children_of(proc.pid)) and len(kids) == 2, 30)
        time.sleep(3)  # a worker that failed to boot would have stopped the server by now
        assert proc.poll() is None
        assert all(health(url) == 200 for _ in range(4))  # both processes answer
        database.start()
        wait_until(lambda: ready(url)[0] == 200, timeout=30)
