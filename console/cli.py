"""``dffmpeg-console``: the operator's full-screen view of the cluster."""

from __future__ import annotations

import argparse
import sys

from client.api import Api
from client.job import report
from dffmpeg.config import ConfigError, load_client
from dffmpeg.exitcodes import ExitCode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dffmpeg-console", description=__doc__)
    parser.add_argument("--config", help="client-format YAML config with an admin identity")
    args = parser.parse_args(argv)
    try:
        config = load_client(args.config, component="console")
        api = Api.from_config(config)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        return int(ExitCode.CONFIG_ERROR)
    from console.app import ConsoleApp

    try:
        ConsoleApp(api).run()
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
