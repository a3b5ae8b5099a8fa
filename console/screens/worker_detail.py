"""One worker: host, load, slots and labels, binaries and what they can do, the
hardware checks and why each failed, mounts, and its newest jobs.

All of it was reported by the worker (names, versions, paths, check outcomes): shown
through ``printable`` in Rich ``Text``, never as markup.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from client.status import age
from console import cells
from console.messages import ActionDone, ActionFailed
from console.screens.base import ConsoleScreen
from console.screens.dialogs import WorkerEditScreen
from console.source import SourceError
from dffmpeg.text import printable

WORKER_REFRESH_SECONDS = 2.0
VERSION = re.compile(r"\d+(?:\.\d+)+\S*")


@dataclass
class WorkerReady(Message):
    worker: dict[str, Any]


@dataclass
class WorkerFailed(Message):
    message: str


def _line(*pairs: tuple[str, Any]) -> Text:
    line = Text()
    for label, value in pairs:
        line.append(f"{label} ", style="bright_black")
        line.append_text(value if isinstance(value, Text) else cells.text(value))
        line.append("  ")
    return line


def describe(worker: dict[str, Any], now: Any) -> Text:
    """The worker's head: identity, state, load, slots and labels, mounts."""
    row = cells.worker_row(worker, now)
    by_name = dict(zip(cells.WORKER_COLUMNS, row.cells, strict=True))
    configured = worker.get("configured") or {}
    overrides = worker.get("overrides") or {}
    load = worker.get("load") if isinstance(worker.get("load"), dict) else {}
    assert isinstance(load, dict)
    slots = Text(f"{worker.get('slots_used', 0)} of {worker.get('slots', 0)} in use")
    slots.append(
        f" (set by an admin; its config says {configured.get('slots', '?')})"
        if "slots" in overrides
        else " (from its config)",
        style="bright_black",
    )
    labels = cells.text(worker.get("labels"))
    if "labels" in overrides:
        own = printable(",".join(configured.get("labels") or [])) or "none"
        labels.append(f" (set by an admin; its config says {own})", style="bright_black")
    mounts = worker.get("mounts") or {}
    offered = set(worker.get("path_variables") or [])
    mount_text = Text()
    for variable, root in sorted(mounts.items()):
        mount_text.append(printable(f"${variable} = {root}"))
        mount_text.append(
            " (present)  " if variable in offered else " (absent)  ",
            style="green" if variable in offered else "bold red",
        )
    lines = [
        _line(
            ("worker", worker.get("worker_id")),
            ("host", worker.get("hostname")),
            ("state", by_name["state"]),
            ("sandboxed", "yes" if worker.get("sandboxed") else "no"),
        ),
        _line(
            ("dffmpeg", worker.get("version")),
            ("os", worker.get("os")),
            ("registered", age(worker.get("registered_at"), now)),
            ("seen", by_name["seen"]),
        ),
        _line(
            ("cpu", by_name["cpu"]),
            ("memory", by_name["mem"]),
            ("load 1m", load.get("load_1m")),
            ("cpus", load.get("cpus")),
            ("sampled", age(load.get("at"), now) if load else None),
        ),
        _line(("gpu", gpu_detail(load.get("gpus")))),
        _line(("slots", slots)),
        _line(("labels", labels)),
        _line(("mounts", mount_text if mounts else None)),
    ]
    return Text("\n").join(lines)


def gpu_detail(gpus: Any) -> str | None:
    if not isinstance(gpus, list) or not gpus:
        return None
    parts = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        name = gpu.get("name") or gpu.get("vendor") or "GPU"
        used, total = gpu.get("memory_used_mib"), gpu.get("memory_total_mib")
        memory = f", memory {used}/{total} MiB" if used is not None and total else ""
        parts.append(f"{name}: {cells.gpu_text([gpu]) or '?'}{memory}")
    return "; ".join(parts)


def capability_rows(worker: dict[str, Any]) -> list[list[Text]]:
    """Per binary: version, path, and counts of what the scheduler matches jobs against."""
    versions = worker.get("binary_versions") or {}
    caps = worker.get("capabilities") or {}
    result = []
    for name in sorted(set(versions) | set(caps)):
        info = versions.get(name) or {}
        offered = caps.get(name) or {}
        counts = ", ".join(
            f"{len(offered.get(kind) or [])} {kind}"
            for kind in ("encoders", "decoders", "filters", "formats")
        )
        hwaccels = ",".join(offered.get("hwaccels") or []) or "none"
        version = str(info.get("version") or "")
        # "ffmpeg version 5.1.9-0+deb12u1 Copyright (c) ...": the number says it all.
        number = VERSION.search(version)
        result.append(
            [
                cells.text(name),
                cells.text(number.group(0) if number else version or None),
                cells.text(info.get("path")),
                Text(counts if offered else "not probed"),
                cells.text(hwaccels),
            ]
        )
    return result


def hardware_rows(worker: dict[str, Any]) -> list[list[Text]]:
    """Every hardware check: offered (passed) first, then the others with the reason."""
    result = []
    for binary, checks in sorted((worker.get("hardware") or {}).items()):
        reasons = set(checks.values())
        if len(checks) > 1 and len(reasons) == 1 and "ok" not in reasons:
            # One reason for all (ffprobe cannot run a check): one row, not forty.
            shown = Text(f"all {len(checks)}")
            result.append(
                [
                    cells.text(binary),
                    shown,
                    Text("not offered", style="yellow"),
                    cells.text(reasons.pop()),
                ]
            )
            continue
        for name, verdict in sorted(checks.items(), key=lambda kv: (kv[1] != "ok", kv[0])):
            ok = verdict == "ok"
            result.append(
                [
                    cells.text(binary),
                    cells.text(name),
                    Text("offered", style="green") if ok else Text("not offered", style="yellow"),
                    cells.text(None if ok else verdict),
                ]
            )
    return result


class WorkerDetailScreen(ConsoleScreen):
    HELP_WHERE = "worker details"
    BINDINGS = [
        Binding("escape,q,backspace", "back", "Back"),
        Binding("e", "edit", "Slots/labels"),
        Binding("d", "drain", "Drain"),
        Binding("u", "resume", "Resume"),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.worker_id = worker_id
        self.worker: dict[str, Any] | None = None
        self._fetching = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="worker-page"):
            yield Static(
                f"worker {printable(self.worker_id)}: loading...", id="worker-head", markup=False
            )
            yield Static("binaries", classes="section", markup=False)
            yield DataTable(id="worker-binaries", cursor_type="none", zebra_stripes=True)
            yield Static(
                "hardware acceleration (offered only after a one-frame check)",
                classes="section",
                markup=False,
            )
            yield DataTable(id="worker-hardware", cursor_type="none", zebra_stripes=True)
            yield Static("newest jobs", classes="section", markup=False)
            yield DataTable(id="worker-jobs", cursor_type="none", zebra_stripes=True)
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        columns = {
            "#worker-binaries": ("binary", "version", "path", "can", "hwaccels"),
            "#worker-hardware": ("binary", "name", "offered", "why not"),
            "#worker-jobs": ("job", "state", "input", "output", "age", "exit"),
        }
        for selector, names in columns.items():
            table = self.query_one(selector, DataTable)
            for name in names:
                table.add_column(name, key=name)
        self.action_reload()
        self.set_interval(WORKER_REFRESH_SECONDS, self.action_reload)

    def action_reload(self) -> None:
        if self._fetching.acquire(blocking=False):
            self.fetch()

    @work(thread=True, group="worker")
    def fetch(self) -> None:
        try:
            try:
                worker = self.console.source.worker(self.worker_id)
            except SourceError as exc:
                self.post_message(WorkerFailed(exc.message))
                return
            self.post_message(WorkerReady(worker))
        finally:
            self._fetching.release()

    def on_worker_ready(self, message: WorkerReady) -> None:
        worker = self.worker = message.worker
        snapshot = self.console.main.snapshot
        now = snapshot.now if snapshot else None
        self.query_one("#worker-head", Static).update(describe(worker, now))
        self._fill("#worker-binaries", capability_rows(worker))
        self._fill("#worker-hardware", hardware_rows(worker) or [[Text("-")] * 4])
        jobs = []
        for job in worker.get("recent_jobs") or []:
            row = dict(zip(cells.JOB_COLUMNS, cells.job_row(job, now).cells, strict=True))
            jobs.append([row[c] for c in ("job", "state", "input", "output", "age", "exit")])
        self._fill("#worker-jobs", jobs or [[Text("-")] * 6])

    def _fill(self, selector: str, rows: list[list[Text]]) -> None:
        table = self.query_one(selector, DataTable)
        table.clear()
        for row in rows:
            table.add_row(*row)

    def on_worker_failed(self, message: WorkerFailed) -> None:
        self.query_one("#status", Static).update(f"Refused: {printable(message.message)}")

    def action_back(self) -> None:
        self.dismiss(None)

    def action_drain(self) -> None:
        source, worker_id = self.console.source, self.worker_id
        self.console.administer(lambda: source.drain_worker(worker_id), target=self)

    def action_resume(self) -> None:
        source, worker_id = self.console.source, self.worker_id
        self.console.administer(lambda: source.resume_worker(worker_id), target=self)

    def action_edit(self) -> None:
        if self.worker is None:
            return
        source, worker_id = self.console.source, self.worker_id

        def save(changes: dict[str, Any] | None) -> None:
            if changes:
                self.console.administer(
                    lambda: source.change_worker(worker_id, **changes), target=self
                )

        self.app.push_screen(WorkerEditScreen(self.worker), save)

    def on_action_done(self, message: ActionDone) -> None:
        text = printable(message.message)
        self.query_one("#status", Static).update(text)
        self.notify(text, markup=False)
        self.action_reload()

    def on_action_failed(self, message: ActionFailed) -> None:
        text = f"Refused: {printable(message.message)}"
        self.query_one("#status", Static).update(text)
        self.notify(text, severity="error", markup=False)
