"""The one owner of the coordinator's background services.

Besides the request threads a coordinator process runs a few services of its own, each
a thread (or a few) with ``start`` and ``stop``:

* the **janitor** (coordinator/janitor.py): leases, time-outs, and the maintenance that
  keeps the database bounded (retention purge, SQLite checkpoint);
* the **database wake-ups** (coordinator/wakeups.py) between processes and instances;
* the **broker fan-out** (coordinator/publish.py): notifications over MQTT, RabbitMQ
  and the NDJSON streams.

``create_app`` adds the ones it was asked for to one ``BackgroundServices``, which
starts them together and stops them together, in the reverse order, each one even when
another fails to stop. So a drain (gunicorn's SIGTERM, coordinator/serve.py) or a test
never leaves one running, and a new service is added in one place.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class BackgroundServices:
    def __init__(self) -> None:
        self._services: list[tuple[str, Service]] = []
        self._lock = threading.Lock()
        self._running = False

    def add(self, name: str, service: Service) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError("services are added before they are started")
            if name in self.names:
                raise ValueError(f"service {name} is added twice")
            self._services.append((name, service))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._services]

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Start every service, in the order added; if one fails, stop those started."""
        with self._lock:
            if self._running:
                return
            started: list[tuple[str, Service]] = []
            try:
                for name, service in self._services:
                    service.start()
                    started.append((name, service))
            except Exception:
                self._stop(started)
                raise
            self._running = True

    def stop(self) -> None:
        """Stop every service, the last started first. Idempotent."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._stop(self._services)

    @staticmethod
    def _stop(services: list[tuple[str, Service]]) -> None:
        for name, service in reversed(services):
            try:
                service.stop()
            except Exception:
                log.exception("stopping the %s failed", name)
