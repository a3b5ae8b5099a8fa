"""Checks on a job before it starts: the first line of defence, with clear refusals.

ffmpeg's syntax is too rich for a lexical scan to be sound (nested protocols, escapes in
filter graphs, lists and scripts read from files), so none of these checks is what keeps
a job to its media: the sandbox is (``worker.sandbox``). They exist so that the common
mistakes and the obvious attacks fail at once, with one line that names the argument,
instead of as an obscure ffmpeg error from inside the sandbox. A refusal never shows
the worker's own roots: arguments are named as the job sent them (``$Media/...``).
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dffmpeg.paths import from_variables, to_variables, unmapped_paths
from dffmpeg.text import printable

# Protocols that open a connection (ffmpeg -protocols, plus the URL demuxers).
NETWORK_PROTOCOLS = frozenset(
    [
        "amqp",
        "dtls",
        "ffrtmpcrypt",
        "ffrtmphttp",
        "ftp",
        "gopher",
        "gophers",
        "http",
        "httpproxy",
        "https",
        "icecast",
        "ipfs",
        "ipns",
        "librtmp",
        "librtmpe",
        "librtmps",
        "librtmpt",
        "librtmpte",
        "mmsh",
        "mmst",
        "prompeg",
        "rist",
        "rtmp",
        "rtmpe",
        "rtmps",
        "rtmpt",
        "rtmpte",
        "rtmpts",
        "rtp",
        "rtsp",
        "rtsps",
        "sctp",
        "sftp",
        "smb",
        "srt",
        "srtp",
        "tcp",
        "tls",
        "udp",
        "udplite",
        "unix",
        "whip",
        "zmq",
    ]
)
# Filters that load code named by their options (ffmpeg-filters(1)), and input formats
# that run a script. Refused unless the worker lists them in ``allow_filters``.
CODE_FILTERS = frozenset({"ladspa", "lv2", "frei0r", "frei0r_src"})
CODE_FORMATS = frozenset({"avisynth", "vapoursynth"})
# Variables a client may forward: they change messages and time stamps, not which code
# runs or which files are read. Everything else (FFREPORT, LD_*, *_PATH...) is dropped.
FORWARDABLE_ENV = re.compile(r"^(LANG|LANGUAGE|LC_[A-Z]+|TZ|AV_LOG_FORCE_[A-Z0-9]+)$")
MAX_ENV_VALUE = 1024
MAX_LIST_BYTES = 4 * 1024 * 1024

# A scheme where a URL can start: at the start of an argument or after a character that
# separates values in ffmpeg's syntax; ``\:`` is the escaped colon of filter strings.
_SCHEME = re.compile(r"(?:^|(?<=[\s'\"=,;|\[(:]))([a-z][a-z0-9.+-]*?)\\*:")
_CODE_FILTER = re.compile(
    r"(?:^|(?<=[,;\]\s'\"=]))(" + "|".join(sorted(CODE_FILTERS, key=len, reverse=True)) + r")"
    r"(?=$|[=@,;\[\s'\"])",
    re.IGNORECASE,
)


class Refused(Exception):
    """The job may not run here; the message is shown to the caller."""


def _shown(arg: str) -> str:
    text = printable(arg)
    return text if len(text) <= 120 else text[:117] + "..."


def refuse_network(args: Sequence[str]) -> None:
    """Refuse any argument naming a network protocol (``allow_network`` is off)."""
    for arg in args:
        for match in _SCHEME.finditer(arg):
            parts = set(match.group(1).split("+"))
            if parts & NETWORK_PROTOCOLS:
                raise Refused(f"network access is not allowed on this worker: {_shown(arg)}")


def refuse_code_loading(
    args: Sequence[str], allowed: frozenset[str], read: Callable[[str], str | None]
) -> None:
    """Refuse filters and formats that load code, unless ``allowed`` names them.

    Filter scripts (``-filter_complex_script``, ``-/vf``) are read through ``read``
    (a job path -> its text, or None) and checked the same way.
    """
    for index, arg in enumerate(args):
        texts = [arg]
        option = args[index - 1] if index else ""
        if option.endswith("_script") or option.startswith("-/"):
            script = read(arg)
            if script is not None:
                texts.append(script)
        if option == "-f" and arg.lower() in CODE_FORMATS - allowed:
            raise Refused(f"format {arg} runs code and is not allowed on this worker")
        for text in texts:
            for match in _CODE_FILTER.finditer(text):
                name = match.group(1).lower()
                if name not in allowed:
                    raise Refused(
                        f"filter {name} loads code and is not allowed on this worker: {_shown(arg)}"
                    )


def refuse_unmapped(args: Sequence[str], roots: Mapping[str, str], cwd: str | None) -> None:
    """Refuse a path outside every mapped root (``args`` already mapped to the roots)."""
    outside = unmapped_paths(args, roots, cwd)
    if outside:
        shown = ", ".join(_shown(to_variables(p, roots)) for p in sorted(set(outside))[:3])
        raise Refused(f"path outside every mapped root refused: {shown}")


def working_directory(cwd: str, roots: Mapping[str, str]) -> str:
    """The job's working directory on this worker: resolved, and inside a root."""
    local = from_variables(cwd, roots)
    if local == cwd and not cwd.startswith("$"):
        raise Refused(f"working directory {_shown(cwd)} is not under a mapped root")
    # Judged where it really leads (``..`` and symlinks followed), entered by its name.
    resolved = os.path.realpath(local)
    inside = any(_within(resolved, os.path.realpath(root)) for root in roots.values())
    if not inside:
        raise Refused(f"working directory {_shown(cwd)} is outside every mapped root")
    if not os.path.isdir(resolved):
        raise Refused(f"working directory {_shown(cwd)} is not available on this worker")
    return os.path.normpath(local)


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The client's variables this worker sets for the process (an allow-list)."""
    return {
        name: value
        for name, value in env.items()
        if FORWARDABLE_ENV.match(name) and "\0" not in value and len(value) <= MAX_ENV_VALUE
    }


def read_script(path: str, roots: Mapping[str, str]) -> str | None:
    """The text of a filter script named by a job (a ``data:`` URI or a file in a root)."""
    if path.startswith("data:"):
        header, _, payload = path[5:].partition(",")
        try:
            raw = (
                base64.b64decode(payload)
                if header.endswith(";base64")
                else urllib.parse.unquote_to_bytes(payload)
            )
        except ValueError:
            return None
        return raw.decode(errors="replace")
    local = from_variables(path.removeprefix("file:"), roots)
    if not any(_within(os.path.realpath(local), os.path.realpath(r)) for r in roots.values()):
        return None
    try:
        with open(local, "rb") as script:
            return script.read(MAX_LIST_BYTES).decode(errors="replace")
    except OSError:
        return None


@dataclass
class ConcatLists:
    """Private copies of the concat lists a job reads, with every path mapped.

    A list written by the caller (``-f concat -safe 0 -i list.txt``) names the caller's
    paths; the worker maps each to its own roots, checks it like an argument and hands
    the job a private copy (``place(name)`` is where the job sees it). Relative entries
    are made absolute against the list's directory, so ``-safe 0`` is added.
    """

    roots: Mapping[str, str]  # this worker's
    client_paths: Mapping[str, str]  # the caller's
    cwd: str
    allow_network: bool
    place: Callable[[str], str]
    check_roots: bool = True  # off with ``allow_unmapped_paths``
    files: dict[str, bytes] = field(default_factory=dict)

    def rewrite(self, args: Sequence[str]) -> list[str]:
        result: list[str] = []
        pending: list[str] = []  # options of the next input
        index = 0
        while index < len(args):
            arg = args[index]
            if arg == "-i" and index + 1 < len(args):
                source = args[index + 1]
                if _format_of(pending) == "concat" and not _is_url(source):
                    name = f"concat-{len(self.files)}.txt"
                    self.files[name] = self._mapped_list(source)
                    result += ["-safe", "0", "-i", self.place(name)]
                else:
                    result += [arg, source]
                pending = []
                index += 2
                continue
            result.append(arg)
            pending.append(arg)
            index += 1
        return result

    def _mapped_list(self, source: str) -> bytes:
        path = source.removeprefix("file:")
        lexical = os.path.normpath(os.path.join(self.cwd, path))
        local = os.path.realpath(lexical)
        if self.check_roots and not any(
            _within(local, os.path.realpath(r)) for r in self.roots.values()
        ):
            raise Refused(
                f"concat list outside every mapped root: {_shown(to_variables(path, self.roots))}"
            )
        try:
            with open(local, "rb") as listing:
                data = listing.read(MAX_LIST_BYTES + 1)
        except OSError as exc:
            raise Refused(f"concat list {_shown(source)} cannot be read: {exc.strerror}") from exc
        if len(data) > MAX_LIST_BYTES:
            raise Refused(f"concat list {_shown(source)} is larger than 4 MiB")
        base = os.path.dirname(lexical)  # relative entries: as the job names the list
        lines = data.decode(errors="surrogateescape").splitlines()
        return (
            "\n".join(self._mapped_line(line, base) for line in lines).encode(
                errors="surrogateescape"
            )
            + b"\n"
        )

    def _mapped_line(self, line: str, base: str) -> str:
        stripped = line.lstrip()
        if not stripped.startswith("file") or stripped[4:5] not in (" ", "\t"):
            return line
        entry = unquote_token(stripped[4:].strip())
        if _is_url(entry):
            if not self.allow_network:
                refuse_network([entry])
            return line
        entry = entry.removeprefix("file:")
        mapped = from_variables(to_variables(entry, self.client_paths), self.roots)
        absolute = os.path.normpath(os.path.join(base, mapped))
        # Lexical, like the arguments: where a symlink leads is the sandbox's business.
        if self.check_roots and not any(
            _within(absolute, os.path.normpath(r)) for r in self.roots.values()
        ):
            raise Refused(f"concat list entry outside every mapped root: {_shown(entry)}")
        return "file " + quote_token(absolute)


def _format_of(options: Sequence[str]) -> str | None:
    found = None
    for index, option in enumerate(options[:-1]):
        if option == "-f":
            found = options[index + 1]
    return found


def _is_url(value: str) -> bool:
    scheme, sep, _ = value.partition(":")
    return (
        bool(sep)
        and len(scheme) > 1
        and scheme != "file"
        and re.fullmatch(r"[a-z][a-z0-9.+-]*", scheme) is not None
    )


def unquote_token(text: str) -> str:
    """One token as ffmpeg's concat demuxer reads it: '...' quotes, backslash escapes."""
    out: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "'":
                quoted = False
            else:
                out.append(char)
        elif char == "'":
            quoted = True
        elif char == "\\" and index + 1 < len(text):
            index += 1
            out.append(text[index])
        elif char in " \t":
            break
        else:
            out.append(char)
        index += 1
    return "".join(out)


def quote_token(text: str) -> str:
    """The inverse of ``unquote_token``: single quotes, with ' written as '\\''."""
    return "'" + text.replace("'", "'\\''") + "'"


def _within(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return root == "/" or path == root or path.startswith(root + "/")
