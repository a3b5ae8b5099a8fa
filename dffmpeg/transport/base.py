"""The transport interface: how a party hears that something changed for it.

A *transport* carries notifications from the coordinator to a worker or a client (the
downlink). It never carries the data itself: on a notification the party fetches what
changed over signed HTTP, by seq, from the coordinator, whose database is the source of
truth. So a lost, duplicated or reordered notification costs at most latency, never
data, and ordering per recipient is the seq order of the HTTP reads.

Parties name what they wait for with *keys*:

- ``worker``        new jobs, assignments and cancellations for this worker
- ``output:JOB``    new output or a final status of a job this client submitted
- ``input:JOB``     new stdin/EOF/signal frames for a job this worker runs
- ``ping``          the reachability handshake

Keys become *addresses* (tuples of segments, see ``addresses_for``); a backend joins
them with its separator (``/`` for MQTT, ``.`` for RabbitMQ) so that everything meant for
identity X lives under ``to/X/...``, which is what an operator grants X and nothing else.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dffmpeg import signing
from dffmpeg.backoff import Backoff
from dffmpeg.config import BrokerSettings

Address = tuple[str, ...]
log = logging.getLogger(__name__)

# Broadcasts: a pending job any worker may claim; "re-read everything" after the
# coordinator's own broker connection came back (it may have missed publishing).
JOBS: Address = ("jobs",)
ALL: Address = ("all",)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class Unsupported(Exception):
    """The backend has no such operation (e.g. pausing a connection HTTP does not keep)."""


class TransportError(Exception):
    """A transport could not be set up (bad URL, missing settings)."""


def segment(value: str) -> str:
    """``value`` made safe as one topic/routing-key segment (``/ . + # *`` escaped as ~XX).

    Identities and job ids are normally plain; the escape keeps an odd one from
    spanning segments or acting as a wildcard.
    """
    return _SAFE.sub(lambda m: "".join(f"~{b:02X}" for b in m.group().encode()), value)


def to(identity: str, *rest: str) -> Address:
    return ("to", segment(identity), *(segment(r) for r in rest))


def addresses_for(identity: str, role: str, key: str) -> list[Address]:
    """Where notifications for ``key`` of ``identity`` are published."""
    if key == "worker":
        return [to(identity, "worker"), JOBS] if role in ("worker", "admin") else []
    if key == "ping":
        return [to(identity, "ping")]
    kind, _, job = key.partition(":")
    if kind in ("output", "input") and job:
        return [to(identity, kind, job)]
    raise ValueError(f"unknown transport key {key!r}")


def key_of(address: Address, identity: str) -> str | None:
    """The party's key for a received address (None: not for us; "*" for ALL)."""
    if address == ALL:
        return "*"
    if address == JOBS:
        return "worker"
    if len(address) < 3 or address[0] != "to" or address[1] != segment(identity):
        return None
    if address[2] in ("worker", "ping") and len(address) == 3:
        return address[2]
    if address[2] in ("output", "input") and len(address) == 4:
        return f"{address[2]}:{address[3]}"
    return None


def message(**fields: object) -> bytes:
    """A notification body: small JSON, only hints (the data is fetched over HTTP)."""
    return json.dumps({"at": time.time(), **fields}).encode()


class Signals:
    """One flag per key: set by the transport's thread, awaited by the party.

    ``arm`` before fetching, ``wait`` after a fetch found nothing: a notification that
    arrives during the fetch leaves the flag set, so it is never slept through.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._set: set[str] = set()
        self._known: set[str] = set()  # keys armed so far: what fire_all sets
        self.tokens: set[str] = set()

    def arm(self, key: str) -> None:
        with self._lock:
            self._known.add(key)
            self._set.discard(key)

    def fire(self, key: str, token: str | None = None) -> None:
        with self._lock:
            if token:
                self.tokens.add(token)
            self._set.add(key)
            self._lock.notify_all()

    def fire_all(self) -> None:
        """Every key: after a (re)connect the party must catch up over HTTP.

        A key never armed needs nothing: its first read comes after this anyway.
        """
        with self._lock:
            self._set |= self._known
            self._lock.notify_all()

    def is_set(self, key: str) -> bool:
        with self._lock:
            return key in self._set

    def wait(self, key: str, timeout: float) -> bool:
        """True when ``key`` fired (the flag is consumed); False on timeout."""
        with self._lock:
            self._known.add(key)
            fired = self._lock.wait_for(lambda: key in self._set, timeout=max(0.0, timeout))
            self._set.discard(key)
            return fired

    def wait_token(self, token: str, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: token in self.tokens, timeout=timeout)


@dataclass
class Endpoint:
    """Who the party is and how to reach the coordinator and the brokers."""

    identity: str
    role: str  # "worker" or "client"
    coordinator_url: str = ""
    hmac_key: str = ""
    brokers: BrokerSettings = field(default_factory=BrokerSettings)
    # For an https:// coordinator: an ``ssl.SSLContext`` (the party's ca_file and
    # certificate), or None for the system's defaults.
    tls_context: Any = None


class Transport(ABC):
    """The party side of one backend.

    Contract:

    - ``start`` returns at once; connecting happens in the background, retried with
      back-off for as long as the transport lives (a broker that is down at start-up is
      not an error). ``start`` raises ``TransportError`` only for bad settings.
    - After every (re)connect the transport fires every key (``Signals.fire_all``): what
      was published while it was away is caught up over HTTP, so nothing is lost.
    - ``watch(key)`` returns once notifications for ``key`` will be received (or after
      ``timeout`` when disconnected); ``unwatch`` stops them.
    - ``healthy`` is False while disconnected; the party then falls back to HTTP.
    - ``close`` stops every thread the transport started and drops its connection.
    """

    name: ClassVar[str]
    # True: the party's HTTP read itself waits (long-poll); no separate notifications.
    long_poll: ClassVar[bool] = False

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.signals = Signals()
        self.rejected = 0  # notifications dropped: not sealed with our key
        self._watched: set[str] = set()
        self._watch_lock = threading.Lock()

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def healthy(self) -> bool: ...

    def pause(self) -> None:
        """Drop the connection and stay away until ``resume`` (maintenance, outage drills).

        A broker keeps what it holds for the party meanwhile (a worker's durable queue
        or persistent session) and hands it over after ``resume``.
        """
        raise Unsupported(f"{self.name} has no connection to pause")

    def resume(self) -> None:
        raise Unsupported(f"{self.name} has no connection to resume")

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def watch(self, key: str, timeout: float = 5.0) -> None:
        with self._watch_lock:
            self._watched.add(key)

    def unwatch(self, key: str) -> None:
        with self._watch_lock:
            self._watched.discard(key)

    def watched(self) -> list[str]:
        with self._watch_lock:
            return sorted(self._watched)

    def deliver(self, address: Address, payload: bytes) -> None:
        """Called by the backend's thread for every message received.

        A message addressed to this party must be sealed with its key
        (``signing.seal``); anything else is dropped. Broadcasts (``jobs``, ``all``)
        are plain wake-ups: all they can do is make the party read over signed HTTP.
        """
        key = key_of(address, self.endpoint.identity)
        if key is None:
            return
        if key == "*":
            self.signals.fire_all()
            return
        if address != JOBS:
            opened = signing.unseal(self.endpoint.hmac_key, address, payload)
            if opened is None:
                self.rejected += 1
                log.warning("dropped a %s notification that is not sealed for us", self.name)
                return
            payload = opened
        token = None
        if key == "ping":
            try:
                token = str(json.loads(payload).get("token") or "") or None
            except (ValueError, AttributeError):
                token = None
        self.signals.fire(key, token)


class Publisher(ABC):
    """The coordinator side of one backend.

    Contract: ``publish`` never blocks on the network and never raises; a message that
    cannot be sent (broker down) is dropped, because parties catch up over HTTP when
    their own connection comes back, and the publisher publishes to ``ALL`` when its
    connection comes back. ``healthy`` says whether publishing currently works.
    """

    name: ClassVar[str]

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def healthy(self) -> bool: ...

    @abstractmethod
    def publish(self, address: Address, payload: bytes) -> None: ...


def reconnect_backoff() -> Backoff:
    """Broker and stream reconnects: the shared policy (dffmpeg/backoff.py), 0.2 s
    doubling to 10 s, with jitter so parties do not all come back at once."""
    return Backoff(initial=0.2, maximum=10.0)


Sleep = Callable[[float], bool]
