"""The output frames this process stored last, handed to a reader in the same process
without reading them back from the database.

A stream's reader usually waits in the process its worker's output request arrives
at, and wakes as soon as each batch committed: reading the batch back (SQLite's
overflow pages, a MiB or two per read) cost it about as much as storing it. The rows
are still written and committed before the worker's request is acknowledged, so
nothing here is the only copy of anything: a reader that finds its next frame missing
(another process stored it, it was dropped to stay within bounds, the coordinator
restarted) reads the database, as it always may.

Only frames that follow the reader's last one are handed out (a contiguous run), and
only of the job's current run (``attempt``: a job queued again starts its output over).
The read that may carry the job's final status always goes to the database
(coordinator/api/jobs.py): every frame of the job is there by then.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice

from dffmpeg.wire import Frame

# Per job run, the newest frames up to this many bytes (a reader lags a batch or two).
RUN_BYTES = 4 * 1024 * 1024
# In all, per process; the run stored to longest ago goes first.
MAX_BYTES = 16 * 1024 * 1024
MAX_RUNS = 256


@dataclass
class _Run:
    """One job run's newest frames, consecutive seqs, oldest first."""

    frames: deque[Frame] = field(default_factory=deque)
    size: int = 0


class RecentOutput:
    def __init__(
        self, run_bytes: int = RUN_BYTES, max_bytes: int = MAX_BYTES, max_runs: int = MAX_RUNS
    ) -> None:
        self.run_bytes = run_bytes
        self.max_bytes = max_bytes
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._runs: OrderedDict[tuple[str, int], _Run] = OrderedDict()
        self._total = 0

    @property
    def size(self) -> int:
        return self._total

    def stored(self, job_id: str, attempt: int, frames: list[Frame]) -> None:
        """``frames`` of the run ``attempt`` were committed (in seq order, none skipped)."""
        if not frames:
            return
        key = (job_id, attempt)
        with self._lock:
            run = self._runs.setdefault(key, _Run())
            if run.frames and run.frames[-1].seq + 1 != frames[0].seq:
                self._drop(run, len(run.frames))  # a gap: what is held no longer leads here
            run.frames.extend(frames)
            added = sum(len(f.data) for f in frames)
            run.size += added
            self._total += added
            self._runs.move_to_end(key)
            while len(run.frames) > 1 and run.size > self.run_bytes:
                self._drop(run, 1)
            while self._runs and (self._total > self.max_bytes or len(self._runs) > self.max_runs):
                self._forget(next(iter(self._runs)))

    def after(self, job_id: str, attempt: int, after: int, budget: int) -> list[Frame] | None:
        """The frames after seq ``after`` (up to about ``budget`` bytes) if this process
        holds the very next one; None otherwise (read the database)."""
        with self._lock:
            run = self._runs.get((job_id, attempt))
            if run is None or not run.frames:
                return None
            first = run.frames[0].seq
            if first > after + 1 or run.frames[-1].seq <= after:
                return None
            frames: list[Frame] = []
            size = 0
            # The seqs are consecutive: the next frame's place is known.
            for frame in islice(run.frames, after + 1 - first, None):
                frames.append(frame)
                size += len(frame.data)
                if size >= budget:
                    break
            return frames

    def forget(self, job_id: str) -> None:
        """Every run of ``job_id`` (it ended)."""
        with self._lock:
            for key in [k for k in self._runs if k[0] == job_id]:
                self._forget(key)

    def _drop(self, run: _Run, count: int) -> None:
        for _ in range(count):
            size = len(run.frames.popleft().data)
            run.size -= size
            self._total -= size

    def _forget(self, key: tuple[str, int]) -> None:
        self._total -= self._runs.pop(key).size
