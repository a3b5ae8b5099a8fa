"""an index for the scheduler's "served longest ago" order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:10:00

* ``ix_jobs_requester_started``: every claim asks, for each requester with pending
  jobs, when one of its jobs last started. With this index that is one index lookup
  per requester; without it, a read of every job the requester ever ran.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_requester_started", ["requester", "started_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_requester_started")
