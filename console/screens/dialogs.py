"""Modal dialogs: confirm, add a user, edit networks, show a new key once, change a
worker's slots and labels.

A dialog that acts on a row names it, and the action is bound to that row's key when
the dialog opens: a refresh that moves the cursor meanwhile cannot redirect it. Remote
names are shown through ``printable`` and never as markup.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from dffmpeg.text import printable

ROLES = [("client", "client"), ("worker", "worker"), ("admin", "admin")]


def split_networks(text: str) -> list[str]:
    """``10.0.0.0/8, 192.168.1.7`` -> a list; the coordinator validates each entry."""
    return [part for part in text.replace(",", " ").split() if part]


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no before anything destructive; y confirms, Escape/n declines."""

    HELP_WHERE = "confirm dialog"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(printable(self.question), id="question", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Yes", variant="error", id="yes")
                yield Button("No", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class AddUserScreen(ModalScreen[dict[str, Any] | None]):
    """Identity, role and optional networks of a new user."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add a user")
            yield Input(placeholder="client id, e.g. jellyfin", id="client_id")
            yield Select(ROLES, value="client", allow_blank=False, id="role")
            yield Input(placeholder="allowed networks (optional), e.g. 10.0.0.0/24", id="networks")
            with Horizontal(classes="buttons"):
                yield Button("Add", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#client_id", Input).focus()

    def _submit(self) -> None:
        client_id = self.query_one("#client_id", Input).value.strip()
        if not client_id:
            self.notify("a client id is required", severity="warning")
            return
        self.dismiss(
            {
                "client_id": client_id,
                "role": str(self.query_one("#role", Select).value),
                "networks": split_networks(self.query_one("#networks", Input).value),
            }
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class NetworksScreen(ModalScreen[list[str] | None]):
    """The CIDRs a user may connect from; empty means any network."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, client_id: str, networks: list[str]) -> None:
        super().__init__()
        self.client_id = client_id
        self.networks = networks

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(
                f"Networks {printable(self.client_id)} may connect from (empty: any)", markup=False
            )
            yield Input(", ".join(self.networks), placeholder="10.0.0.0/24, 192.168.1.7", id="nets")
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#nets", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(split_networks(event.value))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self.dismiss(split_networks(self.query_one("#nets", Input).value))
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class KeyScreen(ModalScreen[None]):
    """The new key, shown this once, alone on its line so the mouse can select it;
    ``c`` copies it to the terminal's clipboard (OSC 52). Not an input: nothing typed
    here can change it."""

    HELP_WHERE = "new key dialog"
    BINDINGS = [
        Binding("c", "copy", "Copy key"),
        Binding("escape,enter", "close", "Close"),
    ]

    def __init__(self, user: dict[str, Any], created: bool) -> None:
        super().__init__()
        self.user = user
        self.created = created

    def compose(self) -> ComposeResult:
        verb = "created" if self.created else "has a new key"
        with Vertical(classes="dialog"):
            yield Label(
                printable(f"{self.user['client_id']} ({self.user['role']}) {verb}."), markup=False
            )
            yield Static("Its key is shown only now. Put it in the client's hmac_key:")
            yield Static(self.user["hmac_key"], id="key", markup=False)
            yield Static("c copies it, Escape closes.", classes="hint")

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.user["hmac_key"])
        self.notify("key copied to the clipboard")

    def action_close(self) -> None:
        self.dismiss(None)


def parse_slots(text: str) -> int | None:
    """``"4"`` -> 4; empty -> None (the worker's own config). Raises ValueError."""
    text = text.strip()
    if not text:
        return None
    slots = int(text)
    if slots < 1:
        raise ValueError("slots must be at least 1")
    return slots


class WorkerEditScreen(ModalScreen[dict[str, Any] | None]):
    """Slots and labels of a worker, changed while it runs. An empty field returns to
    what the worker's own config says; the result holds only what changed."""

    HELP_WHERE = "slots/labels dialog"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, worker: dict[str, Any]) -> None:
        super().__init__()
        self.worker = worker

    def compose(self) -> ComposeResult:
        worker = self.worker
        configured = worker.get("configured") or {}
        overrides = worker.get("overrides") or {}
        own_labels = ",".join(configured.get("labels") or []) or "none"
        with Vertical(classes="dialog"):
            yield Label(printable(f"Slots and labels of {worker['worker_id']}"), markup=False)
            yield Static(
                printable(
                    f"Its config says {configured.get('slots', '?')} slots, labels {own_labels}."
                    " Leave a field empty to go back to that; labels - for none."
                ),
                classes="hint",
                markup=False,
            )
            yield Input(
                str(overrides.get("slots", "")),
                placeholder=f"slots (config: {configured.get('slots', '?')})",
                id="slots",
            )
            yield Input(
                printable(",".join(overrides.get("labels") or [])),
                placeholder=printable(f"labels, comma-separated (config: {own_labels})"),
                id="labels",
            )
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#slots", Input).focus()

    def _submit(self) -> None:
        overrides = self.worker.get("overrides") or {}
        try:
            slots = parse_slots(self.query_one("#slots", Input).value)
        except ValueError:
            self.notify("slots must be a whole number of at least 1", severity="warning")
            return
        labels_text = self.query_one("#labels", Input).value.strip()
        # "-": no labels at all; empty: the worker's own (separators as for networks).
        labels = [] if labels_text == "-" else split_networks(labels_text) or None
        changes: dict[str, Any] = {}
        if slots != overrides.get("slots"):
            changes["slots"] = slots
        if labels != overrides.get("labels"):
            changes["labels"] = labels
        self.dismiss(changes or None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
