"""Plain-text tables for the command-line tools (``dffmpeg-client``, ``dffmpeg-admin``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# C0 and C1 control characters and DEL: what a terminal may obey instead of showing.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` from another party, safe to show: every control character is written as
    a visible escape (``\\x1b``), so escape sequences cannot move the cursor, retitle the
    window or clear the screen."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def cell(value: Any) -> str:
    """One value as shown in a table: ``-`` for nothing, lists joined with commas."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows of dicts as aligned columns under upper-case headings."""
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
