"""Text for people to read: tables for the command-line tools, and remote text made safe.

Every string that came from another party (worker labels and versions, host names, job
arguments, working directories, error texts) goes through :func:`printable` before a
terminal or the console shows it: an escape sequence in a label must not retitle the
operator's window or clear the screen, it must be *seen*.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# C0 controls (tab and newline included: one value is one line), DEL, C1 controls, and
# the Unicode marks that reorder or hide text (bidirectional overrides and isolates,
# zero-width characters), which can make a shown path read as a different one.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character replaced by a visible escape (``\\x1b``).

    An ESC sequence thus shows as ``\\x1b[2J`` and does nothing. The result is one line
    that a terminal prints exactly as it reads.
    """
    return _UNSAFE.sub(_escape, text)


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
