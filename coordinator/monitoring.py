"""``GET /metrics`` (Prometheus text format) and the hooks that feed it.

``install`` gives an app its ``Instruments`` and the registry a scrape reads: in
multiprocess mode (under gunicorn, see coordinator/metrics_dir.py) the merged files of
every process of this coordinator; otherwise this process's own registry. Both add the
cluster-wide gauges read from the database at scrape time.

No key is needed: the caller's address must lie in ``metrics_allowed_networks``
(default loopback only); any other gets 403.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError, OperationalError

from coordinator.cluster_metrics import ClusterCollector
from coordinator.db import db
from coordinator.errors import Forbidden
from coordinator.instruments import Instruments, multiprocess_dir
from coordinator.observe import KEY
from coordinator.remote import client_address
from coordinator.users import address_allowed

bp = Blueprint("metrics", __name__)

# The classic text format, which every Prometheus version reads (our names need none of
# the newer format's escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY_KEY = "dffmpeg.scrape_registry"


def may_scrape(address: str | None, networks: list[str]) -> bool:
    """Whether ``address`` is in ``networks``; an empty list lets nobody in (unlike
    a user's ``allowed_networks``, where empty means anywhere)."""
    return bool(networks) and address_allowed(address, networks)


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    networks = current_app.config["DFFMPEG"].metrics_allowed_networks
    if not may_scrape(client_address(), networks):
        raise Forbidden("metrics are not served to this network (metrics_allowed_networks)")
    registry: CollectorRegistry = current_app.extensions[REGISTRY_KEY]
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)


def install(app: Flask) -> Instruments:
    settings = app.config["DFFMPEG"]
    # No ``*_created`` series: multiprocess mode has none, and one process must not
    # answer differently from several.
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=False)
    shared = multiprocess_dir()
    if shared is not None:
        MultiProcessCollector(registry, path=shared)
    instruments = Instruments(
        None if shared is not None else registry,
        settings.allowed_binaries,
        settings.transports,
    )
    registry.register(ClusterCollector(app))
    app.extensions[KEY] = instruments
    app.extensions[REGISTRY_KEY] = registry
    app.register_blueprint(bp)
    _count_requests(app, instruments)
    return instruments


def count_database_errors(app: Flask) -> None:
    """From now on, count the driver's errors. Called once the schema was checked or
    made: creating it probes for tables that do not exist yet, which is no fault."""
    instruments: Instruments = app.extensions[KEY]
    with app.app_context():
        _count_database_errors(db.engine, instruments)


def _count_requests(app: Flask, instruments: Instruments) -> None:
    @app.before_request
    def _started() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def _answered(response: Response) -> Response:
        started = g.pop("request_started", None)
        if started is not None:
            # The rule, not the path: one series per route, not per job id.
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            instruments.request_done(
                rule, request.method, response.status_code, time.perf_counter() - started
            )
        return response


def _count_database_errors(engine: object, instruments: Instruments) -> None:
    def handle_error(context: ExceptionContext) -> None:
        error = context.sqlalchemy_exception
        if context.is_disconnect:
            kind = "disconnect"
        elif isinstance(error, IntegrityError):
            kind = "integrity"  # expected now and then: a replayed nonce, a retried frame
        elif isinstance(error, OperationalError):
            kind = "operational"
        else:
            kind = "other"
        instruments.database_error(kind)

    event.listen(engine, "handle_error", handle_error)
