"""SQLite's checkpoints, on a thread of their own instead of the request threads.

In WAL mode every commit appends to the write-ahead log, and a commit that leaves the
log past ``wal_autocheckpoint`` pages copies the log into the database file before it
returns. On the request path that is the worker's output request in the middle of a
stream: about 2.5 ms per MiB of log, paid while the worker waits for its
acknowledgement and the caller for its bytes (docs/performance.md, "Binary stdout").

So on SQLite the coordinator's connections checkpoint on their own only as a backstop
(``AUTO_CHECKPOINT_PAGES``, coordinator/schema.py), and this service does it instead:
the first commit after a quiet spell wakes it, and it checkpoints (``PASSIVE``: it
never waits for readers or writers, and they never wait for it) once commits pause for
``QUIET_SECONDS``, or after ``MAX_DELAY_SECONDS`` of commits that do not pause. A short
job's or a stream's log is then copied once the burst is over, and a long stream's
every half second, while the requests go on. The janitor's truncation
(coordinator/storage.py) still gives the log's space back every few minutes.

Only the first commit after a checkpoint wakes the thread; the others find the flag
set and cost an attribute read.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, event

from coordinator import storage

log = logging.getLogger(__name__)

QUIET_SECONDS = 0.1
MAX_DELAY_SECONDS = 0.5
# A failing checkpoint is logged at most this often (the janitor's sweep reports the
# database's state; this only says the checkpoint is not keeping up).
ERROR_LOG_SECONDS = 60.0


class Checkpointer:
    """Checkpoints one SQLite engine's write-ahead log after its commits."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._written = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        self.checkpoints = 0  # completed, for tests and diagnostics

    def _committed(self, _conn: Any) -> None:
        if not self._written.is_set():
            self._written.set()

    def start(self) -> None:
        event.listen(self.engine, "commit", self._committed)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._written.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        event.remove(self.engine, "commit", self._committed)

    def _run(self) -> None:
        while True:
            self._written.wait()
            if self._stop.is_set():
                return
            began = time.monotonic()
            while True:
                self._written.clear()
                if self._stop.wait(QUIET_SECONDS):
                    return
                if not self._written.is_set() or time.monotonic() - began >= MAX_DELAY_SECONDS:
                    break
            self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            storage.checkpoint(self.engine, "PASSIVE")
        except Exception as exc:  # the driver's own errors too: this thread must go on
            now = time.monotonic()
            if now - self._last_error_log >= ERROR_LOG_SECONDS:
                self._last_error_log = now
                log.warning("write-ahead log checkpoint failed: %s", exc)
            return
        self.checkpoints += 1
