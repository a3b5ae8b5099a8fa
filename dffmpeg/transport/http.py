"""Broker-free transports: HTTP long-poll and NDJSON streaming.

``LongPoll`` has nothing to run: the party's signed HTTP read waits on the coordinator
(bounded ``wait``) and returns as soon as something changed. ``Stream`` holds one
``GET /api/v1/transport/stream`` open; the coordinator writes one JSON line per
notification and a keep-alive line every few seconds, so a dead connection is noticed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
from urllib.parse import urlencode, urlsplit

from dffmpeg import signing
from dffmpeg.transport.base import Endpoint, Transport, TransportError, reconnect_backoff

log = logging.getLogger(__name__)

STREAM_PATH = "/api/v1/transport/stream"
# The coordinator sends a keep-alive at least this often; silence for three times as
# long means the connection is dead even if TCP has not noticed.
KEEPALIVE_SECONDS = 10.0


class LongPoll(Transport):
    """The default: the HTTP read is the wait. Always healthy, nothing to connect."""

    name = "http"
    long_poll = True

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def healthy(self) -> bool:
        return True


class Stream(Transport):
    """NDJSON streaming: one long-lived signed GET carrying notifications as lines."""

    name = "stream"

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        parts = urlsplit(endpoint.coordinator_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError("stream transport needs coordinator_url http(s)://host:port")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._stopped = threading.Event()
        self._paused = threading.Event()
        self._connected = threading.Event()
        self._generation = 0  # bumped when the watched keys change: reopen the stream
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="transport-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._drop()
        if self._thread is not None:
            self._thread.join(5)

    def healthy(self) -> bool:
        return self._connected.is_set()

    def pause(self) -> None:
        self._paused.set()
        self._reopen(0)

    def resume(self) -> None:
        self._paused.clear()

    def watch(self, key: str, timeout: float = 5.0) -> None:
        super().watch(key)
        self._reopen(timeout)

    def unwatch(self, key: str) -> None:
        super().unwatch(key)
        self._reopen(0)

    def _reopen(self, timeout: float) -> None:
        with self._lock:
            self._generation += 1
        self._connected.clear()
        self._drop()
        if timeout:
            self._connected.wait(timeout)

    def _drop(self) -> None:
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            # Unblocks the reader thread's recv at once.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _open(self, keys: list[str]) -> http.client.HTTPResponse:
        path = self._prefix + STREAM_PATH + "?" + urlencode({"keys": ",".join(keys)})
        headers = signing.sign_headers(
            self.endpoint.identity, self.endpoint.hmac_key, "GET", path, b""
        )
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=KEEPALIVE_SECONDS * 3,
                context=self.endpoint.tls_context,
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=KEEPALIVE_SECONDS * 3)
        with self._lock:
            self._conn = conn
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        if reply.status != 200:
            body = reply.read(2000)
            conn.close()
            raise ConnectionError(f"stream refused: HTTP {reply.status} {body[:200]!r}")
        signature = reply.getheader(signing.HEADER_ANSWER)
        nonce = headers[signing.HEADER_NONCE]
        if not signing.answer_valid(self.endpoint.hmac_key, 200, nonce, None, signature):
            conn.close()
            raise ConnectionError("stream refused: the answer is not the coordinator's")
        return reply

    def _run(self) -> None:
        backoff = reconnect_backoff()
        while not self._stopped.is_set():
            if self._paused.is_set():
                self._stopped.wait(0.05)
                continue
            with self._lock:
                generation = self._generation
            keys = ["ping", *self.watched()]
            try:
                reply = self._open(keys)
                for line in reply:
                    if self._stopped.is_set() or generation != self._generation:
                        break
                    self._line(line)
                    backoff.reset()
            except (OSError, http.client.HTTPException, ConnectionError) as exc:
                if not self._stopped.is_set() and generation == self._generation:
                    log.warning("stream transport disconnected: %s", exc)
                    self._connected.clear()
                    self._stopped.wait(backoff.next_delay())
            finally:
                with self._lock:
                    conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
            if generation == self._generation:
                self._connected.clear()

    def _line(self, line: bytes) -> None:
        line = line.strip()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        if event.get("hello"):
            self._connected.set()
            self.signals.fire_all()  # caught up on (re)connect
            return
        address, data = event.get("address"), event.get("data")
        if isinstance(address, list) and isinstance(data, str):
            self.deliver(tuple(str(a) for a in address), data.encode())
