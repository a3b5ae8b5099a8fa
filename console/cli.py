"""``dffmpeg-console``: the operator's full-screen view of the cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.api import Api
from client.job import report
from dffmpeg.config import ConfigError, load_client
from dffmpeg.exitcodes import ExitCode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dffmpeg-console", description=__doc__)
    parser.add_argument("--config", help="client-format YAML config with an admin identity")
    parser.add_argument(
        "--serve", action="store_true", help="serve the console to a browser (textual-serve)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="with --serve: address to bind")
    parser.add_argument("--port", type=int, default=8566, help="with --serve: port to bind")
    args = parser.parse_args(argv)
    try:
        config = load_client(args.config, component="console")
        api = Api.from_config(config)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        return int(ExitCode.CONFIG_ERROR)
    if args.serve:
        # Each browser session runs this program again with the file found now.
        from console.serve import serve

        api.close()
        source = Path(config.source) if config.source else Path(args.config)
        return serve(source.resolve(), args.host, args.port)
    from console.app import ConsoleApp

    try:
        ConsoleApp(api).run()
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
