"""A job's stderr, full screen, with search: what an operator reads when a job failed.

Up to the last MiB the coordinator keeps, as a terminal would show it (a ``\\r``
progress line only in its latest version, control characters made visible). ``/``
searches (case-insensitive), ``n``/``N`` go to the next/previous match, which is
selected; while the job runs the text follows new output unless the cursor was moved
away from the end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Header, Input, Static, TextArea
from textual.widgets.text_area import Selection

from console import model
from console.screens.base import ConsoleScreen
from console.source import SourceError
from dffmpeg.text import printable

LOG_KB = 1024
LOG_REFRESH_SECONDS = 2.0
TERMINAL = {"completed", "failed", "canceled"}


@dataclass
class LogReady(Message):
    text: str
    state: str


@dataclass
class LogFailed(Message):
    message: str


class SearchInput(Input):
    """The search line; escape closes it (and does not leave the log)."""

    HELP_WHERE = "log search"
    BINDINGS = [Binding("escape", "close", "Close the search")]

    class Closed(Message):
        pass

    def action_close(self) -> None:
        self.post_message(self.Closed())


def find_all(lines: list[str], term: str) -> list[tuple[int, int]]:
    """(line, column) of every case-insensitive occurrence of ``term``."""
    needle = term.lower()
    found = []
    for number, line in enumerate(lines):
        haystack = line.lower()
        start = haystack.find(needle)
        while start >= 0:
            found.append((number, start))
            start = haystack.find(needle, start + max(len(needle), 1))
    return found


class LogScreen(ConsoleScreen):
    HELP_WHERE = "log"
    BINDINGS = [
        Binding("escape,q", "back", "Back"),
        Binding("slash", "search", "Search"),
        Binding("n", "next_match", "Next match"),
        Binding("N", "previous_match", "Previous match"),
        Binding("g,ctrl+home", "top", "Top", show=False),
        Binding("G,ctrl+end", "bottom", "Bottom", show=False),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.lines: list[str] = []
        self.term = ""
        self.matches: list[tuple[int, int]] = []
        self.current = -1
        self.state = ""
        self._fetching = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(
            f"stderr of job {printable(self.job_id[:12])} (last {LOG_KB} KiB)",
            id="log-title",
            markup=False,
        )
        yield TextArea("", id="log", read_only=True, soft_wrap=False, show_line_numbers=True)
        yield SearchInput(placeholder="search the log; enter finds, escape closes", id="log-search")
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#log-search").display = False
        area = self.query_one("#log", TextArea)
        area.cursor_blink = False  # a read-only text: the cursor marks a place, no typing
        area.focus()
        self.action_reload()
        self.set_interval(LOG_REFRESH_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.state not in TERMINAL:  # a finished job's log does not change
            self.action_reload()

    def action_reload(self) -> None:
        if self._fetching.acquire(blocking=False):
            self.fetch()

    @work(thread=True, group="log")
    def fetch(self) -> None:
        try:
            source = self.console.source
            try:
                state = str(source.job(self.job_id).get("state", ""))
                text = source.stderr(self.job_id, LOG_KB)
            except SourceError as exc:
                self.post_message(LogFailed(exc.message))
                return
            self.post_message(LogReady(text, state))
        finally:
            self._fetching.release()

    def on_log_ready(self, message: LogReady) -> None:
        self.state = message.state
        lines = model.stderr_lines(message.text, keep=1_000_000) or ["(no stderr)"]
        if lines == self.lines:
            return
        area = self.query_one("#log", TextArea)
        at_end = not self.lines or area.cursor_location[0] >= len(self.lines) - 1
        keep = area.cursor_location
        self.lines = lines
        area.load_text("\n".join(lines))
        if at_end:
            self.action_bottom()
        else:
            area.move_cursor(keep)
        if self.term:
            self.matches = find_all(self.lines, self.term)
            self._say_match()

    def on_log_failed(self, message: LogFailed) -> None:
        self.query_one("#status", Static).update(f"Refused: {printable(message.message)}")

    # -- search ---------------------------------------------------------------------

    def action_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.value = self.term
        box.focus()

    @on(Input.Submitted, "#log-search")
    def search_submitted(self, event: Input.Submitted) -> None:
        self.term = event.value
        self.matches = find_all(self.lines, self.term) if self.term else []
        self.current = -1
        self._close_search()
        self.action_next_match()

    def on_search_input_closed(self, message: SearchInput.Closed) -> None:
        self._close_search()

    def _close_search(self) -> None:
        self.query_one("#log-search", Input).display = False
        self.query_one("#log", TextArea).focus()

    def action_next_match(self) -> None:
        self._go(1)

    def action_previous_match(self) -> None:
        self._go(-1)

    def _go(self, step: int) -> None:
        if not self.matches:
            self._say_match()
            return
        area = self.query_one("#log", TextArea)
        if self.current < 0:
            # The first match after the cursor (or before it, going back).
            here = area.cursor_location
            after = [i for i, m in enumerate(self.matches) if m >= here]
            self.current = (after[0] if after else 0) if step > 0 else len(self.matches) - 1
        else:
            self.current = (self.current + step) % len(self.matches)
        line, column = self.matches[self.current]
        area.selection = Selection((line, column), (line, column + len(self.term)))
        area.scroll_cursor_visible(center=True)
        self._say_match()

    def _say_match(self) -> None:
        status = self.query_one("#status", Static)
        if not self.term:
            status.update("")
        elif not self.matches:
            status.update(f"no match for {printable(self.term)!r}")
        else:
            shown = max(self.current, 0) + 1
            status.update(f"match {shown} of {len(self.matches)} for {printable(self.term)!r}")

    # -- moving -----------------------------------------------------------------------

    def action_top(self) -> None:
        self.query_one("#log", TextArea).move_cursor((0, 0))

    def action_bottom(self) -> None:
        area = self.query_one("#log", TextArea)
        area.move_cursor((max(len(self.lines) - 1, 0), 0))
        area.scroll_cursor_visible()

    def action_back(self) -> None:
        self.dismiss(None)
