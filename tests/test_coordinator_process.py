"""The coordinator as a real gunicorn process: serves, refuses stale schemas, stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from client.api import Api
from tests.helpers import (
    admin,
    free_port,
    health,
    process_env,
    running,
    wait_until,
    write_yaml,
)


def test_sigterm_stops_promptly_even_with_open_long_polls(tmp_path: Path) -> None:
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp_path / 'c.db'}",
        },
    )
    key = admin(config, "user", "add", "w", "--role", "worker")["hmac_key"]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        env=process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: health(url) == 200, timeout=20)
        api = Api(url, "w", key)
        api.call(
            "POST",
            "/workers/register",
            json_body={"slots": 1, "binaries": {"ffprobe": {"path": "/usr/bin/ffprobe"}}},
        )
        # A worker long-poll held open while the coordinator is asked to stop.
        outcome: list[object] = []

        def long_poll() -> None:
            try:
                outcome.append(api.call("GET", "/workers/poll", params={"wait": 25}))
            except Exception as exc:
                outcome.append(exc)

        poller = threading.Thread(target=long_poll, daemon=True)
        poller.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        poller.join(timeout=5)
        assert not poller.is_alive()
        # The held poll was answered (empty) rather than cut off.
        assert outcome == [{"jobs": [], "cancel": []}]
        api.close()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_refuses_an_outdated_schema(tmp_path: Path) -> None:
    db_path = tmp_path / "c.db"
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {
            "port": free_port(),
            "database_url": f"sqlite:///{db_path}",
        },
    )
    admin(config, "user", "list")  # creates the schema
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    engine.dispose()
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        env=process_env(),
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 3
    assert b"dffmpeg-admin --config FILE db upgrade" in out.stderr


def test_a_held_poll_whose_worker_died_claims_nothing(tmp_path: Path) -> None:
    """kill -9 of an idle worker mid long-poll: the next job waits for a live worker
    instead of being handed to the dead poll (and stranded until the lease runs out)."""
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"host": "127.0.0.1", "port": port, "database_url": f"sqlite:///{tmp_path / 'c.db'}"},
    )
    worker_key = admin(config, "user", "add", "w", "--role", "worker")["hmac_key"]
    client_key = admin(config, "user", "add", "c", "--role", "client")["hmac_key"]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "coordinator.serve", "--config", str(config)]
    worker, client = Api(url, "w", worker_key), Api(url, "c", client_key)
    with running(cmd, tmp_path / "coordinator.log", env=process_env()):
        wait_until(lambda: health(url) == 200, timeout=20)
        binaries = {"ffmpeg": {"path": "/usr/bin/ffmpeg", "capabilities": None}}
        worker.call("POST", "/workers/register", json_body={"slots": 1, "binaries": binaries})
        poll = (
            "import sys; from client.api import Api; "
            "Api(sys.argv[1], 'w', sys.argv[2]).call('GET', '/workers/poll', params={'wait': 25})"
        )
        dying = subprocess.Popen(
            [sys.executable, "-c", poll, url, worker_key], env=process_env(), cwd=Path.cwd()
        )
        time.sleep(1.5)  # the poll is held by now
        dying.kill()
        dying.wait(timeout=5)
        body = {"binary": "ffmpeg", "args": ["-i", "in.mp4", "out.mkv"]}
        job = client.call("POST", "/jobs", json_body=body)["job"]["job_id"]
        time.sleep(1.0)  # the submit woke the held poll; it saw nobody there
        assert client.call("GET", f"/jobs/{job}")["job"]["state"] == "pending"
        # A live poll takes it.
        work = worker.call("GET", "/workers/poll", params={"wait": 5})
        assert [j["job_id"] for j in work["jobs"]] == [job]
    worker.close()
    client.close()


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def test_an_answer_head_leaves_with_its_body_in_one_send() -> None:
    from coordinator.httpserver import HeadWithBody

    sock = _Recorder()
    out = HeadWithBody(sock)  # type: ignore[arg-type]
    out.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert sock.sent == []
    out.sendall(b"{}")
    out.flush()
    out.sendall(b"more")  # a streamed answer's later pieces go as they come
    assert sock.sent == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]
    bodiless = _Recorder()
    head_only = HeadWithBody(bodiless)  # type: ignore[arg-type]
    head_only.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    head_only.flush()
    assert bodiless.sent == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def test_a_large_answer_body_follows_its_head_whole_and_in_order() -> None:
    import os
    import socket
    import threading

    from coordinator.httpserver import HeadWithBody

    ours, theirs = socket.socketpair()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\n\r\n"
    body = os.urandom(3 * 1024 * 1024)  # more than the socket buffer: partial sends
    received = bytearray()

    def read() -> None:
        while len(received) < len(head) + len(body):
            chunk = theirs.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    out = HeadWithBody(ours)
    out.sendall(head)
    out.sendall(body)
    out.flush()
    reader.join(timeout=30)
    ours.close()
    theirs.close()
    assert bytes(received) == head + body
