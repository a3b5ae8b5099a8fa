"""What the console shows, as plain data: no Textual here, so it is easy to test.

A :class:`Snapshot` is one refresh worth of coordinator answers. The helpers turn its
JSON into the short strings of table cells. Ages are measured against the
coordinator's clock (``summary.now``), not the operator's, so a console on a laptop
with a wrong clock still shows true ages, and snapshot tests are deterministic.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from client.status import (
    age,
    capabilities,
    cell,
    job_row,
    parse_time,
    progress_text,
    summary_text,
    user_row,
    worker_row,
)

__all__ = [
    "JOB_PAGE",
    "JobFilter",
    "Snapshot",
    "age",
    "capabilities",
    "cell",
    "job_row",
    "parse_time",
    "progress_text",
    "quote",
    "stderr_lines",
    "summary_text",
    "user_row",
    "worker_row",
]

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
    jobs_offset: int = 0

    @property
    def now(self) -> datetime | None:
        return parse_time(self.summary.get("now"))


def stderr_lines(text: str, keep: int = 200) -> list[str]:
    """The last ``keep`` lines of ffmpeg's stderr as a terminal would show them: of a line
    rewritten with ``\\r`` only its last version is kept."""
    lines = []
    for line in text.replace("\r\n", "\n").split("\n"):
        lines.append(line.rstrip("\r").split("\r")[-1])
    while lines and not lines[-1]:
        lines.pop()
    return lines[-keep:]


def quote(arg: str) -> str:
    return shlex.quote(arg)
