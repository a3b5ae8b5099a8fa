"""A signed HTTP client for the coordinator's API.

Built on a small plain-socket HTTP/1.1 connection (``client.http``) rather than
requests or ``http.client``: the drop-in is started for every ffprobe call a media
server makes, and this module loads in a few milliseconds. One persistent connection
per thread; ``https`` URLs use ``http.client``, imported only then.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from client.http import PlainConnection, Reply
from dffmpeg import signing
from dffmpeg.config import ClientConfig


class ApiError(Exception):
    """The coordinator answered with an error status."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any]) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class AuthError(ApiError):
    """The coordinator refused our credentials (401) or our role (403)."""


class Unreachable(Exception):
    """The coordinator could not be reached (connection refused, timeout, DNS...)."""


class AnswerRefused(ApiError):
    """An answer that is not the coordinator's answer to this request: unsigned,
    altered, or recorded earlier (see ``dffmpeg.signing``). Nothing in it is used."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(status, "answer_refused", f"answer refused: {why}", {})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        data = json.loads(self.body) if self.body else {}
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data


@dataclass(frozen=True)
class Tls:
    """How an ``https://`` coordinator is trusted: a private CA (``ca_file``; default the
    system's CAs) and, where the coordinator (its proxy) asks for one, our certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> Any:
        import ssl  # only for https: the drop-in's plain-HTTP start never loads it

        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class Api:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        hmac_key: str,
        timeout: float = 30.0,
        tls: Tls | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"coordinator_url {base_url!r} must be http(s)://host[:port]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.client_id = client_id
        self._key = hmac_key
        self.timeout = timeout
        self.tls = tls or Tls()
        self._tls_context: Any = None
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ClientConfig, timeout: float = 30.0) -> Api:
        tls = Tls(config.ca_file, config.client_cert_file, config.client_key_file)
        return cls(config.coordinator_url, config.client_id, config.hmac_key, timeout, tls)

    def _connection(self, timeout: float) -> Any:
        conn: Any = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                import http.client

                if self._tls_context is None:
                    self._tls_context = self.tls.context()
                conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=timeout, context=self._tls_context
                )
            else:
                conn = PlainConnection(self.host, self.port, timeout)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop(self) -> None:
        """Forget this thread's connection after an error (a new one is made next time)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._all_lock:
                if conn in self._all:
                    self._all.remove(conn)

    def close(self) -> None:
        """Close the connections of every thread."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def abort(self) -> None:
        """Break off requests in flight on every thread; they raise Unreachable.

        For a program that is quitting: closing a socket does not wake a thread blocked
        reading it, shutting it down does.
        """
        with self._all_lock:
            socks = [conn.sock for conn in self._all if conn.sock is not None]
        for sock in socks:
            with contextlib.suppress(OSError):  # already closed or never connected
                sock.shutdown(socket.SHUT_RDWR)

    def _send_once(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Response:
        for attempt in (1, 2):
            # Signed per attempt: a retry with the same nonce would be refused as a replay.
            signed = signing.sign_headers(self.client_id, self._key, method, path, body)
            nonce = signed[signing.HEADER_NONCE]
            all_headers = {**headers, **signed, "Content-Length": str(len(body))}
            conn = self._connection(timeout)
            try:
                conn.request(method, path, body=body, headers=all_headers)
                reply: Reply = conn.getresponse()
                data = reply.read()
                break
            except Exception as exc:
                if not _network_error(exc):
                    raise
                self._drop()
                # A kept-alive connection the server closed while idle: one fresh try.
                if attempt == 1 and getattr(conn, "reused", False):
                    continue
                raise Unreachable(str(exc) or type(exc).__name__) from exc
        if reply.will_close:
            self._drop()
        answer = Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
        self._verify(answer, nonce)
        return answer

    def _verify(self, answer: Response, nonce: str) -> None:
        """Accept only the coordinator's own answer to this request.

        Unsigned answers are believed only where they can do no more than stop us: a
        401 (there is no key to sign it with when authentication failed) and a 5xx that
        a proxy in front of the coordinator made (retried like a connection failure).
        """
        signature = answer.headers.get(signing.HEADER_ANSWER.lower())
        if signature is None:
            if answer.status == 401:
                return
            if answer.status >= 500:
                raise Unreachable(f"unsigned HTTP {answer.status} (a proxy in between?)")
            raise AnswerRefused(answer.status, f"unsigned HTTP {answer.status}")
        if not signing.answer_valid(self._key, answer.status, nonce, answer.body, signature):
            raise AnswerRefused(answer.status, "its signature does not match")

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        retry_for: float = 0.0,
    ) -> Response:
        """Send one signed request; retry connection failures for ``retry_for`` seconds.

        ``params`` may be pairs, for a name given more than once.
        Raises Unreachable, AuthError (401/403) or ApiError (other 4xx/5xx).
        """
        full = self.prefix + "/api/v1" + path
        if params:
            full += "?" + urlencode(params)
        headers: dict[str, str] = {}
        payload = b""
        if json_body is not None:
            payload = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            payload = body
            headers["Content-Type"] = content_type or "application/octet-stream"
        deadline = time.monotonic() + retry_for
        delay = 0.1
        while True:
            try:
                response = self._send_once(
                    method, full, payload, headers, timeout if timeout is not None else self.timeout
                )
                break
            except Unreachable:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if response.status >= 400:
            raise _error(response)
        return response

    def unsigned_get(self, path: str, timeout: float | None = None) -> Response:
        """GET a path outside the API (``/health``) without a signature, whatever the
        status; raises Unreachable when the coordinator cannot be reached."""
        conn = self._connection(timeout if timeout is not None else self.timeout)
        try:
            conn.request("GET", self.prefix + path, body=b"", headers={"Content-Length": "0"})
            reply: Reply = conn.getresponse()
            data = reply.read()
        except Exception as exc:
            self._drop()
            if not _network_error(exc):
                raise
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        if reply.will_close:
            self._drop()
        return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """A request whose answer is a JSON object."""
        return self.request(method, path, **kwargs).json()


def _error(response: Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    code = str(body.get("error", "error"))
    message = str(body.get("message", f"HTTP {response.status}"))
    cls = AuthError if response.status in (401, 403) else ApiError
    return cls(response.status, code, message, body)


def _network_error(exc: Exception) -> bool:
    """Errors that mean "could not talk to the coordinator" (``http.client``'s included)."""
    return isinstance(exc, OSError | ValueError) or type(exc).__module__ == "http.client"


def is_timeout(exc: Unreachable) -> bool:
    return isinstance(exc.__cause__, socket.timeout | TimeoutError)
