"""Wake-ups for long-polls.

A long-poll waits on a key ("worker:ID", "output:JOB", ...). Writers call ``notify``
after they commit. Inside one process that wakes the waiter at once. Other coordinator
processes learn of it through the listeners: ``coordinator.wakeups`` carries it through
the database (and a broker transport may carry it too); what arrives from elsewhere is
handed to ``wake``, which wakes local waiters without publishing again. Waiters also
re-check the database every ``recheck`` seconds, a safety net should a wake-up be lost.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Notifier:
    """Long-poll waits and wake-ups.

    ``before_wait`` runs each time a waiter is about to block: the coordinator ends the
    request's database transaction there, so a long-poll never holds a pooled
    connection while it sleeps (a lazy load inside ``check`` would otherwise keep one,
    and a few dozen waiting polls would starve every other request of connections).
    """

    def __init__(self, recheck: float = 1.0, before_wait: Callable[[], None] | None = None) -> None:
        self.recheck = recheck
        self.before_wait = before_wait
        self._lock = threading.Condition()
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, int] = {}
        self._closed = False
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
            self._closed = True
            self._lock.notify_all()

    def notify(self, *keys: str) -> None:
        """Something behind ``keys`` changed and was committed: wake waiters everywhere."""
        for listener in self._listeners:
            listener(keys)
        self.wake(*keys)

    def wake(self, *keys: str) -> None:
        """Wake this process's waiters on ``keys`` only (a wake-up from elsewhere)."""
        with self._lock:
            woke = False
            for key in keys:
                if key in self._waiters:
                    self._versions[key] = self._versions.get(key, 0) + 1
                    woke = True
            if woke:
                self._lock.notify_all()

    def waiting_keys(self) -> list[str]:
        """The keys some request of this process is waiting on right now."""
        with self._lock:
            return list(self._waiters)

    def _changed(self, keys: list[str], seen: list[int]) -> bool:
        return self._closed or [self._versions.get(k, 0) for k in keys] != seen

    def wait_for(self, keys: list[str], check: Callable[[], T | None], timeout: float) -> T | None:
        """Call ``check`` until it returns something or ``timeout`` passes.

        ``check`` runs once at once, then after every wake-up of one of ``keys`` and at
        least every ``recheck`` seconds. The waiter is registered before the first
        check, so a wake-up that comes while ``check`` runs is not lost.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            for key in keys:
                self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            while True:
                with self._lock:
                    seen = [self._versions.get(key, 0) for key in keys]
                result = check()
                if result is not None:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return None
                if self.before_wait is not None:
                    self.before_wait()
                with self._lock:
                    self._lock.wait_for(
                        functools.partial(self._changed, keys, seen),
                        timeout=min(remaining, self.recheck),
                    )
        finally:
            with self._lock:
                for key in keys:
                    count = self._waiters[key] - 1
                    if count:
                        self._waiters[key] = count
                    else:
                        del self._waiters[key]
                        self._versions.pop(key, None)
