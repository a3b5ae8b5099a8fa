"""Wake-ups cross coordinator instances through the database, promptly, on every backend.

Two apps on one database stand for two coordinator instances: separate notifiers,
engines and wake-up threads, sharing only the database. Their periodic re-check is set
to a minute, so only the database wake-up path can deliver within the test's bounds.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from coordinator.wakeups import bucket_of
from tests.conftest import instances
from tests.helpers import SignedClient, process_env, waiter

RECHECK = 60.0


@pytest.fixture
def two_instances(database_url: str) -> Iterator[tuple[Flask, Flask]]:
    yield from instances(database_url, recheck_seconds=RECHECK)


def _clients(first: Flask, second: Flask) -> tuple[SignedClient, SignedClient]:
    from coordinator import users

    with first.app_context():
        client_key = users.add_user("alice", "client")["hmac_key"]
        worker_key = users.add_user("w1", "worker")["hmac_key"]
    return (
        SignedClient(first.test_client(), "alice", client_key),
        SignedClient(second.test_client(), "w1", worker_key),
    )


def test_job_submitted_to_one_instance_wakes_a_worker_polling_another(
    two_instances: tuple[Flask, Flask],
) -> None:
    first, second = two_instances
    client, worker = _clients(first, second)
    register = {"slots": 1, "binaries": {"ffprobe": "/usr/bin/ffprobe"}}
    assert worker.post("/api/v1/workers/register", json_body=register).status_code == 200
    result: dict[str, Any] = {}

    def poll() -> None:
        reply = worker.get("/api/v1/workers/poll?wait=20")
        result["jobs"] = reply.get_json()["jobs"]
        result["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    # Let the poll reach its wait (its first check finds nothing).
    time.sleep(0.5)
    assert "jobs" not in result
    submitted = time.monotonic()
    reply = client.post("/api/v1/jobs", json_body={"binary": "ffprobe", "args": ["-version"]})
    assert reply.status_code == 201
    poller.join(timeout=25)
    assert [j["job_id"] for j in result["jobs"]] == [reply.get_json()["job"]["job_id"]]
    # Far below the one-minute re-check (the benchmark measures the real latency; the
    # bound here leaves room for a loaded test machine).
    assert result["at"] - submitted < 2.0


def test_output_written_through_one_instance_wakes_a_reader_on_another(
    two_instances: tuple[Flask, Flask],
) -> None:
    from coordinator.db import db
    from coordinator.notify import Notifier

    first, second = two_instances
    reader: Notifier = second.extensions["dffmpeg.notifier"]
    writer: Notifier = first.extensions["dffmpeg.notifier"]
    flag = threading.Event()
    woke: list[float] = []

    def wait() -> None:
        # The check reads the database like a real long-poll would.
        def check() -> bool | None:
            with second.app_context():
                db.session.execute(db.select(1)).scalar_one()
            return True if flag.is_set() else None

        if reader.wait_for(["output:job-x"], check, timeout=20):
            woke.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    sent = time.monotonic()
    flag.set()
    writer.notify("output:job-x")
    thread.join(timeout=25)
    assert woke and woke[0] - sent < 2.0


def test_keys_map_to_stable_buckets_across_processes() -> None:
    """Every coordinator process must agree on a key's counter (no per-process hash)."""
    keys = ["jobs", "worker:w1", "output:0123456789abcdef"]
    code = (
        "import sys; from coordinator.wakeups import bucket_of; "
        "print([bucket_of(k) for k in sys.argv[1:]])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *keys], capture_output=True, env=process_env(), check=True
    )
    assert out.stdout.decode().strip() == str([bucket_of(k) for k in keys])


def _poll_alone(wakeups: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL, stop the listener: the poll alone, as while the listener is away."""
    if wakeups.listener is not None:
        wakeups.listener.stop()
        monkeypatch.setattr(wakeups, "listener", None)


def test_wakeups_survive_a_broken_poll_connection(
    two_instances: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up poll keeps a connection of its own; when it breaks (the database
    restarted, a proxy cut it) the poll takes a new one and wake-ups go on."""
    from coordinator.notify import Notifier
    from coordinator.wakeups import DatabaseWakeups

    first, second = two_instances
    reader: Notifier = second.extensions["dffmpeg.notifier"]
    writer: Notifier = first.extensions["dffmpeg.notifier"]
    wakeups: DatabaseWakeups = second.extensions["dffmpeg.wakeups"]
    _poll_alone(wakeups, monkeypatch)
    flag = threading.Event()
    thread, woke = waiter(reader, "worker:w9", flag)
    time.sleep(0.3)  # the poll runs, on its own connection
    broken = wakeups._conn
    assert broken is not None
    broken.dbapi_connection.close()  # under the poll's feet
    time.sleep(0.3)
    sent = time.monotonic()
    flag.set()
    writer.notify("worker:w9")
    thread.join(timeout=25)
    assert woke and woke[0] - sent < 3.0
    assert wakeups._conn is not None and wakeups._conn is not broken


def test_own_bumps_are_not_read_back_and_anothers_still_wake(
    two_instances: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's poll reads every counter only when another process bumped one: its
    own bumps (a lone coordinator's every notification) move the baseline without that
    read, and a bump from elsewhere after them still wakes its waiter."""
    from coordinator.notify import Notifier
    from coordinator.wakeups import DatabaseWakeups

    first, second = two_instances
    own: Notifier = second.extensions["dffmpeg.notifier"]
    other: Notifier = first.extensions["dffmpeg.notifier"]
    wakeups: DatabaseWakeups = second.extensions["dffmpeg.wakeups"]
    _poll_alone(wakeups, monkeypatch)
    full_reads: list[float] = []
    read = wakeups._read

    def counting_read(sql: str) -> list[Any]:
        if sql == wakeups._all_sql:
            full_reads.append(time.monotonic())
        return read(sql)

    monkeypatch.setattr(wakeups, "_read", counting_read)
    flag = threading.Event()
    thread, woke = waiter(own, "output:job-y", flag)
    time.sleep(0.5)  # the poll has its baseline
    baseline_reads = len(full_reads)
    for n in range(20):
        own.notify(f"job:own-{n}", "jobs")  # bumped by this process, polled after each
        time.sleep(0.06)
    assert len(full_reads) == baseline_reads, "own bumps were read back"
    flag.set()
    sent = time.monotonic()
    other.notify("output:job-y")
    thread.join(timeout=25)
    assert woke and woke[0] - sent < 2.0
    assert len(full_reads) > baseline_reads


def test_postgresql_notifications_wake_another_instance_at_once(
    two_instances: tuple[Flask, Flask], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a bump also sends a notification that the other instances listen
    for: with their polls made too slow to matter, a waiter still wakes at once; and a
    listener that lost its connection listens again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    from coordinator.notify import Notifier
    from coordinator.wakeups import DatabaseWakeups

    first, second = two_instances
    reader: Notifier = second.extensions["dffmpeg.notifier"]
    writer: Notifier = first.extensions["dffmpeg.notifier"]
    wakeups: DatabaseWakeups = second.extensions["dffmpeg.wakeups"]
    assert wakeups.listener is not None
    for app in (first, second):
        monkeypatch.setattr(app.extensions["dffmpeg.wakeups"], "interval", 30.0)
    deadline = time.monotonic() + 10
    while not wakeups.listener.listening and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wakeups.listener.listening
    for round_ in range(2):
        time.sleep(1.2)  # each poll is in its 30 s wait now
        flag = threading.Event()
        thread, woke = waiter(reader, f"output:job-pg{round_}", flag)
        time.sleep(0.2)
        flag.set()
        sent = time.monotonic()
        writer.notify(f"output:job-pg{round_}")
        thread.join(timeout=25)
        assert woke and woke[0] - sent < 1.0
        # The listening connection breaks under it: it connects and listens again.
        broken = wakeups.listener._conn
        broken.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            wakeups.listener.listening and wakeups.listener._conn not in (None, broken)
        ):
            time.sleep(0.05)
