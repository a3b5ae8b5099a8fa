"""Table rows of the console: styled cells, and the value each column sorts by.

Every string that came from another party goes through ``printable`` and into a Rich
``Text``: a Text is never read as markup, so a label ``[/]`` shows as ``[/]`` and an
escape sequence as ``\\x1b[2J``. Colours say what a row is at a glance: the state (a
completed job whose ffmpeg exited non-zero is *not* shown as completed), a running job
that falls behind real time, a loaded worker, a worker the coordinator lost contact
with. Ages use the coordinator's clock (``now`` of the snapshot).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text

from client.status import age, capabilities, clock, parse_time, worker_state
from dffmpeg.text import printable

JOB_COLUMNS = (
    "job",
    "state",
    "bin",
    "input",
    "output",
    "requester",
    "worker",
    "progress",
    "fps",
    "speed",
    "elapsed",
    "eta",
    "age",
    "exit",
)
WORKER_COLUMNS = (
    "worker",
    "host",
    "state",
    "slots",
    "cpu",
    "mem",
    "gpu",
    "labels",
    "version",
    "binaries",
    "paths",
    "seen",
)
USER_COLUMNS = ("user", "role", "networks", "created")

STATE_STYLES = {
    "pending": "yellow",
    "assigned": "cyan",
    "running": "bold cyan",
    "canceling": "magenta",
    "completed": "green",
    "failed": "bold red",
    "canceled": "bright_black",
}
BEHIND = "bold black on yellow"
# Slower than this is behind real time. Not 1.0: a job reading its input at its native
# rate (-re) measures 0.99x, and must not flash as falling behind.
REAL_TIME = 0.98
BAD = "bold red"
NAME_WIDTH = 32
# A load sample older than this is shown with its age: the worker has not reported.
LOAD_STALE_SECONDS = 90.0


@dataclass
class Row:
    """One table row: its key, its cells, and per column the value it sorts by."""

    key: str
    cells: list[Text]
    sort: list[Any]

    def plain(self) -> list[str]:
        return [cell.plain for cell in self.cells]


def text(value: Any, style: str = "") -> Text:
    """A cell from any value, made printable: ``-`` for nothing."""
    if value is None or value == "" or value == []:
        return Text("-", style="bright_black")
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return Text(printable(str(value)), style=style)


def file_name(path: Any) -> str | None:
    """The last part of a path (``$Media/films/x.mkv`` -> ``x.mkv``), cut to a width."""
    if not isinstance(path, str) or not path:
        return None
    name = path.rstrip("/").rsplit("/", 1)[-1] or path
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


def seconds_between(start: Any, end: datetime | None) -> float | None:
    then = parse_time(start)
    if then is None or end is None:
        return None
    return max((end - then).total_seconds(), 0.0)


def failed_exit(job: dict[str, Any]) -> bool:
    """Ran to the end but did not succeed: ffmpeg's own failure."""
    code = job.get("exit_code")
    return job.get("state") == "completed" and code is not None and code != 0


def state_cell(job: dict[str, Any]) -> Text:
    state = str(job.get("state", "?"))
    if failed_exit(job):
        return Text(f"exit {job['exit_code']}", style=BAD)
    return Text(printable(state), style=STATE_STYLES.get(state, ""))


def exit_cell(job: dict[str, Any]) -> Text:
    code = job.get("exit_code")
    if code is None:
        return text(None)
    return Text(str(code), style="green" if code == 0 else BAD)


def _progress(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress")
    return progress if isinstance(progress, dict) else {}


def behind(job: dict[str, Any]) -> bool:
    """A running job slower than real time (a viewer of a live transcode waits)."""
    speed = _progress(job).get("speed")
    return job.get("state") == "running" and isinstance(speed, int | float) and speed < REAL_TIME


def eta_seconds(job: dict[str, Any]) -> float | None:
    progress = _progress(job)
    duration, done, speed = progress.get("duration"), progress.get("time"), progress.get("speed")
    if job.get("state") != "running" or not duration or done is None or not speed:
        return None
    return max(float(duration) - float(done), 0.0) / float(speed)


def elapsed_seconds(job: dict[str, Any], now: datetime | None) -> float | None:
    end = parse_time(job.get("finished_at")) or (now if job.get("state") == "running" else None)
    return seconds_between(job.get("started_at"), end)


def duration_text(seconds: float | None) -> str | None:
    return None if seconds is None else clock(seconds)


def job_row(job: dict[str, Any], now: datetime | None) -> Row:
    progress = _progress(job)
    running = job.get("state") == "running"
    live = "" if running else "bright_black"  # a finished job's last figures, greyed
    late = BEHIND if behind(job) else live
    percent = progress.get("percent")
    if percent is not None:
        progress_text: str | None = f"{percent:.1f}%"
    elif "time" in progress:
        progress_text = clock(float(progress["time"]))
    else:
        progress_text = None
    speed = progress.get("speed")
    fps = progress.get("fps")
    elapsed = elapsed_seconds(job, now)
    eta = eta_seconds(job)
    created = seconds_between(job.get("created_at"), now)
    cells = [
        text(str(job["job_id"])[:12]),
        state_cell(job),
        text(job.get("binary")),
        text(file_name(job.get("input_name"))),
        text(file_name(job.get("output_name"))),
        text(job.get("requester")),
        text(job.get("worker_id")),
        text(progress_text, late),
        text(None if fps is None else f"{fps:g}", live),
        text(None if speed is None else f"{speed:g}x", late),
        text(duration_text(elapsed), live),
        text(duration_text(eta)),
        text(age(job.get("created_at"), now)),
        exit_cell(job),
    ]
    sort = [
        str(job["job_id"]),
        ("exit" if failed_exit(job) else str(job.get("state", ""))),
        str(job.get("binary", "")),
        (file_name(job.get("input_name")) or "").lower(),
        (file_name(job.get("output_name")) or "").lower(),
        str(job.get("requester", "")),
        str(job.get("worker_id") or ""),
        float(percent if percent is not None else progress.get("time", -1.0)),
        float(fps if fps is not None else -1.0),
        float(speed if speed is not None else -1.0),
        elapsed if elapsed is not None else -1.0,
        eta if eta is not None else float("inf"),
        created if created is not None else 0.0,
        job.get("exit_code") if job.get("exit_code") is not None else -1,
    ]
    return Row(str(job["job_id"]), cells, sort)


def _level_style(percent: float | None) -> str:
    if percent is None:
        return ""
    return BAD if percent >= 95 else "yellow" if percent >= 80 else ""


def load_age(worker: dict[str, Any], now: datetime | None) -> float | None:
    load = worker.get("load")
    return seconds_between(load.get("at"), now) if isinstance(load, dict) else None


def percent_cell(value: Any, stale: str | None) -> Text:
    if not isinstance(value, int | float):
        return text(None)
    cell = Text(f"{value:.0f}%", style=_level_style(float(value)))
    if stale:
        cell.append(f" {stale}", style="bright_black")
    return cell


def gpu_text(gpus: Any) -> str | None:
    """``23% enc 41% 2 sess`` per GPU: utilisation, encoder, encoder sessions."""
    if not isinstance(gpus, list) or not gpus:
        return None
    parts = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        bits = []
        if isinstance(gpu.get("utilization"), int | float):
            bits.append(f"{gpu['utilization']:.0f}%")
        if isinstance(gpu.get("encoder"), int | float):
            bits.append(f"enc {gpu['encoder']:.0f}%")
        if isinstance(gpu.get("encoder_sessions"), int):
            bits.append(f"{gpu['encoder_sessions']} sess")
        parts.append(" ".join(bits) or "?")
    return " | ".join(parts) or None


def lost_contact(worker: dict[str, Any], now: datetime | None) -> bool:
    """Online by its row, but its lease ran out: the janitor is about to declare it lost."""
    expires = parse_time(worker.get("lease_expires_at"))
    return (
        worker.get("state") != "offline"
        and expires is not None
        and now is not None
        and (now > expires)
    )


def worker_state_cell(worker: dict[str, Any]) -> Text:
    """``online``, ``online, drained``; ``unconfined`` (in red) for a worker that runs its
    jobs outside the sandbox (``sandbox: off``)."""
    state = str(worker.get("state", "?"))
    style = {"online": "green", "draining": "yellow", "offline": "bright_black"}.get(state, "")
    if worker.get("drained"):
        style = "yellow"
    if worker.get("sandboxed") is False:
        style = BAD
    return Text(printable(worker_state(worker)), style=style)


def versions_text(worker: dict[str, Any]) -> str | None:
    names = capabilities(worker)
    return None if names == "-" else names


def worker_row(worker: dict[str, Any], now: datetime | None) -> Row:
    load = worker.get("load") if isinstance(worker.get("load"), dict) else {}
    assert isinstance(load, dict)
    stale_for = load_age(worker, now)
    stale = age(load.get("at"), now) if stale_for and stale_for > LOAD_STALE_SECONDS else None
    slots = f"{worker.get('slots_used', 0)}/{worker.get('slots', 0)}"
    if (worker.get("overrides") or {}).get("slots") is not None:
        slots += "*"  # set by an admin, not by the worker's config
    seen = text(age(worker.get("last_seen_at"), now))
    if lost_contact(worker, now):
        seen = Text(f"lost {seen.plain}", style=BAD)
    cells = [
        text(worker.get("worker_id")),
        text(worker.get("hostname")),
        worker_state_cell(worker),
        text(slots),
        percent_cell(load.get("cpu_percent"), stale),
        percent_cell(load.get("memory_percent"), stale),
        text(gpu_text(load.get("gpus"))),
        text(worker.get("labels")),
        text(worker.get("version")),
        text(versions_text(worker)),
        text(worker.get("path_variables")),
        seen,
    ]
    sort = [
        str(worker.get("worker_id", "")),
        str(worker.get("hostname", "")),
        str(worker.get("state", "")),
        int(worker.get("slots_used", 0)),
        float(load.get("cpu_percent", -1)),
        float(load.get("memory_percent", -1)),
        gpu_text(load.get("gpus")) or "",
        ",".join(worker.get("labels") or []),
        str(worker.get("version", "")),
        versions_text(worker) or "",
        ",".join(worker.get("path_variables") or []),
        seconds_between(worker.get("last_seen_at"), now) or 0.0,
    ]
    return Row(str(worker["worker_id"]), cells, sort)


def user_row(user: dict[str, Any], now: datetime | None) -> Row:
    networks = user.get("allowed_networks") or []
    cells = [
        text(user.get("client_id")),
        text(user.get("role")),
        text(networks) if networks else Text("any"),
        text(age(user.get("created_at"), now)),
    ]
    sort = [
        str(user.get("client_id", "")),
        str(user.get("role", "")),
        ",".join(networks),
        str(user.get("created_at", "")),
    ]
    return Row(str(user["client_id"]), cells, sort)


RowMaker = Callable[[dict[str, Any], datetime | None], Row]
