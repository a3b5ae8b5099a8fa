"""per-identity limits, stored stdin per job, and when instances could not serve

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:00:00

* ``users.quotas``: the limits an admin set for an identity (JSON, NULL: defaults).
* ``jobs.stdin_bytes``: stdin bytes stored for the job (the ``max_stdin_bytes`` limit).
* ``serving_state``: per coordinator instance, the last time it could not serve every
  request (coordinator/serving.py); the janitor judges leases only after that.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _datetime() -> sa.types.TypeEngine:
    # Microseconds on MariaDB too, like every other timestamp (revision 0002).
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quotas", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stdin_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "serving_state",
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("impaired_at", _datetime(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("instance", name=op.f("pk_serving_state")),
    )
    with op.batch_alter_table("serving_state", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_serving_state_impaired_at"), ["impaired_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("serving_state")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("stdin_bytes")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("quotas")
