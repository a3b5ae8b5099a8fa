"""The console's Textual application: a live view of the cluster and its administration.

The app owns the :class:`~console.source.ClusterSource` and the refresh timer. Every
network call runs in a thread worker and reports back with a message, so a slow or
absent coordinator never freezes the keyboard. The API client is a constructor
argument: ``dffmpeg-console`` passes a signed :class:`client.api.Api`, snapshot tests a
fixed-data stand-in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from console.messages import (
    ActionDone,
    ActionFailed,
    ConnectionProblem,
    KeyIssued,
    RefreshRequested,
    SnapshotReady,
)
from console.model import JOB_PAGE
from console.screens.main import MainScreen
from console.source import TIMEOUT, CallsApi, ClusterSource, SourceError

REFRESH_SECONDS = 2.0


class ConsoleApp(App[None]):
    TITLE = "dffmpeg console"
    CSS_PATH = "console.tcss"
    HELP_WHERE = "anywhere"
    BINDINGS = [Binding("ctrl+r", "refresh_now", "Refresh now", show=False)]
    # Narrow terminals get a compact layout (see console.tcss).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (24, "-tall")]

    def __init__(
        self,
        api: CallsApi,
        refresh_seconds: float = REFRESH_SECONDS,
        timeout: float = TIMEOUT,
        page_size: int = JOB_PAGE,
    ) -> None:
        super().__init__()
        self.source = ClusterSource(api, timeout)
        self.refresh_seconds = refresh_seconds
        self.page_size = page_size
        self._refreshing = threading.Lock()
        self._again = False
        self.main = MainScreen()
        sub = getattr(api, "client_id", None)
        self.sub_title = f"as {sub}" if sub else ""

    def on_mount(self) -> None:
        self.push_screen(self.main)
        self.action_refresh_now()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.action_refresh_now)

    def exit(self, *args: Any, **kwargs: Any) -> None:
        """Quit at once: a request still waiting on a hung coordinator is broken off,
        since the process waits for its thread workers before it ends."""
        super().exit(*args, **kwargs)
        self.source.abort()

    def action_refresh_now(self) -> None:
        # One refresh at a time: against a hanging coordinator, timer ticks must not
        # pile up threads that all wait for it.
        if self._refreshing.acquire(blocking=False):
            self._again = False
            self.load_snapshot()
        else:
            # Asked while one runs (a new filter, an action's outcome): run once more after.
            self._again = True

    @work(thread=True, group="refresh")
    def load_snapshot(self) -> None:
        """Fetch one snapshot; a failure becomes the banner, and the timer retries."""
        try:
            self._load_snapshot()
        finally:
            self._refreshing.release()
            if self._again:
                self.post_message(RefreshRequested())

    def on_refresh_requested(self, message: RefreshRequested) -> None:
        self.action_refresh_now()

    def _load_snapshot(self) -> None:
        try:
            main = self.main
            snapshot = self.source.snapshot(main.job_filter, main.jobs_offset, self.page_size)
        except SourceError as exc:
            self.main.post_message(ConnectionProblem(exc.kind, exc.message))
            return
        self.main.post_message(SnapshotReady(snapshot))

    def administer(
        self,
        call: Callable[[], Any],
        issued: bool | None = None,
        target: Screen[Any] | None = None,
    ) -> None:
        """Run an administrative call in a thread; its outcome is posted to ``target``.

        ``issued`` marks calls that return a user with a fresh key (True: created,
        False: rotated) so the key can be shown once.
        """
        self._administer(call, issued, target or self.main)

    @work(thread=True, group="actions")
    def _administer(
        self, call: Callable[[], Any], issued: bool | None, target: Screen[Any]
    ) -> None:
        message: Message
        try:
            result = call()
        except SourceError as exc:
            message = ActionFailed(exc.message)
        else:
            message = KeyIssued(result, issued) if issued is not None else ActionDone(str(result))
        # The target's handler refreshes, so the table shows the outcome straight away.
        target.post_message(message)
