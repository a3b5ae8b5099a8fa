"""What the console shows, as plain data: no Textual here, so it is easy to test.

A :class:`Snapshot` is one refresh worth of coordinator answers, stamped with when it
arrived (the console marks data that grew old). Ages in the tables are measured
against the coordinator's clock (``summary.now``), not the operator's, so a console on
a laptop with a wrong clock still shows true ages, and snapshot tests are
deterministic.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from client.status import listed, parse_time
from dffmpeg.text import printable

JOB_PAGE = 200


@dataclass
class Snapshot:
    summary: dict[str, Any]
    workers: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    jobs_total: int
    users: list[dict[str, Any]]
    jobs_offset: int = 0
    # The coordinator refused the filter (a 400): the jobs are the last good ones.
    filter_error: str | None = None
    received: float = field(default_factory=time.monotonic)

    @property
    def now(self) -> datetime | None:
        return parse_time(self.summary.get("now"))


def stderr_lines(text: str, keep: int = 200) -> list[str]:
    """The last ``keep`` lines of ffmpeg's stderr as a terminal would show them: of a line
    rewritten with ``\\r`` only its last version is kept; control characters are made
    visible (an escape sequence in a file name must not reach the operator's terminal)."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        lines.append(printable(line.rstrip("\r").split("\r")[-1]))
    while lines and not lines[-1]:
        lines.pop()
    return lines[-keep:]


def quote(arg: str) -> str:
    return printable(shlex.quote(arg))


def summary_text(
    summary: dict[str, Any], jobs_total: int, offset: int = 0, shown: int | None = None
) -> str:
    """Workers by state, slots in use, jobs by state and which jobs are listed."""
    jobs = summary.get("jobs_by_state", {})
    workers = summary.get("workers_by_state", {})
    slots = summary.get("slots", {})
    job_part = "  ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "no jobs"
    worker_part = "  ".join(f"{k} {v}" for k, v in sorted(workers.items())) or "none"
    return printable(
        f"workers: {worker_part}  |  slots {slots.get('used', 0)}/{slots.get('total', 0)}"
        f"  |  jobs: {job_part}  |  {listed(jobs_total, offset, shown)}"
    )


def last_day_text(summary: dict[str, Any]) -> str:
    """``day: 1432 done, 17 failed, 3 fallbacks, 1 cluster exits``. Fallbacks (a drop-in
    that ran ffmpeg locally) and cluster exits (one that gave up with a cluster exit
    code) are counted by the drop-ins and reported to the coordinator
    (``dropin_last_day``); a coordinator that does not report them shows ``-``."""
    day = summary.get("last_day") or {}
    reported = summary.get("dropin_last_day")
    fallbacks = exits = "-"
    if isinstance(reported, dict):
        fallbacks = str(reported.get("local_fallbacks", "-"))
        exits = str(reported.get("cluster_exits", "-"))
    return printable(
        f"day: {day.get('finished', '-')} done, {day.get('failed', '-')} failed,"
        f" {fallbacks} fallbacks, {exits} cluster exits"
    )


def series(summary: dict[str, Any], name: str) -> list[float]:
    """A per-minute series of ``GET /cluster`` (gaps as 0), oldest first."""
    values = (summary.get("series") or {}).get(name) or []
    return [float(v) if isinstance(v, int | float) else 0.0 for v in values]


def seconds_text(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 5400:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
