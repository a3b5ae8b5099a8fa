"""The connection banner: hidden while the coordinator answers, loud when it does not."""

from __future__ import annotations

from textual.widgets import Static

TITLES = {
    "unreachable": "Coordinator unreachable",
    "auth": "Credentials refused",
    "refused": "Coordinator error",
}


class ConnectionBanner(Static):
    """Shows why the last refresh failed; the console keeps retrying behind it."""

    def show_problem(self, kind: str, message: str, retry_seconds: float) -> None:
        title = TITLES.get(kind, "Coordinator error")
        retry = f"Retrying every {retry_seconds:g} s" if retry_seconds > 0 else "Press r to retry"
        self.update(f"{title}: {message}. {retry}.")
        self.set_class(True, "-problem")

    def clear_problem(self) -> None:
        self.update("")
        self.set_class(False, "-problem")

    @property
    def has_problem(self) -> bool:
        return self.has_class("-problem")
