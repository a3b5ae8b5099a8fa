"""The dffmpeg coordinator: a Flask app that queues jobs and hands them to workers.

``create_app()`` is the factory gunicorn calls (``gunicorn 'coordinator:create_app()'``).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from flask import Flask, has_app_context

from coordinator import (
    api,
    auth,
    errors,
    health,
    held,
    keystore,
    openapi,
    publish,
    quotas,
    schema,
    statement_log,
    storage,
)
from coordinator.db import db as database
from coordinator.janitor import Janitor
from coordinator.notify import Notifier
from coordinator.recent_output import RecentOutput
from coordinator.services import BackgroundServices
from coordinator.serving import ServingMonitor
from coordinator.storage import StorageMonitor
from coordinator.wakeups import DatabaseWakeups
from dffmpeg.config import ConfigError, CoordinatorConfig, load_coordinator

MAX_BODY_BYTES = 16 * 1024 * 1024


def _end_transaction() -> None:
    """Give the request's pooled connection back before a long-poll sleeps (a check
    that committed already holds none: no empty commit)."""
    if has_app_context() and database.session().in_transaction():
        database.session.commit()


def create_app(
    config: CoordinatorConfig | dict[str, Any] | None = None,
    *,
    config_file: str | None = None,
    start_janitor: bool = True,
    check_schema: bool = True,
    start_wakeups: bool | None = None,
    start_transports: bool = True,
) -> Flask:
    """Build the coordinator app.

    ``config`` is a ``CoordinatorConfig`` or a dict of coordinator config keys; without
    it the config file is searched for like ``dffmpeg-coordinator`` does.
    ``start_wakeups`` (default: like ``start_janitor``) starts the thread that carries
    wake-ups between coordinator processes through the database.
    """
    if config is None:
        settings = load_coordinator(config_file)
    elif isinstance(config, dict):
        settings = CoordinatorConfig.from_dict(config)
    else:
        settings = config

    try:
        quotas.validate(settings.default_quotas)
    except errors.ApiError as exc:
        raise ConfigError(f"default_quotas: {exc.message}") from None

    app = Flask(__name__)
    app.config.update(
        DFFMPEG=settings,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=schema.engine_options(settings.database_url),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    # Secrets never reach the logs: werkzeug's request log is off, ours logs no headers.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    database.init_app(app)
    schema.install_app_engine_events(app)
    with app.app_context():
        # A diagnostic, off unless DFFMPEG_STATEMENT_LOG is set (coordinator/statement_log.py).
        statement_log.install(app, database.engine)
    # Imported here, not at the top: prometheus-client must not be loaded by a gunicorn
    # master before it set up the multiprocess directory (coordinator/metrics_dir.py).
    from coordinator import monitoring

    instruments = monitoring.install(app)
    # Wake-ups from other processes arrive through the database (coordinator.wakeups);
    # the periodic re-check is only a safety net.
    notifier = Notifier(
        recheck=settings.recheck_seconds or 10.0,
        before_wait=_end_transaction,
        observer=instruments,
    )
    app.extensions["dffmpeg.notifier"] = notifier
    app.extensions["dffmpeg.recent_output"] = RecentOutput()
    app.extensions["dffmpeg.draining"] = threading.Event()
    # Identity keys are stored encrypted with this secret (coordinator/keystore.py).
    app.extensions["dffmpeg.keystore"] = keystore.KeystoreHolder(settings.secret_key_file)
    # Told by the request loop when this instance cannot serve everyone; the janitor
    # writes it to the database and judges no lease until parties had time to renew.
    serving = ServingMonitor()
    app.extensions["dffmpeg.serving"] = serving
    # Told of every request or sweep the database failed (coordinator/storage.py).
    app.extensions["dffmpeg.storage"] = StorageMonitor(settings.database_url, serving)
    # The request loop asks this about a request whose body is still on its way.
    app.extensions["dffmpeg.precheck"] = functools.partial(auth.precheck, app)
    app.extensions["dffmpeg.held"] = held.HeldRequests(settings.held_threads)
    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    api.register(app)

    if check_schema and not storage.on_read_only_volume(settings.database_url):
        with app.app_context():
            schema.ensure_current()
    monitoring.count_database_errors(app)
    # Every background thread of this app has one owner, which starts and stops them
    # together (coordinator/services.py).
    services = BackgroundServices()
    app.extensions["dffmpeg.services"] = services
    with app.app_context():
        wakeups = DatabaseWakeups(database.engine, notifier)
    app.extensions["dffmpeg.wakeups"] = wakeups
    if start_janitor if start_wakeups is None else start_wakeups:
        services.add("database wake-ups", wakeups)
    janitor = Janitor(app)
    app.extensions["dffmpeg.janitor"] = janitor
    if start_janitor:
        services.add("janitor", janitor)
    # Broker connections and the stream hub (nothing when only HTTP long-poll is enabled;
    # off for one-shot tools such as dffmpeg-admin).
    if start_transports:
        fanout = publish.install(app, settings, notifier)
        if fanout is not None:
            services.add("broker fan-out", fanout)
    services.start()
    return app
