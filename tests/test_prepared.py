"""The driver path of the hot Core statements (coordinator/prepared.py): on every
database it returns what SQLAlchemy returns for the same statement, raises what
SQLAlchemy raises, and leaves to SQLAlchemy what it cannot reproduce."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError, NoResultFound, StatementError

pytestmark = pytest.mark.timeout(120)


def _both(statement: Any, params: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
    """The rows ``core`` returns, and SQLAlchemy's own for the same statement."""
    from coordinator import prepared
    from coordinator.db import core, db

    fast = core(statement, params)
    assert isinstance(fast, prepared.Rows)  # it did take the driver path
    slow = db.session.connection().execute(statement, params).all()
    return fast.all(), [tuple(row) for row in slow]


def test_reads_return_the_rows_sqlalchemy_returns(app: Flask) -> None:
    from coordinator import users
    from coordinator.auth import _FIND_USER
    from coordinator.db import db
    from coordinator.models import User
    from coordinator.scheduler import _ACTIVE_COUNT, _ANY_PENDING

    with app.app_context():
        users.add_user("alice", "client", allowed_networks=["127.0.0.1/32", "::1/128"])
        user = db.session.get(User, "alice")
        assert user is not None
        user.quotas = {"max_pending": 7}
        db.session.commit()
        # JSON columns, a string, an IN list the statement carries, a count, no rows.
        fast, slow = _both(_FIND_USER, {"client_id": "alice"})
        assert [tuple(r) for r in fast] == slow
        assert fast[0].allowed_networks == ["127.0.0.1/32", "::1/128"]
        assert fast[0].quotas == {"max_pending": 7}
        fast, slow = _both(_ACTIVE_COUNT, {"worker_id": "w1"})
        assert [tuple(r) for r in fast] == slow == [(0,)]
        fast, slow = _both(_ANY_PENDING)
        assert fast == slow == []
        # A UTC column comes back aware and equal, whatever the database stores.
        created = select(User.created_at).where(User.client_id == "alice")
        fast, slow = _both(created)
        assert [tuple(r) for r in fast] == slow
        assert fast[0].created_at.tzinfo is not None
        db.session.commit()


def test_writes_count_rows_and_a_replay_is_refused_as_through_sqlalchemy(app: Flask) -> None:
    from coordinator.auth import _NONCE_SEEN, _SEE_NONCE
    from coordinator.db import core, db

    errors: list[Any] = []
    with app.app_context():
        event.listen(db.engine, "handle_error", errors.append)
        expires = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        seen = {"client_id": "alice", "nonce": "n" * 32, "expires_at": expires}
        assert core(_SEE_NONCE, seen).rowcount == 1
        db.session.commit()
        row = core(_NONCE_SEEN, {"client_id": "alice", "nonce": "n" * 32}).one()
        assert row.nonce == "n" * 32
        db.session.commit()
        # The primary key refuses the same nonce again: SQLAlchemy's exception, seen by
        # the engine's error listeners (the metrics count it), and the session recovers.
        with pytest.raises(IntegrityError):
            core(_SEE_NONCE, seen)
        db.session.rollback()
        assert errors and isinstance(errors[-1].sqlalchemy_exception, IntegrityError)
        with pytest.raises(NoResultFound):
            core(_NONCE_SEEN, {"client_id": "bob", "nonce": "n" * 32}).one()
        db.session.commit()


def test_what_it_cannot_reproduce_goes_through_sqlalchemy(app: Flask) -> None:
    from coordinator import prepared
    from coordinator.auth import _FIND_USER
    from coordinator.db import core, db
    from coordinator.models import User

    with app.app_context():
        # Python-side defaults (created_at, allowed_networks) are SQLAlchemy's to fill in.
        result = core(
            insert(User.__table__), {"client_id": "carol", "role": "client", "hmac_key": "x"}
        )
        assert not isinstance(result, prepared.Rows)
        db.session.commit()
        user = db.session.get(User, "carol")
        assert user is not None and user.allowed_networks == []
        assert datetime.now(UTC) - user.created_at < timedelta(minutes=5)
        # A missing parameter is SQLAlchemy's error, not a query for NULL.
        with pytest.raises(StatementError):
            core(_FIND_USER, {})
        db.session.rollback()
        # An IN list the statement carries is expanded once; one from the caller changes
        # the SQL text with its length: SQLAlchemy expands it on each execution.
        fixed = select(User.client_id).where(User.client_id.in_(["carol", "dave"]))
        assert isinstance(core(fixed), prepared.Rows)
        assert [tuple(r) for r in core(fixed)] == [("carol",)]
        given = select(User.client_id).where(User.client_id.in_(bindparam("ids", expanding=True)))
        result = core(given, {"ids": ["carol", "dave", "erin"]})
        assert not isinstance(result, prepared.Rows)
        assert [tuple(r) for r in result] == [("carol",)]
        db.session.commit()


def test_a_stream_is_read_in_order_a_batch_at_a_time_and_a_stopped_read_ends(
    app: Flask, database_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coordinator import prepared, streams
    from dffmpeg.wire import Frame, FrameKind

    job_id = "a" * 32
    with app.app_context():
        frames = [Frame(FrameKind.STDOUT, seq, bytes([seq % 256]) * 1000) for seq in range(1, 201)]
        assert streams.append_output(job_id, frames) == 200
        assert streams.read_output(job_id, 0) == frames  # more rows than one batch
        assert streams.read_output(job_id, 150) == frames[150:]
        # A read that stops at its budget leaves no cursor open: on SQLite one would keep
        # its snapshot, and the next read would miss what was stored since.
        readers: list[Any] = []

        def iterate(*args: Any) -> Any:
            readers.append(through_driver(*args))
            return readers[-1]

        through_driver = prepared.iterate
        monkeypatch.setattr(prepared, "iterate", iterate)
        monkeypatch.setattr(streams, "READ_BUDGET", 10_000)
        first = streams.read_output(job_id, 0)
        assert first == frames[:10] and not streams.complete(first)
        if database_kind == "sqlite":  # the driver path
            assert len(readers) == 1 and inspect.getgeneratorstate(readers[0]) == "GEN_CLOSED"
        else:
            assert readers == [None]
        more = [Frame(FrameKind.STDERR, 201, b"late")]
        assert streams.append_output(job_id, more) == 1
        monkeypatch.setattr(streams, "READ_BUDGET", 4 * 1024 * 1024)
        assert streams.read_output(job_id, 195) == [*frames[195:], *more]
