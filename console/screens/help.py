"""Every key binding in one place, read from the bindings themselves.

The screen is given the classes whose ``BINDINGS`` it lists (each names where its keys
work with ``HELP_WHERE``), so a key added to a screen or table shows up here with the
description its binding has, and a help text can never disagree with the keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

FILTER_HELP = """\
Filter (/): state:running,pending (a beginning is enough: state:run), user:jellyfin
or user:me, worker:node1, bin:ffprobe, is:active, is:failed (failed, or exited
non-zero), is:mine; other words search the file names, ids, requesters and workers
("Big Buck" keeps its space). A - or ! before a word negates it: -bin:ffprobe,
!state:completed, -sample. Everything goes to the coordinator, so totals cover the
whole history. In the workers and users tables the plain words match the rows' text.
Everything goes through the coordinator's admin API, signed with your identity.
"""


def key_text(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    return " / ".join(format_key(key.strip()) for key in binding.key.split(","))


def rows(owners: Sequence[type]) -> list[tuple[str, str, str]]:
    """(keys, where, what) for every binding with a description, in the given order."""
    found: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for owner in owners:
        where = str(getattr(owner, "HELP_WHERE", owner.__name__))
        for item in getattr(owner, "BINDINGS", []):
            binding = item if isinstance(item, Binding) else Binding(*item)
            if not binding.description or (binding.key, where) in seen:
                continue
            seen.add((binding.key, where))
            found.append((key_text(binding), where, binding.description))
    return found


class HelpScreen(ModalScreen[None]):
    HELP_WHERE = "help"
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, owners: Sequence[type]) -> None:
        super().__init__()
        self.owners = [*owners, HelpScreen]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Static("dffmpeg console: every key", classes="help-title", markup=False)
            yield DataTable(id="keys", cursor_type="none", zebra_stripes=True)
            yield Static(FILTER_HELP, id="filter-help", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#keys", DataTable)
        for name in ("key", "where", "what"):
            table.add_column(name, key=name)
        for keys, where, what in rows(self.owners):
            table.add_row(Text(keys, style="bold"), Text(where), Text(what))

    def action_close(self) -> None:
        self.dismiss(None)
