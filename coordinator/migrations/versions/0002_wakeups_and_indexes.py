"""wake-up counters and the indexes the hot queries were missing

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 02:50:00

* ``wakeups``: the fixed set of counters that carries wake-ups between coordinator
  processes (coordinator/wakeups.py); all rows are made here, so bumping one is a
  plain UPDATE on every database.
* ``ix_jobs_requester_created``: a client's job list filters by requester and orders
  by creation (then id), newest first: a page is read from the index, not sorted.
* MariaDB/MySQL only: every DATETIME column gets microseconds (``DATETIME(6)``); the
  plain type made by 0001 drops them, so jobs submitted within one second tied in the
  claim order and leases compared at one-second steps.
* ``ix_jobs_state_client_lease``: the janitor's search for monitored jobs whose client
  went away reads live states by client lease instead of every job ever run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BUCKETS = 256  # must match coordinator.wakeups.BUCKETS


def _datetime_precision(fsp: int) -> None:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return
    inspector = sa.inspect(bind)
    for table in inspector.get_table_names():
        for col in inspector.get_columns(table):
            if isinstance(col["type"], sa.DateTime):
                op.alter_column(
                    table,
                    col["name"],
                    type_=mysql.DATETIME(fsp=fsp),
                    existing_type=col["type"],
                    existing_nullable=col["nullable"],
                )


def upgrade() -> None:
    _datetime_precision(6)
    wakeups = op.create_table(
        "wakeups",
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", name=op.f("pk_wakeups")),
    )
    op.bulk_insert(wakeups, [{"bucket": b, "version": 0} for b in range(BUCKETS)])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_requester_created", ["requester", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_jobs_state_client_lease", ["state", "client_lease_expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_client_lease")
        batch_op.drop_index("ix_jobs_requester_created")
    op.drop_table("wakeups")
    _datetime_precision(0)
