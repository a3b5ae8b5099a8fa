"""The party's side of an outage (client/api.py): failover between coordinator
addresses and back, retries of 503s and connection failures with back-off, each retry a
new request with a new nonce and its own signed answer.

The coordinators here are small HTTP servers of the test's own that sign their answers
as a coordinator does (the real ones are in the fault suite, tests/test_faults_*.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import client.api as api_module
from client.api import Api, ApiError, Unreachable
from dffmpeg import signing
from tests.helpers import free_port

KEY = "k" * 43


class Coordinator:
    """Answers every request with ``{"served_by": name}``, signed; the first
    ``unavailable`` ones with a signed 503 instead."""

    def __init__(self, name: str, unavailable: int = 0) -> None:
        self.name = name
        self.unavailable = unavailable
        self.nonces: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                nonce = self.headers[signing.HEADER_NONCE]
                outer.nonces.append(nonce)
                if outer.unavailable > 0:
                    outer.unavailable -= 1
                    status, body = 503, {"error": "database_unavailable", "message": "db away"}
                else:
                    status, body = 200, {"served_by": outer.name}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header(
                    signing.HEADER_ANSWER, signing.answer_signature(KEY, status, nonce, data)
                )
                self.end_headers()
                self.wfile.write(data)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._handler = Handler
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def coordinators(*names: str) -> Iterator[list[Coordinator]]:
    servers = [Coordinator(name) for name in names]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def served_by(api: Api, **kwargs: object) -> str:
    return str(api.call("GET", "/anything", timeout=5, **kwargs)["served_by"])  # type: ignore[arg-type]


def test_a_connection_failure_moves_every_thread_to_the_next_address() -> None:
    with coordinators("a", "b") as (a, b):
        b.start()  # the first address is down
        api = Api([a.url, b.url], "c", KEY)
        started = time.monotonic()
        assert served_by(api) == "b"
        assert time.monotonic() - started < 1  # no back-off between addresses
        assert api.base_url == b.url
        # Another thread goes straight to the address that works.
        result: list[str] = []
        thread = threading.Thread(target=lambda: result.append(served_by(api)))
        thread.start()
        thread.join(5)
        assert result == ["b"] and a.nonces == []
        api.close()


def test_the_first_address_is_tried_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "FAILBACK_SECONDS", 0.3)
    with coordinators("a", "b") as (a, b):
        b.start()
        api = Api([a.url, b.url], "c", KEY)
        assert served_by(api) == "b"
        a.start()  # back
        assert served_by(api) == "b"  # not yet: within the failback time
        time.sleep(0.4)
        assert served_by(api) == "a"
        assert api.base_url == a.url
        api.close()


def test_503s_and_connection_failures_are_retried_with_new_nonces() -> None:
    with coordinators("a") as (a,):
        a.unavailable = 3
        a.start()
        api = Api(a.url, "c", KEY)
        assert served_by(api, retry_for=10) == "a"
        assert len(a.nonces) == 4 and len(set(a.nonces)) == 4  # each try signed anew
        # Without time to retry, the 503 is the answer.
        a.unavailable = 1
        with pytest.raises(ApiError) as refused:
            served_by(api)
        assert (refused.value.status, refused.value.code) == (503, "database_unavailable")
        api.close()


def test_a_coordinator_that_comes_back_within_the_retry_time_is_waited_for() -> None:
    with coordinators("a") as (a,):
        api = Api(a.url, "c", KEY)
        threading.Timer(1.0, a.start).start()
        started = time.monotonic()
        assert served_by(api, retry_for=10) == "a"
        assert 0.9 < time.monotonic() - started < 5
        api.close()


def test_retrying_stops_at_the_deadline_and_after_an_abort() -> None:
    with coordinators("a") as (a,):
        api = Api(a.url, "c", KEY)
        started = time.monotonic()
        with pytest.raises(Unreachable):
            served_by(api, retry_for=1.0)
        assert 0.9 < time.monotonic() - started < 2.5  # waited the whole time, no more
        threading.Timer(0.3, api.abort).start()
        started = time.monotonic()
        with pytest.raises(Unreachable):
            served_by(api, retry_for=30)
        assert time.monotonic() - started < 3
