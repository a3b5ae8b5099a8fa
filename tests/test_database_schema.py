"""Migrations: create, upgrade with data kept, refuse an old schema, indexes really made."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Engine,
    MetaData,
    Table,
    column,
    create_engine,
    func,
    select,
    table,
    text,
)

from coordinator import schema
from coordinator.db import Base
from coordinator.wakeups import BUCKETS, WakeupCounter
from tests.helpers import process_env, write_yaml


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url, **schema.engine_options(database_url))
    yield eng
    eng.dispose()


def _table_0001(engine: Engine, name: str, model_table: Table) -> tuple[Any, dict[str, Any]]:
    """The table as revision 0001 made it, typed like the models (JSON stays JSON), plus
    a plain value for every NOT NULL column without a default in the database.

    Columns are read from the database, so columns added to 0001 later are covered.
    """
    reflected = Table(name, MetaData(), autoload_with=engine)
    columns = []
    fill: dict[str, Any] = {}
    for col in reflected.columns:
        model_col = model_table.c.get(col.name)
        columns.append(column(col.name, model_col.type if model_col is not None else col.type))
        if col.nullable or col.server_default is not None:
            continue
        default = model_col.default if model_col is not None else None
        if default is not None and getattr(default, "is_callable", False):
            fill[col.name] = (
                default.arg(None) if default.arg.__code__.co_argcount else default.arg()
            )
        elif default is not None:
            fill[col.name] = default.arg
    return table(name, *columns), fill


def _seed_0001(engine: Engine) -> None:
    """Rows as a coordinator of revision 0001 wrote them (plain SQL, no current models)."""
    from coordinator.models import Job, User, Worker

    users, user_fill = _table_0001(engine, "users", User.__table__)
    jobs, job_fill = _table_0001(engine, "jobs", Job.__table__)
    workers, worker_fill = _table_0001(engine, "workers", Worker.__table__)
    # 0001 kept the probe report in the worker's row (0007 moves it to worker_reports).
    workers = table(
        "workers",
        *[column(c.name, c.type) for c in workers.columns if c.name != "binaries"],
        column("binaries", JSON),
    )
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    user_rows = [
        {"client_id": "alice", "role": "client", "hmac_key": "k1", "created_at": when},
        {"client_id": "w1", "role": "worker", "hmac_key": "k2", "created_at": when},
    ]
    job_rows = [
        {
            "id": f"job{i}",
            "requester": "alice",
            "binary": "ffprobe" if i else "ffmpeg",
            "args": ["-version"] if i else ["-i", "/m/a film.mkv", "-f", "mp4", "/m/out.mp4"],
            "env": {},
            "path_variables": [],
            "client_paths": {},
            "mode": "active",
            "priority": 0,
            "state": "completed" if i % 2 else "pending",
            "created_at": when,
            "updated_at": when,
            "finished_at": when if i % 2 else None,
            "exit_code": 0 if i % 2 else None,
        }
        for i in range(4)
    ]
    worker_row = {
        "worker_id": "w1",
        "state": "online",
        "slots": 2,
        "labels": ["gpu"],
        "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "probes": {"-version": "x"}}},
        "capabilities": {"ffmpeg": None},
        "path_variables": [],
        "version": "0.1.0",
        "hostname": "w1.lan",
        "registered_at": when,
        "last_seen_at": when,
        "lease_expires_at": when,
    }
    with engine.begin() as conn:
        conn.execute(users.insert(), [{**user_fill, **r} for r in user_rows])
        conn.execute(jobs.insert(), [{**job_fill, **r} for r in job_rows])
        conn.execute(workers.insert(), [{**worker_fill, **worker_row}])


def test_upgrade_from_0001_keeps_users_and_jobs(engine: Engine, database_url: str) -> None:
    command.upgrade(schema.alembic_config(engine), "0001")
    _seed_0001(engine)
    with pytest.raises(schema.SchemaError, match=r"dffmpeg-admin --config FILE db upgrade"):
        schema.ensure_current(engine)

    before, after = schema.upgrade(engine)

    assert (before, after) == ("0001", schema.head_revision())
    schema.ensure_current(engine)  # no longer refused
    from coordinator import create_app
    from coordinator.models import Job, User, Worker

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        from coordinator.db import db

        assert {u.client_id: u.role for u in db.session.scalars(select(User))} == {
            "alice": "client",
            "w1": "worker",
        }
        jobs = {j.id: j for j in db.session.scalars(select(Job))}
        assert sorted(jobs) == ["job0", "job1", "job2", "job3"]
        assert jobs["job1"].state == "completed" and jobs["job1"].args == ["-version"]
        # 0007 filled in the file names of the jobs already stored ...
        assert (jobs["job0"].input_name, jobs["job0"].output_name) == (
            "/m/a film.mkv",
            "/m/out.mp4",
        )
        assert jobs["job1"].input_name is None
        # ... and moved the probe report out of the worker's row, unchanged.
        worker = db.session.get(Worker, "w1")
        assert worker is not None and worker.labels == ["gpu"]
        assert worker.binaries == {
            "ffmpeg": {"path": "/usr/bin/ffmpeg", "probes": {"-version": "x"}}
        }
        assert jobs["job0"].created_at.isoformat() == "2026-01-02T03:04:05+00:00"
        assert db.session.scalar(select(func.count()).select_from(WakeupCounter)) == BUCKETS
        # Microseconds survive on every database (0002 widens MariaDB's DATETIME).
        precise = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        jobs["job0"].updated_at = precise
        db.session.commit()
        db.session.expire_all()
        assert db.session.get(Job, "job0").updated_at == precise
        db.session.remove()
        db.engine.dispose()


def test_migrations_create_everything_the_models_declare(engine: Engine) -> None:
    """Autogenerate finds nothing to add: every declared table and index exists."""
    schema.upgrade(engine)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    # Only structural differences count; backends report column types their own way.
    structural = [d for d in diffs if isinstance(d, tuple) and d[0].endswith(("_table", "_index"))]
    assert structural == []


def _coordinator_config(tmp_path: Path, database_url: str) -> Path:
    return write_yaml(tmp_path / "coordinator.yaml", {"database_url": database_url, "port": 1})


def test_coordinator_refuses_an_old_schema_and_admin_upgrades_it(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    command.upgrade(schema.alembic_config(engine), "0001")
    config = _coordinator_config(tmp_path, database_url)
    env = process_env()

    refused = subprocess.run(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        capture_output=True,
        env=env,
        timeout=30,
    )
    assert refused.returncode == 3
    assert b"dffmpeg-admin --config FILE db upgrade" in refused.stderr

    upgraded = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.admin_cli",
            "--config",
            str(config),
            "db",
            "upgrade",
            "--json",
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert b'"from": "0001"' in upgraded.stdout
    assert schema.current_revision(engine) == schema.head_revision()


def test_upgrade_is_idempotent_and_creates_an_empty_database(engine: Engine) -> None:
    assert schema.upgrade(engine) == (None, schema.head_revision())
    assert schema.upgrade(engine) == (schema.head_revision(), schema.head_revision())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM wakeups")).scalar_one() == BUCKETS


def test_coordinators_starting_together_on_an_empty_database_agree(database_url: str) -> None:
    """Several coordinators started at once on a new database (separate processes, as
    they are): one creates the schema, the others wait for it instead of failing on
    tables that appeared meanwhile."""
    code = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from coordinator import schema\n"
        "url = sys.argv[1]\n"
        "engine = create_engine(url, **schema.engine_options(url))\n"
        "schema.install_engine_events(engine)\n"
        "schema.ensure_current(engine)\n"
    )
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", code, database_url],
            env=process_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [racer.communicate(timeout=50)[0].decode(errors="replace") for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0, 0], "\n".join(outputs)
    engine = create_engine(database_url)
    try:
        assert schema.current_revision(engine) == schema.head_revision()
        with engine.connect() as conn:
            counters = conn.execute(select(func.count()).select_from(WakeupCounter)).scalar()
        assert counters == BUCKETS  # made once, not once per racer
    finally:
        engine.dispose()
