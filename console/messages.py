"""Messages that thread workers post to the UI (network calls never run on the UI thread)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from console.model import Snapshot


@dataclass
class SnapshotReady(Message):
    """A refresh succeeded."""

    snapshot: Snapshot


@dataclass
class ConnectionProblem(Message):
    """A refresh failed; ``kind`` is ``unreachable``, ``auth`` or ``refused``."""

    kind: str
    message: str


@dataclass
class ActionDone(Message):
    """An administrative action succeeded; ``message`` says what happened."""

    message: str


@dataclass
class ActionFailed(Message):
    """An administrative action was refused; ``message`` is the coordinator's reason."""

    message: str


@dataclass
class KeyIssued(Message):
    """A user was created or its key rotated: the one time its key is shown."""

    user: dict[str, Any]
    created: bool


class RefreshRequested(Message):
    """A refresh was asked for while another ran; the app runs one more."""
