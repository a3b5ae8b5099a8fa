"""One job: its arguments, state history with reasons, and a live tail of its stderr."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from console import model
from console.messages import ActionDone, ActionFailed
from console.screens.base import ConsoleScreen
from console.screens.dialogs import ConfirmScreen
from console.source import SourceError

DETAIL_REFRESH_SECONDS = 1.0
STDERR_KB = 16


@dataclass
class DetailReady(Message):
    job: dict[str, Any]
    stderr: str


@dataclass
class DetailFailed(Message):
    message: str


class JobDetailScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape,backspace", "back", "Back"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("r", "reload", "Refresh"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: dict[str, Any] | None = None
        self._first_load = True
        self._fetching = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"job {self.job_id}: loading...", id="job-head")
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
        lines = [
            f"job {job['job_id']}  [b]{escape(job['state'])}[/b]  {escape(job['binary'])}"
            f"  requester {escape(job['requester'])}"
            f"  worker {escape(model.cell(job.get('worker_id')))}",
            f"progress {model.progress_text(job.get('progress'))}"
            f"  exit {model.cell(job.get('exit_code'))}"
            f"  failure {escape(model.cell(job.get('failure')))}"
            f"  reason {escape(model.cell(job.get('reason')))}",
        ]
        self.query_one("#job-head", Static).update("\n".join(lines))
        args = " ".join(model.quote(a) for a in job.get("args", []))
        cwd = job.get("cwd") or "-"
        self.query_one("#job-args", Static).update(f"cwd {cwd}\nargs {args}")
        events = self.query_one("#events", DataTable)
        history = job.get("events", [])
        if events.row_count != len(history):
            events.clear()
            for event in history:
                events.add_row(
                    event["at"][:19].replace("T", " "),
                    model.cell(event["from"]),
                    event["to"],
                    model.cell(event["reason"]),
                )
        box = self.query_one("#stderr-box", VerticalScroll)
        # Follow the tail unless the operator scrolled up to read something.
        follow = self._first_load or box.scroll_y >= box.max_scroll_y
        self._first_load = False
        text = "\n".join(model.stderr_lines(message.stderr)) or "(no stderr yet)"
        self.query_one("#stderr", Static).update(text)
        if follow:
            self.call_after_refresh(box.scroll_end, animate=False)

    def on_detail_failed(self, message: DetailFailed) -> None:
        self.query_one("#status", Static).update(f"Refused: {message.message}")

    def action_back(self) -> None:
        self.dismiss(None)

    def action_cancel_job(self) -> None:
        source = self.console.source

        def answered(yes: bool | None) -> None:
            if yes:
                self.console.administer(lambda: source.cancel_job(self.job_id), target=self)

        self.app.push_screen(ConfirmScreen(f"Cancel job {self.job_id[:12]}?"), answered)

    def on_action_done(self, message: ActionDone) -> None:
        self.query_one("#status", Static).update(message.message)
        self.notify(message.message)
        self.action_reload()

    def on_action_failed(self, message: ActionFailed) -> None:
        self.query_one("#status", Static).update(f"Refused: {message.message}")
        self.notify(f"Refused: {message.message}", severity="error")
