"""The connection banner: hidden while the coordinator answers, loud when it does not.

It says what went wrong and how old the data on screen is, and the age keeps counting
while the console retries, so an operator never mistakes old data for live data.
"""

from __future__ import annotations

import time

from textual.widgets import Static

from console.model import seconds_text
from dffmpeg.text import printable

TITLES = {
    "unreachable": "Coordinator unreachable",
    "auth": "Credentials refused",
    "refused": "Coordinator error",
}


class ConnectionBanner(Static):
    """Shows why the last refresh failed; the console keeps retrying behind it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]
        self._problem: tuple[str, str, float] | None = None
        self.last_data: float | None = None  # monotonic time of the last good refresh

    def show_problem(self, kind: str, message: str, retry_seconds: float) -> None:
        self._problem = (kind, printable(message), retry_seconds)
        self.set_class(True, "-problem")
        self.tick()

    def clear_problem(self, received: float) -> None:
        self._problem = None
        self.last_data = received
        self.update("")
        self.set_class(False, "-problem")

    def tick(self) -> None:
        """Re-state the age of the data shown (called every second while a problem lasts)."""
        if self._problem is None:
            return
        kind, message, retry_seconds = self._problem
        title = TITLES.get(kind, "Coordinator error")
        retry = f"Retrying every {retry_seconds:g} s" if retry_seconds > 0 else "Press r to retry"
        if self.last_data is None:
            shown = "No data yet"
        else:
            shown = f"Data shown is {seconds_text(time.monotonic() - self.last_data)} old"
        self.update(f"{title}: {message}. {shown}. {retry}.")

    @property
    def has_problem(self) -> bool:
        return self.has_class("-problem")
