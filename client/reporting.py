"""Reporting what client/incidents.py recorded: at the next contact with the coordinator.

One reporter at a time (``report.lock``, taken without waiting) moves the recorded lines
into ``sending.json`` as groups with a batch id, then sends that; the file stays until
the coordinator confirmed it, so a report cut off by the process ending (the drop-in
exec'ing its local fallback, or dying of a signal it passed on) is sent again next
time, and the coordinator counts a batch id once.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from client.api import Api, ApiError
from client.incidents import INCIDENTS, REPORT_LOCK, SENDING, locked, pending

ENTRIES_PER_REQUEST = 500
MAX_BATCHES_PER_REPORT = 3
REPORT_TIMEOUT = 5.0


def _groups(lines: list[str]) -> list[dict[str, Any]]:
    """Runs of one kind, code and binary within one hour become one entry."""
    groups: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    for line in lines:
        try:
            item = json.loads(line)
            at = float(item["at"])
            key = (str(item["kind"]), int(item["code"]), str(item["binary"]), int(at // 3600))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short (disk full): skip it, keep the rest
        group = groups.setdefault(
            key,
            {"kind": key[0], "code": key[1], "binary": key[2], "count": 0, "first_at": at},
        )
        group["count"] += 1
        group["first_at"] = min(group["first_at"], at)
        group["last_at"] = max(group.get("last_at", at), at)
    return list(groups.values())


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + f".{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        json.dump(data, stream)
    os.replace(temporary, path)


def _new_batch(directory: Path) -> dict[str, Any] | None:
    """Move everything appended so far into ``sending.json`` (None: nothing there).

    Under the file's lock, and in this order (read, write the batch, empty the file),
    so a run is never lost between the two files nor counted in both.
    """
    fd = os.open(directory / INCIDENTS, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with locked(fd):
            with os.fdopen(os.dup(fd), "rb") as stream:
                entries = _groups(stream.read().decode(errors="replace").splitlines())
            batch = {"batch": secrets.token_hex(12), "entries": entries} if entries else None
            if batch is not None:
                _write_atomically(directory / SENDING, batch)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return batch


def _batch(directory: Path) -> dict[str, Any] | None:
    """The batch to send: the one a previous report left, or a new one from the file."""
    try:
        with (directory / SENDING).open() as stream:
            left: dict[str, Any] = json.load(stream)
        if isinstance(left.get("batch"), str) and isinstance(left.get("entries"), list):
            return left
    except (OSError, ValueError):
        pass
    return _new_batch(directory)


def report(api: Api, directory: Path, timeout: float = REPORT_TIMEOUT) -> bool:
    """Send what waits, if anything; True when everything waiting was delivered.

    Returns False at once when another process is reporting right now, and False when
    the coordinator could not take it (it stays for the next time). Never raises.
    """
    if not pending(directory):
        return True
    try:
        lock = os.open(directory / REPORT_LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # someone else reports these very lines
        # A batch a previous report left goes first, then what was appended since.
        for _ in range(MAX_BATCHES_PER_REPORT):
            batch = _batch(directory)
            if batch is None:
                return True
            _send(api, batch, timeout)
            (directory / SENDING).unlink()
        return not pending(directory)
    except Exception:  # the coordinator went away, said "later", or the disk failed
        return False
    finally:
        os.close(lock)


def _send(api: Api, batch: dict[str, Any], timeout: float) -> None:
    entries = batch["entries"]
    for start in range(0, len(entries), ENTRIES_PER_REQUEST):
        body = {
            # A batch id per request, stable across retries of the same file.
            "batch": f"{batch['batch']}:{start // ENTRIES_PER_REQUEST}",
            "entries": entries[start : start + ENTRIES_PER_REQUEST],
        }
        try:
            api.request("POST", "/reports/dropin", json_body=body, timeout=timeout)
        except ApiError as exc:
            if exc.status in (401, 403, 429) or exc.status >= 500:
                raise  # worth trying again later
            # Refused as malformed (a clock far off, say): sending it again cannot help,
            # and it must not cost every later call a request.


class Reporter:
    """Reports in the background while a job runs, so the job does not wait for it."""

    def __init__(self, api: Api, directory: Path) -> None:
        self.api = api
        self.directory = directory
        self._thread: threading.Thread | None = None

    def start_if_pending(self) -> None:
        if self._thread is None and pending(self.directory):
            self._thread = threading.Thread(
                target=report, args=(self.api, self.directory), name="report", daemon=True
            )
            self._thread.start()

    def finish(self, timeout: float = REPORT_TIMEOUT) -> None:
        """Give a report in flight a chance to end before the process does."""
        if self._thread is not None:
            self._thread.join(timeout)
