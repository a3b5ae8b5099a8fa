"""what the operator console shows: worker details, load, overrides, file names, samples

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00

* ``workers.info``: a worker's binaries (path, version, hardware checks), mounts and
  operating system, small enough to list every refresh.
* ``worker_reports``: the probe report (hundreds of KB a worker) moves out of
  ``workers.binaries`` into a table of its own; in the worker's row SQLite read through
  it to reach every later column, on every poll and listing.
* ``workers.load``: its latest load sample (heartbeat).
* ``workers.overrides``: slots and labels an admin set while it runs.
* ``jobs.input_name``, ``jobs.output_name``: the file names of a job, searchable;
  filled in here for the jobs already stored.
* ``cluster_samples``: one row a minute (queue, running, finished, failed) for the
  console's sparklines and the day's failures.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from coordinator.arguments import media_names

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BATCH = 500


def _minute_type() -> Any:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        return mysql.DATETIME(fsp=6)
    return sa.DateTime()


def _fill_names() -> None:
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String()),
        sa.column("binary", sa.String()),
        sa.column("args", sa.JSON()),
        sa.column("input_name", sa.String()),
        sa.column("output_name", sa.String()),
    )
    bind = op.get_bind()
    last = ""
    while True:
        rows = bind.execute(
            sa.select(jobs.c.id, jobs.c.binary, jobs.c.args)
            .where(jobs.c.id > last)
            .order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for job_id, binary, args in rows:
            source, target = media_names(binary, args if isinstance(args, list) else [])
            bind.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(input_name=source, output_name=target)
            )
        last = rows[-1][0]


def _reports_table() -> None:
    op.create_table(
        "worker_reports",
        sa.Column("worker_id", sa.String(length=64), nullable=False),
        sa.Column("binaries", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.worker_id"],
            name=op.f("fk_worker_reports_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("worker_id", name=op.f("pk_worker_reports")),
    )
    workers = sa.table("workers", sa.column("worker_id", sa.String()), sa.column("binaries"))
    reports = sa.table("worker_reports", sa.column("worker_id"), sa.column("binaries"))
    op.execute(
        reports.insert().from_select(
            ["worker_id", "binaries"], sa.select(workers.c.worker_id, workers.c.binaries)
        )
    )


def upgrade() -> None:
    _reports_table()
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("binaries")
        batch_op.add_column(sa.Column("info", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("load", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("overrides", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_name", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("output_name", sa.String(length=255), nullable=True))
    _fill_names()
    op.create_table(
        "cluster_samples",
        sa.Column("minute", _minute_type(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False),
        sa.Column("running", sa.Integer(), nullable=False),
        sa.Column("finished", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("minute", name=op.f("pk_cluster_samples")),
    )


def downgrade() -> None:
    op.drop_table("cluster_samples")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("output_name")
        batch_op.drop_column("input_name")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("overrides")
        batch_op.drop_column("load")
        batch_op.drop_column("info")
        batch_op.add_column(sa.Column("binaries", sa.JSON(), nullable=True))
    workers = sa.table("workers", sa.column("worker_id", sa.String()), sa.column("binaries"))
    reports = sa.table("worker_reports", sa.column("worker_id"), sa.column("binaries"))
    op.execute(
        workers.update().values(
            binaries=sa.select(reports.c.binaries)
            .where(reports.c.worker_id == workers.c.worker_id)
            .scalar_subquery()
        )
    )
    op.drop_table("worker_reports")
