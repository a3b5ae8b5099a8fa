"""stdin the caller had written before the drop-in submitted, sent with the submission.

A media server may write to a short job's stdin and close it at once: Jellyfin's
runtime-key check runs a job of a few tens of milliseconds, writes ``?`` and reads
ffmpeg's key help from stderr. Local ffmpeg finds the byte in its pipe at its first
look. Through the cluster the worker writes what came with the assignment into the
process's stdin as it starts (worker/executor.py), so the job sees the same.

Only what is there already is taken (a non-blocking look, never a wait), at most
``LIMIT`` bytes; a terminal is left alone (keys typed later go the usual way). When the
job then runs locally instead (``local_fallback``), ``put_back`` returns those bytes to
the front of stdin first.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
from dataclasses import dataclass

LIMIT = 64 * 1024


@dataclass(frozen=True)
class EarlyStdin:
    data: bytes = b""
    eof: bool = False  # stdin ended right after ``data``

    @property
    def frames(self) -> int:
        """Input frames it stands for: the bytes, then the EOF."""
        return (1 if self.data else 0) + (1 if self.eof else 0)


def take_ready(fd: int | None) -> EarlyStdin:
    """What ``fd`` holds right now, without waiting: bytes, and whether it ended."""
    if fd is None:
        return EarlyStdin()
    try:
        if os.isatty(fd) or not _ready(fd):
            return EarlyStdin()
        data = os.read(fd, LIMIT)
        if not data:
            # Ended already (/dev/null, what a service manager gives a media server's
            # children): the EOF alone goes with the submission, no request of its own.
            return EarlyStdin(b"", eof=True)
        eof = False
        if len(data) < LIMIT and _ready(fd):
            more = os.read(fd, LIMIT - len(data))
            eof = not more
            data += more
    except OSError:
        return EarlyStdin()
    return EarlyStdin(data, eof)


def _ready(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _unread(fd: int, size: int) -> bool:
    """Move a regular file's offset back by ``size``; False where it cannot be."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.lseek(fd, -size, os.SEEK_CUR)
    except OSError:
        return False
    return True


def put_back(early: EarlyStdin, fd: int) -> None:
    """Make ``fd`` read ``early.data`` again, then the rest of what it would have read.

    A regular file is rewound; anything else becomes a pipe fed by a small child
    process: those bytes, then (unless the stdin had ended) a copy of the rest. Used
    just before the drop-in replaces itself with the local binary.
    """
    if not early.data or _unread(fd, len(early.data)):
        return
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the feeder: only raw reads and writes, then _exit
        code = 0
        try:
            os.close(read_end)
            _write_all(write_end, early.data)
            while not early.eof:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                _write_all(write_end, chunk)
        except OSError:
            code = 1  # the local binary stopped reading: nothing more to feed
        finally:
            os._exit(code)
    os.close(write_end)
    os.dup2(read_end, fd)
    with contextlib.suppress(OSError):
        os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
