"""Relaying a child's stdout and stderr to the coordinator as ordered frames.

Each pipe is read with ``os.read`` on raw bytes: never line by line, never decoded, so
``\\r``-only progress lines and binary stdout flow without filling the pipe. Reader
threads put chunks on one queue in arrival order; one sender thread drains it, batching
whatever arrived while the previous request was in flight. When the coordinator is slow
the buffer fills to ``max_buffered`` bytes and the readers wait, which back-pressures
the child through its pipes instead of growing memory.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable

from dffmpeg.paths import StreamRewriter
from dffmpeg.wire import Frame, FrameKind

READ_SIZE = 65536
MAX_BATCH_BYTES = 1024 * 1024


class OutputBuffer:
    def __init__(self, max_buffered: int = 8 * 1024 * 1024) -> None:
        self.max_buffered = max_buffered
        self._chunks: deque[tuple[FrameKind, bytes]] = deque()
        self._size = 0
        self._open_readers = 0
        self._cond = threading.Condition()

    def reader_started(self) -> None:
        with self._cond:
            self._open_readers += 1

    def reader_finished(self) -> None:
        with self._cond:
            self._open_readers -= 1
            self._cond.notify_all()

    def put(self, kind: FrameKind, data: bytes) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._size < self.max_buffered)
            self._chunks.append((kind, data))
            self._size += len(data)
            self._cond.notify_all()

    def take(self) -> list[tuple[FrameKind, bytes]] | None:
        """Everything buffered (up to a batch); None once all readers ended and it is empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._chunks or self._open_readers == 0)
            if not self._chunks:
                return None
            batch: list[tuple[FrameKind, bytes]] = []
            size = 0
            while self._chunks and size < MAX_BATCH_BYTES:
                kind, data = self._chunks.popleft()
                batch.append((kind, data))
                size += len(data)
            self._size -= size
            self._cond.notify_all()
            return batch


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
    """Numbers output frames 1, 2, 3... and sends each batch with ``send``, in order."""

    def __init__(self, buffer: OutputBuffer, send: Callable[[list[Frame]], None]) -> None:
        self.buffer = buffer
        self.send = send
        self.seq = 0
        self.error: Exception | None = None

    def run(self) -> None:
        while True:
            batch = self.buffer.take()
            if batch is None:
                return
            frames = []
            for kind, data in _merge(batch):
                self.seq += 1
                frames.append(Frame(kind, self.seq, data))
            if self.error is not None:
                continue  # keep draining so the child never blocks on a full pipe
            try:
                self.send(frames)
            except Exception as exc:
                self.error = exc


def _merge(batch: list[tuple[FrameKind, bytes]]) -> list[tuple[FrameKind, bytes]]:
    """Join neighbouring chunks of the same stream: fewer frames, same bytes, same order."""
    runs: list[tuple[FrameKind, list[bytes]]] = []
    for kind, data in batch:
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(data)
        else:
            runs.append((kind, [data]))
    return [(kind, b"".join(parts)) for kind, parts in runs]
