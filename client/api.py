"""A signed HTTP client for the coordinator's API, with failover between its addresses.

Built on a small plain-socket HTTP/1.1 connection (``client.http``) rather than
requests or ``http.client``: the drop-in is started for every ffprobe call a media
server makes, and this module loads in a few milliseconds. One persistent connection
per thread; ``https`` URLs use ``http.client``, imported only then.

``coordinator_url`` may name several coordinators (instances on one database). Requests
go to the first; a connection failure moves every thread of this ``Api`` to the next
address at once (no back-off between addresses, only after all of them failed), and
after ``FAILBACK_SECONDS`` on another address new requests try the first one again.

Retries (``retry_for``) cover what a party cannot tell from "the request never
happened": a connection failure, an unsigned 5xx from a proxy, and a signed 503 (the
coordinator's database is unavailable). Every retry is a new request with a new nonce
and its own signed answer, spaced by the shared back-off policy (``dffmpeg.backoff``);
every request of the API is idempotent for its sender, so a retry whose first attempt
did reach the coordinator changes nothing twice (docs/api.md).
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
from dffmpeg.backoff import Backoff
from dffmpeg.config import ClientConfig

# After this long on another address, new requests try the first address again.
FAILBACK_SECONDS = 30.0
# Connecting may take at most this long: an address that does not answer at all (a
# host that is down) must not hold a request for its whole read timeout.
CONNECT_TIMEOUT = 5.0


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

    # Which of the Api's addresses failed (None: not known, e.g. an unsigned 5xx).
    address_index: int | None = None
    # The request went out whole before the failure: the coordinator may have acted on
    # it (made the job of a submission) and only its answer was lost.
    sent: bool = False


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


@dataclass(frozen=True)
class Address:
    """One coordinator base URL, split."""

    url: str
    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Address:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"coordinator_url {base_url!r} must be http(s)://host[:port]")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(base_url, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


class Api:
    def __init__(
        self,
        base_url: str | Sequence[str],
        client_id: str,
        hmac_key: str,
        timeout: float = 30.0,
        tls: Tls | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("coordinator_url names no coordinator")
        self.addresses = [Address.parse(url) for url in urls]
        self.client_id = client_id
        self._key = hmac_key
        self.timeout = timeout
        self.tls = tls or Tls()
        self._tls_context: Any = None
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        # Which address requests go to, for every thread; and since when (failback).
        self._active = 0
        self._moved_at = 0.0
        self._aborted = threading.Event()
        # When the coordinator last answered anything (monotonic; 0: never).
        self.last_answer = 0.0

    @classmethod
    def from_config(cls, config: ClientConfig, timeout: float = 30.0) -> Api:
        tls = Tls(config.ca_file, config.client_cert_file, config.client_key_file)
        return cls(config.coordinator_urls, config.client_id, config.hmac_key, timeout, tls)

    # The address requests go to now (what a log line or the transports should name).
    @property
    def address(self) -> Address:
        return self.addresses[self._active]

    @property
    def base_url(self) -> str:
        return self.address.url

    def _choose(self) -> int:
        """The address for the next request: the active one, or the first again once
        the failover is old enough."""
        with self._all_lock:
            if self._active and time.monotonic() - self._moved_at >= FAILBACK_SECONDS:
                self._active, self._moved_at = 0, time.monotonic()
            return self._active

    def _failed(self, index: int) -> bool:
        """The address ``index`` could not be reached: move on to the next one. True
        when there is another address to try at once."""
        with self._all_lock:
            if len(self.addresses) == 1:
                return False
            if self._active == index:
                self._active = (index + 1) % len(self.addresses)
                self._moved_at = time.monotonic()
            return True

    def _connection(self, timeout: float) -> tuple[Any, int]:
        index = self._choose()
        conn: Any = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "index", None) != index:
            self._drop()  # kept alive to another address: requests go elsewhere now
            conn = None
        if conn is None:
            address = self.addresses[index]
            if address.scheme == "https":
                import http.client

                if self._tls_context is None:
                    self._tls_context = self.tls.context()
                conn = http.client.HTTPSConnection(
                    address.host, address.port, timeout=timeout, context=self._tls_context
                )
            else:
                conn = PlainConnection(address.host, address.port, timeout, CONNECT_TIMEOUT)
            self._local.conn = conn
            self._local.index = index
            with self._all_lock:
                self._all.append(conn)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, index

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
        """Break off requests in flight on every thread; they raise Unreachable, and
        nothing is retried from now on.

        For a program that is quitting: closing a socket does not wake a thread blocked
        reading it, shutting it down does.
        """
        self._aborted.set()
        with self._all_lock:
            socks = [conn.sock for conn in self._all if conn.sock is not None]
        for sock in socks:
            with contextlib.suppress(OSError):  # already closed or never connected
                sock.shutdown(socket.SHUT_RDWR)

    def _send_once(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Response:
        """One request to the active address (and, if it cannot be reached, to each
        other address in turn); raises Unreachable when none answered."""
        tried = 0
        while True:
            try:
                return self._send_to_active(method, path, body, headers, timeout)
            except Unreachable as exc:
                tried += 1
                index = getattr(exc, "address_index", None)
                if (
                    index is None
                    or tried >= len(self.addresses)
                    or self._aborted.is_set()
                    or not self._failed(index)
                ):
                    raise

    def _send_to_active(
        self, method: str, path: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Response:
        for attempt in (1, 2):
            conn, index = self._connection(timeout)
            prefix = self.addresses[index].prefix
            # Signed per attempt: a retry with the same nonce would be refused as a replay.
            signed = signing.sign_headers(self.client_id, self._key, method, prefix + path, body)
            nonce = signed[signing.HEADER_NONCE]
            all_headers = {**headers, **signed, "Content-Length": str(len(body))}
            sent = False
            try:
                conn.request(method, prefix + path, body=body, headers=all_headers)
                sent = True
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
                failure = Unreachable(str(exc) or type(exc).__name__)
                failure.address_index = index
                failure.sent = sent
                raise failure from exc
            except BaseException:
                # Broken off half-way (a signal, client/job.py's Interrupted): what is
                # left on the connection belongs to no one.
                self._drop()
                raise
        if reply.will_close:
            self._drop()
        answer = Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, data)
        try:
            self._verify(answer, nonce)
        except Unreachable as exc:  # a proxy's 5xx: the coordinator behind it is away
            exc.address_index = index
            raise
        self.last_answer = time.monotonic()
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
                raise Unreachable(f"unsigned HTTP {answer.status}{_claimed_error(answer)}")
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
        lost_answer_grace: float = 0.0,
        backoff: Backoff | None = None,
    ) -> Response:
        """Send one signed request; for ``retry_for`` seconds, send it again after a
        connection failure or a 503 (``backoff``: the delays, by default the shared
        policy's).

        ``lost_answer_grace``: for an idempotent request that changes something (a
        submission), once an attempt went out whole and its answer was lost, the
        coordinator may have acted on it, so the retries go on for at least this long
        from then, as they would for a job under way.

        ``params`` may be pairs, for a name given more than once.
        Raises Unreachable, AuthError (401/403) or ApiError (other 4xx/5xx, the 503 of
        the last attempt included).
        """
        full = "/api/v1" + path
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
        delays = backoff or Backoff()
        wait = timeout if timeout is not None else self.timeout
        while True:
            try:
                response = self._send_once(method, full, payload, headers, wait)
            except Unreachable as exc:
                if exc.sent and lost_answer_grace > 0:
                    deadline = max(deadline, time.monotonic() + lost_answer_grace)
                    lost_answer_grace = 0.0  # counted from the first lost answer
                if not self._retry(deadline, delays.next_delay()):
                    raise
                continue
            if response.status == 503 and self._retry(deadline, _retry_after(response, delays)):
                continue  # the coordinator is up, its database is not (yet)
            break
        if response.status >= 400:
            raise _error(response)
        return response

    def _retry(self, deadline: float, delay: float) -> bool:
        """Wait ``delay`` (at most until ``deadline``, for a last attempt then); False
        when the time is up."""
        remaining = deadline - time.monotonic()
        if self._aborted.is_set() or remaining <= 0:
            return False
        self._aborted.wait(min(delay, remaining))
        return not self._aborted.is_set()

    def unsigned_get(self, path: str, timeout: float | None = None) -> Response:
        """GET a path outside the API (``/health``) without a signature, whatever the
        status; raises Unreachable when the coordinator cannot be reached."""
        conn, index = self._connection(timeout if timeout is not None else self.timeout)
        try:
            target = self.addresses[index].prefix + path
            conn.request("GET", target, body=b"", headers={"Content-Length": "0"})
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


def _claimed_error(answer: Response) -> str:
    """The error code an unsigned 5xx names, to show (never to act on): the coordinator
    answers unsigned when it could not even check who asked, e.g. its database is away;
    a proxy in between answers unsigned too."""
    try:
        code = answer.json().get("error")
    except ValueError:
        code = None
    if isinstance(code, str) and code.replace("_", "").isalpha() and len(code) <= 40:
        return f" ({code})"
    return " (a proxy in between?)"


def _retry_after(response: Response, delays: Backoff) -> float:
    """The back-off's next delay, but not sooner than a 503's ``Retry-After`` (kept
    within the policy's maximum)."""
    delay = delays.next_delay()
    try:
        asked = float(response.headers.get("retry-after", "0"))
    except ValueError:
        asked = 0.0
    return max(delay, min(asked, delays.maximum)) if asked == asked else delay


def _network_error(exc: Exception) -> bool:
    """Errors that mean "could not talk to the coordinator" (``http.client``'s included)."""
    return isinstance(exc, OSError | ValueError) or type(exc).__module__ == "http.client"


def is_timeout(exc: Unreachable) -> bool:
    return isinstance(exc.__cause__, socket.timeout | TimeoutError)
