"""The cluster header: counts, the last hour as sparklines, and how fresh it all is."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from console import model

# Data older than this many refresh intervals (and at least STALE_MIN_SECONDS) is
# marked stale: a refresh failed or hangs.
STALE_INTERVALS = 3
STALE_MIN_SECONDS = 5.0


class ClusterHeader(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="summary", markup=False)
        with Horizontal(id="trends"):
            yield Static("done/min", classes="trend-label", markup=False)
            yield Sparkline([], id="throughput")
            yield Static("", id="throughput-now", classes="trend-now", markup=False)
            yield Static("queue", classes="trend-label", markup=False)
            yield Sparkline([], id="queue")
            yield Static("", id="queue-now", classes="trend-now", markup=False)
            yield Static("", id="last-day", markup=False)
            yield Static("", id="freshness", markup=False)

    def show(self, snap: model.Snapshot) -> None:
        summary = snap.summary
        self.query_one("#summary", Static).update(
            model.summary_text(summary, snap.jobs_total, snap.jobs_offset, len(snap.jobs))
        )
        for name, widget in (("finished", "throughput"), ("pending", "queue")):
            values = model.series(summary, name)
            self.query_one(f"#{widget}", Sparkline).data = values
            self.query_one(f"#{widget}-now", Static).update(f"{values[-1]:g}" if values else "-")
        self.query_one("#last-day", Static).update(model.last_day_text(summary))
        self.freshness(snap.received, 0.0)

    def freshness(self, received: float | None, refresh_seconds: float) -> None:
        """Mark the data stale once it is older than a few refresh intervals."""
        label = self.query_one("#freshness", Static)
        if received is None:
            return
        old = time.monotonic() - received
        limit = max(STALE_INTERVALS * refresh_seconds, STALE_MIN_SECONDS)
        stale = refresh_seconds > 0 and old > limit
        label.update(f"stale: data {model.seconds_text(old)} old" if stale else "")
        label.set_class(stale, "-stale")
