"""Every key binding in one place."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# dffmpeg console

Everything here goes through the coordinator's admin API, signed with your identity.

| key | where | what |
|---|---|---|
| `1` `2` `3` | anywhere | jobs, workers, users |
| `/` | anywhere | filter the table |
| `escape` | filter | clear the filter |
| `r` | anywhere | refresh now |
| `enter` | jobs | job details: arguments, history, live stderr |
| `c` | jobs, details | cancel the job (asks first) |
| `[` / `]` | jobs | newer / older page of jobs |
| `d` / `u` | workers | drain (no new jobs) / resume |
| `x` or `delete` | workers | remove a worker that is gone (asks first) |
| `a` | users | add a user; its key is shown once |
| `k` | users | rotate the key (asks first) |
| `n` | users | allowed networks (CIDRs; empty allows any) |
| `x` or `delete` | users | delete the user (asks first) |
| `?` | anywhere | this help |
| `q` | anywhere | quit |

**Filter** words like `state:running,pending`, `user:alice` and `worker:w1` are
sent to the coordinator (so totals cover the whole history); other words match
the text of the rows shown.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog help"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
