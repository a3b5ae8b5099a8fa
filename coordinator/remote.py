"""The caller's network address, as every network check sees it.

One function so that what counts as the caller's address (the TCP peer, or a trusted
proxy's ``X-Forwarded-For``: ``coordinator.addresses``) is decided in one place for
``allowed_networks`` and ``metrics_allowed_networks`` alike.
"""

from __future__ import annotations

from flask import current_app, request

from coordinator.addresses import client_address as from_environ


def client_address() -> str:
    return from_environ(request.environ, current_app.config["DFFMPEG"].trusted_proxies)
