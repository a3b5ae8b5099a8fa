"""The current request's body, as the signature check and the views read it.

Under ``dffmpeg-coordinator``'s own gunicorn worker (coordinator/httpserver.py) the whole
body is in memory before the app runs, and the environ carries it as bytes: taking it
from there costs nothing, where reading ``wsgi.input`` goes through werkzeug's 64 KiB
steps (a copy of every step, then of the whole). Elsewhere (Flask's test client, another
server) it is read from ``wsgi.input`` once and cached.
"""

from __future__ import annotations

from flask import request

BODY_ENVIRON_KEY = "dffmpeg.body"


def request_body() -> bytes:
    body = request.environ.get(BODY_ENVIRON_KEY)
    if isinstance(body, bytes):
        return body
    return request.get_data(cache=True)
