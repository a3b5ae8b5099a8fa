"""``dffmpeg-proxy``: the drop-in. Symlink it as ``ffmpeg`` or ``ffprobe``.

It has no flags of its own: every argument belongs to the remote binary. Its config
comes from ``DFFMPEG_CLIENT_CONFIG`` or the client config files.
"""

from __future__ import annotations

import os
import sys

from client.api import Api
from client.job import report
from client.submit import build_request, run
from dffmpeg.config import ConfigError, load_client
from dffmpeg.exitcodes import ExitCode


def binary_name(argv0: str, args: list[str]) -> tuple[str, list[str]]:
    """The binary this call stands for: the link's name, or the first argument."""
    name = os.path.basename(argv0)
    if name.startswith("dffmpeg-proxy"):
        if not args:
            raise ConfigError("usage: dffmpeg-proxy BINARY [ARGS...] (or symlink it as ffmpeg)")
        return args[0], args[1:]
    return name, args


def main() -> int:
    try:
        binary, args = binary_name(sys.argv[0], sys.argv[1:])
        config = load_client()
        api = Api.from_config(config)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        return int(ExitCode.CONFIG_ERROR)
    return run(api, build_request(config, binary, args), config=config)


if __name__ == "__main__":
    sys.exit(main())
