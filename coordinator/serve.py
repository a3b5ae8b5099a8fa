"""``dffmpeg-coordinator``: serve the app with gunicorn and our buffering worker class.

``coordinator.httpserver.BufferingWorker`` reads each request whole in an event loop
before a pool thread runs it, so slow or idle clients cannot hold the threads (see
docs/deployment.md); long-polls are held by pool threads, within the shares that
``coordinator.held`` allows. On SIGTERM gunicorn stops accepting connections; our hook
marks the app as draining first, so ``/health`` answers 503 and open long-polls return
at once instead of holding the shutdown. The master owns
the metrics directory its processes share (coordinator/metrics_dir.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from coordinator import doorbell, keystore, schema, storage
from coordinator.metrics_dir import MetricsDirectory
from coordinator.models import User
from dffmpeg.config import ConfigError, CoordinatorConfig, load_coordinator


class CoordinatorServer(BaseApplication):
    def __init__(
        self, settings: CoordinatorConfig, config_file: str | None, metrics: MetricsDirectory
    ) -> None:
        self.settings = settings
        self.config_file = config_file
        self.metrics = metrics
        # The same-host wake-ups' directory of this database (coordinator/doorbell.py),
        # swept as the workers exit.
        self.doorbells = doorbell.directory_for(make_url(settings.database_url))
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "worker_class": "coordinator.httpserver.BufferingWorker",
            "workers": s.gunicorn_workers,
            "threads": s.gunicorn_threads,
            "timeout": 60,
            "graceful_timeout": 10,
            "keepalive": 75,
            # Idle and arriving connections cost the event loop a socket each, no thread.
            "worker_connections": 1000,
            "post_worker_init": _post_worker_init,
            "child_exit": lambda _arbiter, worker: self._child_exit(worker.pid),
            "on_exit": lambda _arbiter: self._on_exit(),
            "accesslog": None,
        }
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn's runtime control socket (newer versions) is not used; it would
            # otherwise be made in the service user's home, which may not be writable.
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def _child_exit(self, pid: int) -> None:
        self.metrics.process_dead(pid)
        doorbell.sweep(self.doorbells, pid)

    def _on_exit(self) -> None:
        self.metrics.remove()
        doorbell.sweep(self.doorbells)

    def load(self) -> Flask:
        from coordinator import create_app

        # The master checked the schema before any worker started (``prepare_database``).
        # A worker that checked it again at its own start would fail to boot while the
        # database is away, and gunicorn halts the whole server when a worker fails to
        # boot: a database blip during a worker's restart would stop the coordinator.
        return create_app(self.settings, check_schema=False)


def _post_worker_init(worker: Any) -> None:
    """Wrap gunicorn's exit handler so draining starts before the listener closes."""
    original = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        app = worker.wsgi
        if isinstance(app, Flask):
            app.extensions["dffmpeg.draining"].set()
            app.extensions["dffmpeg.notifier"].shutdown()
            app.extensions["dffmpeg.services"].stop()
        original(sig, frame)

    worker.handle_exit = handle_exit
    # gunicorn registered the original bound method before this hook ran.
    signal.signal(signal.SIGTERM, handle_exit)


def prepare_database(settings: CoordinatorConfig) -> None:
    """Create or check the schema once, before any worker process starts, and make sure
    the stored keys can be opened (a missing secret is one clear line, not a 401 for
    every caller).

    On a SQLite volume mounted read-only the check is left to ``/health/ready``: the
    coordinator serves 503 naming the volume until it is writable (coordinator/
    storage.py), instead of refusing to start.
    """
    if storage.on_read_only_volume(settings.database_url):
        path = storage.sqlite_file(settings.database_url)
        assert path is not None
        logging.getLogger(__name__).error(
            "the database volume %s (holding %s) is read-only: every request is answered "
            "503 until it is writable again",
            path.parent,
            path.name,
        )
        return
    schema.check_location(settings.database_url)
    engine = create_engine(settings.database_url, **schema.engine_options(settings.database_url))
    try:
        schema.ensure_current(engine)
        schema.make_private(settings.database_url)
        with engine.connect() as conn:
            stored = [str(v) for v in conn.execute(select(User.hmac_key)).scalars()]
        store, _ = keystore.open_or_create(
            settings.secret_key_file, keystore.stored_keys_encrypted(stored)
        )
        for value in stored:
            store.open(value)  # SecretError if the secret is not the one they were sealed with
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dffmpeg-coordinator", description=__doc__)
    parser.add_argument("--config", help="coordinator YAML config file")
    parser.add_argument("--host", help="override the config's host")
    parser.add_argument("--port", type=int, help="override the config's port")
    parser.add_argument(
        "--workers",
        type=int,
        help="override the config's gunicorn_workers (processes; all share the database)",
    )
    parser.add_argument(
        "--threads", type=int, help="override the config's gunicorn_threads (per process)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_coordinator(args.config)
    except ConfigError as exc:
        print(f"dffmpeg-coordinator: {exc}", file=sys.stderr)
        return 2
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if args.workers:
        settings.gunicorn_workers = args.workers
    if args.threads:
        settings.gunicorn_threads = args.threads
    os.umask(0o077)  # the SQLite file, its log and a new secret: the service user's only
    try:
        prepare_database(settings)
    except (schema.SchemaError, keystore.SecretError) as exc:
        print(f"dffmpeg-coordinator: {exc}", file=sys.stderr)
        return 3
    except SQLAlchemyError as exc:
        # One line (the driver's own), not SQLAlchemy's statement dump.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[:1]
        print(f"dffmpeg-coordinator: database error: {''.join(reason)}", file=sys.stderr)
        return 3
    metrics = MetricsDirectory.create()
    try:
        CoordinatorServer(settings, args.config, metrics).run()
    finally:
        metrics.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
