"""The cluster as rows of text: shared by ``dffmpeg-client status --all`` and the console.

Plain functions from the admin API's JSON to short cell strings, so the command line
and the console show the same picture. Ages are measured against the coordinator's
clock (``now`` in ``GET /cluster``), not the local one.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from dffmpeg.text import cell, printable

WORKER_COLUMNS = ["worker", "state", "slots", "labels", "version", "binaries", "paths", "seen"]
JOB_COLUMNS = ["job", "state", "binary", "requester", "worker", "progress", "age", "exit"]
USER_COLUMNS = ["user", "role", "networks", "created"]


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
    """``online``, with ``drained`` and ``unconfined`` (jobs run outside the sandbox)."""
    parts = [str(worker.get("state", "?"))]
    if worker.get("drained"):
        parts.append("drained")
    if worker.get("sandboxed") is False:
        parts.append("unconfined")
    return ", ".join(parts)


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


def summary_text(
    summary: dict[str, Any], jobs_total: int, offset: int = 0, shown: int | None = None
) -> str:
    """One line: workers by state, slots, jobs by state, and which jobs are listed."""
    jobs = summary.get("jobs_by_state", {})
    workers = summary.get("workers_by_state", {})
    slots = summary.get("slots", {})
    job_part = "  ".join(f"{k} {v}" for k, v in sorted(jobs.items())) or "no jobs"
    worker_part = "  ".join(f"{k} {v}" for k, v in sorted(workers.items())) or "none"
    reported = summary.get("dropin_last_day") or {}
    fell_back, exits = reported.get("local_fallbacks", 0), reported.get("cluster_exits", 0)
    # Shown only when something happened: a quiet cluster's line stays short.
    incidents = (
        f"  |  24h: fallbacks {fell_back}  cluster exits {exits}" if fell_back or exits else ""
    )
    return (
        f"workers: {worker_part}  |  slots {slots.get('used', 0)}/{slots.get('total', 0)}"
        f"  |  jobs: {job_part}{incidents}  |  {listed(jobs_total, offset, shown)}"
    )


def listed(total: int, offset: int, shown: int | None) -> str:
    """Which of ``total`` jobs a page shows (the console's header says the same)."""
    if shown is None or (offset == 0 and shown >= total):
        return f"listed {total}"
    if shown == 0:
        return f"listed 0 of {total}"
    return f"listed {offset + 1}-{offset + shown} of {total}"


def warnings(summary: dict[str, Any]) -> list[str]:
    """``WARNING: ...`` lines for what the drop-ins reported of the last day: local
    fallbacks (work the cluster should have done) and cluster exit codes (200-207)."""
    reported = summary.get("dropin_last_day") or {}
    lines = []
    for kind, what in (
        ("local_fallback", "ran the local binary because the cluster could not"),
        ("cluster_exit", "exited with a cluster error code (200-207)"),
    ):
        groups = [g for g in reported.get("by_client", []) if g.get("kind") == kind]
        total = sum(int(g.get("count", 0)) for g in groups)
        if not total:
            continue
        detail = ", ".join(
            f"{cell(g.get('client_id'))} {g.get('count')}x {g.get('code')}" for g in groups[:6]
        )
        more = ", ..." if len(groups) > 6 else ""
        lines.append(
            f"WARNING: in the last day {total} drop-in run(s) {what}: {detail}{more} "
            "(exit codes: docs/dropin.md)"
        )
    return lines


def text_table(columns: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, headers in capitals.

    Cells hold other parties' text (labels, versions, requesters): control characters
    in them are made visible, so a label cannot retitle the terminal or clear it.
    """
    if not rows:
        return "(none)"
    rows = [[printable(v) for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def render(
    summary: dict[str, Any], workers: list[dict[str, Any]], jobs: list[dict[str, Any]], total: int
) -> str:
    """The whole picture as text: summary line, workers, then the newest jobs."""
    now = parse_time(summary.get("now"))
    shown = f"JOBS (newest {len(jobs)} of {total})" if len(jobs) < total else "JOBS"
    return "\n\n".join(
        [
            printable(summary_text(summary, total, 0, len(jobs))),
            "WORKERS\n" + text_table(WORKER_COLUMNS, [worker_row(w, now) for w in workers]),
            shown + "\n" + text_table(JOB_COLUMNS, [job_row(j, now) for j in jobs]),
        ]
    )
