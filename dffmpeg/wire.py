"""Wire format shared by coordinator, worker and client.

Job output and job input travel as *frames*: a 13-byte header ``>BQI`` (kind, seq,
length) followed by ``length`` raw bytes. Raw bytes, never text: ffmpeg's stdout may be
MPEG-TS and its stderr carries ``\\r``-only progress lines, and both must arrive
unchanged. ``seq`` is assigned by the single producer of a stream (the worker for output,
the client for input), so a reader asking for "everything after seq N" never misses a
frame that commits late.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

FRAME_HEADER = struct.Struct(">BQI")
CONTENT_TYPE_FRAMES = "application/x-dffmpeg-frames"


class FrameKind(IntEnum):
    STATUS = 0  # JSON: final state of the job (coordinator -> client)
    STDOUT = 1
    STDERR = 2
    STDIN = 3  # client -> worker
    STDIN_EOF = 4
    SIGNAL = 5  # payload: the signal number as ASCII digits


class JobState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED})


class Role(StrEnum):
    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"


@dataclass(frozen=True)
class Frame:
    kind: FrameKind
    seq: int
    data: bytes


def encode_frames(frames: list[Frame]) -> bytes:
    parts: list[bytes] = []
    for frame in frames:
        parts.append(FRAME_HEADER.pack(int(frame.kind), frame.seq, len(frame.data)))
        parts.append(frame.data)
    return b"".join(parts)


class FrameError(ValueError):
    """A body that is not a well-formed sequence of frames."""


def decode_frames(body: bytes) -> Iterator[Frame]:
    offset = 0
    size = len(body)
    while offset < size:
        if size - offset < FRAME_HEADER.size:
            raise FrameError("truncated frame header")
        kind, seq, length = FRAME_HEADER.unpack_from(body, offset)
        offset += FRAME_HEADER.size
        if size - offset < length:
            raise FrameError("truncated frame body")
        try:
            frame_kind = FrameKind(kind)
        except ValueError as exc:
            raise FrameError(f"unknown frame kind {kind}") from exc
        yield Frame(frame_kind, seq, body[offset : offset + length])
        offset += length


def status_frame(payload: dict[str, Any]) -> Frame:
    return Frame(FrameKind.STATUS, 0, json.dumps(payload).encode())
