"""The main screen: a summary line and tabs of jobs, workers and users, all filterable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane

from console import model
from console.messages import ActionDone, ActionFailed, ConnectionProblem, KeyIssued, SnapshotReady
from console.screens.base import ConsoleScreen
from console.screens.dialogs import AddUserScreen, ConfirmScreen, KeyScreen, NetworksScreen
from console.screens.help import HelpScreen
from console.screens.job_detail import JobDetailScreen
from console.widgets.banner import ConnectionBanner
from console.widgets.tables import JobsTable, KeyedTable, RowAction, UsersTable, WorkersTable

TABS = ("jobs", "workers", "users")


class MainScreen(ConsoleScreen):
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
        self.job_filter = model.JobFilter()
        # Which page of jobs is shown; a new filter starts again at the newest.
        self.jobs_offset = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner(id="banner", markup=False)
        yield Static("connecting...", id="summary", markup=False)
        yield Input(placeholder="/ filter: state:running user:alice worker:w1 words", id="filter")
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

    # -- data -------------------------------------------------------------------------

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.snapshot = message.snapshot
        self.query_one(ConnectionBanner).clear_problem()
        self.render_snapshot()

    def on_connection_problem(self, message: ConnectionProblem) -> None:
        seconds = getattr(self.app, "refresh_seconds", 2.0)
        self.query_one(ConnectionBanner).show_problem(message.kind, message.message, seconds)

    def render_snapshot(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        now = snap.now
        words = self.job_filter
        self.query_one("#summary", Static).update(
            model.summary_text(snap.summary, snap.jobs_total, snap.jobs_offset, len(snap.jobs))
        )
        self._fill("#jobs-table", snap.jobs, "job_id", lambda j: model.job_row(j, now), words)
        self._fill(
            "#workers-table", snap.workers, "worker_id", lambda w: model.worker_row(w, now), words
        )
        self._fill("#users-table", snap.users, "client_id", lambda u: model.user_row(u, now), words)

    def _fill(
        self,
        selector: str,
        items: list[dict[str, Any]],
        key: str,
        row: Callable[[dict[str, Any]], list[str]],
        words: model.JobFilter,
    ) -> None:
        rows = [(str(item[key]), row(item)) for item in items]
        if selector != "#jobs-table":
            # Server-side keys only filter jobs; elsewhere every word is a text match.
            words = model.JobFilter(words=[*words.words, *words.server.values()])
        shown = [(k, cells) for k, cells in rows if words.matches([k, *cells])]
        self.query_one(selector, KeyedTable).sync(shown)

    # -- navigation and filter ---------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one(f"#{tab}-table").focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        previous = self.job_filter.server
        self.job_filter = model.JobFilter.parse(event.value)
        if self.job_filter.server != previous:
            self.jobs_offset = 0
        self.render_snapshot()
        if self.job_filter.server != previous:
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

    # -- actions on rows -------------------------------------------------------------

    def _user(self, client_id: str) -> dict[str, Any]:
        users = self.snapshot.users if self.snapshot else []
        return next((u for u in users if u["client_id"] == client_id), {"allowed_networks": []})

    def on_row_action(self, message: RowAction) -> None:
        key = message.key
        source = self.console.source
        run = self.console.administer
        if message.action == "add_user":
            self.app.push_screen(AddUserScreen(), self._add_user)
            return
        if message.action in ("older_jobs", "newer_jobs"):
            self._turn_page(message.action == "older_jobs")
            return
        if key is None:
            self.notify("nothing selected", severity="warning")
            return
        if message.action == "open_job":
            self.app.push_screen(JobDetailScreen(key))
        elif message.action == "cancel_job":
            self._confirm(f"Cancel job {key[:12]}?", lambda: run(lambda: source.cancel_job(key)))
        elif message.action == "drain_worker":
            run(lambda: source.drain_worker(key))
        elif message.action == "resume_worker":
            run(lambda: source.resume_worker(key))
        elif message.action == "remove_worker":
            self._confirm(
                f"Remove worker {key}? (a live worker registers again)",
                lambda: run(lambda: source.remove_worker(key)),
            )
        elif message.action == "rotate_key":
            self._confirm(
                f"Rotate the key of {key}? The old key stops working at once.",
                lambda: run(lambda: source.rotate_key(key), issued=False),
            )
        elif message.action == "set_networks":

            def save(networks: list[str] | None) -> None:
                if networks is not None:
                    run(lambda: source.set_networks(key, networks))

            self.app.push_screen(
                NetworksScreen(key, list(self._user(key).get("allowed_networks") or [])), save
            )
        elif message.action == "delete_user":
            self._confirm(f"Delete user {key}?", lambda: run(lambda: source.delete_user(key)))

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
        self.console.administer(
            lambda: source.add_user(form["client_id"], form["role"], form["networks"]),
            issued=True,
        )

    # -- results of actions ----------------------------------------------------------

    def on_action_done(self, message: ActionDone) -> None:
        self.query_one("#status", Static).update(message.message)
        self.notify(message.message)
        self.console.action_refresh_now()

    def on_action_failed(self, message: ActionFailed) -> None:
        text = f"Refused: {message.message}"
        self.query_one("#status", Static).update(text)
        self.notify(text, severity="error")
        self.console.action_refresh_now()

    def on_key_issued(self, message: KeyIssued) -> None:
        verb = "added" if message.created else "has a new key"
        self.query_one("#status", Static).update(f"user {message.user['client_id']} {verb}")
        self.app.push_screen(KeyScreen(message.user, message.created))
        self.console.action_refresh_now()
