"""What the console's full screens share: typed access to the app that owns the source."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.screen import Screen

if TYPE_CHECKING:
    from console.app import ConsoleApp


class ConsoleScreen(Screen[None]):
    @property
    def console(self) -> ConsoleApp:
        return cast("ConsoleApp", self.app)
