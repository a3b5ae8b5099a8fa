"""The statement log diagnostic (coordinator/statement_log.py): off unless asked for;
when on, one line per statement and per request, and nothing secret in them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import signed_identities


def test_statement_log_records_statements_and_requests_per_route(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator import create_app
    from coordinator.db import db

    log = tmp_path / "statements.log"
    monkeypatch.setenv("DFFMPEG_STATEMENT_LOG", str(log))
    app = create_app({"database_url": database_url}, start_janitor=False)
    try:
        ids = signed_identities(app)
        log.write_text("")
        assert ids.client.get("/api/v1/jobs").status_code == 200
    finally:
        with app.app_context():
            db.engine.dispose()
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    route = "GET /api/v1/jobs"
    requests = [r for r in rows if r[0] == "REQUEST"]
    assert [r[:4] for r in requests] == [["REQUEST", route, "client", "200"]]
    kinds = {r[2] for r in rows if r[0] == "SQL" and r[1] == route}
    # The identity, the nonce and the commit.
    assert {"SELECT users", "INSERT nonces", "COMMIT"} <= kinds
    # Only kinds, never a statement's text or its parameters (the nonce, the key).
    assert ids.keys["alice"] not in log.read_text()
    for row in rows:
        if row[0] == "SQL":
            assert len(row) == 4 and re.fullmatch(r"[A-Z]+( \w+)?", row[2]), row


def test_statement_log_is_off_by_default(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator import create_app
    from coordinator.db import db

    monkeypatch.delenv("DFFMPEG_STATEMENT_LOG", raising=False)
    monkeypatch.chdir(tmp_path)
    app = create_app({"database_url": database_url}, start_janitor=False)
    try:
        assert signed_identities(app).client.get("/api/v1/jobs").status_code == 200
        with app.app_context():
            assert not db.engine.dispatch.after_cursor_execute
    finally:
        with app.app_context():
            db.engine.dispose()
