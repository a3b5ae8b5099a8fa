"""The caller's network address, as every network check sees it.

One function so that what counts as the caller's address (the TCP peer today; a
trusted proxy's ``X-Forwarded-For`` once such proxies are configured) is decided in one
place for ``allowed_networks`` and ``metrics_allowed_networks`` alike.
"""

from __future__ import annotations

from flask import request


def client_address() -> str | None:
    return request.remote_addr
