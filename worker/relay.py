"""Relaying a child's stdout and stderr to the coordinator as ordered frames.

Each pipe is read with ``os.read`` on raw bytes: never line by line, never decoded, so
``\\r``-only progress lines and binary stdout flow without filling the pipe. Reader
threads put chunks on one buffer in arrival order; one sender thread drains it, batching
whatever arrived while the previous request was in flight.

When the coordinator is slow or away, output piles up: the first ``max_buffered`` bytes
in memory, the rest in the job's spool file on disk (worker/spool.py), in order, up to
``max_spooled`` bytes. Only beyond that (or without a usable spool) do the readers wait,
which back-pressures the child through its pipes instead of growing memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

from dffmpeg.paths import StreamRewriter
from dffmpeg.wire import Frame, FrameKind
from worker.spool import SpoolFile

log = logging.getLogger(__name__)

READ_SIZE = 65536
# Each output request costs the coordinator a few milliseconds whatever its size (its
# identity, nonce, signature, the row's statements, the reader's answer): 2 MiB per
# request carried a 9 MB copy to stdout faster than 1 MiB (fewer requests) and than
# 4 MiB (the caller's reads no longer overlap the worker's writes): docs/performance.md.
MAX_BATCH_BYTES = 2 * 1024 * 1024
# A young job's small batch waits this long for the child's pipes to end: a short job
# (an ffprobe) writes its output and exits at once, and its only batch then goes with
# the finish (one request instead of two; the caller wakes once). Only while the job is
# younger than LINGER_WHILE_YOUNGER: a long job's output is never held back. An ffprobe
# in the sandbox ends its pipes 5-10 ms after its last write on the 2-core test machine
# (5 ms let most probes' JSON go in a request of its own, and the caller wait for it).
LINGER_SECONDS = 0.02
LINGER_WHILE_YOUNGER = 1.0
LINGER_BELOW_BYTES = 256 * 1024
# The largest last batch that rides with the finish (in its JSON body, base64).
MAX_FINAL_BYTES = 256 * 1024
MEMORY_BYTES = 8 * 1024 * 1024
SPOOL_BYTES = 4 * 1024 * 1024 * 1024


class OutputBuffer:
    """Chunks in arrival order: in memory, then (once memory is full) in a spool file.

    Every chunk in memory is older than every chunk in the spool: once one chunk was
    spooled, the next ones are too, until the spool has been read empty.
    """

    def __init__(
        self,
        max_buffered: int = MEMORY_BYTES,
        spool: Callable[[], SpoolFile] | None = None,
        max_spooled: int = SPOOL_BYTES,
    ) -> None:
        self.max_buffered = max_buffered
        self.max_spooled = max_spooled
        self._open_spool = spool
        self._spool: SpoolFile | None = None
        self._chunks: deque[tuple[FrameKind, bytes]] = deque()
        self._size = 0
        self._open_readers = 0
        self._cond = threading.Condition()
        self.spooled_total = 0  # bytes that ever went to disk (for logs and tests)
        self.linger_until = time.monotonic() + LINGER_WHILE_YOUNGER

    def reader_started(self) -> None:
        with self._cond:
            self._open_readers += 1

    def reader_finished(self) -> None:
        with self._cond:
            self._open_readers -= 1
            self._cond.notify_all()

    def put(self, kind: FrameKind, data: bytes) -> None:
        with self._cond:
            while True:
                spool = self._spool
                if (spool is None or spool.empty) and self._size + len(data) <= max(
                    self.max_buffered, len(data)
                ):
                    self._chunks.append((kind, data))
                    self._size += len(data)
                    break
                if self._spool_room(len(data)) and self._spill(kind, data):
                    break
                self._cond.wait()  # memory and spool full: the child waits on its pipe
            self._cond.notify_all()

    def _spool_room(self, size: int) -> bool:
        if self._open_spool is None:
            return False
        pending = self._spool.pending_bytes if self._spool is not None else 0
        return pending + size <= self.max_spooled

    def _spill(self, kind: FrameKind, data: bytes) -> bool:
        """Append to the spool file (opened on first use); False if it cannot be written."""
        try:
            if self._spool is None:
                assert self._open_spool is not None
                self._spool = self._open_spool()
                log.info("output spooled to %s until the coordinator takes it", self._spool.path)
            self._spool.append(kind, data)
        except OSError as exc:
            log.warning("cannot spool output (%s): the job waits for the coordinator", exc)
            self._open_spool = None  # memory only from now on
            return False
        self.spooled_total += len(data)
        return True

    def take(self) -> list[tuple[FrameKind, bytes]] | None:
        """The oldest chunks (up to a batch); None once all readers ended and nothing is left."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._chunks or not self._spool_empty() or not self._open_readers
            )
            if (
                self._open_readers
                and self._size < LINGER_BELOW_BYTES
                and self._spool_empty()
                and time.monotonic() < self.linger_until
            ):
                self._cond.wait_for(
                    lambda: not self._open_readers or self._size >= LINGER_BELOW_BYTES,
                    timeout=LINGER_SECONDS,
                )
            batch: list[tuple[FrameKind, bytes]] = []
            size = 0
            while self._chunks and size < MAX_BATCH_BYTES:
                kind, data = self._chunks.popleft()
                batch.append((kind, data))
                size += len(data)
            self._size -= size
            if not batch and not self._spool_empty():
                assert self._spool is not None
                try:
                    batch = self._spool.read(MAX_BATCH_BYTES)
                except OSError as exc:
                    # The bytes on disk cannot be read back: this output is lost, and
                    # the caller must not be told the job ran cleanly.
                    raise SpoolLost(str(exc)) from exc
            self._cond.notify_all()
            return batch or None

    def _spool_empty(self) -> bool:
        return self._spool is None or self._spool.empty

    def drained(self) -> bool:
        """Every reader ended and everything was taken: the last batch was the last."""
        with self._cond:
            return not self._open_readers and not self._chunks and self._spool_empty()

    def close(self) -> None:
        """Remove the spool file (the job is over, or its output is given up)."""
        with self._cond:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            self._open_spool = None
            self._chunks.clear()
            self._size = 0
            self._cond.notify_all()


class SpoolLost(OSError):
    """Spooled output could not be read back."""


def read_pipe(
    fd: int,
    kind: FrameKind,
    buffer: OutputBuffer,
    rewriter: StreamRewriter | None = None,
    hang_up: threading.Event | None = None,
) -> None:
    """Copy ``fd`` into ``buffer`` until EOF (started after ``buffer.reader_started``).

    Once ``hang_up`` is set (the caller stopped reading), the pipe is closed at the next
    chunk, so the child's next write fails as it would locally (EPIPE, or SIGPIPE).
    """
    try:
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                break
            if not data or (hang_up is not None and hang_up.is_set()):
                break
            if rewriter is not None:
                data = rewriter.feed(data)
                if not data:
                    continue
            buffer.put(kind, data)
        if rewriter is not None and (tail := rewriter.flush()):
            buffer.put(kind, tail)
    finally:
        os.close(fd)
        buffer.reader_finished()


class FrameSender:
    """Numbers output frames 1, 2, 3... and sends each batch with ``send``, in order.

    ``send`` retries on its own for as long as it may (the coordinator's outage
    grace); when it raises, the output cannot be delivered any more: ``error`` says
    why, ``on_error`` is told (the job is stopped), and what is still buffered is read
    and dropped so the child never blocks on a full pipe.
    """

    def __init__(
        self,
        buffer: OutputBuffer,
        send: Callable[[list[Frame]], None],
        on_error: Callable[[Exception], None] | None = None,
        keep_final: bool = False,
    ) -> None:
        self.buffer = buffer
        self.send = send
        self.on_error = on_error
        self.seq = 0
        self.error: Exception | None = None
        # With ``keep_final``, a small last batch is not sent but kept here, for the
        # finish to carry.
        self.keep_final = keep_final
        self.final: list[Frame] = []

    def run(self) -> None:
        while True:
            try:
                batch = self.buffer.take()
            except SpoolLost as exc:
                self._failed(exc)
                self.buffer.close()
                continue
            if batch is None:
                return
            frames = []
            for kind, data in _merge(batch):
                self.seq += 1
                frames.append(Frame(kind, self.seq, data))
            if self.error is not None:
                continue  # keep draining so the child never blocks on a full pipe
            if (
                self.keep_final
                and sum(len(f.data) for f in frames) <= MAX_FINAL_BYTES
                and self.buffer.drained()
            ):
                self.final = frames
                return
            try:
                self.send(frames)
            except Exception as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
            if self.on_error is not None:
                self.on_error(exc)


def _merge(batch: list[tuple[FrameKind, bytes]]) -> list[tuple[FrameKind, bytes]]:
    """Join neighbouring chunks of the same stream: fewer frames, same bytes, same order."""
    runs: list[tuple[FrameKind, list[bytes]]] = []
    for kind, data in batch:
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(data)
        else:
            runs.append((kind, [data]))
    return [(kind, b"".join(parts)) for kind, parts in runs]
