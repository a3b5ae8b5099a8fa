"""The console's Textual application: a live view of workers and jobs."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Footer, Header, Static

from client.api import Api, ApiError, Unreachable

REFRESH_SECONDS = 2.0


class ConsoleApp(App[None]):
    TITLE = "dffmpeg console"
    BINDINGS = [("q", "quit", "Quit"), ("r", "refresh", "Refresh")]

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="banner")
        yield DataTable(id="workers", cursor_type="row")
        yield DataTable(id="jobs", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        workers = self.query_one("#workers", DataTable)
        workers.add_columns("worker", "state", "slots", "labels", "paths", "last seen")
        jobs = self.query_one("#jobs", DataTable)
        jobs.add_columns("job", "state", "binary", "requester", "worker", "exit")
        self.action_refresh()
        self.set_interval(REFRESH_SECONDS, self.action_refresh)

    def action_refresh(self) -> None:
        self.fetch()

    @work(thread=True, exclusive=True)
    def fetch(self) -> None:
        try:
            workers = self.api.call("GET", "/workers", timeout=10)["workers"]
            jobs = self.api.call("GET", "/jobs", params={"limit": 200}, timeout=10)["jobs"]
        except (ApiError, Unreachable) as exc:
            self.call_from_thread(self.show_error, str(exc))
            return
        self.call_from_thread(self.show, workers, jobs)

    def show_error(self, message: str) -> None:
        self.query_one("#banner", Static).update(f"coordinator problem: {message} (retrying)")

    def show(self, workers: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        self.query_one("#banner", Static).update("")
        table = self.query_one("#workers", DataTable)
        table.clear()
        for w in workers:
            table.add_row(
                w["worker_id"],
                w["state"],
                str(w["slots"]),
                ",".join(w["labels"]),
                ",".join(w["path_variables"]),
                w["last_seen_at"],
                key=w["worker_id"],
            )
        table = self.query_one("#jobs", DataTable)
        table.clear()
        for j in jobs:
            table.add_row(
                j["job_id"][:12],
                j["state"],
                j["binary"],
                j["requester"],
                j["worker_id"] or "-",
                str(j["exit_code"] if j["exit_code"] is not None else "-"),
                key=j["job_id"],
            )
