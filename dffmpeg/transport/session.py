"""The party's downlink: negotiate a transport, prove it works, fall back when it breaks.

``Downlink.open`` asks the coordinator which transport to use (``POST
/transport/negotiate`` with the party's preferences), connects it and, for workers,
runs the reachability handshake: the coordinator publishes a random token over the
transport and the party waits for it. Only a transport that delivered the token is
used; otherwise the next one is negotiated, down to HTTP long-poll, which always works.

While a broker transport is in use a monitor thread watches it. When it becomes
unhealthy the party falls back to HTTP long-poll at once (``long_poll`` turns True and
every waiter wakes), and when it is healthy again the handshake is repeated before the
broker is trusted again. The handshake is also repeated every ``RECHECK_SECONDS``, which
catches a broker path that is connected but no longer delivers (for example when the
coordinator's own broker connection is down).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

from dffmpeg.transport import NAMES, TransportError, create_transport
from dffmpeg.transport.base import Endpoint, Transport
from dffmpeg.transport.http import LongPoll

log = logging.getLogger(__name__)

# (method, path under /api/v1, JSON body) -> JSON answer; raises on any failure.
Call = Callable[[str, str, dict[str, Any]], dict[str, Any]]

CONNECT_SECONDS = 5.0
HANDSHAKE_SECONDS = 5.0
RECHECK_SECONDS = 120.0
MONITOR_SECONDS = 0.5


class Downlink:
    def __init__(
        self,
        endpoint: Endpoint,
        preferences: list[str],
        call: Call,
        handshake: bool = True,
        connect_seconds: float = CONNECT_SECONDS,
        handshake_seconds: float = HANDSHAKE_SECONDS,
    ) -> None:
        self.endpoint = endpoint
        self.preferences = [p for p in dict.fromkeys(preferences) if p in NAMES]
        self.call = call
        self.handshake = handshake
        self.connect_seconds = connect_seconds
        self.handshake_seconds = handshake_seconds
        self.transport: Transport = LongPoll(endpoint)
        self.fallen_back = False
        self._stopped = threading.Event()
        self._monitor: threading.Thread | None = None
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "http" if self.long_poll else self.transport.name

    @property
    def long_poll(self) -> bool:
        """True: the caller's HTTP read must wait itself (no notifications coming)."""
        return self.transport.long_poll or self.fallen_back

    def open(self) -> str:
        """Negotiate and connect; returns the transport's name ("http" at worst)."""
        offered = list(self.preferences)
        while offered and offered != ["http"]:
            try:
                reply = self.call("POST", "/transport/negotiate", {"offered": offered})
            except Exception as exc:  # an old or unreachable coordinator: plain HTTP
                log.warning("transport negotiation failed (%s); using http", exc)
                break
            name = str(reply.get("transport") or "http")
            if name == "http" or name not in offered:
                break
            transport = self._connect(name)
            if transport is not None:
                with self._lock:
                    if self._stopped.is_set():  # closed while we were connecting
                        transport.close()
                        return "http"
                    for key in self._keys:  # watched while we were connecting
                        transport.watch(key)
                    self.transport = transport
                    self._monitor = threading.Thread(
                        target=self._watchdog, name="transport-monitor", daemon=True
                    )
                    self._monitor.start()
                log.info("using transport %s", name)
                return name
            offered.remove(name)
        return "http"

    def open_in_background(self) -> None:
        """``open`` on a thread; HTTP long-poll serves until the transport is ready.

        For a client: a long-poll read returns as soon as output exists, so starting
        with it costs no latency, and the drop-in does not wait for a broker connection.
        """
        threading.Thread(target=self.open, name="transport-open", daemon=True).start()

    def _connect(self, name: str) -> Transport | None:
        try:
            transport = create_transport(name, self.endpoint)
            transport.start()
        except (TransportError, ImportError) as exc:
            log.warning("transport %s unavailable: %s", name, exc)
            return None
        if transport.wait_connected(self.connect_seconds) and self._reachable(transport):
            return transport
        log.warning("transport %s failed its handshake; trying the next", name)
        self._report_fallback(name, "handshake_failed")
        transport.close()
        return None

    def _reachable(self, transport: Transport) -> bool:
        """The reachability handshake: a token sent by the coordinator must come back."""
        if not self.handshake:
            return True
        token = secrets.token_hex(8)
        try:
            self.call("POST", "/transport/ping", {"transport": transport.name, "token": token})
        except Exception as exc:
            log.warning("handshake over %s refused: %s", transport.name, exc)
            return False
        return transport.signals.wait_token(token, self.handshake_seconds)

    def close(self) -> None:
        with self._lock:
            self._stopped.set()
            transport, monitor = self.transport, self._monitor
        transport.close()
        if monitor is not None:
            monitor.join(5)

    def watch(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)
            transport = self.transport
        transport.watch(key)

    def unwatch(self, key: str) -> None:
        self._keys.discard(key)
        self.transport.unwatch(key)

    def arm(self, key: str) -> None:
        self.transport.signals.arm(key)

    def wait(self, key: str, timeout: float) -> bool:
        """Sleep until ``key`` is notified, the transport breaks, or ``timeout`` passes."""
        if self.long_poll:
            return True
        return self.transport.signals.wait(key, timeout)

    def _watchdog(self) -> None:
        since_check = 0.0
        while not self._stopped.wait(MONITOR_SECONDS):
            since_check += MONITOR_SECONDS
            healthy = self.transport.healthy()
            if not healthy and not self.fallen_back:
                log.warning("transport %s is down; falling back to http", self.transport.name)
                self._fall_back()
                self._report_fallback(self.transport.name, "down")
            elif healthy and (self.fallen_back or since_check >= RECHECK_SECONDS):
                since_check = 0.0
                if self._reachable(self.transport):
                    if self.fallen_back:
                        log.info("transport %s is back", self.transport.name)
                    self.fallen_back = False
                elif not self.fallen_back:
                    log.warning("transport %s stopped delivering; using http", self.transport.name)
                    self._fall_back()
                    self._report_fallback(self.transport.name, "not_delivering")

    def _report_fallback(self, name: str, reason: str) -> None:
        """Tell the coordinator (it counts fallbacks for its metrics); best effort."""
        try:
            self.call("POST", "/transport/fallback", {"transport": name, "reason": reason})
        except Exception as exc:  # an old coordinator, or it is unreachable too
            log.debug("could not report the fallback from %s: %s", name, exc)

    def _fall_back(self) -> None:
        self.fallen_back = True
        self.transport.signals.fire_all()  # waiters switch to long-poll at once
