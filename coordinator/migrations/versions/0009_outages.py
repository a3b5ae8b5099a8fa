"""outages: idempotent submits, retries of jobs whose worker was lost

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09 09:00:00

* ``jobs.idempotency_key``: the key a client sends with a submit, unique per requester,
  so that a submit sent again (its answer was lost) finds the job it made instead of
  making a second one.
* ``jobs.retries_left``, ``jobs.attempt``: how many more times a job whose worker was
  lost before any of its output reached its client may be queued again
  (``retry_on_worker_loss``), and which run of it this is.
* ``jobs.output_seen``: whether any of its output was handed to its client (then it is
  never run again: the client would see output twice).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("retries_left", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(
            sa.Column("output_seen", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_index(
            "ix_jobs_requester_idempotency", ["requester", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_requester_idempotency")
        batch_op.drop_column("output_seen")
        batch_op.drop_column("attempt")
        batch_op.drop_column("retries_left")
        batch_op.drop_column("idempotency_key")
