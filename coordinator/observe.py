"""The app's ``Instruments`` (coordinator/instruments.py), for code that reports to them.

Kept apart from the instruments themselves so that reporting never imports
prometheus-client (see coordinator/metrics_dir.py for why that matters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from coordinator.instruments import Instruments

KEY = "dffmpeg.instruments"


def instruments() -> Instruments:
    """The current app's instruments (every app made by ``create_app`` has them)."""
    found: Instruments = current_app.extensions[KEY]
    return found
