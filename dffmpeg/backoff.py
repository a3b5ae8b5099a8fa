"""The one retry policy of every party: exponential back-off with full jitter, capped.

Every retry in the client, the drop-in and the worker (a request that found the
coordinator unreachable or its database unavailable, a registration, a poll, a
transport handshake) waits by this policy, so that after an outage the parties come
back spread out over a moment instead of all in the same millisecond, and none of them
waits longer than ``maximum`` between attempts: a coordinator that returns is noticed
within ``maximum`` seconds, well inside the leases it grants (``for_lease``).

The delay before attempt n (counted from 0) is drawn uniformly from
``[minimum_share * d, d]`` with ``d = min(maximum, initial * factor**n)``: mostly
"full jitter", but never so close to zero that a tight loop of retries results.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

# A request that failed because of the coordinator's own state (restarting, database
# down) is retried first after about this long, then less and less often, up to:
INITIAL_SECONDS = 0.1
MAXIMUM_SECONDS = 2.0
FACTOR = 2.0
MINIMUM_SHARE = 0.5


class Backoff:
    """Delays for one sequence of retries; ``reset`` after a success.

    Thread-safe: a worker's heartbeat and poll threads may share one.
    """

    def __init__(
        self,
        initial: float = INITIAL_SECONDS,
        maximum: float = MAXIMUM_SECONDS,
        factor: float = FACTOR,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("back-off needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._rng = rng
        self._attempt = 0
        self._lock = threading.Lock()

    @classmethod
    def for_lease(cls, lease_seconds: float, initial: float = 0.5) -> Backoff:
        """Retries of a party holding a lease of ``lease_seconds``: never more than a
        quarter of the lease between attempts (and at most ``MAXIMUM_SECONDS * 5``), so
        that a coordinator that comes back hears from the party in time."""
        maximum = max(0.2, min(MAXIMUM_SECONDS * 5, lease_seconds / 4))
        return cls(initial=min(initial, maximum), maximum=maximum)

    def next_delay(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        with self._lock:
            attempt = self._attempt
            self._attempt += 1
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * (MINIMUM_SHARE + (1 - MINIMUM_SHARE) * self._rng())

    def reset(self) -> None:
        with self._lock:
            self._attempt = 0

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempt
