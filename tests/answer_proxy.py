"""An HTTP proxy for tests that loses answers: the request reaches the coordinator, its
answer never reaches the party (the connection is closed instead), once per rule.

That is what a network failure at the wrong moment does, and what every retried request
of the API must survive: the coordinator acted, the party does not know, and sends the
request again (a new nonce, the same request otherwise).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

MAX_HEAD = 65536


@dataclass
class Rule:
    name: str
    method: str
    path: re.Pattern[str]
    drops: int = 1  # how many answers to lose
    query: re.Pattern[str] | None = None  # also searched for in the query string
    # After losing an answer, refuse every connection for this many seconds (the
    # coordinator went away right after it acted).
    outage: float = 0.0


@dataclass
class AnswerDroppingProxy:
    upstream: tuple[str, int]
    rules: list[Rule]
    dropped: list[str] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reopen_at: float | None = None  # in an outage: when to listen again
        self._listen()
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def _listen(self) -> None:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.port))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                with self._lock:
                    reopen_at = self._reopen_at
                if reopen_at is None or self._closed.wait(max(0.0, reopen_at - time.monotonic())):
                    return
                with self._lock:
                    self._reopen_at = None
                    self._listen()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            reader = client.makefile("rb")
            while True:
                request = _read_message(reader, is_request=True)
                if request is None:
                    return
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=120)
                    answers = upstream.makefile("rb")
                upstream.sendall(request)
                answer = _read_message(answers, is_request=False)
                if answer is None:
                    return
                if self._drop(request):
                    return  # the coordinator acted; the party never hears of it
                client.sendall(answer)
        except OSError:
            return
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _drop(self, request: bytes) -> bool:
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        method, target, _ = line.split(" ", 2)
        path, _, query = target.partition("?")
        with self._lock:
            for rule in self.rules:
                if rule.query is not None and not rule.query.search(query):
                    continue
                if rule.method == method and rule.path.fullmatch(path):
                    self.seen[rule.name] += 1
                    if self.dropped.count(rule.name) < rule.drops:
                        self.dropped.append(rule.name)
                        if rule.outage:
                            # Before the party hears of the loss: its retry is refused.
                            self._reopen_at = time.monotonic() + rule.outage
                            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept
                            self._server.close()
                        return True
        return False


def _read_message(stream: object, is_request: bool) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (all our API uses)."""
    read_line = stream.readline  # type: ignore[attr-defined]
    head = b""
    while True:
        line = read_line(MAX_HEAD)
        if not line:
            return None
        head += line
        if line in (b"\r\n", b"\n"):
            break
    length = 0
    for raw in head.split(b"\r\n")[1:]:
        name, _, value = raw.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = stream.read(length) if length else b""  # type: ignore[attr-defined]
    return head + body
