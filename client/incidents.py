"""Runs of the drop-in the operator must hear of: local fallbacks and cluster failures.

A drop-in that ran the local binary (``local_fallback``) or exited with a cluster code
(200-207) usually could not tell the coordinator at that moment. It appends one line to
``incidents.jsonl`` in the client's state directory (``state_dir``, default
``~/.local/state/dffmpeg``), and the next drop-in or ``dffmpeg-client`` call that
reaches the coordinator reports what accumulated (``POST /api/v1/reports/dropin``).

Many drop-ins run at once, so the file is only appended to (``O_APPEND``, under an
exclusive ``flock``). One reporter at a time (a second lock file, taken without
waiting) moves the lines into ``sending.json`` as groups with a batch id, then sends
that; the file stays until the coordinator confirmed it, so a report cut off by the
process ending is sent again next time, and the coordinator counts a batch id once.

Cost on the common path, where nothing happened: ``pending`` is two ``stat`` calls, and
this module imports nothing the drop-in has not loaded already (the reporting itself is
in client/reporting.py). Recording and reporting never raise and never print: the
drop-in's stdout and stderr belong to the binary it stands for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from dffmpeg.config import ClientConfig, default_state_dir

INCIDENTS = "incidents.jsonl"
SENDING = "sending.json"
REPORT_LOCK = "report.lock"
LOCAL_FALLBACK = "local_fallback"
CLUSTER_EXIT = "cluster_exit"
# The file stops growing here (about 40,000 runs); what comes after is not counted.
MAX_BYTES = 4 * 1024 * 1024


def directory_of(config: ClientConfig | None) -> Path:
    if config is not None and config.state_dir:
        return Path(config.state_dir)
    return default_state_dir()


@contextlib.contextmanager
def locked(fd: int, flags: int = fcntl.LOCK_EX) -> Iterator[None]:
    fcntl.flock(fd, flags)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def record(directory: Path, kind: str, code: int, binary: str) -> None:
    """Append one run; never raises (a state directory we cannot write counts nothing)."""
    line = json.dumps({"at": time.time(), "kind": kind, "code": int(code), "binary": binary})
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / INCIDENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        with locked(fd):
            if os.fstat(fd).st_size < MAX_BYTES:
                os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def pending(directory: Path) -> bool:
    """Whether anything waits to be reported (the cheap test every call makes)."""
    try:
        if os.stat(directory / INCIDENTS).st_size > 0:
            return True
    except OSError:
        pass
    return os.path.exists(directory / SENDING)
