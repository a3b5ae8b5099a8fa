"""The gunicorn worker class ``dffmpeg-coordinator`` runs: whole requests before threads.

gunicorn's threaded worker hands a connection to a pool thread as soon as it has data,
and that thread then reads the rest of the request with blocking calls: a client that
sends a header line every few seconds, or a body a byte at a time, holds a thread for
as long as it likes, and a few dozen of them (no key needed) stop the server.

``BufferingWorker`` does what a buffering proxy would: one event loop per process reads
every connection without blocking until its whole request (head and body) is there,
and only then gives it to a pool thread, which runs the app on bytes already in memory.
So a pool thread never waits for a client to send, and:

* a request must arrive whole within ``request_timeout_seconds`` of its first byte
  (slow senders are answered 408 and closed; idle kept-alive connections are closed
  after gunicorn's ``keepalive``);
* a request whose body is still on its way is first *pre-checked* (``Precheck``, the
  identity, timestamp and nonce headers, on a pool thread for a moment): one that would
  be refused is answered 401 before its body is read, and only then is room reserved
  for the body (``BODY_BUDGET_BYTES`` per process; 503 beyond);
* a ready request waits for a free thread in a queue this loop owns; when one waits
  longer than ``SATURATED_AFTER`` seconds, or connections must be refused, the loop tells
  the app's ``ServingMonitor`` (``coordinator.serving``) that this instance cannot serve.

Request framing stays simple and strict: ``Content-Length`` bodies only (a
``Transfer-Encoding`` request is answered 411), heads of at most ``MAX_HEAD_BYTES``.
gunicorn's own parser and WSGI glue then read the buffered head, so the app sees the
same environ as under gthread (``gunicorn.socket`` included); the body is handed over
from memory (``wsgi.input`` over the bytes, and the bytes themselves:
coordinator/body.py). Responses are written by the pool thread; a client that does not
read its answer is cut off after ``request_timeout_seconds`` too.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import queue
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gunicorn import http
from gunicorn.http import wsgi
from gunicorn.workers import base

from coordinator.body import BODY_ENVIRON_KEY

MAX_HEAD_BYTES = 32 * 1024
# Bodies being received, all connections of one process together; a request whose
# body would not fit is answered 503 (a client retries, memory stays bounded).
BODY_BUDGET_BYTES = 256 * 1024 * 1024
# A complete request that waited this long for a thread means the process is saturated.
SATURATED_AFTER = 1.0
RECV_BYTES = 256 * 1024
DEFAULT_REQUEST_TIMEOUT = 30.0
LOOP_SECONDS = 0.25
# The master's liveness check (gunicorn ``timeout``, 60 s here) reads a file this
# process touches; touching it once a second is plenty, where every turn of the loop
# (several per request) would cost a system call each.
NOTIFY_SECONDS = 1.0
# Connections past their deadline are looked for at most this often, not on every turn
# of the loop: the deadlines are seconds long (keep-alive, request timeout), and the
# look goes through every open connection.
EXPIRE_SECONDS = 0.1


class Precheck(Protocol):
    """The app's check of a request head whose body has not arrived yet.

    Returns None to go on reading the body, or (status, JSON body) to answer at once.
    Runs on a pool thread (it may read the database).
    """

    def __call__(
        self, method: str, target: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]] | None: ...


class Monitor(Protocol):
    def impaired(self, reason: str) -> None: ...


@dataclass
class Head:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names, ASCII-decoded values (latin-1)
    size: int  # bytes up to and including the blank line
    body_length: int


class FramingError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_head(data: bytes) -> Head | None:
    """The request head at the start of ``data``; None while it is incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise FramingError(431, "request head too large")
        return None
    if end + 4 > MAX_HEAD_BYTES:
        raise FramingError(431, "request head too large")
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise FramingError(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise FramingError(400, "bad header line")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding", "host"):
            raise FramingError(400, f"repeated {name} header")
        headers[key] = value.strip()
    if "transfer-encoding" in headers:
        raise FramingError(411, "send the body with a Content-Length")
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit() or len(raw_length) > 18:
        raise FramingError(400, "bad Content-Length")
    return Head(parts[0], parts[1], headers, end + 4, int(raw_length))


@dataclass(eq=False)  # compared (and hashed) by identity: kept in a set
class Conn:
    sock: socket.socket
    addr: Any
    server: Any
    buffer: bytearray = field(default_factory=bytearray)
    deadline: float = 0.0  # monotonic; what it is a deadline for depends on the state
    head: Head | None = None
    reserved: int = 0  # bytes of the body budget held for this request
    prechecked: bool = False
    state: str = "idle"  # idle -> reading -> (checking) -> ready -> serving -> idle


def _answer(status: int, error: str, message: str, **extra: Any) -> bytes:
    body = json.dumps({"error": error, "message": message, **extra}).encode()
    reason = {
        400: "Bad Request",
        401: "Unauthorized",
        408: "Request Timeout",
        411: "Length Required",
        413: "Content Too Large",
        431: "Request Header Fields Too Large",
        503: "Service Unavailable",
    }.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 1\r\n"
    return head.encode() + b"\r\n" + body


# A body piece this large is sent along with the held head, not joined to it (a copy).
LARGE_PIECE_BYTES = 64 * 1024


class HeadWithBody:
    """The socket gunicorn writes an answer to, holding back the head (its first
    ``sendall``) until the body's first piece follows, so that both leave in one send:
    one segment and one wake-up of the reader instead of two, on every answer.
    ``flush`` sends what is held (an answer without a body, or the end of one)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._held: bytes | None = None
        self._first = True

    def sendall(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = bytes(data)
            return
        if self._held is not None:
            held, self._held = self._held, None
            if len(data) >= LARGE_PIECE_BYTES:
                self._send_both(held, data)
                return
            data = held + data
        self._sock.sendall(data)

    def _send_both(self, head: bytes, body: bytes) -> None:
        """``head`` then ``body`` in one system call where the socket takes them,
        without joining them first: a stream's output read answers MiBs at a time."""
        with memoryview(head) as first, memoryview(body) as second:
            pieces = [first, second]
            while pieces:
                sent = self._sock.sendmsg(pieces)
                while pieces and sent >= len(pieces[0]):
                    sent -= len(pieces[0])
                    pieces.pop(0)
                if pieces and sent:
                    pieces[0] = pieces[0][sent:]

    def flush(self) -> None:
        self._first = False
        if self._held is not None:
            held, self._held = self._held, None
            self._sock.sendall(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferingWorker(base.Worker):
    """gunicorn worker: an event loop that buffers whole requests, a thread pool that
    runs them (see the module docstring)."""

    def init_process(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(max_workers=self.cfg.threads, thread_name_prefix="req")
        self.done: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.ready: deque[tuple[float, Conn]] = deque()
        self.conns: set[Conn] = set()
        self.busy = 0
        self.expired_at = 0.0
        self.body_budget = BODY_BUDGET_BYTES
        self.accepting = False
        self.request_timeout = DEFAULT_REQUEST_TIMEOUT
        super().init_process()

    # -- the app's hooks -----------------------------------------------------------------

    def _extension(self, name: str) -> Any:
        extensions = getattr(self.wsgi, "extensions", None)
        return extensions.get(name) if isinstance(extensions, dict) else None

    def _impaired(self, reason: str) -> None:
        monitor: Monitor | None = self._extension("dffmpeg.serving")
        if monitor is not None:
            monitor.impaired(reason)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        settings = getattr(self.wsgi, "config", {}).get("DFFMPEG")
        self.request_timeout = float(
            getattr(settings, "request_timeout_seconds", DEFAULT_REQUEST_TIMEOUT)
        )
        # Signals write to this pipe (base.Worker set it up): they wake the loop.
        self.selector.register(self.PIPE[0], selectors.EVENT_READ, self._drain_pipe)
        self._set_accepting(True)
        notified = 0.0
        while self.alive:
            now = time.monotonic()
            if now - notified >= NOTIFY_SECONDS:
                self.notify()
                notified = now
            if not self._parent_alive():
                break
            self._set_accepting(len(self.conns) < self.cfg.worker_connections)
            if not self.accepting:
                self._impaired("connection limit reached")
            self._tick(LOOP_SECONDS)
        self._shutdown()

    def _tick(self, timeout: float) -> None:
        try:
            events = self.selector.select(timeout)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
            events = []
        for key, _ in events:
            key.data(key.fileobj)
        while True:
            try:
                callback = self.done.get_nowait()
            except queue.Empty:
                break
            callback()
        self._expire()
        self._dispatch()

    def _parent_alive(self) -> bool:
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        return True

    def _drain_pipe(self, fd: Any) -> None:
        try:
            while os.read(self.PIPE[0], 4096):
                pass
        except OSError:
            pass

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the pipe is full: the loop is awake anyway
            os.write(self.PIPE[1], b".")

    def _set_accepting(self, enabled: bool) -> None:
        if enabled == self.accepting:
            return
        for listener in self.sockets:
            if enabled:
                listener.setblocking(False)
                self.selector.register(listener, selectors.EVENT_READ, self._accept)
            else:
                self.selector.unregister(listener)
        self.accepting = enabled

    def _accept(self, listener: Any) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        sock.setblocking(False)
        conn = Conn(sock, addr, listener.getsockname())
        conn.state = "reading"
        conn.deadline = time.monotonic() + self.request_timeout
        self.conns.add(conn)
        self.selector.register(sock, selectors.EVENT_READ, lambda _s, c=conn: self._readable(c))

    # -- reading ---------------------------------------------------------------------------

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if conn.state == "idle":  # a kept-alive connection starts its next request
            conn.state = "reading"
            conn.deadline = time.monotonic() + self.request_timeout
        conn.buffer += data
        self._advance(conn)

    def _advance(self, conn: Conn) -> None:
        """Move a reading connection on as far as its buffered bytes allow."""
        if conn.head is None:
            try:
                conn.head = parse_head(bytes(conn.buffer[: MAX_HEAD_BYTES + 4]))
            except FramingError as exc:
                self._refuse(conn, exc.status, "bad_request", exc.message)
                return
            if conn.head is None:
                return
        head = conn.head
        total = head.size + head.body_length
        if len(conn.buffer) >= total:
            self._release(conn)
            self._unregister(conn)
            conn.state = "ready"
            self.ready.append((time.monotonic(), conn))
            return
        if not conn.prechecked:
            # The body is still on its way: ask the app whether it would be refused
            # anyway before spending memory and time on it.
            self._unregister(conn)
            conn.state = "checking"
            self.pool.submit(self._precheck, conn)
            return
        if not conn.reserved:
            if head.body_length > self.body_budget:
                self._impaired("request body budget exhausted")
                self._refuse(conn, 503, "busy", "too many request bodies arriving; retry")
                return
            self.body_budget -= head.body_length
            conn.reserved = head.body_length

    def _precheck(self, conn: Conn) -> None:
        """Pool thread: the app's verdict on a head whose body has not arrived."""
        head = conn.head
        assert head is not None
        check: Precheck | None = self._extension("dffmpeg.precheck")
        verdict = None
        if check is not None:
            try:
                verdict = check(head.method, head.target, head.headers)
            except Exception:
                self.log.exception("request pre-check failed")
                verdict = (503, {"error": "busy", "message": "cannot check the request now"})
        self.done.put(lambda: self._prechecked(conn, verdict))
        self._wake()

    def _prechecked(self, conn: Conn, verdict: tuple[int, dict[str, Any]] | None) -> None:
        if conn not in self.conns:
            return
        if verdict is not None:
            status, body = verdict
            self._refuse(conn, status, str(body.get("error")), str(body.get("message")))
            return
        conn.prechecked = True
        conn.state = "reading"
        if conn.head is not None and conn.head.headers.get("expect", "").lower() == "100-continue":
            self._send_quietly(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        self._register(conn)
        self._advance(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self.expired_at < EXPIRE_SECONDS:
            return
        self.expired_at = now
        for conn in list(self.conns):
            if conn.state in ("idle", "reading") and conn.deadline <= now:
                if conn.state == "reading" and conn.buffer:
                    self._refuse(conn, 408, "request_timeout", "the request took too long")
                else:
                    self._close(conn)
        if self.ready and now - self.ready[0][0] > SATURATED_AFTER:
            self._impaired("every request thread busy")

    # -- serving ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self.ready and self.busy < self.cfg.threads:
            queued_at, conn = self.ready.popleft()
            if time.monotonic() - queued_at > SATURATED_AFTER:
                self._impaired("every request thread busy")
            head = conn.head
            assert head is not None
            end = head.size + head.body_length
            # One copy each of the head and the body, out of the connection's buffer.
            with memoryview(conn.buffer) as view:
                head_bytes, body = bytes(view[: head.size]), bytes(view[head.size : end])
            # A new buffer for what follows (a pipelined request's start, usually
            # nothing): the old one's allocation, as large as the body, goes with it.
            conn.buffer = conn.buffer[end:]
            conn.head = None
            conn.prechecked = False
            conn.state = "serving"
            self.busy += 1
            self.pool.submit(self._serve, conn, head_bytes, body)

    def _serve(self, conn: Conn, head: bytes, body: bytes) -> None:
        """Pool thread: run the app on one buffered request and write its answer."""
        keep = False
        try:
            conn.sock.setblocking(True)
            # Bounds writing the answer to a client that does not read it. A kernel send
            # timeout, not ``settimeout``: with a Python timeout a non-blocking peek at
            # the socket (coordinator/api/peer.py) would wait for the timeout first.
            seconds = int(self.request_timeout)
            conn.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0)
            )
            keep = self._handle(conn, head, body)
        except Exception:
            keep = False
        finally:
            self.done.put(lambda: self._served(conn, keep))
            self._wake()

    def _handle(self, conn: Conn, head: bytes, body: bytes) -> bool:
        """Parse ``head`` with gunicorn's parser (the app sees the environ it would make);
        the body goes to the app from memory (``_respond``)."""
        req = None
        try:
            parser = http.RequestParser(self.cfg, iter([head]), conn.addr)
            req = next(parser)
            return self._respond(req, conn, body)
        except StopIteration:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.debug("socket error answering a request: %s", exc)
            return False
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.addr, exc)
            return False

    def _respond(self, req: Any, conn: Conn, body: bytes) -> bool:
        environ: dict[str, Any] = {}
        resp = None
        started = datetime.now()
        try:
            self.cfg.pre_request(self, req)
            resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            # The body is in memory already, whole (``Content-Length`` framing only):
            # the app reads it from there. Through gunicorn's reader, which keeps the
            # unread rest in a buffer it copies again on every read, a 1 MiB body read
            # 64 KiB at a time (werkzeug's step) cost about 16 MiB of copying.
            environ["wsgi.input"] = io.BytesIO(body)
            environ[BODY_ENVIRON_KEY] = body
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            # The answer's head goes out with the first piece of its body (environ keeps
            # the real socket, which the app peeks at).
            out = HeadWithBody(conn.sock)
            resp.sock = out
            result = self.wsgi(environ, resp.start_response)
            try:
                for item in result:
                    resp.write(item)
                    out.flush()
                resp.close()
                out.flush()
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if hasattr(result, "close"):
                    result.close()
            return not resp.should_close()
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def _served(self, conn: Conn, keep: bool) -> None:
        self.busy -= 1
        if not keep or not self.alive:
            self._close(conn)
            return
        try:
            conn.sock.setblocking(False)
        except OSError:
            self._close(conn)
            return
        conn.state = "idle"
        conn.deadline = time.monotonic() + self.cfg.keepalive
        self._register(conn)
        if conn.buffer:  # a pipelined request came with the last one
            conn.state = "reading"
            conn.deadline = time.monotonic() + self.request_timeout
            self._advance(conn)

    # -- connections -----------------------------------------------------------------------

    def _register(self, conn: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):  # registered, or closed
            self.selector.register(
                conn.sock, selectors.EVENT_READ, lambda _s, c=conn: self._readable(c)
            )

    def _unregister(self, conn: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(conn.sock)

    def _release(self, conn: Conn) -> None:
        self.body_budget += conn.reserved
        conn.reserved = 0

    def _send_quietly(self, conn: Conn, data: bytes) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(data)  # small: fits the socket buffer of a fresh connection

    def _refuse(self, conn: Conn, status: int, error: str, message: str) -> None:
        """Answer from the loop itself and close (the rest of the request is unread)."""
        self._send_quietly(conn, _answer(status, error, message))
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        self._unregister(conn)
        self._release(conn)
        self.conns.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _shutdown(self) -> None:
        """Stop accepting; let requests being served finish within the graceful timeout."""
        self._set_accepting(False)
        for conn in list(self.conns):
            if conn.state in ("idle", "reading"):
                self._close(conn)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.busy > 0 and time.monotonic() < deadline:
            self.notify()
            self._tick(LOOP_SECONDS)
        self.pool.shutdown(wait=False)
        for conn in list(self.conns):
            self._close(conn)
        self.selector.close()
        for listener in self.sockets:
            listener.close()
