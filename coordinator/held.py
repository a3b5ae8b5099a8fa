"""Held requests (long-polls, streams) get a bounded share of the request threads.

Every held request keeps one of the process's ``gunicorn_threads`` pool threads for as
long as it waits. Left alone, one greedy client holding four dozen output long-polls, or
a few dozen ``/transport/stream`` connections, takes every thread: heartbeats, claims and
finishes of everybody else then wait, and the janitor declares healthy workers lost.

So each process counts what is held, per identity and in total:

* an identity holds at most its ``max_held_requests`` (coordinator/quotas.py) at once;
* all identities together hold at most ``held_request_threads`` (by default three
  quarters of the pool); the other threads are always free for short requests.

A long-poll past either bound is not queued: it is answered at once, as if it had been
sent with ``wait=0`` (a poll still claims, a read still returns what is there), with
``Retry-After: 1`` so the party waits a moment before asking again. A stream past a
bound is refused with 429 and a JSON body naming the bound. Counting is per process, as
the threads are.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import Response, current_app, g

from coordinator.errors import ApiError

RETRY_AFTER_SECONDS = 1
HEADER_REFUSED = "X-Dffmpeg-Held-Refused"


class HeldLimit(ApiError):
    status = 429
    code = "limit_exceeded"


class HeldRequests:
    """The counts of one process. Thread-safe; every method is quick."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._by_identity: Counter[str] = Counter()
        self._total = 0

    def try_hold(self, identity: str, per_identity: int) -> str | None:
        """Count one more held request of ``identity``; or the name of the bound that
        refuses it (nothing is counted then)."""
        with self._lock:
            if self._by_identity[identity] >= per_identity:
                return "max_held_requests"
            if self._total >= self.threads:
                return "held_request_threads"
            self._by_identity[identity] += 1
            self._total += 1
        return None

    def release(self, identity: str) -> None:
        with self._lock:
            self._by_identity[identity] -= 1
            if self._by_identity[identity] <= 0:
                del self._by_identity[identity]
            self._total -= 1

    def held(self, identity: str | None = None) -> int:
        with self._lock:
            return self._total if identity is None else self._by_identity[identity]


def _registry() -> HeldRequests:
    registry: HeldRequests = current_app.extensions["dffmpeg.held"]
    return registry


def _try_hold() -> tuple[HeldRequests, str, str | None]:
    registry = _registry()
    identity = g.user.client_id
    return registry, identity, registry.try_hold(identity, g.user.limits["max_held_requests"])


@contextmanager
def long_poll(wait: float) -> Iterator[float]:
    """How long the current long-poll may wait: ``wait`` when it may be held, 0 when a
    bound refuses it (then the answer carries ``Retry-After``, see ``mark_refused``)."""
    if wait <= 0:
        yield wait
        return
    registry, identity, refused = _try_hold()
    if refused is not None:
        g.held_refused = refused
        yield 0.0
        return
    try:
        yield wait
    finally:
        registry.release(identity)


def hold_stream() -> Callable[[], None]:
    """Count a stream for the current caller; its release function, to run when the
    response closes. 429 when a bound refuses it."""
    registry, identity, refused = _try_hold()
    if refused is not None:
        allowed = g.user.limits["max_held_requests"] if refused == "max_held_requests" else None
        raise HeldLimit(
            "too many held requests: try again later",
            limit=refused,
            **({"allowed": allowed} if allowed is not None else {}),
        )
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            registry.release(identity)

    return release


def mark_refused(response: Response) -> Response:
    """After a view: a long-poll answered at once by a bound says when to come back."""
    refused = g.pop("held_refused", None)
    if refused is not None:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        response.headers[HEADER_REFUSED] = refused
    return response
