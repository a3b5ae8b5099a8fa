"""What the console shows, as plain data: no Textual here, so it is easy to test.

A :class:`Snapshot` is one refresh worth of coordinator answers. The helpers turn its
JSON into the short strings of table cells. Ages are measured against the
coordinator's clock (``summary.now``), not the operator's, so a console on a laptop
with a wrong clock still shows true ages, and snapshot tests are deterministic.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JOB_PAGE = 200
_FILTER_KEYS = {"state": "state", "user": "requester", "requester": "requester", "worker": "worker"}


@dataclass
class JobFilter:
    """A filter line such as ``state:running,pending worker:w1 x264``.

    ``key:value`` words become server-side filters (so the page and its total are
    right across the whole history); the other words are matched against the text of
    each row on the console side.
    """

    server: dict[str, str] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> JobFilter:
        result = cls()
        for word in text.split():
            key, sep, value = word.partition(":")
            if sep and key.lower() in _FILTER_KEYS and value:
                result.server[_FILTER_KEYS[key.lower()]] = value
            else:
                result.words.append(word.lower())
        return result

    def matches(self, cells: list[str]) -> bool:
        text = " ".join(cells).lower()
        return all(word in text for word in self.words)


@dataclass
class Snapshot:
    summary: dict[str, Any]
    workers: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    jobs_total: int
    users: list[dict[str, Any]]

    @property
    def now(self) -> datetime | None:
        return parse_time(self.summary.get("now"))


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def age(value: Any, now: datetime | None) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``: how long ago ``value`` was, by the coordinator's clock."""
    then = parse_time(value)
    if then is None or now is None:
        return "-"
    seconds = max(int((now - then).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def progress_text(progress: dict[str, Any] | None) -> str:
    """``43.5% 1.9x`` or ``00:01:12 1.9x`` when the length is unknown; ``-`` without data."""
    if not progress:
        return "-"
    parts = []
    if "percent" in progress:
        parts.append(f"{progress['percent']:.1f}%")
    elif "time" in progress:
        parts.append(clock(float(progress["time"])))
    if "speed" in progress:
        parts.append(f"{progress['speed']:g}x")
    return " ".join(parts) or "-"


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def capabilities(worker: dict[str, Any]) -> str:
    """``ffmpeg 5.1.8, ffprobe 5.1.8``: each binary with its version when known."""
    versions = worker.get("binary_versions") or {}
    names = worker.get("binaries") or sorted(versions)
    parts = []
    for name in sorted(names):
        info = versions.get(name)
        version = _version_of(info)
        parts.append(f"{name} {version}" if version else name)
    return ", ".join(parts) or "-"


def _version_of(info: Any) -> str:
    if isinstance(info, dict):
        value = info.get("version", "")
    elif isinstance(info, str):
        value = info
    else:
        return ""
    found = re.search(r"\d+(?:\.\d+)+\S*", str(value))
    return found.group(0) if found else str(value)[:16]


def worker_state(worker: dict[str, Any]) -> str:
    state = str(worker.get("state", "?"))
    return f"{state}, drained" if worker.get("drained") else state


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def worker_row(worker: dict[str, Any], now: datetime | None) -> list[str]:
    return [
        str(worker["worker_id"]),
        worker_state(worker),
        f"{worker.get('slots_used', 0)}/{worker.get('slots', 0)}",
        cell(worker.get("labels")),
        str(worker.get("version") or "-"),
        capabilities(worker),
        cell(worker.get("path_variables")),
        age(worker.get("last_seen_at"), now),
    ]


def job_row(job: dict[str, Any], now: datetime | None) -> list[str]:
    return [
        str(job["job_id"])[:12],
        str(job.get("state", "?")),
        str(job.get("binary", "?")),
        str(job.get("requester", "?")),
        cell(job.get("worker_id")),
        progress_text(job.get("progress")),
        age(job.get("created_at"), now),
        cell(job.get("exit_code")),
    ]


def user_row(user: dict[str, Any], now: datetime | None) -> list[str]:
    return [
        str(user["client_id"]),
        str(user.get("role", "?")),
        cell(user.get("allowed_networks")) if user.get("allowed_networks") else "any",
        age(user.get("created_at"), now),
    ]


def stderr_lines(text: str, keep: int = 200) -> list[str]:
    """The last ``keep`` lines of ffmpeg's stderr as a terminal would show them: of a line
    rewritten with ``\\r`` only its last version is kept."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        lines.append(line.rstrip("\r").split("\r")[-1])
    while lines and not lines[-1]:
        lines.pop()
    return lines[-keep:]


def summary_text(summary: dict[str, Any], jobs_total: int) -> str:
    jobs = summary.get("jobs_by_state", {})
    workers = summary.get("workers_by_state", {})
    slots = summary.get("slots", {})
    job_part = "  ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "no jobs"
    worker_part = "  ".join(f"{k} {v}" for k, v in sorted(workers.items())) or "none"
    return (
        f"workers: {worker_part}  |  slots {slots.get('used', 0)}/{slots.get('total', 0)}"
        f"  |  jobs: {job_part}  |  listed {jobs_total}"
    )


def quote(arg: str) -> str:
    return shlex.quote(arg)
