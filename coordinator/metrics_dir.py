"""The directory where gunicorn's worker processes keep their metric values.

prometheus-client's multiprocess mode: every process writes its counters, histograms
and gauges to memory-mapped files in one directory, and a scrape answered by any of
them merges the files of all. The directory belongs to one start of the coordinator:
the gunicorn master makes a fresh one before it forks (values of an earlier run must
not be added to this one's), tells the processes through ``PROMETHEUS_MULTIPROC_DIR``,
forgets a dead process's live gauges (``child_exit``) and removes the directory when it
stops. prometheus-client picks its mode when it is first imported, so nothing in the
master may import it before ``create`` ran (the master never builds the app).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"


class MetricsDirectory:
    def __init__(self, path: str) -> None:
        self.path = path
        self._owner = os.getpid()

    @classmethod
    def create(cls) -> MetricsDirectory:
        """A new empty directory, announced to the processes forked from now on."""
        path = tempfile.mkdtemp(prefix="dffmpeg-metrics-")
        os.environ[ENV] = path
        return cls(path)

    def process_dead(self, pid: int) -> None:
        """gunicorn's ``child_exit``: a dead process's gauges no longer count.

        Its counters and histograms stay: what it counted happened.
        """
        # Imported here: only the master calls this, long after its workers started.
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, self.path)
        except OSError as exc:
            log.warning("cannot forget the metrics of process %s: %s", pid, exc)

    def remove(self) -> None:
        """Delete the directory (only the process that made it does)."""
        if os.getpid() != self._owner:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if os.environ.get(ENV) == self.path:
            del os.environ[ENV]
