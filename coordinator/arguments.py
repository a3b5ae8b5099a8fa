"""The files a job works on, read from its ffmpeg/ffprobe arguments.

Shown as the job's input and output in listings and searched by name: an operator
looks for "the Big Buck Bunny transcode", not for a job id.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.capabilities import FLAGS

MAX_NAME = 255


def _base(option: str) -> str:
    return option.split(":", 1)[0]


def _fit(name: str | None) -> str | None:
    # The end of a long path says most (the file name); the column holds 255 characters.
    if name is None:
        return None
    return name if len(name) <= MAX_NAME else "…" + name[-(MAX_NAME - 1) :]


def media_names(binary: str, args: Sequence[str]) -> tuple[str | None, str | None]:
    """(first input, last output) as written in ``args``; None where there is none.

    An input is the value of ``-i``; ffprobe also takes its input as a bare argument.
    An output is a bare argument that is no option's value (ffmpeg writes the last one
    named on the command line last; with several outputs it is the one shown).
    """
    source: str | None = None
    target: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-i" and i + 1 < len(args):
            source = source if source is not None else args[i + 1]
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            # An option: a flag stands alone, every other option takes the next argument.
            i += 1 if _base(arg) in FLAGS else 2
            continue
        if binary == "ffprobe":
            source = source if source is not None else arg
        else:
            target = arg
        i += 1
    return _fit(source), _fit(target)
