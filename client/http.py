"""A minimal HTTP/1.1 client connection over a plain socket.

The drop-in is started for every probe a media server runs, and ``http.client`` costs
tens of milliseconds to import (it pulls in ``email`` and ``ssl``). Our needs are small
and fixed: one persistent connection per thread to one coordinator, requests with a
body of known length, answers with ``Content-Length`` or chunked bodies. ``https`` URLs
still go through ``http.client`` (imported only then), which brings TLS with it.
"""

from __future__ import annotations

import socket
from typing import Any, Protocol


class HttpError(OSError):
    """The connection failed or the answer was not valid HTTP/1.1."""


class Reply(Protocol):
    status: int
    will_close: bool

    def getheaders(self) -> list[tuple[str, str]]: ...

    def read(self) -> bytes: ...


MAX_HEADER_LINE = 65536
MAX_HEADERS = 200


class PlainReply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, close: bool):
        self.status = status
        self._headers = headers
        self._body = body
        self.will_close = close

    def getheaders(self) -> list[tuple[str, str]]:
        return self._headers

    def read(self) -> bytes:
        return self._body


class PlainConnection:
    """Same surface as the part of ``http.client.HTTPConnection`` that ``Api`` uses."""

    def __init__(
        self, host: str, port: int, timeout: float, connect_timeout: float | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        # Connecting may be bounded tighter than reading an answer (a long-poll).
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self._file: Any = None
        self._sent: str | None = None  # the method of a request whose answer is unread
        self.reused = False

    def connect(self) -> None:
        limit = self.timeout
        if self.connect_timeout is not None:
            limit = min(limit, self.connect_timeout)
        self.sock = socket.create_connection((self.host, self.port), limit)
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self.sock.makefile("rb")
        self.reused = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        """Send the request; as with ``http.client``, a return means it went out whole
        (``Api`` tells a lost answer from a request never sent by that)."""
        self._sent = None
        if self.sock is None:
            self.connect()
        else:
            self.reused = True
        assert self.sock is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.sock.sendall(body)
        self._sent = method

    def getresponse(self) -> PlainReply:
        method, self._sent = self._sent, None
        if method is None:
            raise HttpError("no request was sent")
        return self._read_reply(method)

    def _stream(self) -> Any:
        # ``close`` may run in another thread (``Api.close`` closes every connection).
        stream = self._file
        if stream is None:
            raise HttpError("connection closed")
        return stream

    def _readline(self) -> bytes:
        line: bytes = self._stream().readline(MAX_HEADER_LINE + 1)
        if not line:
            raise HttpError("connection closed by the coordinator")
        if len(line) > MAX_HEADER_LINE:
            raise HttpError("header line too long")
        return line

    def _read_reply(self, method: str) -> PlainReply:
        status_line = self._readline().decode("latin-1").rstrip("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        headers: list[tuple[str, str]] = []
        while True:
            line = self._readline().decode("latin-1").rstrip("\r\n")
            if not line:
                break
            if len(headers) >= MAX_HEADERS:
                raise HttpError("too many headers")
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        fields = {name.lower(): value for name, value in headers}
        close = fields.get("connection", "").lower() == "close" or parts[0] == "HTTP/1.0"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        elif "content-length" in fields:
            body = self._read_exactly(int(fields["content-length"]))
        else:
            body = self._stream().read()
            close = True
        return PlainReply(status, headers, body, close)

    def _read_exactly(self, size: int) -> bytes:
        data: bytes = self._stream().read(size)
        if len(data) != size:
            raise HttpError("connection closed in the middle of an answer")
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self._readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._readline() not in (b"\r\n", b"\n"):
                    pass  # trailers
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            self._readline()
