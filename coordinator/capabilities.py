"""What a job needs from a worker, and whether a worker has it.

A job's needs are read from its arguments: encoders and decoders named by codec options,
``-hwaccel`` kinds, filters used in filter graphs and formats named with ``-f``. A
worker reports, per binary, what its binary can do (see ``worker/capabilities.py``).
Matching is by name; the reason a worker cannot run a job names what it lacks, so a
requester learns *why* nothing ran it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

# Option names (without the stream specifier) whose value names a codec.
CODEC_OPTIONS = {"-c", "-codec", "-vcodec", "-acodec", "-scodec", "-dcodec"}
FILTER_OPTIONS = {"-vf", "-af", "-filter", "-filter_complex", "-lavfi"}
# Codec values that are not encoders or decoders.
NOT_CODECS = {"copy", "none", ""}
HWACCEL_NOT_NEEDED = {"auto", "none", ""}
# Options that take no value; every other option consumes the argument after it, so a
# bare argument that is not an option's value is an output file.
FLAGS = {
    "-y",
    "-n",
    "-hide_banner",
    "-nostdin",
    "-stdin",
    "-stats",
    "-nostats",
    "-re",
    "-shortest",
    "-an",
    "-vn",
    "-sn",
    "-dn",
    "-copyts",
    "-start_at_zero",
    "-accurate_seek",
    "-noaccurate_seek",
    "-benchmark",
    "-benchmark_all",
    "-xerror",
    "-ignore_unknown",
    "-copy_unknown",
    "-autorotate",
    "-noautorotate",
    "-report",
    "-debug_ts",
    "-dump",
    "-hex",
    "-copyinkf",
    "-apad",
    "-reinit_filter",
    "-autoscale",
    "-noautoscale",
    "-fix_sub_duration",
    "-find_stream_info",
    "-show_format",
    "-show_streams",
    "-show_packets",
    "-show_frames",
    "-show_chapters",
    "-show_programs",
    "-show_error",
    "-show_data",
    "-show_private_data",
    "-show_log",
    "-count_frames",
    "-count_packets",
    "-pretty",
    "-bitexact",
    "-sexagesimal",
    "-unit",
    "-prefix",
    "-byte_binary_prefix",
    "-version",
    "-buildconf",
    "-formats",
    "-muxers",
    "-demuxers",
    "-devices",
    "-codecs",
    "-decoders",
    "-encoders",
    "-bsfs",
    "-protocols",
    "-filters",
    "-pix_fmts",
    "-layouts",
    "-sample_fmts",
    "-colors",
    "-hwaccels",
    "-L",
    "-h",
    "-?",
    "-help",
    "--help",
}
KINDS = ("encoders", "decoders", "hwaccels", "filters", "formats")
SINGULAR = {
    "encoders": "encoder",
    "decoders": "decoder",
    "hwaccels": "hwaccel",
    "filters": "filter",
    "formats": "format",
}


def _base(option: str) -> str:
    """``-c:v:0`` -> ``-c``; ``-filter:a`` -> ``-filter``."""
    return option.split(":", 1)[0]


def derive_needs(args: Sequence[str]) -> dict[str, list[str]]:
    """What running ``args`` requires, as ``{kind: sorted names}`` (empty kinds left out).

    Options apply to the next file named on the command line: codec options before an
    ``-i`` choose that input's decoder, the others choose encoders for an output.
    """
    needs: dict[str, set[str]] = {kind: set() for kind in KINDS}
    pending_codecs: list[str] = []
    pending_formats: list[str] = []
    i = 0
    while i < len(args):
        option = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        base = _base(option)
        if option == "-i":
            needs["decoders"].update(pending_codecs)
            needs["formats"].update(pending_formats)
            pending_codecs, pending_formats = [], []
            i += 2
            continue
        if value is not None and base in CODEC_OPTIONS:
            if value not in NOT_CODECS:
                pending_codecs.append(value)
            i += 2
            continue
        if value is not None and base in FILTER_OPTIONS:
            needs["filters"].update(filter_names(value))
            i += 2
            continue
        if value is not None and option == "-hwaccel":
            if value not in HWACCEL_NOT_NEEDED:
                needs["hwaccels"].add(value)
            i += 2
            continue
        if value is not None and option == "-f":
            pending_formats.append(value)
            i += 2
            continue
        if option.startswith("-") and option != "-" and _base(option) not in FLAGS:
            i += 2  # some other option and its value
            continue
        if not option.startswith("-") or option == "-":
            # An output file: the options gathered so far were for it.
            needs["encoders"].update(pending_codecs)
            needs["formats"].update(pending_formats)
            pending_codecs, pending_formats = [], []
        i += 1
    # Trailing options with no file after them still say what the user asked for.
    needs["encoders"].update(pending_codecs)
    needs["formats"].update(pending_formats)
    return {kind: sorted(names) for kind, names in needs.items() if names}


def _split_top(text: str, separators: str) -> list[str]:
    """Split on ``separators`` outside quotes and brackets, honouring backslash escapes."""
    parts: list[str] = []
    current: list[str] = []
    quote = False
    depth = 0
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == "'":
            quote = not quote
            current.append(char)
        elif not quote and char == "[":
            depth += 1
            current.append(char)
        elif not quote and char == "]":
            depth = max(depth - 1, 0)
            current.append(char)
        elif not quote and depth == 0 and char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def filter_names(graph: str) -> set[str]:
    """Names of the filters in a filter graph string (``[in]scale=w=1:h=2[out];...``)."""
    names: set[str] = set()
    for chain in _split_top(graph, ";"):
        for spec in _split_top(chain, ","):
            spec = spec.strip()
            while spec.startswith("["):  # input pad labels
                end = spec.find("]")
                if end < 0:
                    break
                spec = spec[end + 1 :].lstrip()
            name = ""
            for char in spec:
                if char.isalnum() or char == "_":
                    name += char
                else:
                    break
            if name:
                names.add(name)
    return names


def offered(binary_info: Any) -> dict[str, frozenset[str]] | None:
    """What one reported binary can do, or None when it reported no capabilities.

    A binary reported without capabilities (probing failed, or an older worker) is taken
    to be able to run anything: refusing it would stop a working cluster.
    """
    if not isinstance(binary_info, dict):
        return None
    caps = binary_info.get("capabilities")
    if not isinstance(caps, dict):
        return None
    return {kind: frozenset(caps.get(kind) or ()) for kind in KINDS}


def missing_capabilities(
    needs: dict[str, list[str]], caps: Mapping[str, AbstractSet[str]] | None
) -> list[str]:
    if caps is None:
        return []
    lacking: list[str] = []
    for kind in KINDS:
        for name in needs.get(kind, ()):
            if name not in caps[kind]:
                lacking.append(f"{SINGULAR[kind]} {name}")
    return lacking


def describe_missing(per_worker: Iterable[tuple[str, list[str]]]) -> str:
    """One line naming, for each online worker, what it lacks for the job."""
    parts = [f"{worker} lacks {', '.join(lacking)}" for worker, lacking in per_worker]
    if not parts:
        return "no worker is online"
    return "no online worker can run this job: " + "; ".join(parts)
