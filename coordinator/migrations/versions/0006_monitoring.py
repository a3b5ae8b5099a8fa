"""monitoring: drop-in reports, jobs pinned to a worker, jobs counted by state and binary

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:00:00

* ``dropin_reports``: local fallbacks and cluster failures the drop-ins recorded and
  reported at their next contact (client/incidents.py); ``last_at`` is indexed for "in
  the last day" and the retention purge, ``(client_id, batch, position)`` is unique so a
  batch sent twice counts once.
* ``jobs.pinned_worker``: the worker a ``dffmpeg-client doctor`` round trip must run on.
* ``ix_jobs_state_binary``: ``GET /metrics`` counts jobs by state and binary from the
  index alone, without reading job rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Microseconds on MariaDB/MySQL too, like every other time column (see 0002).
TIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "dropin_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("code", sa.SmallInteger(), nullable=False),
        sa.Column("binary", sa.String(length=32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", TIME, nullable=False),
        sa.Column("last_at", TIME, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dropin_reports")),
    )
    with op.batch_alter_table("dropin_reports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dropin_reports_batch", ["client_id", "batch", "position"], unique=True
        )
        batch_op.create_index(batch_op.f("ix_dropin_reports_last_at"), ["last_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pinned_worker", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_jobs_state_binary", ["state", "binary"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_binary")
        batch_op.drop_column("pinned_worker")
    op.drop_table("dropin_reports")
