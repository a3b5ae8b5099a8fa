"""ffmpeg's progress, read from the stderr a worker relays.

ffmpeg reports progress on stderr as ``\\r``-terminated status lines such as
``frame=  50 fps=25 q=28.0 size=  256kB time=00:00:02.00 bitrate=1048.6kbits/s speed=1.5x``
and announces each input's length as ``Duration: 00:01:30.00``. The coordinator parses
them when output is appended and keeps only the latest values on the job, so a console
or ``status --all`` shows progress and speed from one column, without reading output.

A status line split across two appends is simply missed; the next one (ffmpeg writes
about two a second) is complete. Only the tail of each append is examined, so a large
append costs a bounded amount of work.
"""

from __future__ import annotations

import re
from typing import Any

# ``key=value`` pairs of a status line; ffmpeg pads values with spaces after the ``=``.
_FIELD = re.compile(rb"(\w+)=\s*(\S+)")
_CLOCK = re.compile(r"-?\d+:\d{2}:\d{2}(?:\.\d+)?")
_DURATION = re.compile(rb"Duration:\s*(\d+:\d{2}:\d{2}(?:\.\d+)?)")
# How much of each append is searched: a status line is under 200 bytes.
TAIL_BYTES = 4096


def clock_seconds(value: str) -> float:
    """``HH:MM:SS.ss`` (possibly negative) as seconds."""
    sign = -1.0 if value.startswith("-") else 1.0
    hours, minutes, seconds = value.lstrip("-").split(":")
    return sign * (int(hours) * 3600 + int(minutes) * 60 + float(seconds))


def parse(data: bytes, previous: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The progress after ``data`` was written, or None when ``data`` says nothing new.

    ``previous`` is the job's stored progress; its duration is kept when ``data`` does
    not announce one, so ``percent`` can be computed from later status lines.
    """
    result: dict[str, Any] = dict(previous or {})
    changed = False
    if "duration" not in result:
        found = _DURATION.search(data)
        if found:
            result["duration"] = clock_seconds(found.group(1).decode())
            changed = True
    status = _last_status(data[-TAIL_BYTES:])
    if status is not None:
        result.update(status)
        changed = True
    if not changed:
        return None
    duration = result.get("duration")
    if duration and "time" in result:
        result["percent"] = round(min(100.0, 100.0 * result["time"] / duration), 1)
    return result


def _last_status(tail: bytes) -> dict[str, Any] | None:
    """The fields of the last complete-looking status line in ``tail``."""
    for line in reversed(re.split(rb"[\r\n]", tail)):
        if b"time=" not in line or b"speed=" not in line:
            continue
        fields = {k.decode(): v.decode("latin-1") for k, v in _FIELD.findall(line)}
        status: dict[str, Any] = {}
        try:
            if _CLOCK.fullmatch(fields.get("time", "")):
                status["time"] = round(max(clock_seconds(fields["time"]), 0.0), 2)
            speed = fields.get("speed", "").rstrip("x")
            if speed not in ("", "N/A"):
                status["speed"] = float(speed)
            if "frame" in fields:
                status["frame"] = int(fields["frame"])
            if "fps" in fields:
                status["fps"] = float(fields["fps"])
        except ValueError:
            continue
        if status:
            return status
    return None
