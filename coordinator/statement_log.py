"""A diagnostic: every SQL statement and request of this process, appended to a file.

Off unless ``DFFMPEG_STATEMENT_LOG=PATH`` is set in the coordinator's environment
(docs/performance.md, "Where a trivial job's time goes"; ``bench/job_breakdown.py``
reads it). Nothing of a statement's text or parameters is written, only its kind, so
the file holds no secrets. Lines, tab-separated:

    SQL      METHOD ROUTE    KIND (the verb and first table: SELECT jobs, COMMIT...)   MS
    REQUEST  METHOD ROUTE    ROLE   STATUS   CPU_MS (the request thread's)   WALL_MS

``ROUTE`` is the URL rule (``/api/v1/jobs/<job_id>/output``), or ``-`` for statements
outside a request (the request loop's pre-check, the janitor; the wake-up thread's
bumps and polls run on its own driver connection and are not logged).
Each line is one ``write`` to a file opened for appending, so the processes of one
coordinator share a file without mixing their lines.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from sqlalchemy import Engine, event

ENV = "DFFMPEG_STATEMENT_LOG"


class StatementLog:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._started = threading.local()

    def write(self, *fields: object) -> None:
        os.write(self._fd, ("\t".join(str(f) for f in fields) + "\n").encode())

    # Engine events -------------------------------------------------------------

    def before_execute(self, *_args: Any) -> None:
        self._started.at = time.perf_counter()

    def after_execute(
        self, _conn: Any, _cursor: Any, statement: str, *_args: Any, **_kwargs: Any
    ) -> None:
        started = getattr(self._started, "at", None)
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self.write("SQL", _route(), statement_kind(statement), f"{elapsed * 1000:.3f}")

    def committed(self, _conn: Any) -> None:
        # The driver's own commit: not a cursor statement, so counted here.
        self.write("SQL", _route(), "COMMIT", "0")

    # Request hooks -------------------------------------------------------------

    def request_started(self) -> None:
        g.statement_log_started = (time.thread_time(), time.perf_counter())

    def request_done(self, response: Response) -> Response:
        started = g.pop("statement_log_started", None)
        if started is not None:
            cpu = time.thread_time() - started[0]
            wall = time.perf_counter() - started[1]
            user = g.get("user")
            role = getattr(user, "role", "-")
            self.write(
                "REQUEST",
                _route(),
                role,
                response.status_code,
                f"{cpu * 1000:.3f}",
                f"{wall * 1000:.3f}",
            )
        return response


# The first table a statement names: "SELECT jobs", "INSERT nonces", "UPDATE workers".
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+[\"`]?(\w+)", re.IGNORECASE)


def statement_kind(statement: str) -> str:
    words = statement.split(None, 1)
    if not words:
        return "?"
    verb = words[0].upper()
    table = _TABLE.search(statement)
    return f"{verb} {table.group(1)}" if table else verb


def _route() -> str:
    if not has_request_context():
        return "-"
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    return f"{request.method} {rule}"


def install(app: Flask, engine: Engine) -> None:
    """Attach the log when the environment asks for it; otherwise do nothing at all."""
    path = os.environ.get(ENV)
    if not path:
        return
    log = StatementLog(path)
    event.listen(engine, "before_cursor_execute", log.before_execute)
    event.listen(engine, "after_cursor_execute", log.after_execute)
    event.listen(engine, "commit", log.committed)
    # Registered on the app before the API blueprint's hooks run, so a request's CPU
    # includes authentication and the signing of its answer.
    app.before_request(log.request_started)
    app.after_request(log.request_done)
