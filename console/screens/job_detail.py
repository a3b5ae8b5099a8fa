"""One job: its files, progress, arguments, state history and a live tail of its stderr.

Everything here is the job's own text (arguments, working directory, reasons, stderr),
written by whoever submitted it or by ffmpeg: it is shown through ``printable`` in
Rich ``Text``, never parsed as markup, so ``[/]`` in a path cannot break the screen.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from console import cells, model
from console.messages import ActionDone, ActionFailed
from console.screens.base import ConsoleScreen
from console.screens.dialogs import ConfirmScreen
from console.screens.log import LogScreen
from console.source import SourceError
from dffmpeg.text import printable

DETAIL_REFRESH_SECONDS = 1.0
STDERR_KB = 16


@dataclass
class DetailReady(Message):
    job: dict[str, Any]
    stderr: str


@dataclass
class DetailFailed(Message):
    message: str


def _pair(line: Text, label: str, value: Text) -> None:
    line.append(f"{label} ", style="bright_black")
    line.append_text(value)
    line.append("  ")


def head_lines(job: dict[str, Any], now: datetime | None) -> Text:
    """The job's identity, files and progress as three lines of plain Text."""
    row = cells.job_row(job, now)
    by_name = dict(zip(cells.JOB_COLUMNS, row.cells, strict=True))
    first = Text(f"job {job['job_id']}  ")
    first.append_text(by_name["state"])
    first.append("  ")
    _pair(first, "binary", by_name["bin"])
    _pair(first, "requester", by_name["requester"])
    _pair(first, "worker", by_name["worker"])
    files = Text()
    _pair(files, "input", cells.text(job.get("input_name")))
    _pair(files, "output", cells.text(job.get("output_name")))
    progress = Text()
    for label in ("progress", "fps", "speed", "elapsed", "eta", "exit"):
        _pair(progress, label, by_name[label])
    _pair(progress, "failure", cells.text(job.get("failure")))
    _pair(progress, "reason", cells.text(job.get("reason")))
    return Text("\n").join([first, files, progress])


class JobDetailScreen(ConsoleScreen):
    HELP_WHERE = "job details"
    BINDINGS = [
        Binding("escape,q,backspace", "back", "Back"),
        Binding("l", "log", "Full log"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: dict[str, Any] | None = None
        self._first_load = True
        self._fetching = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"job {printable(self.job_id)}: loading...", id="job-head", markup=False)
        yield Static("", id="job-args", markup=False)
        yield DataTable(id="events", cursor_type="none", zebra_stripes=True)
        with VerticalScroll(id="stderr-box"):
            yield Static("", id="stderr", markup=False)
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#stderr-box").border_title = f"stderr (last {STDERR_KB} KiB, live)"
        events = self.query_one("#events", DataTable)
        for name, width in (("at", 19), ("from", 9), ("to", 9), ("reason", None)):
            events.add_column(name, key=name, width=width)
        self.action_reload()
        self.set_interval(DETAIL_REFRESH_SECONDS, self.action_reload)

    def action_reload(self) -> None:
        # Never more than one fetch in flight, whatever the coordinator's latency.
        if self._fetching.acquire(blocking=False):
            self.fetch()

    @work(thread=True, group="detail")
    def fetch(self) -> None:
        try:
            self._fetch()
        finally:
            self._fetching.release()

    def _fetch(self) -> None:
        source = self.console.source
        try:
            job = source.job(self.job_id)
            stderr = source.stderr(self.job_id, STDERR_KB)
        except SourceError as exc:
            self.post_message(DetailFailed(exc.message))
            return
        self.post_message(DetailReady(job, stderr))

    def on_detail_ready(self, message: DetailReady) -> None:
        job = self.job = message.job
        snapshot = self.console.main.snapshot
        # The coordinator's clock as of the main screen's last refresh (every couple of
        # seconds, also while this screen is shown).
        now = snapshot.now if snapshot else None
        events = job.get("events", [])
        self.query_one("#job-head", Static).update(head_lines(job, now))
        args = " ".join(model.quote(a) for a in job.get("args", []))
        cwd = printable(job.get("cwd") or "-")
        self.query_one("#job-args", Static).update(Text(f"cwd {cwd}\nargs {args}"))
        table = self.query_one("#events", DataTable)
        if table.row_count != len(events):
            table.clear()
            for event in events:
                table.add_row(
                    Text(str(event["at"])[:19].replace("T", " ")),
                    cells.text(event["from"]),
                    cells.text(event["to"]),
                    cells.text(event["reason"]),
                )
        box = self.query_one("#stderr-box", VerticalScroll)
        # Follow the tail unless the operator scrolled up to read something.
        follow = self._first_load or box.scroll_y >= box.max_scroll_y
        self._first_load = False
        text = "\n".join(model.stderr_lines(message.stderr)) or "(no stderr yet)"
        self.query_one("#stderr", Static).update(Text(text))
        if follow:
            self.call_after_refresh(box.scroll_end, animate=False)

    def on_detail_failed(self, message: DetailFailed) -> None:
        self.query_one("#status", Static).update(f"Refused: {printable(message.message)}")

    def action_back(self) -> None:
        self.dismiss(None)

    def action_log(self) -> None:
        self.app.push_screen(LogScreen(self.job_id))

    def action_cancel_job(self) -> None:
        source = self.console.source
        job_id = self.job_id

        def answered(yes: bool | None) -> None:
            if yes:
                self.console.administer(lambda: source.cancel_job(job_id), target=self)

        self.app.push_screen(ConfirmScreen(f"Cancel job {job_id[:12]}?"), answered)

    def on_action_done(self, message: ActionDone) -> None:
        text = printable(message.message)
        self.query_one("#status", Static).update(text)
        self.notify(text, markup=False)
        self.action_reload()

    def on_action_failed(self, message: ActionFailed) -> None:
        text = f"Refused: {printable(message.message)}"
        self.query_one("#status", Static).update(text)
        self.notify(text, severity="error", markup=False)
