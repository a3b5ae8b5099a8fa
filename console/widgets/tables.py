"""Tables of workers, jobs and users, keyed by id so a refresh leaves the cursor alone.

Each table owns the bindings that act on its selected row; the Footer shows them while
the table has focus, and the help screen lists them from the same bindings. Actions do
not talk to the coordinator themselves: they post :class:`RowAction` and the screen
decides (confirm first, naming the row, then a thread worker).

Any column sorts the rows shown (``s`` the next column, ``S`` the other way round, or
a click on the heading); the sort uses each column's value, not its text (a progress
of 9% comes before 10%).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from console import cells
from console.cells import Row


def same(a: Text, b: Text) -> bool:
    """Whether two cells look the same (Text's own == ignores the style: a speed
    turning from highlighted to plain would not be redrawn)."""
    return a.plain == b.plain and str(a.style) == str(b.style) and a.spans == b.spans


@dataclass
class RowAction(Message):
    """The operator asked for ``action`` on the row ``key`` (None: no row selected)."""

    action: str
    key: str | None


class KeyedTable(DataTable[Text]):
    """A DataTable that is updated in place from :class:`~console.cells.Row` lists.

    DataTable forgets every rendered cell whenever any cell changes; on a refresh that
    moves one job's progress, all visible cells (40 rows of 14 columns) would be
    rendered again, most of a refresh's cost. So rendered cells are also kept by what
    they show (text, style, place, width, cursor): a cell that did not change is not
    rendered again. This wraps DataTable's ``_render_cell`` (not public); should it be
    renamed, the table renders as before, only slower.
    """

    COLUMNS: Sequence[str] = ()
    HELP_WHERE = "tables"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "first_row", "First row", show=False),
        Binding("end", "last_row", "Last row", show=False),
        Binding("s", "sort_next", "Sort by next column", show=False),
        Binding("S", "sort_reverse", "Reverse the sort", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: dict[str, list[Text]] = {}
        self._rows: list[Row] = []
        self.sort_column: int | None = None
        self.sort_reverse = False
        self._follow: str | None = None
        self._rendered: dict[tuple[Any, ...], Any] = {}

    def _render_cell(self, *args: Any, **kwargs: Any) -> Any:
        row_index, column_index = args[0], args[1]
        if column_index < 0:  # row labels (not used here): as DataTable does it
            return super()._render_cell(*args, **kwargs)
        try:
            if row_index < 0:  # the header
                shown: Any = self.ordered_columns[column_index].label
            else:
                shown = self.get_cell_at(Coordinate(row_index, column_index))
        except (IndexError, CellDoesNotExist):
            return super()._render_cell(*args, **kwargs)
        look = (
            (shown.plain, str(shown.style), tuple(shown.spans))
            if isinstance(shown, Text)
            else shown
        )
        key = (
            args,
            tuple(sorted(kwargs.items())),
            look,
            self._show_hover_cursor,
            self._pseudo_class_state,
        )
        lines = self._rendered.get(key)
        if lines is None:
            if len(self._rendered) > 20_000:  # a bound, far above a screenful
                self._rendered.clear()
            lines = self._rendered[key] = super()._render_cell(*args, **kwargs)
        return lines

    def notify_style_update(self) -> None:
        self._rendered.clear()  # a theme or CSS change: every cell looks different
        super().notify_style_update()

    def on_mount(self) -> None:
        for name in self.COLUMNS:
            self.add_column(name, key=name)

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def follow(self, key: str) -> None:
        """Put the cursor on ``key`` as soon as it is shown (a row just added)."""
        self._follow = key
        self._place_followed()

    def _place_followed(self) -> None:
        keys = [row.value for row in self.rows]
        if self._follow in keys:
            self.move_cursor(row=keys.index(self._follow), animate=False, scroll=True)
            self._follow = None

    def sync(self, rows: Sequence[Row]) -> None:
        """Show ``rows`` (in the current sort), keeping the cursor on its row.

        Rows that stay are updated cell by cell; only when the order or the set of rows
        changes is the table rebuilt, and then the cursor is put back on its key.
        """
        self._rows = list(rows)
        ordered = self._sorted(self._rows)
        selected = self.selected_key
        wanted = [row.key for row in ordered]
        current = [row.value for row in self.rows]
        if wanted == current:
            for row in ordered:
                old = self._shown.get(row.key, [])
                for index, (column, value) in enumerate(zip(self.COLUMNS, row.cells, strict=True)):
                    if index >= len(old) or not same(old[index], value):
                        self.update_cell(row.key, column, value, update_width=True)
                self._shown[row.key] = row.cells
        else:
            self.clear()
            self._shown = {}
            for row in ordered:
                self.add_row(*row.cells, key=row.key)
                self._shown[row.key] = row.cells
            if selected in wanted:
                self.move_cursor(row=wanted.index(selected), animate=False, scroll=True)
        self._place_followed()

    def _sorted(self, rows: list[Row]) -> list[Row]:
        column = self.sort_column
        if column is None:
            return rows
        return sorted(rows, key=lambda row: row.sort[column], reverse=self.sort_reverse)

    def sort_by(self, column: int | None, reverse: bool = False) -> None:
        self.sort_column, self.sort_reverse = column, reverse
        for index, name in enumerate(self.COLUMNS):
            mark = ""
            if index == column:
                mark = " ▼" if reverse else " ▲"
            self.columns[name].label = Text(name + mark)  # type: ignore[index]
        self._require_update_dimensions = True
        self.sync(self._rows)
        self.refresh()

    def action_sort_next(self) -> None:
        column = self.sort_column
        following = 0 if column is None else column + 1
        self.sort_by(following if following < len(self.COLUMNS) else None)

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column if self.sort_column is not None else 0, not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        column = event.column_index
        reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_by(column, reverse)

    def action_first_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, animate=False, scroll=True)

    def action_last_row(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False, scroll=True)

    def action_request(self, action: str) -> None:
        self.post_message(RowAction(action, self.selected_key))


class JobsTable(KeyedTable):
    COLUMNS = cells.JOB_COLUMNS
    HELP_WHERE = "jobs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "request('open_job')", "Details"),
        Binding("l", "request('job_log')", "Log"),
        Binding("c", "request('cancel_job')", "Cancel job"),
        Binding("a", "request('view_active')", "Active", show=False),
        Binding("f", "request('view_failed')", "Failed", show=False),
        Binding("m", "request('view_mine')", "Mine", show=False),
        Binding("b", "request('view_no_probes')", "Hide ffprobe", show=False),
        Binding("u", "request('view_requester')", "Same requester", show=False),
        Binding("w", "request('view_worker')", "Same worker", show=False),
        Binding("left_square_bracket", "request('newer_jobs')", "Newer", show=False),
        Binding("right_square_bracket", "request('older_jobs')", "Older", show=False),
    ]


class WorkersTable(KeyedTable):
    COLUMNS = cells.WORKER_COLUMNS
    HELP_WHERE = "workers"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "request('open_worker')", "Details"),
        Binding("d", "request('drain_worker')", "Drain"),
        Binding("u", "request('resume_worker')", "Resume"),
        Binding("e", "request('edit_worker')", "Slots/labels"),
        Binding("j", "request('worker_jobs')", "Its jobs", show=False),
        Binding("delete,x", "request('remove_worker')", "Remove"),
    ]


class UsersTable(KeyedTable):
    COLUMNS = cells.USER_COLUMNS
    HELP_WHERE = "users"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "request('add_user')", "Add user"),
        Binding("k", "request('rotate_key')", "Rotate key"),
        Binding("n", "request('set_networks')", "Networks"),
        Binding("delete,x", "request('delete_user')", "Delete"),
    ]
