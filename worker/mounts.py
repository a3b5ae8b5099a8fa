"""Which path variables this worker can offer right now.

A path variable is offered only while its root is present. Roots are often network
mounts, and ``stat`` on a hung NFS or SMB mount can block for minutes, so every check
runs in a throw-away thread with a timeout: a check that does not answer in time counts
as "not present", and no other thread (heartbeats above all) ever waits on it. While a
check of a root is still stuck, that root is not checked again (no pile of threads).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0
INTERVAL_SECONDS = 5.0


def root_present(root: str) -> bool:
    """A mounted root is a directory we can list (an empty mount point is not enough to
    tell, but a missing or unreadable one clearly is not usable)."""
    if not os.path.isdir(root):
        return False
    try:
        with os.scandir(root):
            return True
    except OSError:
        return False


class MountMonitor:
    """Checks the roots of ``paths`` every ``interval`` seconds in its own thread and
    calls ``on_change(variables)`` with the sorted list of present variables whenever it
    changes. ``check`` decides whether one root is present."""

    def __init__(
        self,
        paths: Mapping[str, str],
        on_change: Callable[[list[str]], None],
        interval: float = INTERVAL_SECONDS,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        check: Callable[[str], bool] = root_present,
    ) -> None:
        self.paths = dict(paths)
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.check = check
        self._stuck: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: list[str] = []

    def _check_with_timeout(self, root: str) -> bool:
        stuck = self._stuck.get(root)
        if stuck is not None:
            if stuck.is_alive():
                return False
            del self._stuck[root]
        result: list[bool] = []
        thread = threading.Thread(
            target=lambda: result.append(self.check(root)), name="mount-check", daemon=True
        )
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            log.warning("mount check of %s did not answer in %.0fs", root, self.timeout)
            self._stuck[root] = thread
            return False
        return bool(result and result[0])

    def available(self) -> list[str]:
        """Check every root now (each bounded by the timeout) and return what is present."""
        present = sorted(
            name for name, root in self.paths.items() if self._check_with_timeout(root)
        )
        missing = sorted(set(self.paths) - set(present))
        if missing and present != self.current:
            log.warning("path variables not available: %s", ", ".join(missing))
        self.current = present
        return present

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mounts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            before = self.current
            now = self.available()
            if now != before:
                try:
                    self.on_change(now)
                except Exception:
                    log.exception("could not report changed path variables")
