"""The coordinator stays up for everyone under slow connections and greedy clients.

A real ``dffmpeg-coordinator`` (gunicorn with our buffering worker class, 32 threads)
and a real worker running real ffmpeg. Each test starts a job that runs for several
seconds, then attacks, and while the attack lasts checks that ``/health`` and another
client's signed requests answer within a second, that the other client's job runs to
completion, that the worker stays online, and finally that the running job completed.

The worker's lease is shortened to 3 s (idle 6 s) so that an attack longer than a lease
would have made the janitor declare the worker lost, had heartbeats been starved.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from client.api import Api, ApiError, Unreachable
from dffmpeg import signing
from tests.lifecycle_cluster import TERMINAL, Coordinator, coordinator, submit

pytestmark = pytest.mark.timeout(240)

ATTACK_SECONDS = 8.0
LABEL = "slow"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str) -> Iterator[Coordinator]:
    root = tmp_path_factory.mktemp("slow")
    with (
        coordinator(
            root,
            worker_lease_seconds=3,
            worker_idle_lease_seconds=6,
            transports=["http", "stream"],
        ) as running,
        running.worker("slow-worker", [LABEL]),
    ):
        yield running


def running_job(seconds: int) -> list[str]:
    """A job that runs in real time for ``seconds`` (``-re``), using almost no CPU."""
    return ["-v", "error", "-re", "-f", "lavfi", "-i", f"anullsrc=d={seconds}", "-f", "null", "-"]


QUICK_JOB = ["-v", "error", "-f", "lavfi", "-i", "anullsrc=d=0.2", "-f", "null", "-"]


@dataclass
class Attack:
    """Threads that attack until ``stop`` is set (each loop is bounded by the stop)."""

    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def spawn(self, target: Callable[[], None], count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)


def health_seconds(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + "/health", timeout=5) as reply:
        assert reply.status == 200
    return time.monotonic() - started


@contextmanager
def attacked(coord: Coordinator, attack: Attack) -> Iterator[None]:
    try:
        yield
    finally:
        attack.end()


def check_service_during(coord: Coordinator, attack: Attack, bystander: Api) -> None:
    """While the attack lasts: /health and signed requests within 1 s, another client's
    job completes, the worker stays online."""
    slowest_health = slowest_signed = 0.0
    quick = submit(bystander, QUICK_JOB, required_labels=[LABEL])
    deadline = time.monotonic() + ATTACK_SECONDS
    while time.monotonic() < deadline:
        slowest_health = max(slowest_health, health_seconds(coord.url))
        started = time.monotonic()
        bystander.call("GET", "/jobs", params={"limit": 5})
        slowest_signed = max(slowest_signed, time.monotonic() - started)
        assert coord.worker_row("slow-worker")["state"] == "online"
        time.sleep(0.3)
    assert slowest_health < 1.0, f"/health took {slowest_health:.2f}s"
    assert slowest_signed < 1.0, f"a signed request took {slowest_signed:.2f}s"
    assert coord.wait_job(quick, TERMINAL, timeout=20)["state"] == "completed"


def run_scenario(coord: Coordinator, name: str, start: Callable[[Attack], None]) -> Attack:
    api, _ = coord.client(f"{name}-owner")
    bystander, _ = coord.client(f"{name}-bystander")
    long_job = submit(api, running_job(int(ATTACK_SECONDS) + 4), required_labels=[LABEL])
    coord.wait_job(long_job, {"running"}, timeout=30)
    attack = Attack()
    with attacked(coord, attack):
        start(attack)
        time.sleep(1.0)  # the attack is in place
        check_service_during(coord, attack, bystander)
    final = coord.wait_job(long_job, TERMINAL, timeout=30)
    assert final["state"] == "completed", final
    assert final["exit_code"] == 0
    assert coord.worker_row("slow-worker")["state"] == "online"
    return attack


def identity(coord: Coordinator, name: str) -> tuple[Api, str]:
    """A client identity: its API and its key (for requests signed by hand)."""
    api, config = coord.client(name)
    key: str = yaml.safe_load(config.read_text())["hmac_key"]
    return api, key


def host_port(coord: Coordinator) -> tuple[str, int]:
    host, port = coord.url.removeprefix("http://").split(":")
    return host, int(port)


# -- without a key -------------------------------------------------------------------------


def test_64_connections_sending_a_header_line_every_2s(coord: Coordinator) -> None:
    address = host_port(coord)

    def slow_headers(attack: Attack) -> None:
        def one() -> None:
            while not attack.stop.is_set():
                try:
                    with socket.create_connection(address, timeout=5) as sock:
                        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                        while not attack.stop.wait(2.0):
                            sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    attack.events.append("closed")  # the request deadline: reconnect
                    attack.stop.wait(0.2)

        attack.spawn(one, 64)

    run_scenario(coord, "headers", slow_headers)


def test_40_connections_posting_a_body_one_byte_every_2s(coord: Coordinator) -> None:
    address = host_port(coord)

    def slow_bodies(attack: Attack) -> None:
        def one() -> None:
            while not attack.stop.is_set():
                try:
                    with socket.create_connection(address, timeout=5) as sock:
                        sock.sendall(
                            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{"
                        )
                        # Refused at once (no signature), before the body is sent.
                        answer = sock.recv(4096)
                        attack.events.append(answer.split(b"\r\n", 1)[0].decode())
                        while answer and not attack.stop.wait(2.0):
                            sock.sendall(b" ")
                except OSError:
                    pass
                attack.stop.wait(0.5)

        attack.spawn(one, 40)

    attack = run_scenario(coord, "bodies", slow_bodies)
    assert attack.events and set(attack.events) == {"HTTP/1.1 401 Unauthorized"}


def test_signed_slow_bodies_hold_no_thread(coord: Coordinator) -> None:
    """With a valid identity and fresh headers (the body is then read, slowly): the
    request loop buffers it, no thread waits for it."""
    api, key = identity(coord, "slow-signer")
    address = host_port(coord)

    def slow_signed(attack: Attack) -> None:
        def one() -> None:
            body = b'{"binary": "ffprobe", "args": ["-version"]}'.ljust(200)
            while not attack.stop.is_set():
                headers = signing.sign_headers(api.client_id, key, "POST", "/api/v1/jobs", body)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                try:
                    with socket.create_connection(address, timeout=40) as sock:
                        sock.sendall(
                            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n"
                            + head.encode()
                            + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        )
                        for byte in body:
                            if attack.stop.wait(2.0):
                                break
                            sock.sendall(bytes([byte]))
                except OSError:
                    pass

        attack.spawn(one, 40)

    run_scenario(coord, "signed-bodies", slow_signed)


# -- greedy clients ------------------------------------------------------------------------


def test_one_client_holding_48_output_long_polls(coord: Coordinator) -> None:
    greedy, key = identity(coord, "greedy-polls")
    # A job that never runs (no worker has the label): its output is there to wait on.
    target = submit(greedy, QUICK_JOB, required_labels=["nobody"], wait_for_worker=True)
    answered_at_once: list[float] = []

    def polls(attack: Attack) -> None:
        def one() -> None:
            mine = Api(coord.url, greedy.client_id, key)
            try:
                while not attack.stop.is_set():
                    started = time.monotonic()
                    try:
                        reply = mine.request(
                            "GET",
                            f"/jobs/{target}/output",
                            params={"after": 0, "wait": 30},
                            timeout=40,
                        )
                    except (ApiError, Unreachable):
                        attack.stop.wait(0.2)
                        continue
                    if "retry-after" in reply.headers:
                        answered_at_once.append(time.monotonic() - started)
                        attack.stop.wait(float(reply.headers["retry-after"]))
            finally:
                mine.close()

        attack.spawn(one, 48)

    run_scenario(coord, "polls", polls)
    # Past its share the greedy client was answered at once, not held or queued.
    assert answered_at_once
    assert max(answered_at_once) < 2.0
    greedy.call("POST", f"/jobs/{target}/cancel")


def test_one_client_holding_40_streams(coord: Coordinator) -> None:
    greedy, key = identity(coord, "greedy-streams")
    host, port = host_port(coord)
    statuses: list[int] = []

    def streams(attack: Attack) -> None:
        def one() -> None:
            path = "/api/v1/transport/stream?keys=ping"
            while not attack.stop.is_set():
                headers = signing.sign_headers(greedy.client_id, key, "GET", path, b"")
                conn = http.client.HTTPConnection(host, port, timeout=40)
                try:
                    conn.request("GET", path, headers=headers)
                    reply = conn.getresponse()
                    statuses.append(reply.status)
                    if reply.status != 200:
                        reply.read()
                        attack.stop.wait(1.0)
                        continue
                    while not attack.stop.is_set() and reply.readline():
                        pass
                except (OSError, http.client.HTTPException):
                    attack.stop.wait(0.2)
                finally:
                    with suppress(OSError):
                        conn.close()

        attack.spawn(one, 40)

    run_scenario(coord, "streams", streams)
    # Some streams were held, the ones past the identity's share refused with 429.
    assert 200 in statuses and 429 in statuses


def test_streams_end_after_their_maximum_lifetime(tmp_path: Any, ffmpeg: str) -> None:
    with coordinator(tmp_path, transports=["http", "stream"], stream_max_seconds=2) as coord:
        api, key = identity(coord, "short-streams")
        host, port = host_port(coord)
        path = "/api/v1/transport/stream?keys=ping"
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request(
            "GET", path, headers=signing.sign_headers(api.client_id, key, "GET", path, b"")
        )
        reply = conn.getresponse()
        assert reply.status == 200
        started = time.monotonic()
        lines = reply.read().splitlines()  # returns when the coordinator ends the stream
        assert 1.5 < time.monotonic() - started < 10
        assert lines[0] == b'{"hello":true}'
        conn.close()


def signed_submission(api: Api, key: str, marker: str, padding: int = 0) -> bytes:
    """A whole signed submission as it goes on the wire; its last argument is ``marker``
    and ``padding`` spaces follow its JSON (which allows trailing whitespace). No worker
    has its label: the job never runs."""
    args = ["-v", "error", marker]
    document = json.dumps({"binary": "ffmpeg", "args": args, "required_labels": ["nobody"]})
    body = (document + " " * padding).encode()
    headers = signing.sign_headers(api.client_id, key, "POST", "/api/v1/jobs", body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + head.encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def answers_on(sock: socket.socket, count: int) -> list[tuple[int, Any]]:
    answers = []
    for _ in range(count):
        response = http.client.HTTPResponse(sock)
        response.begin()
        answers.append((response.status, json.loads(response.read())))
    return answers


def test_pipelined_signed_requests_each_get_their_own_body(coord: Coordinator) -> None:
    """Two signed submissions sent back to back in one write: the request loop splits
    them where the first body ends, and each job is made of its own body."""
    api, key = identity(coord, "pipeliner")
    requests = signed_submission(api, key, "-pipelined1") + signed_submission(
        api, key, "-pipelined2"
    )
    with socket.create_connection(host_port(coord), timeout=20) as sock:
        sock.sendall(requests)
        answers = answers_on(sock, 2)
    assert [status for status, _ in answers] == [201, 201]
    assert [a["job"]["args"][-1] for _, a in answers] == ["-pipelined1", "-pipelined2"]


def test_a_large_body_arriving_in_pieces_then_a_pipelined_request(coord: Coordinator) -> None:
    """A 3 MiB body sent in pieces is read whole, and the request sent right after it,
    in the same write as the body's last piece, is read as a request of its own, not as
    part of that body."""
    api, key = identity(coord, "bulky")
    first = signed_submission(api, key, "-bulky1", padding=3 * 1024 * 1024)
    second = signed_submission(api, key, "-bulky2")
    pieces = [first[i : i + 700_000] for i in range(0, len(first), 700_000)]
    with socket.create_connection(host_port(coord), timeout=20) as sock:
        for piece in pieces[:-1]:
            sock.sendall(piece)
            time.sleep(0.05)  # the loop sees each piece arrive on its own
        sock.sendall(pieces[-1] + second)
        answers = answers_on(sock, 2)
    assert [status for status, _ in answers] == [201, 201]
    assert [a["job"]["args"][-1] for _, a in answers] == ["-bulky1", "-bulky2"]
