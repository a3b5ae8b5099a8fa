"""Path mapping between local roots and ``$Variable`` paths.

A client maps its local roots (``/mnt/media``) to variables (``$Media``) before a job
leaves the machine; the worker maps the variables back to its own roots
(``/srv/media``). Paths are found wherever they stand in an argument: whole arguments,
``file:`` prefixes and inside option values and filter strings
(``subtitles=f='/mnt/media/a.ass'``), so a root only matches at a path boundary.
"""

from __future__ import annotations

import os
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


class StreamRewriter:
    """Replaces byte patterns in a stream that arrives in chunks.

    Used on the worker to show the caller its own paths in ffmpeg's messages and in
    ffprobe's output (``/srv/media/`` -> ``/mnt/media/``). A pattern split across two
    chunks is still found: the tail of a chunk that could start a pattern is held back
    until the next chunk (or ``flush``) decides it, and nothing else is ever delayed.
    """

    def __init__(self, replacements: Mapping[bytes, bytes]) -> None:
        self.replacements = {k: v for k, v in replacements.items() if k and k != v}
        keys = sorted(self.replacements, key=len, reverse=True)
        self._pattern = re.compile(b"|".join(re.escape(k) for k in keys)) if keys else None
        self._prefixes = {k[:i] for k in keys for i in range(1, len(k))}
        self._held = b""
        self._longest = max(map(len, keys), default=0)

    def feed(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        data = self._held + data
        self._held = b""
        out: list[bytes] = []
        end = 0
        for match in self._pattern.finditer(data):
            if data[match.start() :] in self._prefixes:
                break  # a longer pattern may still complete with the next chunk
            out.append(data[end : match.start()])
            out.append(self.replacements[match.group(0)])
            end = match.end()
        rest = data[end:]
        # Hold back the longest tail after the last match that could start a pattern.
        for size in range(min(len(rest), self._longest - 1), 0, -1):
            if rest[-size:] in self._prefixes:
                self._held = rest[-size:]
                rest = rest[:-size]
                break
        out.append(rest)
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        if self._pattern is None:
            return held
        return self._pattern.sub(lambda m: self.replacements[m.group(0)], held)


def output_rewriter(
    worker_paths: Mapping[str, str], client_paths: Mapping[str, str]
) -> StreamRewriter:
    """Worker roots to the client's roots, for the variables both sides know."""
    replacements = {
        (worker_paths[name].rstrip("/") + "/").encode(): (
            client_paths[name].rstrip("/") + "/"
        ).encode()
        for name in worker_paths
        if name in client_paths
    }
    return StreamRewriter(replacements)


# An absolute path inside an argument: a '/' at the start or right after one of the
# characters that can open a path in ffmpeg's syntax (see ``_BEFORE``), running to the
# next character that ends a value. After a protocol's ``:``, ``//`` starts a network
# URL, not a local path, except for ``file:`` (``file:///etc`` is ``/etc``). It is a
# lookahead, so a path that runs on over an unquoted ``:`` does not hide the next one.
_ABSOLUTE = re.compile(
    r"(?:(?<=^)|(?<=[\s'\"=,;|\[(])|(?<=(?<!\\):)(?!//)|(?<=file:))(?=(/[^\s'\",;|\]]*))",
    re.IGNORECASE,
)
# Paths every process may name without touching anyone's files.
HARMLESS_PATHS = frozenset({"/dev/null", "/dev/zero", "/dev/stdin", "/dev/stdout", "/dev/stderr"})
# GPU render nodes named by hardware acceleration options (``-vaapi_device``,
# ``-init_hw_device vaapi=va:/dev/dri/renderD128``): devices, not anyone's files.
HARMLESS_PREFIXES = ("/dev/dri/",)


def _inside(path: str, root: str) -> bool:
    if root == "/":
        return True
    return path == root or path.startswith(root + "/")


def unmapped_paths(
    args: Sequence[str], paths: Mapping[str, str], cwd: str | None = None
) -> list[str]:
    """Paths named in ``args`` (already mapped to local roots) outside every root.

    Absolute paths are found as described at ``_ABSOLUTE``; a path climbing out with
    ``..`` counts as outside. Where a value is unquoted, ``:`` may continue a file name,
    so the text found can run on into the next option (``/srv/a.ass:fontsdir=/x``): its
    part before the first ``:`` is normalised and checked against the roots, the rest
    must not climb with ``..``, and the next path is found on its own. Relative names
    that climb with ``..`` are resolved against ``cwd``, which counts as one more root.
    """
    roots = [root.rstrip("/") or "/" for root in paths.values()]
    if cwd:
        roots.append(os.path.normpath(cwd))
    outside: list[str] = []
    for arg in args:
        for match in _ABSOLUTE.finditer(arg):
            path = re.sub("/+", "/", match.group(1))
            head, _, rest = path.partition(":")
            head = os.path.normpath(head)
            if head in HARMLESS_PATHS or head.startswith(HARMLESS_PREFIXES):
                continue
            if _climbs(rest) or not any(_inside(head, root) for root in roots):
                outside.append(path)
        for piece in _PIECE_SEPARATORS.split(arg):
            if piece and not piece.startswith("/") and _climbs(piece):
                resolved = os.path.normpath(os.path.join(cwd or "/nonexistent", piece))
                if not any(_inside(resolved, root) for root in roots):
                    outside.append(piece)
    return outside


_PIECE_SEPARATORS = re.compile(r"[\s'\",;|\]\[=:]")


def _climbs(path: str) -> bool:
    return ".." in path.replace("\\", "/").split("/")
