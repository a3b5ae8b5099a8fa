"""``dffmpeg-worker``: run the worker service until SIGTERM.

First SIGTERM (or SIGINT): stop taking jobs, let running ones finish, deregister, exit.
Second: cancel the running jobs, report them, exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from client.api import Api, AuthError
from dffmpeg.config import ConfigError, load_worker
from worker.agent import StoppedBeforeOnline, WorkerAgent
from worker.sandbox import SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dffmpeg-worker", description=__doc__)
    parser.add_argument("--config", help="worker YAML config file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_worker(args.config)
        api = Api.from_config(config)
    except (ConfigError, ValueError) as exc:
        print(f"dffmpeg-worker: {exc}", file=sys.stderr)
        return 2
    agent = WorkerAgent(config, api)
    signals = {"count": 0}
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            logging.info("draining: finishing running jobs (signal again to cancel them)")
            stop.set()
            # Off the signal handler: announcing the drain is a network call.
            threading.Thread(target=agent.drain, name="drain", daemon=True).start()
        else:
            logging.info("canceling running jobs: %s", ", ".join(agent.running_jobs()) or "none")
            agent.abort_all("worker shutting down")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except AuthError as exc:
        print(
            f"dffmpeg-worker: coordinator refused our credentials: {exc.message}", file=sys.stderr
        )
        return 3
    except (RuntimeError, SandboxError) as exc:
        print(f"dffmpeg-worker: {exc}", file=sys.stderr)
        return 2
    except StoppedBeforeOnline:
        logging.info("stopped before reaching the coordinator; nothing to drain")
        return 0
    while not stop.wait(1.0):
        pass
    agent.wait_jobs()
    logging.info("no jobs left; deregistering")
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
