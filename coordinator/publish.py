"""Coordinator side of the transports: turn Notifier keys into per-recipient messages.

The Notifier calls ``Fanout`` after every committed change with keys such as
``worker:ID`` or ``output:JOB``. ``Fanout`` only enqueues (it runs on request threads);
its own thread looks up who each key is for (a job's requester, the worker holding it)
and hands the message to every enabled publisher: the broker ones (MQTT, RabbitMQ) and
``LocalHub``, which feeds the NDJSON streams held open by this process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable

from flask import Flask

from coordinator import users
from coordinator.db import db
from coordinator.models import Job
from coordinator.notify import Notifier
from coordinator.observe import KEY
from dffmpeg import signing
from dffmpeg.config import CoordinatorConfig
from dffmpeg.transport import PUBLISHERS, create_publisher
from dffmpeg.transport.base import ALL, JOBS, Address, Publisher, message, to

log = logging.getLogger(__name__)

CACHE_LIMIT = 4096
# After a key is rotated, notifications sealed with the old one are ignored by the party
# for at most this long (it still reads over HTTP, only later).
KEY_CACHE_SECONDS = 30.0


class Subscription:
    """One open stream's inbox."""

    def __init__(self, addresses: Iterable[Address]) -> None:
        self.addresses = {*addresses, ALL}
        self.inbox: queue.SimpleQueue[tuple[Address, bytes]] = queue.SimpleQueue()


class LocalHub(Publisher):
    """In-process publisher for the ``stream`` transport (NDJSON over HTTP).

    Only notifications made in this process reach its streams; with several
    coordinator processes, a change made by another one arrives with the party's
    periodic catch-up read (docs/transports.md), so use a broker there.
    """

    name = "stream"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[Address, set[Subscription]] = {}

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def subscribe(self, addresses: Iterable[Address]) -> Subscription:
        sub = Subscription(addresses)
        with self._lock:
            for address in sub.addresses:
                self._subs.setdefault(address, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            for address in sub.addresses:
                subs = self._subs.get(address)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._subs[address]

    def publish(self, address: Address, payload: bytes) -> None:
        with self._lock:
            subs = list(self._subs.get(address, ()))
        for sub in subs:
            sub.inbox.put((address, payload))


class Fanout:
    """The Notifier listener: resolves recipients on its own thread and publishes."""

    def __init__(self, app: Flask, publishers: dict[str, Publisher]) -> None:
        self.app = app
        self.publishers = publishers
        self.instruments = app.extensions[KEY]
        self._queue: queue.SimpleQueue[tuple[str, ...] | None] = queue.SimpleQueue()
        self._parties: dict[str, tuple[str, str | None]] = {}  # job -> (requester, worker)
        # identity -> (key, when read), for sealing; this thread only.
        self._keys: dict[str, tuple[str, float]] = {}
        self._thread = threading.Thread(target=self._run, name="publish", daemon=True)
        self._closed = False

    def start(self) -> None:
        for publisher in self.publishers.values():
            publisher.start()
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(5)
        for publisher in self.publishers.values():
            publisher.close()

    def stop(self) -> None:
        """``close``, under the name the coordinator's service owner calls."""
        self.close()

    def __call__(self, keys: tuple[str, ...]) -> None:
        self._queue.put(keys)

    def send(self, transport: str, address: Address, payload: bytes) -> bool:
        """Publish on one transport only (the handshake); False if it cannot now."""
        publisher = self.publishers.get(transport)
        if publisher is None or not publisher.healthy():
            return False
        publisher.publish(address, payload)
        return True

    def _run(self) -> None:
        while True:
            keys = self._queue.get()
            if keys is None:
                return
            try:
                with self.app.app_context():
                    addresses = self.resolve(keys)
                    db.session.remove()
            except Exception:  # a database hiccup must not end publishing
                log.exception("cannot resolve recipients of %s", keys)
                continue
            for publisher in self.publishers.values():
                # A publisher that is down drops what it is given (see Publisher).
                if addresses and publisher.healthy():
                    self.instruments.delivered(publisher.name, len(addresses))
            for address, payload in addresses:
                for publisher in self.publishers.values():
                    publisher.publish(address, payload)

    def resolve(self, keys: Iterable[str]) -> list[tuple[Address, bytes]]:
        """Each recipient's address and its message, sealed with its key."""
        out: dict[Address, tuple[str, str | None]] = {}  # address -> (key, identity)
        for key in keys:
            kind, _, ident = key.partition(":")
            if kind == "jobs":
                out[JOBS] = ("worker", None)  # a broadcast: a plain wake-up for any worker
            elif kind in ("worker", "slot") and ident:
                # A free slot is news for the worker like any other of its own.
                out[to(ident, "worker")] = ("worker", ident)
            elif kind in ("output", "input", "job") and ident:
                requester, worker = self._job_parties(ident, need_worker=kind != "output")
                if kind in ("output", "job") and requester:
                    out[to(requester, "output", ident)] = (f"output:{ident}", requester)
                if kind in ("input", "job") and worker:
                    out[to(worker, "input", ident)] = (f"input:{ident}", worker)
        return [
            (address, self._sealed(address, message(key=key), identity))
            for address, (key, identity) in out.items()
        ]

    def _sealed(self, address: Address, payload: bytes, identity: str | None) -> bytes:
        if identity is None:
            return payload
        cached = self._keys.get(identity)
        now = time.monotonic()
        if cached is None or now - cached[1] > KEY_CACHE_SECONDS:
            key = users.key_for(identity)
            if key is None:
                return payload  # no such identity (deleted): nobody can take it
            if len(self._keys) >= CACHE_LIMIT:
                self._keys.clear()
            cached = self._keys[identity] = (key, now)
        return signing.seal(cached[0], address, payload)

    def _job_parties(self, job_id: str, need_worker: bool) -> tuple[str | None, str | None]:
        cached = self._parties.get(job_id)
        if cached is not None and (cached[1] is not None or not need_worker):
            return cached
        row = db.session.execute(
            db.select(Job.requester, Job.worker_id).where(Job.id == job_id)
        ).first()
        if row is None:
            return None, None
        if len(self._parties) >= CACHE_LIMIT:
            self._parties.clear()
        # The requester never changes; the worker only before the job runs, and input
        # is only sent to a running job.
        self._parties[job_id] = (row[0], row[1])
        return row[0], row[1]


def install(app: Flask, settings: CoordinatorConfig, notifier: Notifier) -> Fanout | None:
    """The fan-out, if any transport besides plain HTTP long-poll is enabled; subscribed
    to ``notifier`` but not started (the coordinator's service owner starts it)."""
    publishers: dict[str, Publisher] = {}
    if "stream" in settings.transports:
        publishers["stream"] = LocalHub()
    for name in settings.transports:
        if name in PUBLISHERS:
            publishers[name] = create_publisher(name, settings.brokers)
    if not publishers:
        return None
    fanout = Fanout(app, publishers)
    app.extensions["dffmpeg.fanout"] = fanout
    notifier.subscribe(fanout)
    return fanout
