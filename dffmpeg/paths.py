"""Path mapping between local roots and ``$Variable`` paths.

A client maps its local roots (``/mnt/media``) to variables (``$Media``) before a job
leaves the machine; the worker maps the variables back to its own roots
(``/srv/media``). Paths are found wherever they stand in an argument: whole arguments,
``file:`` prefixes and inside option values and filter strings
(``subtitles=f='/mnt/media/a.ass'``), so a root only matches at a path boundary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# Characters that may stand right before a path inside an argument: start, quote,
# separators of ffmpeg option values, filter graphs and protocol prefixes.
_BEFORE = r"(?:(?<=^)|(?<=[\s'\"=:,;|\[(]))"
# A root ends at a path separator, the end, or a character that cannot continue a name.
_AFTER = r"(?=/|$|[\s'\":,;|\])])"

_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PathMappingError(ValueError):
    pass


def validate_paths(paths: Mapping[str, str]) -> dict[str, str]:
    """Check a ``{Variable: /root}`` mapping and normalise the roots (no trailing '/')."""
    result: dict[str, str] = {}
    for name, root in paths.items():
        if not _VARIABLE_NAME.match(name):
            raise PathMappingError(f"path variable {name!r} must be a plain identifier")
        if not isinstance(root, str) or not root.startswith("/"):
            raise PathMappingError(f"root of ${name} must be an absolute path, got {root!r}")
        normalised = root.rstrip("/") or "/"
        result[name] = normalised
    return result


def _longest_first(paths: Mapping[str, str]) -> list[tuple[str, str]]:
    # Nested roots (/media and /media/tv) must match the longest one first.
    return sorted(paths.items(), key=lambda item: len(item[1]), reverse=True)


def to_variables(value: str, paths: Mapping[str, str]) -> str:
    """Replace every local root found in ``value`` by its ``$Variable``."""
    if not paths:
        return value
    items = _longest_first(paths)
    pattern = re.compile(
        _BEFORE + "(" + "|".join(re.escape(root) for _, root in items) + ")" + _AFTER
    )
    by_root = {root: name for name, root in items}
    return pattern.sub(lambda m: "$" + by_root[m.group(1)], value)


def from_variables(value: str, paths: Mapping[str, str]) -> str:
    """Replace every ``$Variable`` known in ``paths`` by its local root."""
    if not paths or "$" not in value:
        return value
    names = sorted(paths, key=len, reverse=True)
    pattern = re.compile(_BEFORE + r"\$(" + "|".join(re.escape(n) for n in names) + ")" + _AFTER)
    return pattern.sub(lambda m: paths[m.group(1)], value)


def variables_used(args: Sequence[str]) -> set[str]:
    """Names of ``$Variable``s referenced anywhere in ``args``."""
    found: set[str] = set()
    pattern = re.compile(_BEFORE + r"\$([A-Za-z_][A-Za-z0-9_]*)" + _AFTER)
    for arg in args:
        found.update(pattern.findall(arg))
    return found


def map_args(args: Sequence[str], paths: Mapping[str, str]) -> list[str]:
    return [to_variables(arg, paths) for arg in args]


def unmap_args(args: Sequence[str], paths: Mapping[str, str]) -> list[str]:
    return [from_variables(arg, paths) for arg in args]
