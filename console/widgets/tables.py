"""Tables of workers, jobs and users, keyed by id so a refresh leaves the cursor alone.

Each table owns the bindings that act on its selected row; the Footer shows them while
the table has focus. Actions do not talk to the coordinator themselves: they post
:class:`RowAction` and the screen decides (confirm first, then a thread worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from client import status


@dataclass
class RowAction(Message):
    """The operator asked for ``action`` on the row ``key`` (None: no row selected)."""

    action: str
    key: str | None


class KeyedTable(DataTable[Text]):
    """A DataTable that is updated in place from ``(key, cells)`` rows."""

    COLUMNS: Sequence[str] = ()

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._shown: dict[str, list[str]] = {}

    def on_mount(self) -> None:
        for name in self.COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def sync(self, rows: Sequence[tuple[str, list[str]]]) -> None:
        """Make the table show ``rows`` in that order, keeping the cursor on its row.

        Rows that stay are updated cell by cell; only when the order or the set of rows
        changes is the table rebuilt, and then the cursor is put back on its key.
        """
        selected = self.selected_key
        wanted = [key for key, _ in rows]
        current = [row.value for row in self.rows]
        if wanted == current:
            for key, cells in rows:
                old = self._shown.get(key, [])
                for index, (column, value) in enumerate(zip(self.COLUMNS, cells, strict=True)):
                    if index >= len(old) or old[index] != value:
                        self.update_cell(key, column, Text(value), update_width=True)
                self._shown[key] = cells
            return
        self.clear()
        self._shown = {}
        for key, cells in rows:
            # Text, not str: a str cell is read as markup, and worker labels or user ids
            # must show exactly as they are.
            self.add_row(*(Text(c) for c in cells), key=key)
            self._shown[key] = cells
        if selected in wanted:
            self.move_cursor(row=wanted.index(selected), animate=False, scroll=True)

    def request(self, action: str) -> None:
        self.post_message(RowAction(action, self.selected_key))


class JobsTable(KeyedTable):
    COLUMNS = tuple(status.JOB_COLUMNS)
    BINDINGS = [
        Binding("enter", "open", "Details"),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("left_square_bracket", "page('newer_jobs')", "Newer"),
        Binding("right_square_bracket", "page('older_jobs')", "Older"),
    ]

    def action_page(self, direction: str) -> None:
        self.request(direction)

    def action_open(self) -> None:
        self.request("open_job")

    def action_cancel_job(self) -> None:
        self.request("cancel_job")


class WorkersTable(KeyedTable):
    COLUMNS = tuple(status.WORKER_COLUMNS)
    BINDINGS = [
        Binding("d", "drain", "Drain"),
        Binding("u", "resume", "Resume"),
        Binding("delete,x", "remove", "Remove"),
    ]

    def action_drain(self) -> None:
        self.request("drain_worker")

    def action_resume(self) -> None:
        self.request("resume_worker")

    def action_remove(self) -> None:
        self.request("remove_worker")


class UsersTable(KeyedTable):
    COLUMNS = tuple(status.USER_COLUMNS)
    BINDINGS = [
        Binding("a", "add", "Add user"),
        Binding("k", "rotate", "Rotate key"),
        Binding("n", "networks", "Networks"),
        Binding("delete,x", "delete", "Delete"),
    ]

    def action_add(self) -> None:
        self.request("add_user")

    def action_rotate(self) -> None:
        self.request("rotate_key")

    def action_networks(self) -> None:
        self.request("set_networks")

    def action_delete(self) -> None:
        self.request("delete_user")
