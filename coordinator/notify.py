"""Wake-ups for long-polls.

A long-poll waits on a key ("worker:ID", "output:JOB", ...). Writers call ``notify``
after they commit. Inside one process that wakes the waiter at once. Other coordinator
processes learn of it through the listeners: ``coordinator.wakeups`` carries it through
the database (and a broker transport may carry it too); what arrives from elsewhere is
handed to ``wake``, which wakes local waiters without publishing again. Waiters also
re-check the database every ``recheck`` seconds, a safety net should a wake-up be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

T = TypeVar("T")


class WaitObserver(Protocol):
    """Told when a long-poll starts to be held and when it ends (for metrics)."""

    def wait_started(self, kind: str) -> None: ...

    def wait_ended(self, kind: str, woken_with_news: bool) -> None: ...


def wait_kind(keys: list[str]) -> str:
    """What a wait is for, from its first key: ``worker``, ``output`` or ``input``."""
    kind = keys[0].partition(":")[0] if keys else ""
    return "worker" if kind == "jobs" else kind


class Notifier:
    """Long-poll waits and wake-ups.

    ``before_wait`` runs each time a waiter is about to block: the coordinator ends the
    request's database transaction there, so a long-poll never holds a pooled
    connection while it sleeps (a lazy load inside ``check`` would otherwise keep one,
    and a few dozen waiting polls would starve every other request of connections).

    Each waiter sleeps on an event of its own, and a wake-up sets only the events of
    the waiters on its keys: a process holds dozens of long-polls, and one shared
    condition would wake every one of them (a thread switch and a check of the
    predicate each) for every job's every change.
    """

    def __init__(
        self,
        recheck: float = 1.0,
        before_wait: Callable[[], None] | None = None,
        observer: WaitObserver | None = None,
    ) -> None:
        self.recheck = recheck
        self.before_wait = before_wait
        self.observer = observer
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._closed = threading.Event()
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []

    def subscribe(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``listener(keys)`` after every ``notify`` (e.g. to publish to a broker).

        A listener runs in the notifying request's thread: it must be quick and must
        not raise (hand slow work to a thread of its own).
        """
        self._listeners.append(listener)

    def shutdown(self) -> None:
        """End every wait at once (the process is draining)."""
        with self._lock:
            self._closed.set()
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def notify(self, *keys: str) -> None:
        """Something behind ``keys`` changed and was committed: wake waiters everywhere."""
        for listener in self._listeners:
            listener(keys)
        self.wake(*keys)

    def wake(self, *keys: str) -> None:
        """Wake this process's waiters on ``keys`` only (a wake-up from elsewhere)."""
        with self._lock:
            for key in keys:
                for event in self._waiters.get(key, ()):
                    event.set()

    def waiting_keys(self) -> list[str]:
        """The keys some request of this process is waiting on right now."""
        with self._lock:
            return list(self._waiters)

    def _register(self, keys: list[str], event: threading.Event) -> None:
        with self._lock:
            for key in keys:
                self._waiters.setdefault(key, set()).add(event)

    def _unregister(self, keys: list[str], event: threading.Event) -> None:
        with self._lock:
            for key in set(keys):
                events = self._waiters[key]
                events.discard(event)
                if not events:
                    del self._waiters[key]

    @contextmanager
    def listening(self, keys: list[str]) -> Iterator[threading.Event]:
        """A waiter on ``keys`` registered now, for a ``wait_for`` on the same keys later
        in the block. A caller that registers before it commits what the keys stand for
        (a submission, before its job exists) knows that a check could find nothing
        until a wake-up came: that wait skips its first check."""
        event = threading.Event()
        self._register(keys, event)
        try:
            yield event
        finally:
            self._unregister(keys, event)

    def wait_for(
        self,
        keys: list[str],
        check: Callable[[], T | None],
        timeout: float,
        listening: threading.Event | None = None,
    ) -> T | None:
        """Call ``check`` until it returns something or ``timeout`` passes.

        ``check`` runs once at once, then after every wake-up of one of ``keys`` and at
        least every ``recheck`` seconds. The waiter is registered before the first
        check, and its event is cleared before each check, so a wake-up that comes
        while ``check`` runs is not lost: the next wait returns at once. With
        ``listening`` (from ``listening``, registered earlier) the first check runs
        only if a wake-up came since, or when there is no time to wait.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        event = listening if listening is not None else threading.Event()
        if listening is None:
            self._register(keys, event)
        skip_first = listening is not None and timeout > 0
        held = False  # whether it waited at all: most reads answer at once
        result: T | None = None
        try:
            while True:
                # Skipped when nothing happened since the early waiter registered.
                if not (skip_first and not event.is_set()):
                    event.clear()
                    result = check()
                    if result is not None:
                        return result
                skip_first = False
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    return None
                if self.before_wait is not None:
                    self.before_wait()
                if not held and self.observer is not None:
                    held = True
                    self.observer.wait_started(wait_kind(keys))
                woken = event.wait(timeout=min(remaining, self.recheck))
                if not woken and time.monotonic() >= deadline:
                    # Nothing happened until the end: no final check, the caller's next
                    # request (which follows at once) begins with one anyway.
                    return None
        finally:
            if listening is None:
                self._unregister(keys, event)
            if held and self.observer is not None:
                self.observer.wait_ended(wait_kind(keys), result is not None)
