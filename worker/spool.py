"""A job's output that waits on disk while the coordinator cannot take it.

While the coordinator (or its database) is away, a job keeps running and its output
keeps coming. ``relay.OutputBuffer`` keeps the first ``MEMORY_BYTES`` of it in memory;
what comes after goes, in order, to one spool file per job, which is read back (and
sent) once the coordinator takes output again. The file lives in the worker's
``spool_dir`` (default ``spool`` under its state directory), a directory only the
worker's user may enter (0700), and is itself 0600: it holds the job's bytes. It is
removed when the job ends; a worker that starts removes what a previous life of it
left (those jobs are gone). Files are named ``<worker>-<job>.spool``.

Records are ``kind`` (1 byte), ``length`` (4 bytes, big-endian), then the bytes. One
thread appends (under the buffer's lock) and one reads; the file is truncated to zero
whenever everything in it has been read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path

from dffmpeg.wire import FrameKind

log = logging.getLogger(__name__)

_HEAD = struct.Struct(">BI")
SUFFIX = ".spool"


def prepare_directory(directory: str, owner: str) -> Path:
    """Create the spool directory (0700) and remove the files a previous run of the
    worker ``owner`` left there (another worker's, sharing the directory, stay)."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for leftover in path.glob(f"{owner}-*{SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return path


class SpoolFile:
    """The spooled part of one job's output: records appended at the end, read in order."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}{SUFFIX}"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._write_at = 0
        self._read_at = 0
        self.pending_bytes = 0  # payload bytes written and not yet read

    @property
    def empty(self) -> bool:
        return self._read_at >= self._write_at

    def append(self, kind: FrameKind, data: bytes) -> None:
        """Raises OSError (the volume is full, ...); nothing is counted then."""
        record = _HEAD.pack(int(kind), len(data)) + data
        written = 0
        while written < len(record):
            written += os.pwrite(self._fd, record[written:], self._write_at + written)
        self._write_at += len(record)
        self.pending_bytes += len(data)

    def read(self, budget: int) -> list[tuple[FrameKind, bytes]]:
        """The oldest records, about ``budget`` payload bytes (at least one)."""
        out: list[tuple[FrameKind, bytes]] = []
        size = 0
        while not self.empty and (not out or size < budget):
            kind, length = _HEAD.unpack(os.pread(self._fd, _HEAD.size, self._read_at))
            data = os.pread(self._fd, length, self._read_at + _HEAD.size)
            if len(data) != length:
                raise OSError(f"spool file {self.path} is shorter than its records")
            self._read_at += _HEAD.size + length
            self.pending_bytes -= length
            out.append((FrameKind(kind), data))
            size += length
        if self.empty:
            # All read: start over at the beginning, giving the space back.
            os.ftruncate(self._fd, 0)
            self._write_at = self._read_at = 0
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()
