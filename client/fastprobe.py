"""The drop-in's fast path for information probes (``ffmpeg -version`` and friends).

Only exact forms are answered from the capture the workers made at registration
(``BINARY OPTION``): the option, plus ``-hide_banner``, ``-nostdin`` and one
``-v``/``-loglevel`` level. What ffmpeg prints for those forms is fixed: stdout is the
option's output whatever the flags, and stderr is the banner unless ``-hide_banner`` or
a level below ``info`` suppresses it. Any other form runs as a normal job, so the bytes
the caller sees are always the ones the binary would print.
"""

from __future__ import annotations

from dataclasses import dataclass

OPTIONS = frozenset({"-version", "-encoders", "-decoders", "-filters", "-hwaccels", "-formats"})
# Levels below ``info`` hide the banner; ``info`` is the default and shows it.
QUIET_LEVELS = frozenset({"quiet", "panic", "fatal", "error", "warning"})
INFO_LEVEL = 32


@dataclass(frozen=True)
class ProbeCall:
    option: str
    banner: bool  # whether stderr carries the banner the capture holds


def _banner_for_level(value: str) -> bool | None:
    """True/False if ``value`` shows/hides the banner; None for forms we do not model."""
    if value in QUIET_LEVELS:
        return False
    if value == "info":
        return True
    if value.lstrip("-").isdigit():
        level = int(value)
        if level == INFO_LEVEL:
            return True
        return None if level > INFO_LEVEL else False
    return None


def recognise(args: list[str]) -> ProbeCall | None:
    """The probe ``args`` asks for, if it is one of the forms answered from the capture."""
    option: str | None = None
    hide = False
    level_banner: bool | None = True
    levels = 0
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in OPTIONS and option is None:
            option = arg
        elif arg == "-hide_banner":
            hide = True
        elif arg == "-nostdin":
            pass
        elif arg in ("-v", "-loglevel") and i + 1 < len(args) and levels == 0:
            levels += 1
            i += 1
            level_banner = _banner_for_level(args[i])
            if level_banner is None:
                return None
        else:
            return None
        i += 1
    if option is None:
        return None
    return ProbeCall(option, banner=bool(level_banner) and not hide)


# Options that make ffmpeg print information and exit at once. Not answered from a
# capture (too many forms), but such jobs jump the queue (see ``INFO_PRIORITY``).
INFO_OPTIONS = frozenset(
    {"-h", "-?", "-help", "--help", "-L", "-buildconf", "-codecs", "-bsfs", "-protocols",
     "-pix_fmts", "-layouts", "-sample_fmts", "-colors", "-devices", "-muxers", "-demuxers",
     "-sources", "-sinks", "-dispositions"} | OPTIONS
)  # fmt: skip
INFO_PRIORITY = 100


def is_information_call(args: list[str]) -> bool:
    """A call that only prints information: no input, no output, well under a second."""
    return any(arg in INFO_OPTIONS for arg in args) and "-i" not in args
