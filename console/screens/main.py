"""The main screen: cluster header, filter line, and the jobs, workers and users tables.

The only screen whose ``q`` quits the console; every other screen's ``escape``/``q``
comes back here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane

from console import cells, filters, model
from console.messages import ActionDone, ActionFailed, ConnectionProblem, KeyIssued, SnapshotReady
from console.screens.base import ConsoleScreen
from console.screens.dialogs import (
    AddUserScreen,
    ConfirmScreen,
    KeyScreen,
    NetworksScreen,
    WorkerEditScreen,
)
from console.screens.help import HelpScreen
from console.screens.job_detail import JobDetailScreen
from console.screens.log import LogScreen, SearchInput
from console.screens.worker_detail import WorkerDetailScreen
from console.widgets.banner import ConnectionBanner
from console.widgets.header import ClusterHeader
from console.widgets.tables import JobsTable, KeyedTable, RowAction, UsersTable, WorkersTable
from dffmpeg.text import printable

TABS = ("jobs", "workers", "users")
PLACEHOLDER = "/ filter: is:active  state:run  -bin:ffprobe  user:me  worker:w1  bunny"
# Quick views: the word each key adds to (or removes from) the filter line.
VIEWS = {"view_active": "is:active", "view_failed": "is:failed", "view_mine": "is:mine"}


class MainScreen(ConsoleScreen):
    HELP_WHERE = "main screen"
    BINDINGS = [
        Binding("1", "show_tab('jobs')", "Jobs"),
        Binding("2", "show_tab('workers')", "Workers"),
        Binding("3", "show_tab('users')", "Users"),
        Binding("slash", "filter", "Filter"),
        Binding("r", "app.refresh_now", "Refresh"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: model.Snapshot | None = None
        self.job_filter = filters.JobFilter()
        # Which page of jobs is shown; a new filter starts again at the newest.
        self.jobs_offset = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner(id="banner")
        yield ClusterHeader(id="cluster")
        yield Input(placeholder=PLACEHOLDER, id="filter")
        yield Static("", id="filter-hint", markup=False)
        with TabbedContent(initial="jobs", id="tabs"):
            with TabPane("Jobs [1]", id="jobs"):
                yield JobsTable(id="jobs-table")
            with TabPane("Workers [2]", id="workers"):
                yield WorkersTable(id="workers-table")
            with TabPane("Users [3]", id="users"):
                yield UsersTable(id="users-table")
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#jobs-table").focus()
        self.set_interval(1.0, self._tick)

    @property
    def me(self) -> str | None:
        return getattr(self.console.source.api, "client_id", None)

    # -- data -------------------------------------------------------------------------

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        snap = message.snapshot
        if snap.filter_error is not None and self.snapshot is not None:
            # A filter the coordinator refused: keep the jobs shown, say why.
            old = self.snapshot
            snap = dataclasses.replace(snap, jobs=old.jobs, jobs_total=old.jobs_total)
        self.snapshot = snap
        self.query_one(ConnectionBanner).clear_problem(snap.received)
        self.render_snapshot()

    def on_connection_problem(self, message: ConnectionProblem) -> None:
        seconds = getattr(self.app, "refresh_seconds", 2.0)
        self.query_one(ConnectionBanner).show_problem(message.kind, message.message, seconds)

    def _tick(self) -> None:
        """Every second: the age of the data, in the header and the banner."""
        banner = self.query_one(ConnectionBanner)
        banner.tick()
        received = self.snapshot.received if self.snapshot else None
        self.query_one(ClusterHeader).freshness(received, self.console.refresh_seconds)

    def render_snapshot(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        self.query_one(ClusterHeader).show(snap)
        self._hint(snap.filter_error)
        # Only the table shown is brought up to date (a hundred workers cost as much as
        # the jobs); the others are when their tab is opened.
        self._fill_tab(str(self.query_one(TabbedContent).active or "jobs"))

    def _fill_tab(self, tab: str) -> None:
        snap = self.snapshot
        if snap is None:
            return
        words = self.job_filter
        if tab == "jobs":
            self._fill("#jobs-table", snap.jobs, cells.job_row, None)
        elif tab == "workers":
            self._fill("#workers-table", snap.workers, cells.worker_row, words)
        else:
            self._fill("#users-table", snap.users, cells.user_row, words)

    @on(TabbedContent.TabActivated)
    def tab_shown(self, event: TabbedContent.TabActivated) -> None:
        self._fill_tab(str(self.query_one(TabbedContent).active or "jobs"))

    def _fill(
        self,
        selector: str,
        items: list[dict[str, Any]],
        row: cells.RowMaker,
        words: filters.JobFilter | None,
    ) -> None:
        now = self.snapshot.now if self.snapshot else None
        rows = [row(item, now) for item in items]
        if words is not None:  # jobs are filtered by the coordinator
            rows = [r for r in rows if words.matches([r.key, *r.plain()])]
        self.query_one(selector, KeyedTable).sync(rows)

    def _hint(self, refused: str | None) -> None:
        problems = list(self.job_filter.problems)
        if refused:
            problems.append(f"refused: {refused}")
        hint = self.query_one("#filter-hint", Static)
        hint.update(printable("; ".join(problems)))
        hint.display = bool(problems)

    # -- navigation and filter ---------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._fill_tab(tab)
        self.query_one(f"#{tab}-table").focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_help(self) -> None:
        self.app.push_screen(
            HelpScreen(
                [
                    MainScreen,
                    JobsTable,
                    WorkersTable,
                    UsersTable,
                    KeyedTable,
                    JobDetailScreen,
                    LogScreen,
                    SearchInput,
                    WorkerDetailScreen,
                    WorkerEditScreen,
                    ConfirmScreen,
                    KeyScreen,
                    type(self.app),
                ]
            )
        )

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        previous = self.job_filter.params()
        self.job_filter = filters.JobFilter.parse(event.value, self.me)
        changed = self.job_filter.params() != previous
        if changed:
            self.jobs_offset = 0
        self._hint(None)
        self.render_snapshot()
        if changed:
            self.app.call_later(self.console.action_refresh_now)

    @on(Input.Submitted, "#filter")
    def filter_done(self, event: Input.Submitted) -> None:
        self.action_show_tab(str(self.query_one(TabbedContent).active or "jobs"))

    def on_key(self, event: Any) -> None:
        filter_input = self.query_one("#filter", Input)
        if event.key == "escape" and filter_input.has_focus:
            filter_input.value = ""
            self.action_show_tab(str(self.query_one(TabbedContent).active or "jobs"))
            event.stop()

    def set_filter(self, text: str) -> None:
        """Put ``text`` in the filter line (a quick view); the jobs follow."""
        self.query_one("#filter", Input).value = text

    def _toggle(self, word: str) -> None:
        self.set_filter(filters.toggle(self.query_one("#filter", Input).value, word))

    # -- actions on rows -------------------------------------------------------------

    def _item(self, kind: str, key: str) -> dict[str, Any]:
        snap = self.snapshot
        items: list[dict[str, Any]] = getattr(snap, kind) if snap else []
        id_field = {"users": "client_id", "workers": "worker_id", "jobs": "job_id"}[kind]
        return next((i for i in items if i.get(id_field) == key), {})

    def on_row_action(self, message: RowAction) -> None:
        action, key = message.action, message.key
        if action == "add_user":
            self.app.push_screen(AddUserScreen(), self._add_user)
            return
        if action in ("older_jobs", "newer_jobs"):
            self._turn_page(action == "older_jobs")
            return
        if action in VIEWS:
            self._toggle(VIEWS[action])
            return
        if action == "view_no_probes":
            self._toggle("-bin:ffprobe")
            return
        if key is None:
            self.notify("nothing selected", severity="warning")
            return
        handler = getattr(self, f"_on_{action}", None)
        if handler is not None:
            handler(key)

    def _on_view_requester(self, key: str) -> None:
        requester = self._item("jobs", key).get("requester")
        if requester:
            self._toggle(f"user:{requester}")

    def _on_view_worker(self, key: str) -> None:
        worker = self._item("jobs", key).get("worker_id")
        if worker:
            self._toggle(f"worker:{worker}")
        else:
            self.notify("this job has no worker", severity="warning")

    def _on_worker_jobs(self, key: str) -> None:
        self._toggle(f"worker:{key}")
        self.action_show_tab("jobs")

    def _on_open_job(self, key: str) -> None:
        self.app.push_screen(JobDetailScreen(key))

    def _on_job_log(self, key: str) -> None:
        self.app.push_screen(LogScreen(key))

    def _on_open_worker(self, key: str) -> None:
        self.app.push_screen(WorkerDetailScreen(key))

    def _run(self, call: Callable[[], Any], issued: bool | None = None) -> None:
        self.console.administer(call, issued)

    def _on_cancel_job(self, key: str) -> None:
        source = self.console.source
        self._confirm(f"Cancel job {key[:12]}?", lambda: self._run(lambda: source.cancel_job(key)))

    def _on_drain_worker(self, key: str) -> None:
        source = self.console.source
        self._run(lambda: source.drain_worker(key))

    def _on_resume_worker(self, key: str) -> None:
        source = self.console.source
        self._run(lambda: source.resume_worker(key))

    def _on_remove_worker(self, key: str) -> None:
        source = self.console.source
        self._confirm(
            f"Remove worker {key}? (a live worker registers again)",
            lambda: self._run(lambda: source.remove_worker(key)),
        )

    def _on_edit_worker(self, key: str) -> None:
        source = self.console.source
        worker = self._item("workers", key) or {"worker_id": key}

        def save(changes: dict[str, Any] | None) -> None:
            if changes:
                self._run(lambda: source.change_worker(key, **changes))

        self.app.push_screen(WorkerEditScreen(worker), save)

    def _on_rotate_key(self, key: str) -> None:
        source = self.console.source
        self._confirm(
            f"Rotate the key of {key}? The old key stops working at once.",
            lambda: self._run(lambda: source.rotate_key(key), issued=False),
        )

    def _on_set_networks(self, key: str) -> None:
        source = self.console.source

        def save(networks: list[str] | None) -> None:
            if networks is not None:
                self._run(lambda: source.set_networks(key, networks))

        current = list(self._item("users", key).get("allowed_networks") or [])
        self.app.push_screen(NetworksScreen(key, current), save)

    def _on_delete_user(self, key: str) -> None:
        source = self.console.source
        self._confirm(f"Delete user {key}?", lambda: self._run(lambda: source.delete_user(key)))

    def _turn_page(self, older: bool) -> None:
        page = self.console.page_size
        total = self.snapshot.jobs_total if self.snapshot else 0
        offset = self.jobs_offset + page if older else max(self.jobs_offset - page, 0)
        if offset >= total or offset == self.jobs_offset:
            self.notify("no older jobs" if older else "already at the newest jobs")
            return
        self.jobs_offset = offset
        self.console.action_refresh_now()

    def _confirm(self, question: str, then: Callable[[], None]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                then()

        self.app.push_screen(ConfirmScreen(question), answered)

    def _add_user(self, form: dict[str, Any] | None) -> None:
        if form is None:
            return
        source = self.console.source
        self._run(
            lambda: source.add_user(form["client_id"], form["role"], form["networks"]),
            issued=True,
        )

    # -- results of actions ----------------------------------------------------------

    def on_action_done(self, message: ActionDone) -> None:
        text = printable(message.message)
        self.query_one("#status", Static).update(text)
        self.notify(text, markup=False)
        self.console.action_refresh_now()

    def on_action_failed(self, message: ActionFailed) -> None:
        text = f"Refused: {printable(message.message)}"
        self.query_one("#status", Static).update(text)
        self.notify(text, severity="error", markup=False)
        self.console.action_refresh_now()

    def on_key_issued(self, message: KeyIssued) -> None:
        client_id = str(message.user["client_id"])
        verb = "added" if message.created else "has a new key"
        self.query_one("#status", Static).update(printable(f"user {client_id} {verb}"))
        if message.created:
            # The cursor goes to the new user: the next k or x acts on it, not on
            # whichever row the cursor happened to be on.
            self.query_one("#users-table", UsersTable).follow(client_id)
        self.app.push_screen(KeyScreen(message.user, message.created))
        self.console.action_refresh_now()
